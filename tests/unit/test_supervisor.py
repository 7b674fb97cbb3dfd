"""Plugin isolation: a plugin that fails in start, on_readable or collect is
logged, counted, restarted with backoff and finally disabled, alone; data it
had collected still goes out; the agent ends only when no plugin is left."""
import logging
import socket
import threading
import time

import pyarrow as pa
import pytest

from dkebpf import supervisor
from dkebpf.agent import Agent
from dkebpf.config import load_config
from dkebpf.debug_server import render_metrics
from dkebpf.errors import DkebpfError, UnsupportedError
from dkebpf.plugins.base import Plugin, PointBatch
from support.lineproto_parser import parse
from support.traffic import wait_until


class Sink:
    def __init__(self):
        self.sent = []

    def submit(self, category, input_name, body, npoints):
        self.sent.append((input_name, [p.fields["n"] for p in parse(body)]))

    def log_drops_once(self):
        pass

    def stats(self):
        return {}


class Source(Plugin):
    """Holds the bytes its socket receives; a byte 0xFF makes on_readable
    raise (after holding what came before it)."""

    instances = []

    def __init__(self, name, fail_start=None, fail_collect=False):
        self.name = name
        self.fail_start = fail_start
        self.fail_collect = fail_collect
        self.r = self.w = None
        self.held = []
        self.stopped = False
        Source.instances.append(self)

    def start(self):
        if self.fail_start is not None:
            raise self.fail_start
        self.r, self.w = socket.socketpair()

    def fileobjs(self):
        return [self.r]

    def on_readable(self, fileobj):
        data = fileobj.recv(100)
        for b in data:
            if b == 0xFF:
                raise ValueError("bad record")
            self.held.append(b)
        return False

    def collect(self, now_ns):
        if self.fail_collect:
            raise RuntimeError("collect broke")
        rows, self.held = self.held, []
        if not rows:
            return []
        return [PointBatch("m", "logging", self.name, pa.RecordBatch.from_arrays(
            [pa.array(rows, pa.int64())], names=["n"]), [], ["n"])]

    def stop(self):
        self.stopped = True
        for s in (self.r, self.w):
            if s is not None:
                s.close()


@pytest.fixture
def agent(monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", 0.05)
    Source.instances = []
    a = Agent(load_config(["--enabled", "ebpf-net", "--interval", "10m", "--output", "-"]))
    a.sink = Sink()
    return a


def settle(cond):
    """Until cond() holds, or 30 s (generous: a loaded machine runs the
    loop's thread late) have passed: the asserts after tell which."""
    wait_until(cond, 30.0, step=0.01)


def run_loop(agent, feed, until):
    """agent._loop in this thread while ``feed`` runs in another; stops once
    ``until()`` holds (what the loop was to do is done)."""
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)

    def drive():
        feed()
        settle(until)
        agent.stopping = True
        wake_w.send(b"x")

    t = threading.Thread(target=drive)
    t.start()
    agent._loop(wake_r)
    t.join()
    wake_r.close()
    wake_w.close()


def newest(name):
    return [s for s in Source.instances if s.name == name][-1]


def restarted(name, times=1):
    """The plugin's instance number times + 1 exists and has started."""
    started = [s for s in Source.instances if s.name == name and s.w is not None]
    return len(started) > times


def test_a_failing_readable_handler_restarts_that_plugin_alone(agent):
    agent.runners = [agent.runner(n, lambda n=n: Source(n)) for n in ("good", "flaky")]
    assert all(r.start() for r in agent.runners)
    good, flaky = (newest(n) for n in ("good", "flaky"))

    def feed():
        good.w.send(b"\x01")
        flaky.w.send(b"\x02\x03\xff")   # 2 and 3 held, then the failure
        settle(lambda: restarted("flaky"))  # backoff 0.05 s
        newest("flaky").w.send(b"\x04")
        good.w.send(b"\x05")

    run_loop(agent, feed, until=lambda: newest("flaky").held == [4] and good.held == [1, 5])
    # what flaky held before failing went out at once (salvage)
    assert agent.sink.sent == [("flaky", [2, 3])]
    agent.flush()
    assert sorted(agent.sink.sent[1:]) == [("flaky", [4]), ("good", [1, 5])]
    good_r, flaky_r = agent.runners
    assert flaky.stopped and not good.stopped and newest("flaky") is not flaky
    assert (good_r.running, flaky_r.running, flaky_r.restarts) == (True, True, 1)
    text = render_metrics(agent.metrics())
    assert 'plugin_failures_total{plugin="flaky",stage="on_readable"} 1' in text
    assert 'plugin_restarts_total{plugin="flaky"} 1' in text
    assert 'plugin_running{plugin="good"} 1' in text


def test_repeated_failures_disable_the_plugin_and_the_others_go_on(agent):
    agent.runners = [agent.runner("good", lambda: Source("good")),
                     agent.runner("broken", lambda: Source("broken", fail_collect=True))]
    assert all(r.start() for r in agent.runners)
    for _ in range(supervisor.MAX_FAILURES):
        agent.flush()
        for r in agent.runners:
            if r.restart_due(time.monotonic() + 10):  # past any backoff
                r.start()
    good_r, broken_r = agent.runners
    assert not broken_r.alive and "failures in a row" in broken_r.reason
    assert broken_r.failures_by_stage == {"collect": supervisor.MAX_FAILURES}
    assert good_r.running
    newest("good").w.send(b"\x09")
    run_loop(agent, lambda: None, until=lambda: newest("good").held == [9])
    agent.flush()
    assert agent.sink.sent == [("good", [9])]
    assert 'plugin_disabled{plugin="broken"} 1' in render_metrics(agent.metrics())


def test_start_failures_cost_only_that_plugin(agent):
    agent.runners = [agent.runner("nat", lambda: Source("nat", fail_start=UnsupportedError("no conntrack"))),
                     agent.runner("flows", lambda: Source("flows"))]
    agent._start_plugins()
    nat, flows = agent.runners
    assert not nat.alive and nat.reason == "no conntrack"   # unsupported: not retried
    assert flows.running


def test_a_bad_netlog_blacklist_disables_bpf_netlog_alone(agent, caplog):
    """The real plugin built from a config with a rule that does not parse:
    disabled at once (no retry can fix a config), the message positioned,
    no traceback; the other plugin runs."""
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.netlog import NetlogPlugin
    cfg = load_config(["--enabled", "bpf-netlog"], environ={"DKE_NETLOG_NET_FILTER": "tcp ;\n udp && 5"})
    ctx = PluginContext(cfg=cfg, logger=logging.getLogger("test"), self_pid=0)
    agent.runners = [agent.runner("bpf-netlog", lambda: NetlogPlugin(ctx)),
                     agent.runner("flows", lambda: Source("flows"))]
    with caplog.at_level("ERROR"):
        agent._start_plugins()
    netlog, flows = agent.runners
    assert not netlog.alive and flows.running
    assert netlog.reason.startswith("netlog_blacklist:2:") and netlog.reason.endswith("^")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "bpf-netlog: start failed: netlog_blacklist:2:" in errors[0].getMessage()
    assert errors[0].getMessage().endswith("; disabled")


def test_no_plugin_able_to_start_is_an_error(agent):
    agent.runners = [agent.runner("a", lambda: Source("a", fail_start=UnsupportedError("nope"))),
                     agent.runner("b", lambda: Source("b", fail_start=DkebpfError("kernel said no")))]
    with pytest.raises(DkebpfError, match="no plugin could start: a: nope; b: kernel said no"):
        agent._start_plugins()


def test_the_loop_ends_when_every_plugin_is_disabled(agent, monkeypatch):
    monkeypatch.setattr(supervisor, "MAX_FAILURES", 2)
    agent.runners = [agent.runner("only", lambda: Source("only"))]
    assert agent.runners[0].start()

    def feed():
        newest("only").w.send(b"\xff")
        settle(lambda: restarted("only"))
        newest("only").w.send(b"\xff")

    run_loop(agent, feed, until=lambda: agent.exit_error is not None)
    assert isinstance(agent.exit_error, DkebpfError) and "every plugin failed" in str(agent.exit_error)


def test_a_batch_that_cannot_be_encoded_costs_only_itself(agent):
    src = Source("src")
    agent.runners = [agent.runner("src", lambda: src)]
    assert agent.runners[0].start()
    bad = PointBatch("m", "logging", "bad", pa.RecordBatch.from_arrays(
        [pa.array([[1]], pa.list_(pa.int64()))], names=["n"]), [], ["n"])
    good = PointBatch("m", "logging", "good", pa.RecordBatch.from_arrays(
        [pa.array([7], pa.int64())], names=["n"]), [], ["n"])
    agent._submit(agent.runners[0], [bad, good], time.time_ns())
    assert agent.sink.sent == [("good", [7])] and agent.errors["submit"] == 1


def test_a_failing_limit_check_is_counted_and_the_loop_goes_on(agent):
    class BrokenLimits:
        enabled = True

        def check(self):
            raise OSError(5, "Input/output error")

    agent.limits = BrokenLimits()
    agent.runners = [agent.runner("src", lambda: Source("src"))]
    assert agent.runners[0].start()
    run_loop(agent, lambda: newest("src").w.send(b"\x01"),
             until=lambda: agent.errors["limit_check"] and newest("src").held == [1])
    assert agent.errors["limit_check"] == 1 and agent.exit_error is None
    agent.flush()
    assert agent.sink.sent == [("src", [1])]


def test_a_long_healthy_run_starts_a_new_series_of_failures(agent, monkeypatch):
    clock = [1000.0]
    attempts = []

    def factory():
        attempts.append(1)
        # the first instance runs; every restart fails to start
        return Source("p") if len(attempts) == 1 else Source("p", fail_start=DkebpfError("busy"))
    r = supervisor.PluginRunner("p", factory, agent.selector, lambda *_: None, clock=lambda: clock[0])
    assert r.start()
    clock[0] += supervisor.RESET_AFTER_S + 1
    newest("p").w.send(b"\xff")
    time.sleep(0.05)
    r.on_readable(newest("p").r)
    assert (r.state, r.failures) == (supervisor.WAITING, 1)
    while r.alive:  # failing starts count on: disabled after MAX_FAILURES in a row
        clock[0] = r.retry_at
        assert r.restart_due(clock[0]) and not r.start()
    assert r.failures == supervisor.MAX_FAILURES and r.failures_by_stage == {
        "on_readable": 1, "start": supervisor.MAX_FAILURES - 1}
