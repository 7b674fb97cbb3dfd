"""bpf-netlog's user-space netlog_blacklist path with Kubernetes fields:
the per-connection verdict cache (dkebpf.netlog.conn_filter.ConnFilter:
one hash lookup per packet of a judged connection) against judging every
packet (a CONN_DTYPE row per packet, its pod names looked up in the store
for the batch, the Cython evaluator over all rows: what the filter did
before the cache, plus the pod lookup), on the same packets, in the same
run, alternating, ROUNDS rounds; medians. Cached: every connection
already judged; first pass: each judged at its first packet.

Packets: PKT_DTYPE rows in batches of BATCH (about one TPACKET_V3 block),
spread over CONNS connections whose remote addresses are pods of a store
holding PODS pods (fed as the reflectors feed it). Rule: the README's pod
statements plus a header one. Also: the cache's worst case, the pods
changing before every batch (every connection of the batch judged again).

Usage: .venv/bin/python perf/bench_netlog_conn_filter.py [packets] [connections]
Prints `name: value` lines."""
import os
import statistics
import sys
import time

import numpy as np

from timing import TESTS_DIR

sys.path.insert(0, TESTS_DIR)

from dkebpf import _netlog_filter as nf, _packets  # noqa: E402
from dkebpf.enrich.k8s import K8sEnrichment  # noqa: E402
from dkebpf.netlog.conn_filter import ConnFilter  # noqa: E402
from dkebpf.netlog.filter import parse_rules  # noqa: E402
from dkebpf.netlog.k8s import NetlogK8s  # noqa: E402
from support import kube_apiserver as ks  # noqa: E402

RULE = """
has_prefix(k8s_src_pod, "datakit-") || has_prefix(k8s_dst_pod, "datakit-")
k8s_dst_namespace == "kube-system" && dst_port == 443
dst_port == 6379 || src_port == 6379
"""
BATCH = 4096
PODS = 10_000
ROUNDS = 5


def pod_ip(i):
    return f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def store():
    e = K8sEnrichment(None, "node-a")
    apps = ("web", "api", "db", "cache", "datakit", "job")
    pods = [ks.pod(f"{apps[i % len(apps)]}-{i}", ("default", "prod", "kube-system")[i % 3], "node-b", pod_ip(i))
            for i in range(PODS)]
    e.store.replace("Pod", "remote", [pods])
    return e


def packets(n, conns, seed=7):
    rng = np.random.default_rng(seed)
    which = rng.integers(0, conns, n)
    p = np.zeros(n, _packets.PKT_DTYPE)
    raddr = np.zeros((conns, 16), np.uint8)
    ips = rng.integers(0, PODS, conns)
    raddr[:, 0], raddr[:, 1], raddr[:, 2], raddr[:, 3] = 10, 100 + ips // 65536, (ips // 256) % 256, ips % 256
    laddr = np.zeros(16, np.uint8)
    laddr[:4] = (10, 1, 0, 2)
    tx = rng.integers(0, 2, n).astype(bool)
    lport = (20000 + np.arange(conns)).astype(np.uint16)[which]
    rport = rng.choice(np.array([80, 443, 6379, 8080], np.uint16), conns)[which]
    r = raddr[which].view("V16").ravel()
    l_ = np.broadcast_to(laddr, (n, 16)).copy().view("V16").ravel()
    p["saddr"], p["daddr"] = np.where(tx, l_, r), np.where(tx, r, l_)
    p["sport"], p["dport"] = np.where(tx, lport, rport), np.where(tx, rport, lport)
    p["family"], p["proto"] = 4, 6
    p["pkttype"] = np.where(tx, _packets.PACKET_OUTGOING_TYPE, 0)
    p["ts_ns"] = time.time_ns() + np.arange(n) * 1000
    return p


class PerPacket:
    """Every packet judged: its row built, its pods looked up, evaluated."""

    def __init__(self, statements, pods):
        self.evaluator = nf.ConnFilter(statements)
        self.names = nf.StringTable()
        self.nic = self.names.intern("eth0")
        self.pods = pods

    def keep(self, pkts):
        tx = pkts["pkttype"] == _packets.PACKET_OUTGOING_TYPE
        conns = np.zeros(len(pkts), nf.CONN_DTYPE)
        conns["laddr"] = np.where(tx, pkts["saddr"], pkts["daddr"])
        conns["raddr"] = np.where(tx, pkts["daddr"], pkts["saddr"])
        conns["lport"] = np.where(tx, pkts["sport"], pkts["dport"])
        conns["rport"] = np.where(tx, pkts["dport"], pkts["sport"])
        conns["family"], conns["proto"], conns["nic"] = pkts["family"], pkts["proto"], self.nic
        self.pods.fill_names(conns, self.names, 0, True)
        return self.evaluator.verdicts(conns, self.names) < 0


def run(filt, pkts, before_batch=None):
    t = time.perf_counter()
    kept = []
    for i in range(0, len(pkts), BATCH):
        if before_batch:
            before_batch()
        kept.append(filt.keep(pkts[i:i + BATCH]))
    return time.perf_counter() - t, np.concatenate(kept)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    conns = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    e = store()
    pods = NetlogK8s(e)
    statements = parse_rules(RULE).statements
    pkts = packets(n, conns)
    cached, cold, per_packet, churn = [], [], [], []
    for _ in range(ROUNDS):
        t_base, want = run(PerPacket(statements, pods), pkts)
        flt = ConnFilter(statements, "eth0", pods)
        t_cold, got = run(flt, pkts)      # every connection judged at its first packet
        assert (got == want).all(), "cached and per-packet verdicts differ"
        t_ours, got = run(flt, pkts)      # all judged: one hash lookup per packet
        assert (got == want).all(), "cached and per-packet verdicts differ"
        bump = lambda: setattr(e.store, "generation", e.store.generation + 1)  # noqa: E731
        t_churn, got = run(ConnFilter(statements, "eth0", pods), pkts, bump)
        assert (got == want).all()
        per_packet.append(n / t_base)
        cold.append(n / t_cold)
        cached.append(n / t_ours)
        churn.append(n / t_churn)
    print(f"netlog_conn_filter_packets: {n}")
    print(f"netlog_conn_filter_connections: {conns}")
    print(f"netlog_conn_filter_dropped_fraction: {1 - want.mean():.3f}")
    print(f"netlog_conn_filter_per_packet_pkts_per_s: {statistics.median(per_packet):.0f}")
    print(f"netlog_conn_filter_first_pass_pkts_per_s: {statistics.median(cold):.0f}")
    print(f"netlog_conn_filter_cached_pkts_per_s: {statistics.median(cached):.0f}")
    print(f"netlog_conn_filter_pods_change_every_batch_pkts_per_s: {statistics.median(churn):.0f}")
    print(f"netlog_conn_filter_cached_vs_per_packet: {statistics.median(c / b for c, b in zip(cached, per_packet)):.1f}")
    print(f"netlog_conn_filter_first_pass_vs_per_packet: {statistics.median(c / b for c, b in zip(cold, per_packet)):.1f}")
    print(f"netlog_conn_filter_churn_vs_per_packet: {statistics.median(c / b for c, b in zip(churn, per_packet)):.1f}")
    print(f"load_average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
