"""The ladder: each level of each load kind held for a set time, first
without the collector, then with a collector started for that level alone
(so its counters, CPU and points belong to that level)."""
import sys
import time
from dataclasses import dataclass
from typing import Dict, List

from ..errors import ConfigError
from ..pairs import parse_pairs
from .collector import Collector, CollectorError, losses
from .load import LOAD_KINDS, Drive

# operations/s per level; 0 is "as fast as it goes" (written max)
FULL_LADDER = {"http": [2000, 5000, 10000, 20000, 0], "conn": [250, 500, 1000, 2000, 0],
               "udp": [500, 1000, 2000, 4000], "dns": [500, 1000, 2000, 5000],
               "https": [1000, 2000, 5000, 0], "pkt": [10000, 50000, 100000, 0]}
FULL_HOLD_S = 10.0
# --quick: two levels a kind (pkt left out: it needs --veth to mean much),
# 3 s each way: about 2 minutes on 2 cores
QUICK_LADDER = {"http": [1000, 4000], "conn": [200, 800], "udp": [200, 800], "dns": [200, 800],
                "https": [500, 2000]}
QUICK_HOLD_S = 3.0
SETTLE_S = 0.5        # after the collector started: its first drain done
SAMPLE_S = 0.5        # RSS and progress while a level runs
OVERHEAD_GUESS_S = 6  # collector start + stop, until measured


@dataclass
class Level:
    kind: str
    rate: float  # 0: unpaced

    @property
    def label(self):
        return "max" if self.rate == 0 else f"{self.rate:g}"


def parse_levels(specs: List[str]) -> Dict[str, List[float]]:
    """['http=1000,5000,max', 'dns=500'] -> {kind: [rates]}."""
    out = {}
    for kind, rates in parse_pairs(specs, "--levels", LOAD_KINDS, "KIND=RATE,RATE,...").items():
        spec = f"{kind}={rates}"
        vals = []
        for r in filter(None, (x.strip() for x in rates.split(","))):
            try:
                v = 0.0 if r == "max" else float(r)
            except ValueError:
                v = -1.0
            if not v >= 0:
                raise ConfigError(f'invalid --levels "{spec}": "{r}" is not a rate (a number > 0 or max)')
            vals.append(v)
        if not vals:
            raise ConfigError(f'invalid --levels "{spec}": no rates after "{kind}="')
        out[kind] = vals
    return out


def plan(ladder: Dict[str, List[float]], kinds) -> List[Level]:
    return [Level(k, r) for k in kinds for r in ladder.get(k, [])]


class Progress:
    """One status line on stderr: level, load, phase, elapsed, ETA."""

    def __init__(self, levels, hold_s, stream=sys.stderr):
        self.n = len(levels)
        self.hold_s = hold_s
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()
        self.done = 0
        self.overhead_s = OVERHEAD_GUESS_S
        self._last = ""
        self._phase = None

    def level_done(self, level_seconds):
        self.done += 1
        # what a level costs beyond its two holds, measured so far
        over = max(0.0, level_seconds - 2 * self.hold_s)
        self.overhead_s = over if self.done == 1 else (self.overhead_s * (self.done - 1) + over) / self.done

    def show(self, level, phase, phase_elapsed):
        elapsed = time.monotonic() - self.t0
        left = (self.n - self.done) * (2 * self.hold_s + self.overhead_s)
        left -= min(phase_elapsed + (self.hold_s if phase == "on" else 0), 2 * self.hold_s)
        load = "max" if level.rate == 0 else f"{level.rate:g}/s"
        line = (f"[{self.done + 1}/{self.n}] {level.kind} {load} collector {phase} "
                f"{min(phase_elapsed, self.hold_s):4.1f}/{self.hold_s:g}s  elapsed {_mmss(elapsed)}  "
                f"ETA {_mmss(max(left, 0))}")
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._last)))
        elif (self.done, phase) != self._phase:  # a log, not a terminal: one line per phase
            self.stream.write(line + "\n")
        self._phase = (self.done, phase)
        self.stream.flush()
        self._last = line

    def end(self):
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


def _mmss(s):
    s = int(s)
    return f"{s // 60}:{s % 60:02d}"


class Runner:
    """``run()`` measures every level and returns (rows, loss_rows,
    stopped_early); on Ctrl-C it finishes the level's clean-up and returns
    what was measured, with ``stopped_early`` set to the reason."""

    def __init__(self, levels, hold_s, server, receiver, collector_flags, workdir, progress=None):
        self.levels = levels
        self.hold_s = hold_s
        self.server = server
        self.receiver = receiver
        self.flags = collector_flags
        self.workdir = workdir
        self.progress = progress or Progress(levels, hold_s)
        self.rows = []
        self.loss_rows = []

    def run(self):
        stopped = None
        try:
            for i, level in enumerate(self.levels):
                t = time.monotonic()
                self._level(i, level)
                self.progress.level_done(time.monotonic() - t)
        except KeyboardInterrupt:
            stopped = "interrupted (Ctrl-C)"
        except CollectorError as exc:
            stopped = str(exc)
        finally:
            self.progress.end()
        return self.rows, self.loss_rows, stopped

    def _drive(self, level, phase, on_sample=None):
        host, port = self.server.addr[level.kind]
        served0 = self.server.served(level.kind)
        d = Drive(level.kind, host, port, level.rate, self.hold_s).start()
        t0 = time.monotonic()
        try:
            while d.alive():
                self.progress.show(level, phase, time.monotonic() - t0)
                if on_sample:
                    on_sample()
                d.join(SAMPLE_S)
        finally:
            d.join()  # a Ctrl-C waits for the level's end (at most hold_s)
        return d.result(), self.server.served(level.kind) - served0

    def _level(self, i, level):
        off, off_served = self._drive(level, "off")
        col = Collector(self.flags, self.receiver.apiserver, self.workdir, f"{i:02d}-{level.kind}-{level.label}")
        try:
            col.start()
            time.sleep(SETTLE_S)
            points0 = self.receiver.points
            rss = [col.rss()]
            cpu0, t0 = col.cpu(), time.monotonic()

            def sample():
                col.check_alive()
                rss.append(col.rss())

            on, on_served = self._drive(level, "on", sample)
            col.check_alive()
            t1 = time.monotonic()
            rss.append(col.rss())
            metrics = col.metrics()
        finally:
            status = col.stop()
        points = self.receiver.points - points0
        kernel, user = losses(metrics)
        wall = t1 - t0
        # CPU from the hold's start to the exit: the final flush handles what
        # the hold brought (with a long --interval it is most of the work)
        cpu1 = (col.usage.ru_utime, col.usage.ru_stime)
        rss.append(col.usage.ru_maxrss * 1024)  # the peak, also during that flush
        row = {
            "kind": level.kind, "target_rate": float(level.rate), "hold_s": self.hold_s,
            "off_rate": off.rate, "on_rate": on.rate,
            # the server's own count: the client's rates are not taken on trust
            "off_served": off_served, "on_served": on_served, "on_done": on.done,
            "throughput_ratio": on.rate / off.rate if off.rate else float("nan"),
            "off_latency_ms": off.latency_mean_s * 1e3, "on_latency_ms": on.latency_mean_s * 1e3,
            "latency_ratio": on.latency_mean_s / off.latency_mean_s if off.latency_mean_s else float("nan"),
            "off_latency_p99_ms": off.latency_p99_s * 1e3, "on_latency_p99_ms": on.latency_p99_s * 1e3,
            "off_errors": off.errors + off.timeouts, "on_errors": on.errors + on.timeouts,
            "cpu_user_cores": (cpu1[0] - cpu0[0]) / wall, "cpu_sys_cores": (cpu1[1] - cpu0[1]) / wall,
            "cpu_cores": (cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1]) / wall,
            "rss_bytes": max(rss), "rss_mib": max(rss) / 2**20,
            "kernel_losses": sum(kernel.values()), "user_losses": sum(user.values()),
            "points": points, "points_per_s": points / wall,
            "collector_exit": -1 if status is None else status,
        }
        self.rows.append(row)
        for side, counters in (("kernel", kernel), ("user", user)):
            for name, value in sorted(counters.items()):
                self.loss_rows.append({"kind": level.kind, "target_rate": float(level.rate),
                                       "load": on.rate, "side": side, "counter": name, "value": value})
