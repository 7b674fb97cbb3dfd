"""An iptables DNAT rule in the host's nat OUTPUT chain, for one test:
traffic this host sends to service_ip:service_port goes to to_ip:to_port
instead (what kube-proxy does for a ClusterIP). Only this exact rule is
added and, in any case, deleted again (-D with the same specification)."""
import contextlib
import os
import subprocess


def _iptables(op, spec):
    return subprocess.run(["iptables", "-w", "10", "-t", "nat", op, "OUTPUT", *spec],
                          capture_output=True, text=True)


@contextlib.contextmanager
def dnat_rule(service_ip, service_port, to_ip, to_port, proto="tcp"):
    spec = ["-d", f"{service_ip}/32", "-p", proto, "--dport", str(service_port),
            "-m", "comment", "--comment", f"dkebpf-test-{os.getpid()}",
            "-j", "DNAT", "--to-destination", f"{to_ip}:{to_port}"]
    p = _iptables("-A", spec)
    if p.returncode != 0:
        raise RuntimeError(f"iptables -A failed: {p.stderr.strip()}")
    try:
        yield
    finally:
        p = _iptables("-D", spec)
        if p.returncode != 0:
            raise RuntimeError(f"iptables -D of the test rule failed: {p.stderr.strip()}")


def service_ip(ns):
    """An address of the namespace's /24 that nobody holds: traffic to it
    exists only because of the DNAT rule and stays on the test veth."""
    return ns.host_ip.rsplit(".", 1)[0] + ".100"
