"""The agent's early flush: a plugin whose on_readable() returns True is
collected and sent at once, alone, without ending the interval."""
import socket
import threading
import time

import pyarrow as pa

from dkebpf.agent import Agent
from dkebpf.config import load_config
from dkebpf.plugins.base import Plugin, PointBatch
from support.lineproto_parser import parse
from support.traffic import wait_until


class Sink:
    def __init__(self):
        self.sent = []

    def submit(self, category, input_name, body, npoints):
        self.sent.append((category, input_name, [p.fields["n"] for p in parse(body)]))

    def log_drops_once(self):
        pass


class Source(Plugin):
    """Reads bytes from a socket; asks for a flush once it holds `every` of them."""

    def __init__(self, name, every):
        self.name = name
        self.every = every
        self.r, self.w = socket.socketpair()
        self.held = []
        self.collects = 0

    def start(self):
        pass

    def fileobjs(self):
        return [self.r]

    def on_readable(self, fileobj):
        self.held.extend(fileobj.recv(100))
        return len(self.held) >= self.every

    def collect(self, now_ns):
        self.collects += 1
        rows, self.held = self.held, []
        if not rows:
            return []
        batch = pa.RecordBatch.from_arrays([pa.array(rows, pa.int64())], names=["n"])
        return [PointBatch("m", "logging", self.name, batch, [], ["n"])]


def test_on_readable_true_flushes_that_plugin_only():
    agent = Agent(load_config(["--enabled", "ebpf-net", "--interval", "10m", "--output", "-"]))
    agent.sink = Sink()
    eager, lazy = Source("eager", every=3), Source("lazy", every=10**9)
    agent.runners = [agent.runner(p.name, lambda p=p: p) for p in (eager, lazy)]
    assert all(r.start() for r in agent.runners)
    wake_r, wake_w = socket.socketpair()

    def settle(cond):  # generous: a loaded machine runs the loop late
        wait_until(cond, 30.0, step=0.01)

    def feed():
        lazy.w.send(b"\x07")
        settle(lambda: lazy.held == [7])
        for b in (1, 2, 3, 4):  # one byte per read: each read on its own
            eager.w.send(bytes([b]))
            settle(lambda: eager.held[-1:] == [b] or eager.collects)
        settle(lambda: eager.held == [4])
        agent.stopping = True
        wake_w.send(b"x")

    t = threading.Thread(target=feed)
    t.start()
    agent._loop(wake_r)
    t.join()
    # 3 bytes held -> eager flushed alone; the 4th and lazy's byte wait for the interval
    assert agent.sink.sent == [("logging", "eager", [1, 2, 3])]
    assert (eager.collects, lazy.collects, agent.flushes) == (1, 0, 0)
    agent.flush()
    assert agent.sink.sent[1:] == [("logging", "eager", [4]), ("logging", "lazy", [7])]
    assert agent.flushes == 1


def test_a_batch_without_tags_is_sampled_per_row():
    """Logs (bash) have no tag columns: sampling keys each row on its
    fields, so a fraction of the lines is kept, not all or none."""
    agent = Agent(load_config(["--enabled", "ebpf-net", "--interval", "10m", "--output", "-",
                               "--sampling-rate", "0.5"]))
    agent.sink = Sink()
    src = Source("logs", every=10**9)
    src.held = list(range(2000))
    agent.runners = [agent.runner(src.name, lambda: src)]
    assert agent.runners[0].start()
    agent.flush()
    (_cat, _inp, kept), = agent.sink.sent
    assert 800 < len(kept) < 1200 and len(set(kept)) == len(kept)


class HoldingSource(Source):
    """Holds its rows back from interval flushes (as bpf-netlog holds young
    chunks) and hands them over in the last one."""

    def collect(self, now_ns):
        self.collects += 1
        return []

    def collect_last(self, now_ns):
        return Source.collect(self, now_ns)


def test_the_last_flush_takes_what_plugins_hold_back():
    agent = Agent(load_config(["--enabled", "ebpf-net", "--interval", "10m", "--output", "-"]))
    agent.sink = Sink()
    holder, plain = HoldingSource("holder", every=10**9), Source("plain", every=10**9)
    holder.held, plain.held = [1, 2], [3]
    agent.runners = [agent.runner(p.name, lambda p=p: p) for p in (holder, plain)]
    assert all(r.start() for r in agent.runners)
    agent.flush()
    assert agent.sink.sent == [("logging", "plain", [3])]
    plain.held = [4]
    agent._last_flush()
    assert agent.sink.sent[1:] == [("logging", "holder", [1, 2]), ("logging", "plain", [4])]
