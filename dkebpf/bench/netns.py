"""A network namespace the bench creates for its server, joined to this
one by a veth pair, so that the load crosses a real device path (qdisc,
veth xmit, GRO) instead of loopback; removed at the end, Ctrl-C included.

Made with iproute2's `ip`, the tool every node has. Addresses are
10.214.<n>.1 (this side) and .2 (the server's side), <n> chosen among the
/24s no interface here uses."""
import os
import shutil
import subprocess
import uuid

from ..errors import DkebpfError


class NetnsError(DkebpfError):
    pass


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


def _free_subnet():
    used = _ip("-4", "-o", "addr", "show").stdout
    for k in range(250):
        n = (os.getpid() + k) % 250 + 1
        if f" 10.214.{n}." not in used:
            return n
    raise NetnsError("no free 10.214.x.0/24 for the bench's veth pair")


class VethNamespace:
    """``with VethNamespace() as ns:`` ns.host_ip here, ns.peer_ip inside;
    ``ns.enter_thread()`` moves the calling thread (only it: setns(2) is
    per thread) into the namespace."""

    def __init__(self):
        if shutil.which("ip") is None:
            raise NetnsError("--veth needs iproute2's `ip` command (apt-get install iproute2)")
        tag = uuid.uuid4().hex[:6]
        self.name = f"dkb-{tag}"
        self.veth_host, self.veth_peer = f"dkbh{tag}", f"dkbp{tag}"
        self.host_ip = self.peer_ip = None

    def __enter__(self):
        n = _free_subnet()
        self.host_ip, self.peer_ip = f"10.214.{n}.1", f"10.214.{n}.2"
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_peer)
            _ip("link", "set", self.veth_peer, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/24", "dev", self.veth_host)
            _ip("link", "set", self.veth_host, "up")
            _ip("-n", self.name, "addr", "add", f"{self.peer_ip}/24", "dev", self.veth_peer)
            _ip("-n", self.name, "link", "set", self.veth_peer, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def enter_thread(self):
        from .. import _netlog   # the one setns(2) binding (bpf-netlog opens its sockets with it)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _netlog.enter_netns(fd, f"network namespace {self.name}")
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        _ip("link", "del", self.veth_host, check=False)
        _ip("netns", "del", self.name, check=False)
