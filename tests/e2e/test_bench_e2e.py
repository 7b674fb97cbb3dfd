"""`dkebpf bench` as an operator runs it, on the real kernel: --quick end to
end (report files parse, plots are valid PNGs of the stated size, the
sizing model reproduces every measured level within its stated residual,
no losses at the quick levels, within 3 minutes besides any time a busy
machine left it waiting for a CPU), Ctrl-C leaving a partial
report, and --compare against an earlier report."""
import json
import re
import signal
import struct
import subprocess
import time

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dkebpf.bench.model import Fit
from dkebpf.plugins import requirements

from support.cgroups import cpu_full_stall_s, own_cgroup, popen_in

from .conftest import dkebpf_cmd

# the collector under test runs ebpf-net as `dkebpf run --enabled ebpf-net` does
pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("ebpf-net",), ("httpflow",)))]
PEAK = "http=50000,conn=2000,dns=500"


def bench(tmp_path, *args, cgroup=None):
    """`dkebpf bench args` started (in ``cgroup`` when given)."""
    argv, kw = [*dkebpf_cmd(), "bench", *args], dict(cwd=tmp_path, stdout=subprocess.PIPE,
                                                      stderr=subprocess.PIPE, text=True)
    return popen_in(cgroup, argv, **kw) if cgroup else subprocess.Popen(argv, **kw)


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_quick_end_to_end(bpf_ok, tmp_path):
    out = tmp_path / "report"
    # in a cgroup of its own (the collectors it starts too), whose cpu.pressure
    # says how long a busy machine left all of it waiting for a CPU
    with own_cgroup() as cg:
        t0 = time.monotonic()
        p = bench(tmp_path, "--quick", "--out", str(out), "--peak", PEAK, "--enabled", "ebpf-net", cgroup=cg)
        _, err = p.communicate(timeout=900)  # a generous deadline; the time it took is checked below
        took = time.monotonic() - t0
        stalled = cpu_full_stall_s(cg)
    assert p.returncode == 0, err
    # 3 minutes of its own: the time the machine's other work held it up on
    # top (none on a quiet machine) is not the bench's
    assert took - stalled < 180, f"--quick took {took:.0f} s, {stalled:.0f} s of it waiting for a CPU"
    assert "ETA" in err and "[10/10] https" in err  # progress, one line per phase when not a terminal

    rows = pq.read_table(out / "results.parquet").to_pylist()
    csv_rows = pacsv.read_csv(out / "results.csv").to_pylist()
    assert [(r["kind"], r["target_rate"]) for r in rows] == [
        ("http", 1000), ("http", 4000), ("conn", 200), ("conn", 800),
        ("udp", 200), ("udp", 800), ("dns", 200), ("dns", 800), ("https", 500), ("https", 2000)]
    assert [(r["kind"], r["points"]) for r in csv_rows] == [(r["kind"], r["points"]) for r in rows]
    losses = pq.read_table(out / "losses.parquet").to_pylist()
    for r in rows:
        level = f"{r['kind']} {r['target_rate']:g}"
        assert r["kernel_losses"] == 0 and r["user_losses"] == 0, \
            (level, {x["counter"]: x["value"] for x in losses if x["value"] and x["kind"] == r["kind"]
                     and x["target_rate"] == r["target_rate"]})
        assert r["collector_exit"] == 0, level
        # the load really ran (a shared, busy 2-core machine may fall a little behind)
        assert r["off_rate"] >= 0.7 * r["target_rate"] and r["on_rate"] >= 0.7 * r["target_rate"], level
        assert r["on_errors"] == 0 and r["off_errors"] == 0, level
        # the server saw every answered operation (and at most the few in flight at the end more)
        assert r["on_done"] <= r["on_served"] <= r["on_done"] + 32, level
        assert 0 < r["cpu_cores"] == pytest.approx(r["cpu_user_cores"] + r["cpu_sys_cores"]), level
        assert r["rss_bytes"] > 10 * 2**20 and r["points"] > 0, level
        assert 0.5 < r["throughput_ratio"] < 1.2 and r["latency_ratio"] > 0, level
    assert losses and all(x["value"] == 0 for x in losses)
    assert {x["side"] for x in losses} == {"kernel", "user"}
    assert pacsv.read_csv(out / "losses.csv").num_rows == len(losses)

    model = json.loads((out / "model.json").read_text())
    for key, col in (("cpu", "cpu_cores"), ("rss", "rss_bytes")):
        f = Fit.from_dict(model[key])
        assert f.points == len(rows) and set(f.slopes) == {"http", "conn", "udp", "dns", "https"}
        for r in rows:
            assert abs(f.predict({r["kind"]: r["on_rate"]}) - r[col]) <= f.max_abs_residual * (1 + 1e-9) + 1e-12
    summary = (out / "summary.md").read_text()
    sizing = model["sizing"]
    assert f"--res-cpu {sizing['res_cpu']:g} --res-mem {sizing['res_mem_mib']}MiB" in summary
    assert sizing["res_cpu"] > 0 and sizing["res_mem_mib"] > 10

    w, h = model["plot_px"]
    assert f"Each plot is {w}×{h} px." in summary
    assert sorted(model["plots"]) == ["cpu.png", "loss.png", "rss.png", "throughput_ratio.png"]
    for name in model["plots"]:
        assert png_size(out / name) == (w, h)
        assert f"![{name}]({name})" in summary
    for kind in ("http", "conn", "udp", "dns", "https"):
        assert f"- {kind}: no losses up to" in summary


def test_ctrl_c_writes_the_partial_report_and_compare(bpf_ok, tmp_path):
    first = tmp_path / "first"
    p = bench(tmp_path, "--kinds", "dns", "--levels", "dns=200,300,400", "--hold", "1", "--out", str(first),
              "--enabled", "ebpf-net")
    end = time.monotonic() + 60
    line = ""
    while "[2/3] dns 300/s collector on" not in line and time.monotonic() < end:
        line = p.stderr.readline()
        assert line or p.poll() is None, "bench ended before its second level"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    rows = pq.read_table(first / "results.parquet").to_pylist()
    assert [r["target_rate"] for r in rows] in ([200.0], [200.0, 300.0])
    summary = (first / "summary.md").read_text()
    assert "**Partial report**" in summary and "interrupted (Ctrl-C)" in summary
    assert f"{len(rows)} of 3 levels measured" in summary

    second = tmp_path / "second"
    p = bench(tmp_path, "--compare", str(first), "--out", str(second))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    again = pq.read_table(second / "results.parquet").to_pylist()
    assert [(r["kind"], r["target_rate"], r["hold_s"]) for r in again] == \
        [(r["kind"], r["target_rate"], r["hold_s"]) for r in rows]
    summary = (second / "summary.md").read_text()
    assert f"## Compared with {first}" in summary and "| dns | 200 |" in summary.split("## Compared")[1]
    assert "`dkebpf run --enabled ebpf-net` (the flags of the compared report)" in summary
    assert png_size(second / "compare.png") == tuple(json.loads((second / "model.json").read_text())["plot_px"])


def test_veth_namespace_is_made_and_removed(bpf_ok, tmp_path):
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out = tmp_path / "veth"
    p = bench(tmp_path, "--veth", "--kinds", "http,dns", "--levels", "http=500", "--levels", "dns=200",
              "--hold", "1", "--out", str(out), "--enabled", "ebpf-net")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    summary = (out / "summary.md").read_text()
    ns = re.search(r"load over veth pair to network namespace (dkb-[0-9a-f]{6})", summary).group(1)
    assert ns not in before
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"dkbh{ns[4:]}" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for r in pq.read_table(out / "results.parquet").to_pylist():
        assert r["on_rate"] >= 0.7 * r["target_rate"] and r["on_errors"] == 0 and r["points"] > 0, r
