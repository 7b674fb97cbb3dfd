"""Real servers and clients as separate processes (so each has its own pid
in the collected points) that move exactly the bytes they are told to."""
import json
import os
import subprocess
import sys
import time

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer.py")


def _first_line(f):
    """One line read from the pipe's file descriptor a byte at a time: a
    buffered readline could swallow the lines after it, which communicate()
    (reading the descriptor) would then never see."""
    buf = b""
    while not buf.endswith(b"\n"):
        ch = os.read(f.fileno(), 1)
        if not ch:
            break
        buf += ch
    return buf.decode()


class Proc:
    """A peer process (peer.py, or another `program` speaking its JSON
    lines); .info is the JSON line it printed once ready."""

    def __init__(self, args, prefix=(), program=(sys.executable, PEER)):
        self.p = subprocess.Popen([*prefix, *program, *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = _first_line(self.p.stdout)
        if not line:
            raise RuntimeError(f"peer {args} failed: {self.p.stderr.read()}")
        self.info = json.loads(line)
        self.pid = self.info["pid"]

    def wait(self, timeout=30):
        out, err = self.p.communicate(timeout=timeout)
        if self.p.returncode != 0:
            raise RuntimeError(f"peer failed ({self.p.returncode}): {err}")
        return [json.loads(x) for x in out.splitlines() if x.strip()]

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()


def tcp_server(host, reply_bytes, prefix=(), conns=1):
    """Accepts `conns` connections; reads until the client shuts down its
    side, then sends reply_bytes and closes."""
    return Proc(["tcp-server", host, reply_bytes, conns], prefix)


def udp_server(host, reply_bytes, prefix=(), datagrams=1):
    return Proc(["udp-server", host, reply_bytes, datagrams], prefix)


def run_client(kind, host, port, send_bytes, *extra, prefix=()):
    c = Proc([kind, host, port, send_bytes, *extra], prefix)
    results = c.wait()
    return c.pid, c.info, results


def wait_until(pred, timeout, step=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()
