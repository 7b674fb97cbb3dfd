"""Resource limits: exit when the collector uses more CPU, memory or network
than configured (cfg.cpu_limit / mem_limit / net_limit).

``LimitChecker.check()`` is meant to be called every few seconds. It reads
  * CPU: utime+stime of /proc/<pid>/stat; cores used = tick delta / CLK_TCK
    / elapsed, between the newest sample and the newest sample that is at
    least ``window_s`` older (a deque of samples), so it reflects the recent
    window, not the lifetime average. Until a window has passed, no CPU
    figure (and no CPU verdict).
  * memory: VmRSS of /proc/<pid>/status.
  * network: rx/tx bytes per interface of <proc>/net/dev except
    UNMETERED_INTERFACES, bytes/s between consecutive checks; any interface
    over the limit in either direction trips it.
and raises ResourceLimitExceeded naming the limit, the measured value and
the limit. With no limit set, check() does nothing.
"""
from __future__ import annotations

import collections
import os
import time
from typing import Callable, Dict, Optional, Tuple

from .errors import DkebpfError

MiB = 1024 * 1024
# loopback traffic never leaves the host and uses no link's bandwidth; a busy
# local service (or a DataKit on 127.0.0.1) must not stop the collector.
# The README's "Keeping the node safe" names these too.
UNMETERED_INTERFACES = ("lo",)


class ResourceLimitExceeded(DkebpfError):
    """The collector went over cpu_limit, mem_limit or net_limit."""

    exit_code = 4


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


class LimitChecker:
    def __init__(self, cpu_limit: Optional[float], mem_limit: Optional[int],
                 net_limit: Optional[int], proc: str = "/proc", pid: Optional[int] = None,
                 window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.cpu_limit = cpu_limit
        self.mem_limit = mem_limit
        self.net_limit = net_limit
        self.proc = proc
        self.pid_dir = os.path.join(proc, "self" if pid is None else str(int(pid)))
        self.window_s = float(window_s)
        self.clock = clock
        self.clk_tck = os.sysconf("SC_CLK_TCK")
        self._cpu: "collections.deque[Tuple[float, int]]" = collections.deque()
        self._net_prev: Optional[Tuple[float, Dict[str, Tuple[int, int]]]] = None
        self._last = {"cpu_cores": None, "rss_bytes": None,
                      "net_rx_bps": None, "net_tx_bps": None}

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.cpu_limit, self.mem_limit, self.net_limit))

    def sample(self) -> dict:
        """Last measured values: cpu_cores, rss_bytes, net_rx_bps, net_tx_bps
        (the net ones are the max over interfaces); None when not measured."""
        return dict(self._last)

    # -- readers -------------------------------------------------------------

    def _read_cpu_ticks(self) -> int:
        with open(os.path.join(self.pid_dir, "stat")) as f:
            data = f.read()
        # comm (field 2) may hold spaces and ')': fields resume after the last ')'
        rest = data[data.rindex(")") + 2:].split()
        return int(rest[11]) + int(rest[12])  # utime (14), stime (15)

    def _read_rss(self) -> int:
        with open(os.path.join(self.pid_dir, "status")) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    parts = line.split()
                    unit = parts[2].lower() if len(parts) > 2 else "kb"
                    mult = {"kb": 1024, "mb": MiB, "gb": 1024 * MiB}.get(unit, 1)
                    return int(parts[1]) * mult
        return 0  # kernel threads / zombies have no VmRSS

    def _read_net(self) -> Dict[str, Tuple[int, int]]:
        out = {}
        with open(os.path.join(self.proc, "net", "dev")) as f:
            for line in f:
                if ":" not in line:
                    continue  # the two header lines
                name, _, fields = line.partition(":")
                name = name.strip()
                vals = fields.split()
                if name in UNMETERED_INTERFACES or len(vals) < 9:
                    continue
                out[name] = (int(vals[0]), int(vals[8]))
        return out

    # -- measurements --------------------------------------------------------

    def _measure_cpu(self, now: float) -> Optional[float]:
        self._cpu.append((now, self._read_cpu_ticks()))
        # Drop samples while the next one is already a full window old, so
        # the oldest kept is the newest sample at least window_s back.
        while len(self._cpu) >= 2 and now - self._cpu[1][0] >= self.window_s:
            self._cpu.popleft()
        t0, k0 = self._cpu[0]
        t1, k1 = self._cpu[-1]
        if t1 - t0 < self.window_s or t1 <= t0:
            return None
        return max(0, k1 - k0) / self.clk_tck / (t1 - t0)

    def _measure_net(self, now: float) -> Tuple[Optional[float], Optional[float], str, str]:
        cur = self._read_net()
        prev, self._net_prev = self._net_prev, (now, cur)
        if prev is None or now <= prev[0]:
            return None, None, "", ""
        dt = now - prev[0]
        rx_max = tx_max = 0.0
        rx_if = tx_if = ""
        for name, (rx, tx) in cur.items():
            if name not in prev[1]:
                continue
            prx, ptx = prev[1][name]
            if rx >= prx and (rx - prx) / dt > rx_max:
                rx_max, rx_if = (rx - prx) / dt, name
            if tx >= ptx and (tx - ptx) / dt > tx_max:
                tx_max, tx_if = (tx - ptx) / dt, name
        return rx_max, tx_max, rx_if, tx_if

    def check(self) -> None:
        """Measure the limited resources; raise ResourceLimitExceeded on the
        first one over its limit (memory, then CPU, then network)."""
        if not self.enabled:
            return
        now = self.clock()
        errors = []
        if self.mem_limit is not None:
            rss = self._read_rss()
            self._last["rss_bytes"] = rss
            if rss > self.mem_limit:
                errors.append(f"mem_limit exceeded: RSS {_mib(rss)} > limit {_mib(self.mem_limit)}")
        if self.cpu_limit is not None:
            cores = self._measure_cpu(now)
            if cores is not None:
                self._last["cpu_cores"] = cores
                if cores > self.cpu_limit:
                    errors.append(f"cpu_limit exceeded: CPU {cores:.2f} cores over the last "
                                  f"{self.window_s:g} s > limit {self.cpu_limit:.2f} cores")
        if self.net_limit is not None:
            rx, tx, rx_if, tx_if = self._measure_net(now)
            if rx is not None:
                self._last["net_rx_bps"], self._last["net_tx_bps"] = rx, tx
                for what, v, ifname in (("rx", rx, rx_if), ("tx", tx, tx_if)):
                    if v > self.net_limit:
                        errors.append(f"net_limit exceeded: {ifname} {what} {_mib(v)}/s "
                                      f"> limit {_mib(self.net_limit)}/s")
                        break
        if errors:
            raise ResourceLimitExceeded(errors[0])
