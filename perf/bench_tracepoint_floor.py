"""Fixed cost of attach points, without any work in the programs: nginx
(1 worker) + wrk -t2 -c32 on loopback with nothing attached, with empty
programs on the 16 syscall tracepoints httpflow uses (perf/tpfloor.bpf.c),
and with one tp_btf/sys_enter + sys_exit pair that filters the same calls
by number. Rounds alternate; prints requests/s per mode and round.

    python3 perf/bench_tracepoint_floor.py    (BENCH_SECONDS=5, BENCH_ROUNDS=2)
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)
from support.nginx import Nginx  # noqa: E402
from bench_httpflow_e2e import wrk  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 2))


def build(out_dir):
    obj = os.path.join(out_dir, "tpfloor.bpf.o")
    subprocess.check_call(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86",
                           "-I", os.path.join(ROOT, "bpf"), "-c", os.path.join(HERE, "tpfloor.bpf.c"), "-o", obj])
    return obj


def attached(path, mode):
    from dkebpf import _libbpf
    obj = _libbpf.BpfObject(path)
    for p in obj.programs():
        p.set_autoload(p.name.startswith("raw_") if mode == "raw_sys_pair" else p.name.startswith("tp_"))
    obj.load()
    obj.attach_all()
    return obj


def main():
    from dkebpf import kernel
    kernel.ensure_mounts()
    with tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
        path = build(tmp)
        wrk(ngx.port)
        for r in range(ROUNDS):
            for mode in ("none", "syscall_tracepoints", "raw_sys_pair"):
                obj = attached(path, mode) if mode != "none" else None
                try:
                    rps, _, _ = wrk(ngx.port)
                finally:
                    if obj is not None:
                        obj.close()
                print(f"round {r} {mode}: {rps:.0f} req/s", flush=True)


if __name__ == "__main__":
    main()
