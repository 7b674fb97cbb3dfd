"""Both ends of loopback TCP connections in one process that moves bytes
when told: a test can load programs while a connection is open, or make
the client connect again (tests/kernel/test_netflow_*.py)."""
import json
import subprocess
import sys

# The process, told on stdin:
#   send N     the client sends N bytes, the server reads them all
#   reply N    the server sends N bytes, the client reads them all
#   reconnect  the client disconnects (connect(AF_UNSPEC), a reset to the
#              server) and connects to the second listener, which accepts
#   close      both ends close; the process exits
# Each command answers a JSON line with the client's and server's ports.
PAIR = r"""
import ctypes, json, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
host = sys.argv[1]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
lst = [socket.create_server((host, 0), family=fam) for _ in range(2)]
c = socket.socket(fam)
c.connect(lst[0].getsockname()[:2])
s, _ = lst[0].accept()
def read(sock, n):
    while n:
        got = sock.recv(min(n, 65536))
        assert got
        n -= len(got)
def ports():
    return {"pid": __import__("os").getpid(), "lport": c.getsockname()[1],
            "rport": c.getpeername()[1], "sport": s.getsockname()[1]}
print(json.dumps(ports()), flush=True)
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "send":
        c.sendall(b"s" * int(arg[0]))
        read(s, int(arg[0]))
    elif cmd == "reply":
        s.sendall(b"r" * int(arg[0]))
        read(c, int(arg[0]))
    elif cmd == "reconnect":
        unspec = ctypes.create_string_buffer(28)  # sa_family 0: AF_UNSPEC
        assert libc.connect(c.fileno(), unspec, 28) == 0, ctypes.get_errno()
        c.connect(lst[1].getsockname()[:2])
        s.close()
        s, _ = lst[1].accept()
    elif cmd == "close":
        c.close()
        s.close()
        print(json.dumps({}), flush=True)
        break
    print(json.dumps(ports()), flush=True)
"""


class TcpPair:
    """.info: the ports after the last command (lport, rport: the client's
    ends; sport: the server's local port) and the process's pid."""

    def __init__(self, host):
        self.p = subprocess.Popen([sys.executable, "-c", PAIR, host], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.p.stdout.readline())
        self.pid = self.info["pid"]

    def do(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line, f"tcp pair died on {cmd!r}"
        self.info = json.loads(line) or self.info
        return self.info

    def close(self):
        if self.p.poll() is None:
            self.do("close")
            self.p.wait(10)
