"""dkebpf bench's sizing model and option parsing: the least-squares fit on
synthetic data with known coefficients, the sizing for a peak, and bad
--peak / --levels / flags named in a one-line error."""
import json

import numpy as np
import pytest

from dkebpf.bench import NeedsRoot, _options, main
from dkebpf.bench.ladder import parse_levels
from dkebpf.bench.model import MiB, Fit, fit, parse_peak, size_for
from dkebpf.errors import ConfigError

TRUE_CPU = {"intercept": 0.02, "http": 4e-6, "conn": 3e-5, "udp": 1e-5, "dns": 2e-5}


def ladder_loads():
    """Single-kind levels, as the bench measures them."""
    levels = {"http": [2000, 5000, 10000, 20000, 45000], "conn": [250, 500, 1000, 2000],
              "udp": [500, 1000, 2000, 4000], "dns": [500, 1000, 2000, 5000]}
    return [{k: float(r)} for k, rs in levels.items() for r in rs]


def truth(loads, coef):
    return np.array([coef["intercept"] + sum(coef[k] * v for k, v in row.items()) for row in loads])


def test_fit_recovers_exact_coefficients():
    loads = ladder_loads()
    f = fit(loads, truth(loads, TRUE_CPU), "cpu_cores")
    assert f.intercept == pytest.approx(TRUE_CPU["intercept"], abs=1e-12)
    for k in ("http", "conn", "udp", "dns"):
        assert f.slopes[k] == pytest.approx(TRUE_CPU[k], rel=1e-9)
    assert f.max_abs_residual < 1e-12 and f.points == len(loads)
    assert f.max_load == {"http": 45000.0, "conn": 2000.0, "udp": 4000.0, "dns": 5000.0}


def test_fit_with_noise_states_residuals_that_bound_every_point():
    rng = np.random.default_rng(7)
    loads = ladder_loads() * 3
    noise = rng.normal(0, 0.002, len(loads))
    y = truth(loads, TRUE_CPU) + noise
    f = fit(loads, y, "cpu_cores")
    # known coefficients come back within what the noise allows
    assert f.intercept == pytest.approx(TRUE_CPU["intercept"], abs=0.003)
    assert f.slopes["http"] == pytest.approx(TRUE_CPU["http"], rel=0.1)
    assert f.slopes["conn"] == pytest.approx(TRUE_CPU["conn"], rel=0.15)
    assert 0.001 < f.rms_residual < 0.003
    pred = np.array([f.predict(row) for row in loads])
    assert np.all(np.abs(pred - y) <= f.max_abs_residual + 1e-12)
    assert f.rms_residual == pytest.approx(float(np.sqrt(np.mean((y - pred) ** 2))))


def test_kinds_without_load_get_no_slope_and_roundtrip():
    loads = [{"http": 1000.0}, {"http": 3000.0}, {"dns": 500.0}]
    f = fit(loads, [1.0, 2.0, 1.5], "rss_bytes")
    assert set(f.slopes) == {"dns", "http"}
    assert Fit.from_dict(json.loads(json.dumps(f.to_dict()))) == f


def test_sizing_for_a_peak():
    loads = ladder_loads()
    cpu = fit(loads, truth(loads, TRUE_CPU), "cpu_cores")
    rss = fit(loads, truth(loads, {"intercept": 150 * MiB, "http": 200.0, "conn": 0.0, "udp": 0.0,
                                   "dns": 1000.0}), "rss_bytes")
    s = size_for({"http": 20000, "dns": 1000}, cpu, rss)
    assert s.cores == pytest.approx(0.02 + 0.08 + 0.02)
    assert s.res_cpu == pytest.approx(0.15)          # 0.12 * 1.25 = 0.15, in 0.05 steps
    assert s.rss_bytes == pytest.approx(150 * MiB + 4e6 + 1e6)
    assert s.res_mem_mib == int(np.ceil((150 * MiB + 5e6) * 1.25 / MiB))
    assert s.extrapolated == [] and s.flags == f"--res-cpu 0.15 --res-mem {s.res_mem_mib}MiB"
    assert size_for({"http": 90000}, cpu, rss).extrapolated == ["http"]


def test_parse_peak():
    assert parse_peak("http=50000,conn=2000, dns=500") == {"http": 50000.0, "conn": 2000.0, "dns": 500.0}
    for bad, word in (("http=5k", "rate of http"), ("smtp=5", "KIND=RATE"), ("http", "KIND=RATE"),
                      ("", "at least one"), ("dns=-1", "rate of dns")):
        with pytest.raises(ConfigError, match=word):
            parse_peak(bad)


def test_parse_levels():
    assert parse_levels(["http=1000,max", "dns=5"]) == {"http": [1000.0, 0.0], "dns": [5.0]}
    for bad in ("http=fast", "ftp=10", "http=", "http"):
        with pytest.raises(ConfigError, match="--levels"):
            parse_levels([bad])


def test_options_check_bench_and_collector_flags():
    plan = _options(["--quick", "--kinds", "http,dns", "--enabled", "ebpf-net", "--interval", "5s",
                     "--peak", "dns=10"])
    assert plan.collector_flags == ["--enabled", "ebpf-net", "--interval", "5s"]
    assert [lv.kind for lv in plan.levels] == ["http", "http", "dns", "dns"] and plan.hold == 3.0
    assert plan.peak == {"dns": 10.0} and plan.old_rows is None
    with pytest.raises(ConfigError, match='--interval "x"'):
        _options(["--interval", "x"])
    with pytest.raises(ConfigError, match="--pprof-port is set by dkebpf bench"):
        _options(["--pprof-port", "6061"])
    with pytest.raises(ConfigError, match="--kinds"):
        _options(["--kinds", "http,smtp"])
    with pytest.raises(ConfigError, match="--compare"):
        _options(["--compare", "/nonexistent-report"])


def test_refuses_without_root_naming_what_it_needs(monkeypatch, tmp_path):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(NeedsRoot, match="needs root.*BPF.*CAP_BPF.*port 53"):
        main(["--quick", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
