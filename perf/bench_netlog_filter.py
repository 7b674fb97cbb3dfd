"""netlog_blacklist per-connection evaluation speed: the Cython evaluator
(ConnFilter.verdicts over a numpy array, GIL released) against the
pure-Python reference on the same connections, in the same run.

Rule: four statements of the kinds that run per connection (pod and
namespace names, a prefix of an address text) plus two header ones, so
every connection runs most of the program. Connections: N with IPv4/IPv6,
ports and names drawn from small pools (a few hundred pod names).

Prints `name: value` lines."""
import os
import random
import sys

from timing import TESTS_DIR, best_of

sys.path.insert(0, TESTS_DIR)   # reference/ and support/ as packages (no dkebpf there to shadow)

from dkebpf import _netlog_filter as nf  # noqa: E402
from dkebpf.netlog.filter import parse_rules  # noqa: E402
from reference.netlog_filter_ref import first_match  # noqa: E402
from support.netlog_filter_gen import conn_record  # noqa: E402

RULE = """
has_prefix(k8s_src_pod, "datakit-") || has_prefix(k8s_dst_pod, "datakit-")
k8s_dst_namespace == "kube-system" && dst_port == 443
has_prefix(ip_saddr, "10.244.") && has_suffix(k8s_dst_pod, "-canary")
ipnet_contains("fd00:1::/64", ip6_daddr) && src_port >= 30000
dst_port == 6379 || src_port == 6379
k8s_src_namespace == "monitoring" && !ipv6
"""


def connections(n, seed=12):
    rng = random.Random(seed)
    pods = [f"{app}-{i}" for app in ("web", "api", "db", "cache", "datakit", "job") for i in range(60)]
    namespaces = ["default", "kube-system", "monitoring", "prod", "dev"]
    out = []
    for _ in range(n):
        fam = rng.choice((4, 4, 4, 6))
        size = 4 if fam == 4 else 16
        out.append({"family": fam, "proto": 6,
                    "laddr": bytes([10, 244, rng.randrange(4), rng.randrange(256)]) if fam == 4
                    else bytes([0xfd, 0, 0, 1]) + os.urandom(12),
                    "raddr": os.urandom(size), "lport": rng.randrange(65536),
                    "rport": rng.choice((80, 443, 6379, 5432, 8080)), "vni": 0,
                    "k8s_src_pod": rng.choice(pods).encode(), "k8s_dst_pod": rng.choice(pods).encode(),
                    "k8s_src_namespace": rng.choice(namespaces).encode(),
                    "k8s_dst_namespace": rng.choice(namespaces).encode()})
    return out


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rules = parse_rules(RULE)
    conns = connections(n)
    arr, names = conn_record(conns, nf)
    filt = nf.ConnFilter(rules.statements)
    ref_n = min(n, 20_000)
    got = filt.verdicts(arr, names)
    want = [first_match(rules.statements, c) for c in conns[:ref_n]]
    assert got[:ref_n].tolist() == want, "Cython and reference disagree"
    ours = best_of(lambda: filt.verdicts(arr, names))
    ref = best_of(lambda: [first_match(rules.statements, c) for c in conns[:ref_n]], repeat=2)
    print(f"netlog_filter_connections: {n}")
    print(f"netlog_filter_dropped_fraction: {(got >= 0).mean():.3f}")
    print(f"netlog_filter_cython_conns_per_s: {n / ours:.0f}")
    print(f"netlog_filter_reference_conns_per_s: {ref_n / ref:.0f}")
    print(f"netlog_filter_cython_vs_reference: {(n / ours) / (ref_n / ref):.1f}")


if __name__ == "__main__":
    main()
