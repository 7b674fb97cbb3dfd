"""The report directory of `dkebpf bench`:

    results.parquet, results.csv   one row per level (ladder.Runner columns)
    losses.parquet, losses.csv     every loss counter of every level
    model.json                     the sizing fits, the plot size, the run
    cpu.png rss.png loss.png throughput_ratio.png   per load kind vs load
    compare.png                    with --compare: old and new per level
    summary.md                     what an operator reads

PNGs need matplotlib (``pip install 'dkebpf[bench]'``); without it the
summary says so and everything else is written."""
import datetime
import json
import math
import os
import platform

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import ConfigError
from .load import LOAD_KINDS, UNITS
from .model import Fit, fit, size_for

PLOT_PX = (1200, 800)
PLOT_DPI = 100
PLOTS = {  # file: (column, axis label)
    "cpu.png": ("cpu_cores", "collector CPU (cores)"),
    "rss.png": ("rss_mib", "collector RSS (MiB)"),
    "loss.png": ("losses", "events lost (kernel + user space)"),
    "throughput_ratio.png": ("throughput_ratio", "throughput with / without collector"),
}
COMPARE_PNG = "compare.png"
COMPARED = ("cpu_cores", "rss_mib", "throughput_ratio", "latency_ratio")


def load_report(directory):
    """(result rows, run meta) of an earlier report, for --compare."""
    try:
        rows = pq.read_table(os.path.join(directory, "results.parquet")).to_pylist()
        with open(os.path.join(directory, "model.json")) as f:
            meta = json.load(f).get("meta") or {}
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise ConfigError(f'invalid --compare "{directory}": not a dkebpf bench report ({exc})')
    if rows and not {"kind", "target_rate", "hold_s"} <= set(rows[0]):
        raise ConfigError(f'invalid --compare "{directory}": its results.parquet is not a dkebpf bench table')
    return rows, meta


def _table(rows, empty_schema):
    return pa.Table.from_pylist(rows) if rows else empty_schema.empty_table()


def _write(out, name, table):
    pq.write_table(table, os.path.join(out, name + ".parquet"))
    pacsv.write_csv(table, os.path.join(out, name + ".csv"))


def fit_models(rows):
    """(cpu Fit, rss Fit) over the measured levels, or (None, None)."""
    rows = [r for r in rows if r["on_rate"] > 0]
    if not rows:
        return None, None
    loads = [{r["kind"]: r["on_rate"]} for r in rows]
    return (fit(loads, [r["cpu_cores"] for r in rows], "cpu_cores"),
            fit(loads, [r["rss_bytes"] for r in rows], "rss_bytes"))


def _plots(out, rows, old_rows, cpu, rss):
    """PNG files written, or the reason there are none."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed: no plots (pip install 'dkebpf[bench]' adds it)"
    written = _kind_plots(plt, out, rows, cpu, rss)
    if old_rows is not None:
        _compare_plot(plt, out, rows, old_rows)
        written.append(COMPARE_PNG)
    return written, None


def _kind_plots(plt, out, rows, cpu, rss):
    """One PNG per PLOTS entry: a panel per load kind, the measured levels
    against the achieved load, and the sizing model for CPU and RSS."""
    kinds = [k for k in LOAD_KINDS if any(r["kind"] == k for r in rows)]
    written = []
    models = {"cpu_cores": cpu, "rss_mib": rss}
    for name, (col, label) in PLOTS.items():
        scale = 1 / 2**20 if col == "rss_mib" else 1.0
        fig, axes = plt.subplots(2, 3, figsize=(PLOT_PX[0] / PLOT_DPI, PLOT_PX[1] / PLOT_DPI), dpi=PLOT_DPI)
        for ax in axes.flat[len(LOAD_KINDS):]:
            ax.set_visible(False)
        for ax, kind in zip(axes.flat, LOAD_KINDS):
            pts = sorted((r["on_rate"], _value(r, col)) for r in rows if r["kind"] == kind)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="measured")
                model = models.get(col)
                if model is not None:  # the sizing model along this kind's axis
                    xs = [0.0, pts[-1][0]]
                    ax.plot(xs, [model.predict({kind: x}) * scale for x in xs], "--", label="model")
                    ax.legend(fontsize=8)
                ax.set_xlim(left=0)
            ax.set_title(kind if kind in kinds else f"{kind} (not measured)")
            ax.set_xlabel(f"load ({UNITS[kind]})")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=PLOT_DPI)
        plt.close(fig)
        written.append(name)
    return written


def _compare_plot(plt, out, rows, old_rows):
    """COMPARE_PNG: per compared column and kind, old and new level by level."""
    both = [k for k in LOAD_KINDS if any(r["kind"] == k for r in rows + old_rows)] or ["http"]
    fig, axes = plt.subplots(len(COMPARED), len(both), squeeze=False,
                             figsize=(PLOT_PX[0] / PLOT_DPI, PLOT_PX[1] / PLOT_DPI), dpi=PLOT_DPI)
    for i, col in enumerate(COMPARED):
        for j, kind in enumerate(both):
            ax = axes[i][j]
            for label, rs, style in (("old", old_rows, "s--"), ("new", rows, "o-")):
                # the ladder's order: paced levels up, then max (target 0)
                pts = sorted(((r["target_rate"] == 0, r["target_rate"]), _value(r, col))
                             for r in rs if r["kind"] == kind)
                if pts:
                    ax.plot(range(len(pts)), [p[1] for p in pts], style, label=label)
                    ax.set_xticks(range(len(pts)), ["max" if p[0][0] else f"{p[0][1]:g}" for p in pts],
                                  fontsize=6)
            ax.set_title(f"{kind}: {col}", fontsize=8)
            ax.tick_params(labelsize=6)
            if i == 0 and j == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, COMPARE_PNG), dpi=PLOT_DPI)
    plt.close(fig)


def _value(row, col):
    if col == "losses":
        return row["kernel_losses"] + row["user_losses"]
    return row[col]


def _fmt(v, digits=3):
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _loss_onset(rows, loss_rows):
    lines = []
    for kind in LOAD_KINDS:
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["on_rate"])
        if not rs:
            continue
        lossy = [r for r in rs if r["kernel_losses"] + r["user_losses"] > 0]
        if lossy:
            r = lossy[0]
            names = sorted({lr["counter"] for lr in loss_rows if lr["kind"] == kind
                            and lr["target_rate"] == r["target_rate"] and lr["value"] > 0})
            lines.append(f"- {kind}: losses begin at {r['on_rate']:.0f} {UNITS[kind]} "
                         f"({r['kernel_losses']} kernel, {r['user_losses']} user space: {', '.join(names)})")
        else:
            lines.append(f"- {kind}: no losses up to {rs[-1]['on_rate']:.0f} {UNITS[kind]} "
                         "(the highest level measured)")
    return lines


def _model_lines(f: Fit, label, unit, scale):
    terms = "".join(f" + {v * scale * 1000:.4g} per 1000 {k}/s" for k, v in sorted(f.slopes.items()))
    return [f"    {label} = {f.intercept * scale:.4g}{terms}",
            f"    residuals over {f.points} levels: rms {f.rms_residual * scale:.3g} {unit}, "
            f"largest {f.max_abs_residual * scale:.3g} {unit}"]


def write_report(plan, rows, loss_rows, meta):
    """Write every file of the report on ``plan`` (bench.Plan); returns the
    summary's path."""
    out, peak, old_rows, old_dir = plan.out, plan.peak, plan.old_rows, plan.old_dir
    os.makedirs(out, exist_ok=True)
    _write(out, "results", _table(rows, pa.schema([("kind", pa.string())])))
    _write(out, "losses", _table(loss_rows, pa.schema([("kind", pa.string()), ("target_rate", pa.float64()),
                                                       ("load", pa.float64()), ("side", pa.string()),
                                                       ("counter", pa.string()), ("value", pa.int64())])))
    cpu, rss = fit_models(rows)
    sizing = size_for(peak, cpu, rss) if peak and cpu else None
    pngs, no_plots = _plots(out, rows, old_rows, cpu, rss)
    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump({"cpu": cpu.to_dict() if cpu else None, "rss": rss.to_dict() if rss else None,
                   "peak": peak, "sizing": sizing.__dict__ if sizing else None,
                   "plots": pngs, "plot_px": list(PLOT_PX), "meta": meta}, f, indent=2)

    md = [f"# dkebpf bench — {meta['host']}", "",
          f"{meta['started']}, kernel {meta['kernel']}, {meta['cpus']} CPUs, dkebpf {meta['version']}.",
          f"Collector: `dkebpf run {' '.join(meta['collector_flags']) or '(defaults)'}`"
          f"{' (the flags of the compared report)' if meta.get('flags_from_compare') else ''}; "
          f"load over {meta.get('network', 'loopback')}; each level held {meta['hold_s']:g} s "
          "without it, then with a collector started for that level.", ""]
    if meta.get("stopped_early"):
        md += [f"**Partial report**: the ladder stopped early — {meta['stopped_early']}. "
               f"{len(rows)} of {meta['levels_planned']} levels measured.", ""]
    md += ["## Levels", "",
           "| kind | target/s | achieved off | achieved on | throughput ratio | latency ratio | "
           "CPU user | CPU sys | RSS MiB | kernel losses | user losses | points/s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['kind']} | {'max' if r['target_rate'] == 0 else _fmt(r['target_rate'])} | "
                  f"{r['off_rate']:.0f} | {r['on_rate']:.0f} | {_fmt(r['throughput_ratio'])} | "
                  f"{_fmt(r['latency_ratio'])} | {r['cpu_user_cores']:.3f} | {r['cpu_sys_cores']:.3f} | "
                  f"{r['rss_mib']:.1f} | {r['kernel_losses']} | {r['user_losses']} | {r['points_per_s']:.1f} |")
    md += ["", "Loads in operations/s: " + ", ".join(f"{k} = {u}" for k, u in UNITS.items())
           + ". Ratios are with the collector / without; latency is the mean.", "",
           "## Sizing model", ""]
    if cpu:
        md += ["Least squares over the levels measured with the collector (loads as achieved):", "",
               *_model_lines(cpu, "cores", "cores", 1.0), "",
               *_model_lines(rss, "RSS (MiB)", "MiB", 1 / 2**20), "",
               "Every measured level is within the largest residual of its model's prediction."]
        if cpu.points <= 1 + len(cpu.slopes):
            md.append(f"**Exact fit**: {cpu.points} levels for {1 + len(cpu.slopes)} coefficients, so the "
                      "residuals say nothing about the model; measure at least two levels per kind.")
    else:
        md.append("No level was measured: no model.")
    if sizing:
        md += ["", f"For the peak `{meta['peak_text']}`: {sizing.cores:.3f} cores and "
               f"{sizing.rss_bytes / 2**20:.0f} MiB predicted; set", "",
               f"    {sizing.flags}", "",
               "(prediction + largest residual, + 25 % headroom)."]
        if sizing.extrapolated:
            md.append(f"**Beyond the measured range** for {', '.join(sizing.extrapolated)}: "
                      "the model extrapolates; run a ladder that reaches the peak to confirm.")
    md += ["", "## Losses", "", *_loss_onset(rows, loss_rows), ""]
    md += ["## Plots", ""]
    if no_plots:
        md.append(no_plots + ".")
    else:
        md += [f"![{p}]({p})" for p in pngs]
        md.append(f"\nEach plot is {PLOT_PX[0]}×{PLOT_PX[1]} px.")
    if old_rows is not None:
        md += ["", f"## Compared with {old_dir}", "",
               "| kind | target/s | " + " | ".join(f"{c} old → new" for c in COMPARED) + " |",
               "|---|---|" + "---|" * len(COMPARED)]
        old = {(r["kind"], r["target_rate"]): r for r in old_rows}
        for r in rows:
            o = old.get((r["kind"], r["target_rate"]))
            if o is None:
                continue
            md.append(f"| {r['kind']} | {'max' if r['target_rate'] == 0 else _fmt(r['target_rate'])} | "
                      + " | ".join(f"{_fmt(o[c])} → {_fmt(r[c])} ({_delta(o[c], r[c])})" for c in COMPARED)
                      + " |")
    path = os.path.join(out, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")
    return path


def _delta(old, new):
    if not old or math.isnan(old) or math.isnan(new):
        return "-"
    return f"{(new - old) / old * 100:+.0f} %"


def run_meta(plan, version):
    return {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "version": version, "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "collector_flags": list(plan.collector_flags), "flags_from_compare": plan.flags_from_compare,
            "hold_s": plan.hold, "levels_planned": len(plan.levels), "peak_text": plan.peak_text,
            "stopped_early": None}
