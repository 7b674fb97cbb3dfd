"""The sizing model: collector cores and RSS as linear functions of the
load kinds, fitted by least squares over the levels measured with the
collector on, and what to set as --res-cpu / --res-mem for a peak load.

    cores = c0 + sum_k a_k * load_k        rss = m0 + sum_k b_k * load_k

Each level runs one kind at a time, so every slope is learned from its own
kind's levels and the intercept (the collector idle) from all of them. The
residuals are stated with the fit: its largest absolute residual is the
bound within which it reproduces every measured point."""
import math
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from ..errors import ConfigError
from ..pairs import parse_pairs

MiB = 1024 * 1024
# --res-cpu / --res-mem for a peak: the prediction plus the largest residual,
# plus a quarter for what a one-node bench cannot see (other pods' noise,
# bursts shorter than a level)
HEADROOM = 1.25
CPU_STEP = 0.05
# a peak this close above the highest achieved load is still "measured"
# (a paced level achieves a little under its target)
RANGE_SLACK = 0.05


@dataclass
class Fit:
    target: str                   # "cpu_cores" or "rss_bytes"
    intercept: float
    slopes: Dict[str, float]      # per load kind, per operation/s
    rms_residual: float
    max_abs_residual: float
    points: int
    max_load: Dict[str, float] = field(default_factory=dict)  # the measured range per kind

    def predict(self, loads):
        return self.intercept + sum(self.slopes.get(k, 0.0) * float(v) for k, v in loads.items())

    def to_dict(self):
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


def fit(loads: List[Dict[str, float]], values, target: str) -> Fit:
    """Least squares of ``values`` on ``loads`` (one {kind: operations/s}
    per measured point). Kinds that never carry load get no slope."""
    y = np.asarray(values, dtype=np.float64)
    kinds = sorted({k for row in loads for k, v in row.items() if v > 0})
    if len(y) == 0:
        raise ValueError("no measured points to fit")
    x = np.ones((len(y), 1 + len(kinds)))
    for i, row in enumerate(loads):
        for j, k in enumerate(kinds):
            x[i, 1 + j] = row.get(k, 0.0)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    return Fit(target, float(coef[0]), {k: float(c) for k, c in zip(kinds, coef[1:])},
               float(math.sqrt(np.mean(resid ** 2))), float(np.max(np.abs(resid))), len(y),
               {k: float(x[:, 1 + j].max()) for j, k in enumerate(kinds)})


def parse_peak(text: str) -> Dict[str, float]:
    """'http=50000,conn=2000,dns=500' -> {kind: operations/s}."""
    from .load import LOAD_KINDS
    out = {}
    parts = filter(None, (p.strip() for p in text.split(",")))
    for kind, value in parse_pairs(parts, "--peak", LOAD_KINDS, "KIND=RATE", quote_whole=text).items():
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not (rate >= 0 and math.isfinite(rate)):
            raise ConfigError(f'invalid --peak "{text}": the rate of {kind} must be a number >= 0 '
                              f'(got "{value.strip()}")')
        out[kind] = rate
    if not out:
        raise ConfigError(f'invalid --peak "{text}": give at least one KIND=RATE, e.g. http=50000,dns=500')
    return out


@dataclass
class Sizing:
    cores: float
    rss_bytes: float
    res_cpu: float
    res_mem_mib: int
    extrapolated: List[str]   # kinds whose peak is beyond the measured range

    @property
    def flags(self):
        return f"--res-cpu {self.res_cpu:g} --res-mem {self.res_mem_mib}MiB"


def size_for(peak: Dict[str, float], cpu: Fit, rss: Fit) -> Sizing:
    cores = cpu.predict(peak)
    mem = rss.predict(peak)
    res_cpu = _round_up(max(cores + cpu.max_abs_residual, CPU_STEP) * HEADROOM, CPU_STEP)
    res_mem = int(_round_up(max(mem + rss.max_abs_residual, MiB) * HEADROOM / MiB, 1))
    beyond = sorted(k for k, v in peak.items() if v > cpu.max_load.get(k, 0.0) * (1 + RANGE_SLACK))
    return Sizing(cores, mem, round(res_cpu, 2), res_mem, beyond)


def _round_up(x, step):
    """x up to a multiple of step; a float a hair above one (0.15000000000000002) stays on it."""
    return math.ceil(x / step - 1e-9) * step
