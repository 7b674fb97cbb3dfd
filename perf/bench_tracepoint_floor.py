"""Fixed cost of attach points, without any work in the programs: nginx
(1 worker) + wrk -t2 -c32 on loopback with nothing attached, with empty
programs on the 16 syscall tracepoints httpflow uses (perf/tpfloor.bpf.c),
with one tp_btf/sys_enter + sys_exit pair that filters the same calls
by number, and with empty programs on the hooks httpflow uses now. Rounds alternate; prints requests/s per mode and round.

    python3 perf/bench_tracepoint_floor.py    (BENCH_SECONDS=5, BENCH_ROUNDS=2)
"""
import os
import tempfile

from collector import build_bpf, wrk as wrk_url
from support.nginx import Nginx

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 2))
CALLS = ("read", "write", "readv", "writev", "sendto", "recvfrom", "sendmsg", "recvmsg")  # EMPTY_PAIR()s
# the programs each mode attaches (all are loaded)
MODES = {"syscall_tracepoints": tuple(f"tp_{d}_{c}" for c in CALLS for d in ("enter", "exit")),
         "raw_sys_pair": ("raw_enter", "raw_exit"),
         "httpflow_hooks": ("sock_send", "sock_recv", "sock_destroy")}


def wrk(port):
    return wrk_url(f"http://127.0.0.1:{port}/ok", int(os.environ.get("BENCH_SECONDS", 5)))


def attached(path, mode):
    from dkebpf.bpf_objects import BpfSkeleton, ObjectSpec
    return BpfSkeleton(ObjectSpec("tpfloor", attach=MODES[mode]), path=path).start()


def main():
    from dkebpf import kernel
    kernel.ensure_mounts()
    with tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
        path = build_bpf("tpfloor", tmp)
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
