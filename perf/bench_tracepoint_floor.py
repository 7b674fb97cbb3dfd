"""Fixed cost of attach points, without any work in the programs: nginx
(1 worker) + wrk -t2 -c32 on loopback with nothing attached, with empty
programs on the 16 syscall tracepoints httpflow uses (perf/tpfloor.bpf.c),
with one tp_btf/sys_enter + sys_exit pair that filters the same calls
by number, and with empty programs on the hooks httpflow uses now. Rounds alternate; prints requests/s per mode and round.

    python3 perf/bench_tracepoint_floor.py    (BENCH_SECONDS=5, BENCH_ROUNDS=2)
"""
import os
import subprocess
import tempfile

from collector import wrk as wrk_url
from support.nginx import Nginx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 2))
CALLS = ("read", "write", "readv", "writev", "sendto", "recvfrom", "sendmsg", "recvmsg")  # EMPTY_PAIR()s
# the programs each mode attaches (all are loaded)
MODES = {"syscall_tracepoints": tuple(f"tp_{d}_{c}" for c in CALLS for d in ("enter", "exit")),
         "raw_sys_pair": ("raw_enter", "raw_exit"),
         "httpflow_hooks": ("sock_send", "sock_recv", "sock_destroy")}


def wrk(port):
    return wrk_url(f"http://127.0.0.1:{port}/ok", int(os.environ.get("BENCH_SECONDS", 5)))


def build(out_dir):
    obj = os.path.join(out_dir, "tpfloor.bpf.o")
    subprocess.check_call(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86",
                           "-I", os.path.join(ROOT, "bpf"), "-c", os.path.join(HERE, "tpfloor.bpf.c"), "-o", obj])
    return obj


def attached(path, mode):
    from dkebpf.bpf_objects import BpfSkeleton, ObjectSpec
    return BpfSkeleton(ObjectSpec("tpfloor", attach=MODES[mode]), path=path).start()


def main():
    from dkebpf import kernel
    kernel.ensure_mounts()
    with tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
        path = build(tmp)
        wrk(ngx.port)
        for r in range(ROUNDS):
            for mode in ("none", *MODES):
                bpf = attached(path, mode) if mode != "none" else None
                try:
                    rps, _, _ = wrk(ngx.port)
                finally:
                    if bpf is not None:
                        bpf.close()
                print(f"round {r} {mode}: {rps:.0f} req/s", flush=True)


if __name__ == "__main__":
    main()
