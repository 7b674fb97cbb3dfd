import os

import pytest

from dkebpf.errors import DkebpfError
from dkebpf.limits import UNMETERED_INTERFACES, LimitChecker, ResourceLimitExceeded

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "README.md")
TCK = os.sysconf("SC_CLK_TCK")
PID = 4242
MiB = 1024 * 1024


class FakeClock:
    def __init__(self, t=5000.0):
        self.t = t

    def __call__(self):
        return self.t


class FakeProc:
    def __init__(self, root):
        self.root = root
        (root / str(PID)).mkdir()
        (root / "net").mkdir()
        self.set_cpu(0.0)
        self.set_rss(10 * MiB)
        self.set_net({"eth0": (0, 0), "eth1": (0, 0)})

    def set_cpu(self, seconds):
        ticks = int(round(seconds * TCK))
        u, s = ticks // 2, ticks - ticks // 2
        # comm with a space and a ')' to exercise parsing
        (self.root / str(PID) / "stat").write_text(
            f"{PID} (dk ebpf) x) S 1 {PID} {PID} 0 -1 4194560 100 0 0 0 {u} {s} 0 0 "
            "20 0 8 0 1000 123456789 2500 18446744073709551615\n")

    def set_rss(self, nbytes):
        (self.root / str(PID) / "status").write_text(
            f"Name:\tdkebpf\nState:\tS (sleeping)\nVmPeak:\t  999999 kB\n"
            f"VmRSS:\t{nbytes // 1024} kB\nThreads:\t8\n")

    def set_net(self, ifs, lo=(0, 0)):
        lines = ["Inter-|   Receive                                                |  Transmit",
                 " face |bytes    packets errs drop fifo frame compressed multicast|bytes    "
                 "packets errs drop fifo colls carrier compressed"]
        for name, (rx, tx) in [("lo", lo)] + list(ifs.items()):
            lines.append(f"{name:>6}: {rx} 10 0 0 0 0 0 0 {tx} 10 0 0 0 0 0 0")
        (self.root / "net" / "dev").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fp(tmp_path):
    return FakeProc(tmp_path)


def checker(fp, clock, **kw):
    args = dict(cpu_limit=None, mem_limit=None, net_limit=None)
    args.update(kw)
    return LimitChecker(proc=str(fp.root), pid=PID, window_s=10.0, clock=clock, **args)


def test_exit_code_and_base():
    assert ResourceLimitExceeded.exit_code == 4
    assert issubclass(ResourceLimitExceeded, DkebpfError)


def test_no_limits_is_noop(tmp_path):
    c = LimitChecker(None, None, None, proc=str(tmp_path / "absent"))
    c.check()  # reads nothing, so a missing /proc does not matter
    assert c.sample() == {"cpu_cores": None, "rss_bytes": None,
                          "net_rx_bps": None, "net_tx_bps": None}


def test_cpu_window_reacts_where_lifetime_average_would_not(fp):
    clk = FakeClock()
    # 1000 s of life at 0.1 cores: 100 CPU seconds so far
    fp.set_cpu(100.0)
    c = checker(fp, clk, cpu_limit=1.0)
    c.check()
    assert c.sample()["cpu_cores"] is None  # no window yet
    cpu = 100.0
    for _ in range(4):  # now busy: 2 cores, checks every 5 s
        clk.t += 5
        cpu += 10.0
        fp.set_cpu(cpu)
        if clk.t - 5000 < 10:
            c.check()  # window not yet full: no verdict
            continue
        with pytest.raises(ResourceLimitExceeded) as ei:
            c.check()
        msg = str(ei.value)
        assert msg.startswith("cpu_limit exceeded: CPU 2.00 cores")
        assert "limit 1.00 cores" in msg
        assert c.sample()["cpu_cores"] == pytest.approx(2.0, rel=0.01)
    # lifetime average would still be ~(100+40)/(1000+20) = 0.14 cores
    assert cpu / (1000 + (clk.t - 5000)) < 1.0


def test_cpu_window_forgets_old_burst(fp):
    clk = FakeClock()
    c = checker(fp, clk, cpu_limit=1.0)
    cpu = 0.0
    # 30 s busy at 3 cores, one check every 2 s
    for i in range(15):
        clk.t += 2
        cpu += 6.0
        fp.set_cpu(cpu)
        try:
            c.check()
        except ResourceLimitExceeded:
            pass
    assert c.sample()["cpu_cores"] == pytest.approx(3.0, rel=0.01)
    # then idle: after one window the figure drops to 0 and check passes,
    # though the average since start is still well above 1 core
    for i in range(6):
        clk.t += 2
        fp.set_cpu(cpu)
        try:
            c.check()
        except ResourceLimitExceeded:
            pass
    c.check()
    assert c.sample()["cpu_cores"] == pytest.approx(0.0)
    assert len(c._cpu) <= 10  # the deque stays bounded by the window


def test_mem_under_and_over(fp):
    clk = FakeClock()
    c = checker(fp, clk, mem_limit=512 * MiB)
    fp.set_rss(300 * MiB)
    c.check()
    assert c.sample()["rss_bytes"] == 300 * MiB
    fp.set_rss(int(612.3 * MiB))
    with pytest.raises(ResourceLimitExceeded,
                       match=r"^mem_limit exceeded: RSS 612\.3 MiB > limit 512\.0 MiB$"):
        c.check()


def test_net_over_on_one_interface(fp):
    clk = FakeClock()
    c = checker(fp, clk, net_limit=10 * MiB)
    c.check()  # first reading: no rate yet
    clk.t += 5
    # eth0 quiet, eth1 sends 15 MiB/s; lo traffic is ignored
    fp.set_net({"eth0": (1 * MiB, 1 * MiB), "eth1": (2 * MiB, 75 * MiB)}, lo=(10**12, 10**12))
    with pytest.raises(ResourceLimitExceeded) as ei:
        c.check()
    assert str(ei.value) == "net_limit exceeded: eth1 tx 15.0 MiB/s > limit 10.0 MiB/s"
    s = c.sample()
    assert s["net_tx_bps"] == pytest.approx(15 * MiB)
    assert s["net_rx_bps"] == pytest.approx(0.4 * MiB)
    # next interval under the limit on every interface: passes
    clk.t += 5
    fp.set_net({"eth0": (6 * MiB, 2 * MiB), "eth1": (3 * MiB, 80 * MiB)}, lo=(0, 0))
    c.check()
    assert c.sample()["net_tx_bps"] == pytest.approx(1 * MiB)


def test_net_rx_over(fp):
    clk = FakeClock()
    c = checker(fp, clk, net_limit=1 * MiB)
    c.check()
    clk.t += 2
    fp.set_net({"eth0": (4 * MiB, 0), "eth1": (0, 0)})
    with pytest.raises(ResourceLimitExceeded, match=r"eth0 rx 2\.0 MiB/s > limit 1\.0 MiB/s"):
        c.check()


def test_real_proc_self_generous_limits():
    c = LimitChecker(cpu_limit=1000.0, mem_limit=1 << 50, net_limit=1 << 50, window_s=0.05)
    c.check()
    import time
    time.sleep(0.06)
    c.check()
    s = c.sample()
    assert s["rss_bytes"] > 1 * MiB
    assert s["cpu_cores"] is not None and s["cpu_cores"] >= 0


def test_real_proc_self_tiny_mem_limit():
    c = LimitChecker(cpu_limit=None, mem_limit=1024, net_limit=None)
    with pytest.raises(ResourceLimitExceeded, match=r"^mem_limit exceeded: RSS .* MiB > limit"):
        c.check()


def test_readme_names_the_interfaces_the_net_limit_ignores():
    """The README's limit paragraph must say which interfaces do not count
    and why, as the code does (UNMETERED_INTERFACES)."""
    with open(README) as f:
        text = f.read()
    para = text[text.index("--res-net"):text.index("exits with status 4")]
    para = " ".join(para.split())
    for name in UNMETERED_INTERFACES:
        assert f"except `{name}`" in para, para
    assert "bandwidth" in para
