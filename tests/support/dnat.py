"""An iptables DNAT rule in the host's nat OUTPUT chain (traffic this host
sends) or PREROUTING chain (traffic it forwards), for one test: packets to
service_ip:service_port go to to_ip:to_port instead (what kube-proxy does
for a ClusterIP). Only this exact rule is added and, in any case, deleted
again (-D with the same specification)."""
import contextlib
import os
import subprocess


def _iptables(op, chain, spec, v6):
    return subprocess.run(["ip6tables" if v6 else "iptables", "-w", "10", "-t", "nat", op, chain, *spec],
                          capture_output=True, text=True)


@contextlib.contextmanager
def dnat_rule(service_ip, service_port, to_ip, to_port, proto="tcp", chain="OUTPUT"):
    v6 = ":" in service_ip
    to = f"[{to_ip}]:{to_port}" if v6 else f"{to_ip}:{to_port}"
    spec = ["-d", f"{service_ip}/{128 if v6 else 32}", "-p", proto, "--dport", str(service_port),
            "-m", "comment", "--comment", f"dkebpf-test-{os.getpid()}",
            "-j", "DNAT", "--to-destination", to]
    p = _iptables("-A", chain, spec, v6)
    if p.returncode != 0:
        raise RuntimeError(f"iptables -A failed: {p.stderr.strip()}")
    try:
        yield
    finally:
        p = _iptables("-D", chain, spec, v6)
        if p.returncode != 0:
            raise RuntimeError(f"iptables -D of the test rule failed: {p.stderr.strip()}")


def service_ip(ns, family=4):
    """An address of the namespace's subnet (/24, /64) that nobody holds:
    traffic to it exists only because of the DNAT rule and stays on the test
    veth."""
    if family == 6:
        return ns.host_ip6.rsplit(":", 1)[0] + ":100"
    return ns.host_ip.rsplit(".", 1)[0] + ".100"
