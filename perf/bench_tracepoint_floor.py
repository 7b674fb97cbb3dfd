"""Fixed cost of attach points, without any work in the programs: nginx
(1 worker) + wrk -t2 -c32 on loopback with nothing attached, with empty
programs on the 16 syscall tracepoints httpflow uses (perf/tpfloor.bpf.c),
with one tp_btf/sys_enter + sys_exit pair that filters the same calls
by number, with empty programs on the hooks httpflow uses now, and with
those hooks where the send program writes one exchange-sized record per
call to one shared ring (floor_record_shared) or to a ring per CPU
(floor_record_percpu), drained by a thread here in batches, like the
collector's: the price of httpflow's ring write alone. Rounds alternate;
prints requests/s per mode and round (and records drained per request:
2.00 when none was lost).

    python3 perf/bench_tracepoint_floor.py    (BENCH_SECONDS=5, BENCH_ROUNDS=2)
"""
import os
import tempfile
import threading

from collector import build_bpf, wrk as wrk_url
from support.nginx import Nginx

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 2))
CALLS = ("read", "write", "readv", "writev", "sendto", "recvfrom", "sendmsg", "recvmsg")  # EMPTY_PAIR()s
# the programs each mode attaches (all are loaded)
MODES = {"syscall_tracepoints": tuple(f"tp_{d}_{c}" for c in CALLS for d in ("enter", "exit")),
         "raw_sys_pair": ("raw_enter", "raw_exit"),
         "httpflow_hooks": ("sock_send", "sock_recv", "sock_destroy"),
         "floor_record_shared": ("sock_send_rec_shared", "sock_recv", "sock_destroy"),
         "floor_record_percpu": ("sock_send_rec_percpu", "sock_recv", "sock_destroy")}
# the rings each mode writes (tpfloor.bpf.c FLOOR_CPUS per-CPU rings)
RINGS = {"floor_record_shared": ("ring_shared",),
         "floor_record_percpu": tuple(f"ring_cpu{i}" for i in range(4))}
DRAIN_POLL_MS = 20


def wrk(port):
    return wrk_url(f"http://127.0.0.1:{port}/ok", int(os.environ.get("BENCH_SECONDS", 5)))


class Floor:
    """The programs of a mode attached; the rings it writes drained by a
    thread (poll and take() release the GIL) until close()."""

    def __init__(self, path, mode):
        from dkebpf import _records
        from dkebpf.bpf_objects import BpfSkeleton, ObjectSpec, Ring
        rings = tuple(Ring(r, _records.HTTP_EXCHANGE_DTYPE, min_size=_records.HTTP_EXCHANGE_MIN)
                      for r in RINGS.get(mode, ()))
        self.bpf = BpfSkeleton(ObjectSpec("tpfloor", attach=MODES[mode], rings=rings), path=path).start()
        self.records = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.drain, daemon=True) if rings else None
        if self.thread:
            self.thread.start()

    def drain(self):
        readers = self.bpf.ring_readers()
        while not self.stop.is_set():
            for r in readers:
                r.poll(DRAIN_POLL_MS // len(readers))
                self.records += len(r.take())

    def close(self):
        if self.thread:
            self.stop.set()
            self.thread.join()
            self.records += sum(len(r.take()) for r in self.bpf.ring_readers())
        self.bpf.close()


def attached(path, mode):
    return Floor(path, mode)


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
                    rps, _, total = wrk(ngx.port)
                finally:
                    if bpf is not None:
                        bpf.close()
                drained = f", {bpf.records / total:.2f} records/request" if bpf is not None and bpf.thread else ""
                print(f"round {r} {mode}: {rps:.0f} req/s{drained}", flush=True)


if __name__ == "__main__":
    main()
