"""`dkebpf bench`: what the collector costs on this node, per load.

    dkebpf bench [--quick] [--hold S] [--kinds http,conn,udp,dns,https,pkt] [--levels KIND=R,R,max ...]
                 [--peak 'http=50000,conn=2000,dns=500'] [--compare OLD_DIR] [--veth] [--out DIR]
                 [collector flags of `dkebpf run`, or --config FILE]

Built-in load (dkebpf._loadgen) on loopback or through a veth pair; the collector under test is
`dkebpf run` with the remaining flags (ladder.Runner); the report is
written by report.write_report, also on Ctrl-C (partial)."""
import argparse
import contextlib
import datetime
import os
import sys
from dataclasses import dataclass
from typing import List, Optional

from ..errors import ConfigError, DkebpfError

# set by the bench itself on the collector it starts
BENCH_OWNED_FLAGS = ("--datakit-apiserver", "--pprof-port", "--pprof-host", "--log", "--output")


class NeedsRoot(DkebpfError):
    exit_code = 2


def build_parser():
    from .ladder import FULL_HOLD_S, QUICK_HOLD_S
    from .load import LOAD_KINDS
    p = argparse.ArgumentParser(
        prog="dkebpf bench", allow_abbrev=False,
        description="Capacity planning: a ladder of built-in loads, each level without then with the "
                    "collector; writes a report (tables, plots, sizing model). Flags not listed here "
                    "go to the collector, as for `dkebpf run` (e.g. --enabled, --config).")
    p.add_argument("--quick", action="store_true",
                   help=f"two levels of each kind but pkt, {QUICK_HOLD_S:g} s each way (about 2 minutes)")
    p.add_argument("--hold", type=float, metavar="SECONDS",
                   help=f"seconds each level is held, each way (default {FULL_HOLD_S:g}, --quick {QUICK_HOLD_S:g})")
    p.add_argument("--kinds", default=",".join(LOAD_KINDS),
                   help="load kinds to run, of " + ",".join(LOAD_KINDS))
    p.add_argument("--levels", action="append", default=[], metavar="KIND=RATE,...",
                   help="the levels of a kind in operations/s, 'max' for unpaced (repeatable)")
    p.add_argument("--peak", metavar="KIND=RATE,...",
                   help="a peak load to size --res-cpu/--res-mem for, e.g. 'http=50000,conn=2000,dns=500'")
    p.add_argument("--compare", metavar="OLD_DIR", help="run the ladder of an earlier report and compare")
    p.add_argument("--veth", action="store_true",
                   help="serve the load from a network namespace the bench creates (and removes), through "
                        "a veth pair: the path of a real device instead of loopback")
    p.add_argument("--out", metavar="DIR", help="report directory (default ./dkebpf-bench-<time>)")
    return p


@dataclass
class Plan:
    """What one `dkebpf bench` run will do, from its flags."""
    collector_flags: List[str]
    levels: list
    hold: float
    out: str
    peak: Optional[dict] = None
    peak_text: Optional[str] = None
    old_rows: Optional[list] = None   # --compare: the earlier report's levels
    old_dir: Optional[str] = None
    flags_from_compare: bool = False
    veth: bool = False


def _options(argv) -> Plan:
    from . import ladder
    from .load import LOAD_KINDS
    from .model import parse_peak
    from .report import load_report
    opts, collector_flags = build_parser().parse_known_args(argv)
    for flag in collector_flags:
        if flag.split("=", 1)[0] in BENCH_OWNED_FLAGS:
            raise ConfigError(f"{flag.split('=', 1)[0]} is set by dkebpf bench on the collector it starts; "
                              "leave it out")
    from ..config import load_config
    load_config(collector_flags)  # the collector's flags: a bad one stops here, named
    kinds = [k.strip() for k in opts.kinds.split(",") if k.strip()]
    if not kinds or any(k not in LOAD_KINDS for k in kinds):
        raise ConfigError(f'invalid --kinds "{opts.kinds}": choose among {",".join(LOAD_KINDS)}')
    if opts.hold is not None and not 1 <= opts.hold <= 3600:
        raise ConfigError(f'invalid --hold "{opts.hold:g}": seconds between 1 and 3600')
    plan = Plan(collector_flags, [], opts.hold or (ladder.QUICK_HOLD_S if opts.quick else ladder.FULL_HOLD_S),
                opts.out or f"dkebpf-bench-{datetime.datetime.now():%Y%m%d-%H%M%S}",
                parse_peak(opts.peak) if opts.peak else None, opts.peak, veth=opts.veth)
    steps = dict(ladder.QUICK_LADDER if opts.quick else ladder.FULL_LADDER)
    steps.update(ladder.parse_levels(opts.levels))
    if opts.compare:  # the earlier report's ladder, level for level, and hold
        plan.old_rows, old_meta = load_report(opts.compare)
        plan.old_dir = opts.compare
        steps = {}
        for r in plan.old_rows:
            steps.setdefault(r["kind"], []).append(r["target_rate"])
        kinds = [k for k in LOAD_KINDS if k in steps]
        if opts.hold is None and plan.old_rows:
            plan.hold = plan.old_rows[0]["hold_s"]
        if not collector_flags:  # a regression check: the same collector options as before
            plan.collector_flags = list(old_meta.get("collector_flags", []))
            plan.flags_from_compare = True
    plan.levels = ladder.plan(steps, kinds)
    return plan


def main(argv):
    """Exit status: 0 done, 2 bad flags or not root, 1 the collector failed,
    130 interrupted (partial report written)."""
    plan = _options(argv)
    if os.geteuid() != 0:
        raise NeedsRoot("dkebpf bench needs root: it starts the collector, which loads and attaches BPF "
                        "programs and opens packet sockets (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, "
                        "CAP_NET_RAW, CAP_SYS_RESOURCE), and binds the DNS responder to port 53 "
                        "(CAP_NET_BIND_SERVICE); run it as root")
    from .. import __version__
    from .collector import PointReceiver
    from .ladder import Runner
    from .load import LoadServer
    from .netns import VethNamespace
    from .report import run_meta, write_report
    try:
        os.makedirs(plan.out, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f'invalid --out "{plan.out}": {exc.strerror}')
    meta = run_meta(plan, __version__)
    sys.stderr.write(f"dkebpf bench: {len(plan.levels)} levels, {plan.hold:g} s each way, report in {plan.out}\n")
    with contextlib.ExitStack() as stack:
        netns = stack.enter_context(VethNamespace()) if plan.veth else None
        server = stack.enter_context(LoadServer(netns))
        receiver = stack.enter_context(PointReceiver())
        meta["network"] = server.where
        rows, loss_rows, stopped = Runner(plan.levels, plan.hold, server, receiver, plan.collector_flags,
                                          plan.out).run()
    meta["stopped_early"] = stopped
    path = write_report(plan, rows, loss_rows, meta)
    sys.stderr.write(f"dkebpf bench: report {path}\n")
    if stopped and "Ctrl-C" in stopped:
        return 130
    if stopped:
        sys.stderr.write(f"dkebpf bench: error: {stopped}\n")
        return 1
    return 0
