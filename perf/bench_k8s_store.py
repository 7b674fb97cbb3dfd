"""Memory and speed of the Kubernetes enrichment at cluster scale: the
collector's reflectors list 100k pods (100 of them on this node), 10k
services with their EndpointSlices, 30k ReplicaSets and 1k Jobs from the
API server stand-in (tests/support/kube_apiserver.py, run in a child
process so its memory is not counted), then tag a batch of rows.

Prints name: value lines: RSS of this process before the lists (modules
imported, one API request made) and after (the store), its growth, the
tagging speed as rows per second, and the CPU the process-events thread
spends per exec. The store must stay within 80 MB of RSS growth.

    .venv/bin/python perf/bench_k8s_store.py [pods] [services]"""
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

from dkebpf.enrich.k8s import K8sEnrichment  # noqa: E402
from dkebpf.enrich.k8s.api import KubeApi, Token  # noqa: E402

NODE = "node-0"
SERVER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from support import kube_apiserver as ks
pods, services, tmp = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = ks.KubeApiServer(tmp, token="bench")
add = lambda o: s.objects[o["kind"]].__setitem__(o["metadata"]["uid"], o)  # no event history
per_svc = pods // services
for i in range(services):
    rs = [ks.replica_set(f"app{i}-{r:05x}", f"ns{i % 200}", deployment=f"app{i}") for r in range(3)]
    for r in rs:
        add(r)
    members = []
    for j in range(per_svc):
        n = i * per_svc + j
        p = ks.pod(f"app{i}-{j}-x{n:x}", f"ns{i % 200}", f"node-{n % 1000}", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
                   owner=ks.owned_by(rs[0]), labels={"app": f"app{i}", "pod-template-hash": "5d8f9"})
        add(p)
        members.append(p)
    svc = ks.service(f"app{i}", f"ns{i % 200}", f"172.{16 + (i >> 16)}.{i >> 8 & 255}.{i & 255}",
                     [(80, "TCP", 8080), (9090, "TCP", 9090)], {"app": f"app{i}"})
    add(svc)
    add(ks.endpoint_slice(svc, members, [(8080, "TCP"), (9090, "TCP")]))
for i in range(1000):
    add(ks.job(f"cron{i}-2901", f"ns{i % 200}", cronjob=f"cron{i}"))
print(json.dumps({"url": s.url, "ca": s.cert}), flush=True)
sys.stdin.read()
"""


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main():
    pods = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    services = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    tmp = tempfile.mkdtemp(prefix="bench-k8s-")
    t0 = time.monotonic()
    server = subprocess.Popen([sys.executable, "-c", SERVER, os.path.join(HERE, os.pardir, "tests"),
                               str(pods), str(services), tmp], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        info = json.loads(server.stdout.readline())
        print(f"k8s_objects_generated_s: {time.monotonic() - t0:.1f}")
        token = os.path.join(tmp, "token")
        with open(token, "w") as f:
            f.write("bench\n")
        api = KubeApi(info["url"], Token(token), ca_path=info["ca"])
        # the HTTP and TLS stack loaded and used once: what remains is the store's
        list(api.list("/api/v1/pods", {"fieldSelector": "spec.nodeName=none"}))
        gc.collect()
        before = rss_mb()
        e = K8sEnrichment(api, NODE, label_keys=("app",), label_prefix="k8s_workload_label_",
                          logger=logging.getLogger("bench"))
        t0 = time.monotonic()
        e.start(wait_s=600)
        for r in e.reflectors:
            r.synced.wait(600)
        sync_s = time.monotonic() - t0
        gc.collect()
        e.store.pod_rows_by_ip([])  # build the indexes, as the first lookup would
        after = rss_mb()
        counts = e.store.object_counts()
        assert counts["pods_local"] + counts["pods_remote"] == pods, counts
        assert counts["services"] == services, counts
        print(f"k8s_list_all_s: {sync_s:.1f}")
        for k in ("pods_local", "pods_remote", "services", "endpointslices", "replicasets_owned", "jobs_owned"):
            print(f"k8s_{k}: {counts[k]}")
        print(f"k8s_rss_before_mb: {before:.1f}")
        print(f"k8s_rss_after_mb: {after:.1f}")
        print(f"k8s_rss_growth_mb: {after - before:.1f}")

        # tagging: 20k rows, 2k distinct remote pod IPs and 500 ClusterIP:port destinations
        n = 20_000
        rng = np.random.default_rng(1)
        pod_n = rng.integers(0, pods, 2000)
        remote = [f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}" for k in pod_n]
        svc_n = rng.integers(0, services, 500)
        cluster = [f"172.{16 + (i >> 16)}.{i >> 8 & 255}.{i & 255}" for i in svc_n]
        dst = [remote[i % 2000] if i % 4 else cluster[i % 500] for i in range(n)]
        cols = {"pid": pa.array([str(1 + i % 300) for i in range(n)]),
                "src_ip": pa.array(["192.0.2.10"] * n), "src_port": pa.array(["*"] * n),
                "dst_ip": pa.array(dst), "dst_port": pa.array(["80"] * n),
                "transport": pa.array(["tcp"] * n), "direction": pa.array(["outgoing"] * n)}
        t0 = time.perf_counter()
        out = e.add_tags(dict(cols))
        dt = time.perf_counter() - t0
        hit = sum(1 for v in out["dst_k8s_namespace"].to_pylist() if v is not None)
        assert hit == n, hit
        print(f"k8s_tag_rows_per_s: {n / dt:.0f}")
        print(f"k8s_rss_limit_ok: {int(after - before <= 80)}")

        # the process-events thread's CPU per exec (2000 short processes; their
        # own CPU is not ours, the reflectors are idle meanwhile)
        events0, cpu0, t0 = e.process_events.events, time.process_time(), time.monotonic()
        subprocess.run(["sh", "-c", "for i in $(seq 2000); do /bin/true; done"], check=True)
        time.sleep(0.5)
        busy_cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        events = e.process_events.events - events0
        cpu0 = time.process_time()
        time.sleep(wall)  # the same time without processes: the watches' own CPU, subtracted
        idle_cpu = time.process_time() - cpu0
        print(f"k8s_process_events: {events}")
        print(f"k8s_process_event_cpu_us: {(busy_cpu - idle_cpu) / max(events, 1) * 1e6:.1f}")
        e.stop()
    finally:
        server.stdin.close()
        server.wait(30)


if __name__ == "__main__":
    main()
