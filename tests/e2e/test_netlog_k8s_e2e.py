"""bpf-netlog with Kubernetes data and a container runtime, as a user runs
it: the API server stand-in (tests/support/kube_apiserver.py) says pod
web-0 (this node, namespace shop) has a container whose processes are an
HTTP server in a test network namespace (moved into a cgroup with
containerd's path shape), and pod client-1 (another node, namespace front)
has the host side's address; a Docker Engine API stand-in on a unix socket
(tests/support/docker_api.py) names the container; a second endpoint does
not exist.

netlog_blacklist drops, per connection, what reaches web-0 on one port,
and anything from pod blocked-1. Checked: the logs of the kept port carry
both pods (local by the namespace, remote by address), the client/server
pair, sub_source and the runtime's names; the dropped port is absent; a
keep-alive connection is dropped from the moment the API says its client
is blocked-1 (the verdict judged again, not per packet: the evaluation
counter stays at a few per connection); the missing endpoint is one
warning."""
import http.client
import re
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest

from dkebpf.plugins import requirements
from support import kube_apiserver as ks
from support.cgroups import containerd_cgroup, popen_in
from support.docker_api import DockerApi, container
from support.netns import NetNS
from support.schema import check_record
from support.servers import OK_SERVER
from support.traffic import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("bpf-netlog",)), "cgroup2")]

NODE = "e2e-node"
KEPT, DROPPED = 18091, 18092
RULE = f"""k8s_src_pod == "web-0" && src_port == {DROPPED}
k8s_dst_pod == 'blocked-1'   # anything from that pod"""
SIDE = ("k8s_namespace", "k8s_pod_name")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for m in re.finditer(r"^(dkebpf_[A-Za-z0-9_:]+)(?:\{[^}]*\})? (\S+)$", text, re.M):
        values[m.group(1)] = values.get(m.group(1), 0.0) + float(m.group(2))   # summed over labels
    return values


def metric(values, suffix):
    return sum(v for k, v in values.items() if k.endswith(suffix))


def test_pod_tags_runtime_names_and_per_connection_verdicts(collector, receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("DKE_NETLOG_NET_FILTER", RULE)
    cid = uuid.uuid4().hex * 2
    sock = str(tmp_path / "docker.sock")
    missing = f"unix://{tmp_path}/absent/containerd.sock"
    metrics_port = free_port()
    with NetNS() as ns, ks.for_collector(tmp_path) as api:
        web = api.add(ks.pod("web-0", "shop", NODE, ns.peer_ip, container_ids=[cid]))
        client = api.add(ks.pod("client-1", "front", "other-node", ns.host_ip))
        with containerd_cgroup(web["metadata"]["uid"], cid) as cg:
            servers = [popen_in(cg, ns.prefix() + ["python3", "-c", OK_SERVER, ns.peer_ip, str(port)],
                                stdout=subprocess.PIPE, text=True) for port in (KEPT, DROPPED)]
            try:
                assert all(s.stdout.readline().strip() == "ready" for s in servers)
                runtime = [container("f00d" * 16, "k8s_POD_web-0_shop_0", servers[0].pid, pod="web-0",
                                     namespace="shop", container_name="POD", created=1),
                           container(cid, "k8s_web_web-0_shop_0", servers[0].pid, pod="web-0",
                                     namespace="shop", container_name="web", created=2)]
                with DockerApi(sock, runtime) as docker:
                    collector.start("--netlog-log", "--netlog-metric", "--netlog-interfaces", f"^{ns.veth_peer}$",
                                    "--container-endpoints", f"unix://{sock},{missing}",
                                    "--pprof-port", str(metrics_port), *ks.collector_args(api, NODE),
                                    enabled="bpf-netlog")
                    assert wait_until(lambda: f"capturing on {ns.veth_peer}" in collector.log_text(), 15)
                    for port in (KEPT, DROPPED):
                        conn = http.client.HTTPConnection(ns.peer_ip, port, timeout=5)
                        for i in range(2):
                            conn.request("GET", f"/{port}/{i}")
                            assert conn.getresponse().read() == b"ok"
                        conn.close()
                    # a keep-alive connection: two exchanges, then its client becomes blocked-1
                    conn = http.client.HTTPConnection(ns.peer_ip, KEPT, timeout=5)
                    for i in range(2):
                        conn.request("GET", f"/before/{i}")
                        assert conn.getresponse().read() == b"ok"
                    time.sleep(2.5)   # drained, and their points made (2 s interval) before the API changes
                    events = metric(metrics(metrics_port), "k8s_events")
                    api.delete(client)
                    api.add(ks.pod("blocked-1", "front", "other-node", ns.host_ip))
                    assert wait_until(lambda: metric(metrics(metrics_port), "k8s_events") >= events + 2, 10)
                    for i in range(2):
                        conn.request("GET", f"/after/{i}")
                        assert conn.getresponse().read() == b"ok"
                    conn.close()
                    time.sleep(3)   # one interval (2 s) flushes them
                    values = metrics(metrics_port)
                    assert collector.stop() == 0
                    assert any(r.startswith("/containers/") and r != "/containers/json" for r in docker.requests)
            finally:
                for s in servers:
                    s.kill()
                    s.wait()

    log = collector.log_text()
    assert "Traceback" not in log
    assert log.count(f"container endpoint {missing} does not answer") == 1, log
    records = [r for r in receiver.records if r.point.measurement.startswith("bpf_net_")
               and r.point.tags.get("nic_name") == ns.veth_peer]
    by_port = {}
    for r in records:
        by_port.setdefault(r.point.tags["src_port"], []).append(r.point)
    assert str(DROPPED) not in by_port, by_port.get(str(DROPPED))
    kept = by_port[str(KEPT)]
    paths = sorted(p.fields["http_path"] for p in kept if p.measurement == "bpf_net_l7_log")
    assert paths == sorted(["/before/0", "/before/1", f"/{KEPT}/0", f"/{KEPT}/1"])   # not /after/*
    for r in records:
        t = r.point.tags
        assert tuple(t.get(f"src_{k}") for k in SIDE) == ("shop", "web-0"), t
        assert tuple(t.get(f"server_{k}") for k in SIDE) == ("shop", "web-0"), t
        assert tuple(t.get(f"dst_{k}") for k in SIDE) == ("front", "client-1"), t
        assert tuple(t.get(f"client_{k}") for k in SIDE) == ("front", "client-1"), t
        assert t["src_k8s_workload_type"] == "pod" and t["sub_source"] == "K8s"
        assert (t["k8s_namespace"], t["k8s_pod_name"], t["k8s_container_name"]) == ("shop", "web-0", "web"), t
        extra = [k for k in t if re.match(r"(client|server)_k8s_|(src|dst)_k8s_workload_", k)] + ["team", "env"]
        check_record(r, extra_tags=extra)
    # bpf-netlog's netflow and httpflow: the same pods, by address
    flows = [r.point for r in receiver.records if r.input in ("bpf-netlog/netflow", "bpf-netlog/httpflow")
             and r.point.tags.get("server_port") == str(KEPT)]
    assert {p.measurement for p in flows} == {"netflow", "httpflow"}
    for p in flows:
        assert tuple(p.tags.get(f"server_{k}") for k in SIDE) == ("shop", "web-0"), p.tags
        assert tuple(p.tags.get(f"client_{k}") for k in SIDE) == ("front", "client-1"), p.tags
    # per connection, not per packet: three connections judged once, the keep-alive one once more
    # when the pods changed (the DROPPED one dropped in user space, so counted)
    assert metric(values, "filter_evaluations") <= 5, values
    assert metric(values, "filter_dropped_connections") == 2 and metric(values, "filter_dropped_packets") > 0
