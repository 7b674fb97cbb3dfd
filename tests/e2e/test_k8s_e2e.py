"""Kubernetes tags end to end: the collector watches the API server
stand-in (tests/support/kube_apiserver.py, HTTPS with its own CA) as node
"e2e-node", whose pods are

  netagent-x7k2p  DaemonSet netagent, host network (its IP is the node's, the
                  test namespace's host side): two containers, real processes
                  moved into cgroups with containerd's path shape
  checkout-...    Deployment checkout (ReplicaSet), IP = the host side's IPv6

and on another node db-0 (StatefulSet db, IP = the namespace's IPv4, an
http.server there) behind service db (ClusterIP reached through an
iptables DNAT rule, as kube-proxy does) and coredns-... (Deployment
coredns, IP = the namespace's IPv6, dnsmasq there) behind kube-dns.
netflow, httpflow and dnsflow points must name both sides."""
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from dkebpf.plugins import requirements

from support import kube_apiserver as ks
from support import traffic
from support.cgroups import containerd_cgroup, popen_in
from support.dnat import dnat_rule, service_ip
from support.netns import NetNS
from support.schema import check_point
from support.dnsmasq import Dnsmasq, dig
from support.servers import HttpServer

pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("ebpf-conntrack", "ebpf-net"), ("httpflow",)))]

NODE = "e2e-node"
HTTP_PORT = 8000
PREFIX = "k8s_workload_label_"
SIDE = ("k8s_namespace", "k8s_pod_name", "k8s_service_name", "k8s_deployment_name",
        "k8s_workload_name", "k8s_workload_type")
# tags beyond the doc's schema: the workload pair of every side, the copied
# label, and the collector fixture's global tags
EXTRA_TAGS = [f"{s}_k8s_workload_{k}" for s in ("src", "dst", "client", "server") for k in ("name", "type")] + \
    [PREFIX + "app", "team", "env"]

# GET url once (the connection closes), say so, stay alive until stdin closes:
# the collector reads the process's cgroup when it reports the connection
CLIENT = """
import os, sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10).read()
print(os.getpid(), flush=True)
sys.stdin.read()
"""


def side(tags, s):
    return tuple(tags.get(f"{s}_{t}") for t in SIDE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def apiserver(tmp_path):
    with ks.for_collector(tmp_path) as s:
        yield s


def k8s_args(api):
    return ks.collector_args(api, NODE)


def wait_points(receiver, measurement, pred, timeout=30):
    return traffic.wait_until(lambda: [p for p in receiver.points(measurement=measurement) if pred(p)],
                              timeout) or []


@pytest.mark.requires("proc_events", "cgroup2")
def test_pod_service_and_workload_tags_for_both_sides(collector, receiver, apiserver, monkeypatch):
    monkeypatch.setenv("DKE_K8S_WORKLOAD_LABELS", "app")
    monkeypatch.setenv("K8S_WORKLOAD_LABEL_PREFIX", PREFIX)  # the name DataKit really passes
    cid1, cid2 = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    with NetNS() as ns:
        base = ns.host_ip.rsplit(".", 1)[0]
        svc_ip, dns_svc_ip = service_ip(ns), f"{base}.53"
        api = apiserver
        agent = api.add(ks.pod("netagent-x7k2p", "monitoring", NODE, ns.host_ip, host_network=True,
                               labels={"app": "netagent"}, owner=("DaemonSet", "netagent", "u-ds"),
                               container_ids=[cid1, cid2]))
        rs = api.add(ks.replica_set("checkout-7c9d5", "shop", deployment="checkout"))
        checkout = api.add(ks.pod("checkout-7c9d5-q2w", "shop", NODE, ns.host_ip6, owner=ks.owned_by(rs),
                                  labels={"app": "checkout"}))
        db = api.add(ks.pod("db-0", "shop", "other-node", ns.peer_ip, owner=("StatefulSet", "db", "u-ss")))
        dns_rs = api.add(ks.replica_set("coredns-5d78c", "kube-system", deployment="coredns"))
        coredns = api.add(ks.pod("coredns-5d78c-abcde", "kube-system", "other-node", ns.peer_ip6,
                                 owner=ks.owned_by(dns_rs)))
        db_svc = api.add(ks.service("db", "shop", svc_ip, [(80, "TCP", HTTP_PORT)], {"app": "db"}))
        api.add(ks.endpoint_slice(db_svc, [db], [(HTTP_PORT, "TCP")]))
        dns_svc = api.add(ks.service("kube-dns", "kube-system", dns_svc_ip, [(53, "UDP", 53), (53, "TCP", 53)]))
        es = ks.endpoint_slice(dns_svc, [coredns], [(53, "UDP"), (53, "TCP")])
        es["addressType"] = "IPv6"
        api.add(es)
        assert checkout

        metrics_port = free_port()
        collector.start(*k8s_args(api), "--pprof-port", str(metrics_port), enabled="ebpf-conntrack,ebpf-net")
        name = f"web.{uuid.uuid4().hex[:8]}.test"
        http = HttpServer(ns, ns.peer_ip, HTTP_PORT)
        procs = []
        try:
            with dnat_rule(svc_ip, 80, ns.peer_ip, HTTP_PORT), \
                    containerd_cgroup(agent["metadata"]["uid"], cid1) as cg1, \
                    containerd_cgroup(agent["metadata"]["uid"], cid2) as cg2, \
                    Dnsmasq(ns, [ns.peer_ip6], [f"--address=/{name}/{ns.peer_ip}"]):
                # container 1 through the ClusterIP, container 2 straight to the pod
                for cg, url in ((cg1, f"http://{svc_ip}/"), (cg2, f"http://{ns.peer_ip}:{HTTP_PORT}/")):
                    p = popen_in(cg, [sys.executable, "-c", CLIENT, url], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
                    procs.append((p, int(p.stdout.readline())))
                # a short-lived process of the pod, gone long before the interval ends
                short = popen_in(cg1, ["curl", "-sS", "-o", "/dev/null", "--max-time", "10", f"http://{svc_ip}/"])
                assert short.wait(15) == 0
                # a host process: the node's IP is not the host-network pod's by itself
                host_pid = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "--max-time", "10",
                                             f"http://{ns.peer_ip}:{HTTP_PORT}/"]).pid
                status, answers = dig(ns.peer_ip6, name)
                assert status == "NOERROR" and answers, (status, answers)
                (via_svc, pid1), (direct, pid2) = procs
                flows1 = wait_points(receiver, "netflow", lambda p: p.tags.get("pid") == str(pid1)
                                     and p.fields.get("tcp_closed", 0) >= 1)
                flows2 = wait_points(receiver, "netflow", lambda p: p.tags.get("pid") == str(pid2)
                                     and p.fields.get("tcp_closed", 0) >= 1)
                http1 = wait_points(receiver, "httpflow", lambda p: p.tags.get("pid") == str(pid1))
                for p, _ in procs:
                    p.stdin.close()
                    p.wait(10)
        finally:
            for p, _ in procs:
                if p.poll() is None:
                    p.kill()
            http.stop()

        agent_tags = ("monitoring", "netagent-x7k2p", "N/A", "netagent", "netagent", "daemonset")
        db_tags = ("shop", "db-0", "db", "db", "db", "statefulset")
        assert flows1 and http1 and flows2
        for p in flows1 + http1:
            t = p.tags
            assert (t["dst_ip"], t["dst_nat_ip"]) == (svc_ip, ns.peer_ip), t
            assert side(t, "src") == side(t, "client") == agent_tags, t
            assert side(t, "dst") == side(t, "server") == db_tags, t
            assert t["sub_source"] == "K8s" and t[PREFIX + "app"] == "netagent"
        for p in flows2:  # the pod's other container
            assert side(p.tags, "src") == agent_tags and side(p.tags, "dst") == db_tags, p.tags
        gone = wait_points(receiver, "netflow", lambda p: p.tags.get("pid") == str(short.pid))
        assert gone
        for p in gone:
            assert side(p.tags, "src") == agent_tags and side(p.tags, "dst") == db_tags, p.tags

        host = wait_points(receiver, "netflow", lambda p: p.tags.get("pid") == str(host_pid))
        assert host
        for p in host:
            assert side(p.tags, "src") == ("N/A",) * 6 and side(p.tags, "dst") == db_tags, p.tags
            assert PREFIX + "app" not in p.tags

        # http.server's side of the same connections: db-0 by its IP; the client is the node
        incoming = wait_points(receiver, "netflow", lambda p: p.tags.get("direction") == "incoming"
                               and p.tags.get("src_ip") == ns.peer_ip and p.tags.get("src_port") == str(HTTP_PORT)
                               and p.tags.get("dst_ip") == ns.host_ip)
        assert incoming
        for p in incoming:
            assert side(p.tags, "server") == db_tags and side(p.tags, "client") == ("N/A",) * 6, str(sorted(p.tags.items()))

        dns = wait_points(receiver, "dnsflow", lambda p: p.tags.get("dst_ip") == ns.peer_ip6
                          and p.tags.get("dst_domain") == name)
        assert dns
        for p in dns:
            t = p.tags
            assert side(t, "src") == ("shop", "checkout-7c9d5-q2w", "N/A", "checkout", "checkout", "deployment"), t
            assert side(t, "dst") == ("kube-system", "coredns-5d78c-abcde", "kube-dns", "coredns", "coredns",
                                      "deployment"), t
            assert t[PREFIX + "app"] == "checkout"

        for m, pts in (("netflow", flows1 + flows2 + gone + host + incoming), ("httpflow", http1), ("dnsflow", dns)):
            for p in pts:
                check_point(m, p, extra_tags=EXTRA_TAGS)

        # the API was watched, not polled; the counters say what was cached and matched
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                  if line.startswith("dkebpf_k8s_")}
        assert values["dkebpf_k8s_objects_pods_local"] == 2
        assert values["dkebpf_k8s_objects_pods_remote"] == 2
        assert values["dkebpf_k8s_lookups_hit"] > 0 and values["dkebpf_k8s_lists"] == 6
        assert len(api.list_requests()) == 6
        assert collector.stop() == 0


def test_without_an_api_server_the_collector_runs_and_says_why(collector, receiver, tmp_path):
    token = tmp_path / "token"
    token.write_text("t\n")
    collector.start("--k8s-url", f"https://127.0.0.1:{free_port()}", "--k8s-bearer-token-path", str(token),
                    "--k8s-insecure-skip-verify", "--k8s-node-name", NODE)
    srv = traffic.tcp_server("127.0.0.1", 100)
    pid, _, res = traffic.run_client("tcp-client", "127.0.0.1", srv.info["port"], 200)
    srv.wait()
    pts = wait_points(receiver, "netflow", lambda p: p.tags.get("pid") == str(pid))
    assert pts
    for p in pts:
        assert not any("k8s" in k for k in p.tags) and "sub_source" not in p.tags, p.tags
    assert collector.stop() == 0
    log = collector.log_text()
    assert "not reachable" in log and "points have no Kubernetes tags until it is" in log, log


def test_outside_kubernetes_no_token_no_tags(collector, receiver, tmp_path):
    collector.start("--k8s-bearer-token-path", str(tmp_path / "absent"))
    time.sleep(0.5)
    assert collector.stop() == 0
    log = collector.log_text()
    assert "kubernetes: no pod, service or workload tags: no token" in log, log
