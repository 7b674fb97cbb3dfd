"""End-to-end cost of httpflow-tls and its floor: nginx serving HTTPS and
wrk (both link OpenSSL, so both ends pass through the uprobes) on
loopback, in the same run, modes alternating within each round:

  off           nothing attached
  httpflow      the collector with httpflow alone (socket capture: sees
                ciphertext only, must report nothing here)
  httpflow_tls  the collector with httpflow + httpflow-tls
  trace         the collector with ebpf-trace alone, every process traced
                (trace.bpf.c, and tls.bpf.c with trace_spans: TLS spans)
  both          httpflow + httpflow-tls and ebpf-trace in one collector
                (tls.bpf.o loaded twice: two programs on each probe; the
                per-program lines sum both objects' same-named programs)
  floor_tls     empty programs (perf/tlsfloor.bpf.c) on exactly the
                uprobes, uretprobes and tracepoints httpflow-tls attaches
                (tls_probes.attach_library)
  floor_entry   empty programs on the same entry uprobes only, no
                uretprobe, no tracepoint: the floor of any design with one
                probe per SSL call on these functions
  floor_tps     empty programs on the three socket tracepoints alone

Prints the median over rounds of wrk's requests/s and mean latency as
ratios against `off` of the same round, and the CPU efficiency ratio: CPU
seconds per request of wrk + the nginx worker (+ the collector) off,
divided by the same with the mode. On a machine that nginx + wrk saturate
alone that is the throughput ratio; other load on a shared machine inflates
wall-clock figures but not CPU per request. For the collector: its CPU per
10k requests/s, the requests reported per end against wrk's count and the
records lost (kernel_drop_tls_events_ring_full). Inside collector.bpf_stats() (a held
BPF_ENABLE_STATS fd: another bench that ends meanwhile cannot stop it) the
kernel times every program: per program hits per request and ns per hit (run_time_ns /
run_cnt, the BPF code alone); per floor mode the CPU per uprobe hit (CPU
per request above `off` / uprobe hits per request: trap, uprobe machinery
and the empty program).

    python3 perf/bench_httpflow_tls.py
        (BENCH_SECONDS=10, BENCH_CONNS=32, BENCH_ROUNDS=3,
         BENCH_MODES=httpflow,httpflow_tls,floor_tls,floor_entry,floor_tps)

Needs root, nginx, wrk, openssl, clang. Prints `name: value` lines.
"""
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time

from collector import Collector, bpf_stats, build_bpf, cpu_seconds, prog_stats, wrk as wrk_url
from support.tls_nginx import TlsNginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
CONNS = int(os.environ.get("BENCH_CONNS", 32))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
MODES = os.environ.get("BENCH_MODES", "httpflow,httpflow_tls,floor_tls,floor_entry,floor_tps").split(",")
COLLECTOR_MODES = {"httpflow": ["--enabled", "ebpf-net", "--l7net-enabled", "httpflow"],
                   "httpflow_tls": ["--enabled", "ebpf-net", "--l7net-enabled", "httpflow,httpflow-tls"],
                   "trace": ["--enabled", "ebpf-trace"],
                   "both": ["--enabled", "ebpf-net,ebpf-trace", "--l7net-enabled", "httpflow,httpflow-tls"]}
TRACEPOINTS = ("tls_sock_send", "tls_sock_recv", "tls_sock_destroy")
# floor mode -> (tracepoints attached, which uprobes: "all" entry + return, "entry", None)
FLOORS = {"floor_tls": (True, "all"), "floor_entry": (False, "entry"), "floor_tps": (True, None)}
H = "ebpf-net/httpflow-tls"


def wrk(url):
    return wrk_url(url, SECONDS, CONNS)


def measured(url, worker, others=()):
    """wrk against url: {rps, lat, total, cpu_req}; cpu_req is the CPU
    seconds per request of wrk (a child: RUSAGE_CHILDREN), the nginx worker
    and the processes in others (the collector), which other load on this
    shared machine does not inflate as it does wall-clock throughput."""
    def cpu():
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime + sum(cpu_seconds(p) for p in (worker, *others))
    c0 = cpu()
    rps, lat, total = wrk(url)
    return {"rps": rps, "lat": lat, "total": total, "cpu_req": (cpu() - c0) / total}


class Floor:
    """Empty programs of tlsfloor.bpf.o on the sites httpflow-tls uses in
    every libssl it would find now: ``with Floor(obj, tracepoints, uprobes):``."""

    def __init__(self, obj_path, tracepoints, uprobes):
        from dkebpf.bpf_objects import BpfSkeleton, ObjectSpec
        from dkebpf.plugins import tls_probes

        spec = ObjectSpec("tlsfloor", attach=TRACEPOINTS if tracepoints else (),
                          programs=tuple(p for _, p in tls_probes.REQUIRED_FUNCS + tls_probes.OPTIONAL_FUNCS)
                          + (tls_probes.RETURN_PROG,))
        self.bpf = BpfSkeleton(spec, path=obj_path).start()
        try:
            if uprobes:
                scanner = tls_probes.LibsslScanner()
                for path in {**scanner.scan_dirs(), **scanner.scan_procs()}.values():
                    tls_probes.attach_library(self.bpf, path, returns=uprobes == "all")
        except BaseException:
            self.bpf.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bpf.close()


def prog_names():
    """prog_id -> name of every loaded BPF program (bpftool)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"]: p.get("name", str(p["id"])) for p in json.loads(out)}


def stats_delta(before, after, names):
    """{name: (runs, ns)} of the programs that ran between two prog_stats()
    (names: prog_names() taken while they were loaded)."""
    rows = {}
    for pid_, (cnt, ns, _) in after.items():
        c0, n0, _ = before.get(pid_, (0, 0, 0))
        if cnt - c0:
            name = names.get(pid_, str(pid_))
            r, n = rows.get(name, (0, 0))
            rows[name] = (r + cnt - c0, n + ns - n0)
    return rows


def run_collector(tmp, url, srv, name, args):
    with Collector(tmp, name, args) as c:
        time.sleep(1)
        c0 = c.cpu_seconds()
        s0 = c.prog_stats()
        x = measured(url, srv.worker, (c.pid,))
        s1 = c.prog_stats()
        x["cpu"] = c.cpu_seconds() - c0
        names = prog_names()
        time.sleep(4)  # two more intervals: the last exchanges (connection ends) reported
        m = c.metrics()
    x["progs"] = stats_delta(s0, s1, names)
    if any(a.startswith("ebpf-net") for a in args):  # (ebpf-trace's spans are not counted here)
        x.update(reported=c.reported_requests(srv.port), lost=int(m.get((H, "kernel_drop_tls_events_ring_full"), 0)))
    return x


def run_floor(obj, url, srv, mode):
    with Floor(obj, *FLOORS[mode]):
        s0 = prog_stats(os.getpid())
        x = measured(url, srv.worker)
        s1 = prog_stats(os.getpid())
        names = prog_names()
    x["progs"] = stats_delta(s0, s1, names)
    return x


def uprobe_hits(progs):
    """Hits of the uprobe programs (ssl_*; the kernel keeps 15 characters of a name)."""
    return sum(r for name, (r, _) in progs.items() if name.startswith("ssl_"))


def main():
    from dkebpf import kernel
    kernel.ensure_mounts()
    res = {}
    with bpf_stats():
        with tempfile.TemporaryDirectory() as tmp:
            obj = build_bpf("tlsfloor", tmp)
            srv = TlsNginx(tmp).start()
            try:
                url = srv.url("/tls/ok")
                wrk(url)  # warm-up
                print(f"wrk: -t2 -c{CONNS} -d{SECONDS}s https, nginx 1 worker TLS, loopback; {ROUNDS} rounds; "
                      f"modes {','.join(MODES)}")
                for r in range(ROUNDS):
                    off = measured(url, srv.worker)
                    res.setdefault("off", []).append(off)
                    print(f"round {r} off: {off['rps']:.0f} req/s, {off['cpu_req'] * 1e6:.1f} us CPU/request",
                          flush=True)
                    for mode in MODES:
                        if mode in COLLECTOR_MODES:
                            x = run_collector(tmp, url, srv, f"{mode}-{r}", COLLECTOR_MODES[mode])
                        else:
                            x = run_floor(obj, url, srv, mode)
                        x["ratio"], x["lat_ratio"] = x["rps"] / off["rps"], x["lat"] / off["lat"]
                        x["cpu_ratio"], x["off"] = off["cpu_req"] / x["cpu_req"], off
                        res.setdefault(mode, []).append(x)
                        line = (f"round {r} {mode}: {x['rps']:.0f} req/s ({x['ratio']:.3f}), latency "
                                f"{x['lat_ratio']:.3f}, {x['cpu_req'] * 1e6:.1f} us CPU/request ({x['cpu_ratio']:.3f})")
                        if "reported" in x:
                            line += (f", wrk requests {x['total']}, reported per end {x['reported'] / 2:.0f}, "
                                     f"lost {x['lost']}")
                        print(line, flush=True)
            finally:
                srv.stop()
    report(res)


def report(res):
    med = statistics.median
    print(f"off_requests_per_s: {med(x['rps'] for x in res['off']):.0f}")
    for mode in MODES:
        runs = res[mode]
        print(f"{mode}_throughput_ratio: {med(x['ratio'] for x in runs):.3f}")
        print(f"{mode}_latency_ratio: {med(x['lat_ratio'] for x in runs):.3f}")
        print(f"{mode}_cpu_efficiency_ratio: {med(x['cpu_ratio'] for x in runs):.3f}")
        if "cpu" in runs[0]:
            print(f"{mode}_collector_cpu_per_10k_rps: {med(x['cpu'] / SECONDS / (x['rps'] / 1e4) for x in runs):.4f}")
        if "lost" in runs[0]:
            print(f"{mode}_records_lost: {max(x['lost'] for x in runs)}")
        names = sorted({n for x in runs for n in x["progs"]})
        for name in names:
            hits = med(x["progs"].get(name, (0, 0))[0] / x["total"] for x in runs)
            ns = med(x["progs"][name][1] / x["progs"][name][0] for x in runs if name in x["progs"])
            print(f"{mode}_prog_{name}: {hits:.2f} hits/request, {ns:.0f} ns/hit (BPF run time)")
        if mode.startswith("floor") and FLOORS[mode][1]:
            per_hit = [(x["cpu_req"] - x["off"]["cpu_req"]) / (uprobe_hits(x["progs"]) / x["total"]) * 1e9
                       for x in runs]
            print(f"{mode}_uprobe_hits_per_request: {med(uprobe_hits(x['progs']) / x['total'] for x in runs):.2f}")
            print(f"{mode}_ns_per_uprobe_hit: {med(per_hit):.0f}")
    print(f"load_average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
