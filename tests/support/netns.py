"""Test hosts: a network namespace joined to the host by a veth pair, with
addresses that exist only on this pair. Tests send traffic only to these
addresses and to loopback."""
import contextlib
import os
import subprocess
import uuid


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class NetNS:
    """`with NetNS() as ns:` host side ns.host_ip / ns.host_ip6, namespace
    side ns.peer_ip / ns.peer_ip6; ns.run([...]) runs a command inside."""

    def __init__(self, index=None):
        tag = uuid.uuid4().hex[:6]
        self.name = f"dkt-{tag}"
        self.veth_host = f"dkh{tag}"
        self.veth_peer = f"dkp{tag}"
        n = index if index is not None else (os.getpid() % 200) + 20
        self.host_ip, self.peer_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.host_ip6, self.peer_ip6 = f"fd00:d4eb:{n:x}::1", f"fd00:d4eb:{n:x}::2"

    def __enter__(self):
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_peer)
            sh("ip", "link", "set", self.veth_peer, "netns", self.name)
            sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.veth_host)
            sh("ip", "-6", "addr", "add", f"{self.host_ip6}/64", "dev", self.veth_host, "nodad")
            sh("ip", "link", "set", self.veth_host, "up")
            self.exec("ip", "addr", "add", f"{self.peer_ip}/24", "dev", self.veth_peer)
            self.exec("ip", "-6", "addr", "add", f"{self.peer_ip6}/64", "dev", self.veth_peer, "nodad")
            self.exec("ip", "link", "set", self.veth_peer, "up")
            self.exec("ip", "link", "set", "lo", "up")
        except Exception:
            self.__exit__()
            raise
        return self

    def exec(self, *args, check=True):
        return sh("ip", "netns", "exec", self.name, *args, check=check)

    def prefix(self):
        """Command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def drop_randomly(self, probability):
        """Drop that fraction of the TCP segments entering the namespace
        (iptables statistic match: works on kernels built without netem).
        GSO is turned off on the host side so that the drop applies to each
        MSS-sized segment, not to a few 64 KiB super-packets."""
        sh("ip", "link", "set", "dev", self.veth_host, "gso_max_size", "1500", "gso_max_segs", "1")
        self.exec("iptables", "-A", "INPUT", "-p", "tcp", "-m", "statistic", "--mode", "random",
                  "--probability", str(probability), "-j", "DROP")

    def __exit__(self, *exc):
        sh("ip", "link", "del", self.veth_host, check=False)
        sh("ip", "netns", "del", self.name, check=False)


def call_in_netns(name, fn, *args):
    """fn(*args) on a thread that joined network namespace `name` (setns(2)
    moves only the calling thread): sockets it opens live in that namespace
    and keep working from any thread afterwards."""
    import ctypes
    import threading
    libc = ctypes.CDLL(None, use_errno=True)
    result = {}

    def body():
        try:
            with open(f"/var/run/netns/{name}") as ns:
                if libc.setns(ns.fileno(), 0x40000000) != 0:   # CLONE_NEWNET
                    raise OSError(ctypes.get_errno(), f"setns to {name}")
            result["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


@contextlib.contextmanager
def sysctl(name, value):
    """/proc/sys/<name> set to value inside the block, its old value after."""
    path = os.path.join("/proc/sys", name)
    with open(path) as fh:
        before = fh.read().strip()
    with open(path, "w") as fh:
        fh.write(value)
    try:
        yield
    finally:
        with open(path, "w") as fh:
            fh.write(before)


@contextlib.contextmanager
def routed_through_host(a, b):
    """Namespaces a and b reach each other's subnets (IPv4) through the
    host: routes via the host side of each veth, net.ipv4.ip_forward on.
    ip_forward is set back to what it was; the routes go with the
    namespaces."""
    a.exec("ip", "route", "add", b.peer_ip.rsplit(".", 1)[0] + ".0/24", "via", a.host_ip)
    b.exec("ip", "route", "add", a.peer_ip.rsplit(".", 1)[0] + ".0/24", "via", b.host_ip)
    with sysctl("net/ipv4/ip_forward", "1"):
        yield
