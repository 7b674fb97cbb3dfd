"""What netflow costs the traffic it watches: nginx (1 worker) + wrk -t2
-c32 on loopback, in rounds, each round running, in a rotating order:
  off      nothing attached;
  floor    empty programs on exactly netflow's hooks (perf/netflow_floor.bpf.c:
           five tp_btf, four cgroup sock_addr on the root cgroup v2);
  netflow  the installed collector, `dkebpf run --enabled ebpf-net
           --l7net-disabled httpflow` (netflow, and dnsflow's packet socket).
With BENCH_COMPARE_OBJ=<an older netflow.bpf.o> two more modes compare
the kernel side alone (objects loaded and attached, nothing read):
  bpf_new  the installed package's netflow.bpf.o;
  bpf_old  that older object (attached by its sections, e.g. with its
           syscall tracepoints);
or, with BENCH_COMPARE_OBJ=name=<a.bpf.o>,name2=<b.bpf.o>, modes bpf_<name>
(e.g. variants of this tree's bpf/netflow.bpf.c, BENCH_NETFLOW_ABLATE of
perf/bench_httpflow_e2e.py builds them as modes bpf_ablate<n>).
Per round the requests/s and mean latency of each mode as ratios against
that round's `off`, and the CPU the traffic itself used per request (nginx's
processes and wrk, user + system, from /proc/<pid>/task/*/schedstat and
wait4's rusage: what the hooks add to every socket call, slow syscall
paths included, whatever else runs on the box, which on a shared machine
moves requests/s far more than the hooks do) as a ratio against `off`; then the medians, the collector's CPU and the
load average. The UDP side (the cgroup hooks' cost) is
perf/bench_bpf_cost_udp.py.

    python3 perf/bench_netflow_cost.py   (BENCH_SECONDS=10, BENCH_ROUNDS=5; root, nginx, wrk)

BENCH_PART=calls measures instead what the hooks add to one socket call,
less exposed to the other load on a shared box: one thread ping-pongs a
small message over a loopback TCP connection (4 socket calls per round
trip, loopback delivery inline; with BENCH_CALL_CONNS=n over n connections
in turn, so that each socket and flow entry has gone cold in the caches
when its turn comes again, as a server's with many clients has), timed in CPU time of that thread (time
spent waiting for a CPU does not count), in short slices whose modes
rotate (off, floor, bpf_new, bpf_old: the objects are loaded once,
attached and detached per slice; self_tgid 0, so this process's calls are
the programs' work). Prints per mode the median CPU ns per round trip, the
median of per-slice ratios against the `off` slice next to it and the
median ns per socket call above the `floor` slice next to it (empty
programs on the same hooks: what the programs' work adds); then, with
kernel.bpf_stats_enabled=1 for BENCH_STATS_SLICES more slices per object
(the stats cost two clock reads per run, so the slices above run without),
each program's runs per round trip and ns per run.

    BENCH_PART=calls python3 perf/bench_netflow_cost.py   (BENCH_SLICES=60, BENCH_TRIPS=2000,
        BENCH_CALL_CONNS=1)

Prints `name: value` lines.
"""
import os
import resource
import statistics
import tempfile

from collector import Collector, bpf_stats, build_bpf, prog_stats
from bench_httpflow_e2e import wrk
from support.nginx import Nginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
COMPARE_OBJ = os.environ.get("BENCH_COMPARE_OBJ")
# name=path,...: several objects, modes bpf_<name> (BENCH_PART=calls)
COMPARE_OBJS = ({f"bpf_{n}": p for n, _, p in (x.partition("=") for x in COMPARE_OBJ.split(","))}
                if COMPARE_OBJ and "=" in COMPARE_OBJ else {"bpf_old": COMPARE_OBJ} if COMPARE_OBJ else {})
MODES = ("off", "floor", "netflow") + (("bpf_new", "bpf_old") if COMPARE_OBJ and "=" not in COMPARE_OBJ else ())
FLOOR_CGROUP = ("floor_sendmsg4", "floor_sendmsg6", "floor_recvmsg4", "floor_recvmsg6")


def compare_spec(path=COMPARE_OBJ):
    """The ObjectSpec of a netflow.bpf.o to compare (BENCH_COMPARE_OBJ):
    the cgroup programs it has (none before issue 17) attach to the
    cgroup."""
    from dkebpf import _libbpf
    from dkebpf.bpf_objects import NETFLOW, ObjectSpec
    with _libbpf.BpfObject(path) as obj:
        names = {p.name for p in obj.programs()}
    return ObjectSpec("netflow", knobs=("self_tgid",), maps=("conns",),
                      cgroup=tuple(n for n in NETFLOW.cgroup if n in names))


def family_of(pid):
    """pid and its descendants (nginx's master and workers)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def on_cpu_ns(pids):
    """Nanoseconds on CPU of every thread of pids (schedstat's first field)."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def measured_wrk(port, server_pids):
    """wrk's (requests/s, mean latency s, CPU s per request of nginx + wrk)."""
    ru0, ns0 = resource.getrusage(resource.RUSAGE_CHILDREN), on_cpu_ns(server_pids)
    rps, lat, total = wrk(port)
    ru1, ns1 = resource.getrusage(resource.RUSAGE_CHILDREN), on_cpu_ns(server_pids)
    wrk_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return rps, lat, (wrk_cpu + (ns1 - ns0) / 1e9) / total


def run_mode(mode, tmp, floor_obj, port, server_pids, rnd):
    """(requests/s, mean latency s, app CPU s per request, collector CPU s or None)"""
    if mode == "off":
        return (*measured_wrk(port, server_pids), None)
    if mode == "floor":
        from dkebpf.bpf_objects import BpfSkeleton, ObjectSpec
        with BpfSkeleton(ObjectSpec("netflow_floor", cgroup=FLOOR_CGROUP), path=floor_obj).start():
            return (*measured_wrk(port, server_pids), None)
    if mode in ("bpf_new", "bpf_old"):
        from dkebpf.bpf_objects import NETFLOW, ObjectSpec, BpfSkeleton
        spec = NETFLOW if mode == "bpf_new" else compare_spec()
        path = None if mode == "bpf_new" else COMPARE_OBJ
        with BpfSkeleton(spec, path=path).start(knobs={"self_tgid": os.getpid()}):
            return (*measured_wrk(port, server_pids), None)
    with Collector(tmp, f"netflow-{rnd}", ["--enabled", "ebpf-net", "--l7net-disabled", "httpflow"]) as c:
        c0 = c.cpu_seconds()
        got = measured_wrk(port, server_pids)
        return (*got, c.cpu_seconds() - c0)


def _attach(bpf):
    """(Re-)attach a started, detached skeleton's programs."""
    from dkebpf import kernel
    bpf.links = bpf.obj.attach_all(skip=bpf.spec.cgroup)
    for name in bpf.spec.cgroup:
        bpf.links.append(bpf.obj.program(name).attach_cgroup(kernel.cgroup2_root()))


def _detach(bpf):
    for link in bpf.links:
        link.close()
    bpf.links = []


def prog_ids(bpf):
    """{prog_id: program name} of a started skeleton's loaded programs."""
    out = {}
    for p in bpf.obj.programs():
        if p.fd >= 0:
            with open(f"/proc/self/fdinfo/{p.fd}") as f:
                out[next(int(line.split()[1]) for line in f if line.startswith("prog_id:"))] = p.name
    return out


def calls_part():
    import socket
    import time
    from dkebpf import kernel
    from dkebpf.bpf_objects import NETFLOW, BpfSkeleton, ObjectSpec
    kernel.ensure_mounts()
    slices, trips = int(os.environ.get("BENCH_SLICES", 60)), int(os.environ.get("BENCH_TRIPS", 2000))
    nconns = int(os.environ.get("BENCH_CALL_CONNS", 1))
    with tempfile.TemporaryDirectory() as tmp:
        from bench_httpflow_e2e import NETFLOW_ABLATE
        from collector import BPF_SRC_DIR
        compare = dict(COMPARE_OBJS)
        for n in NETFLOW_ABLATE:
            compare[f"bpf_ablate{n}"] = build_bpf("netflow", tmp, src_dir=BPF_SRC_DIR,
                                                  defines={"NETFLOW_ABLATE": n}, out=f"netflow-ablate{n}")
        specs = {"floor": (ObjectSpec("netflow_floor", cgroup=FLOOR_CGROUP), build_bpf("netflow_floor", tmp), None),
                 "bpf_new": (NETFLOW, None, {"self_tgid": 0})}
        for m, path in compare.items():
            specs[m] = (compare_spec(path), path, {"self_tgid": 0})
        objs = {}
        try:
            for m, (spec, path, knobs) in specs.items():
                objs[m] = BpfSkeleton(spec, path=path).start(knobs=knobs)
                _detach(objs[m])
            lst = socket.create_server(("127.0.0.1", 0), backlog=max(nconns, 16))
            pairs = []
            for _ in range(nconns):
                a = socket.create_connection(lst.getsockname())
                b, _ = lst.accept()
                for s_ in (a, b):
                    s_.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pairs.append((a, b))
            msg = b"x" * 64

            def slice_ns():
                t0 = time.thread_time_ns()
                for i in range(trips):
                    a, b = pairs[i % nconns]
                    a.send(msg)
                    b.recv(256)
                    b.send(msg)
                    a.recv(256)
                return (time.thread_time_ns() - t0) / trips

            modes = ("off", *objs)
            per = {m: [] for m in modes}
            ratio = {m: [] for m in objs}
            above = {m: [] for m in objs if m != "floor"}
            slice_ns()  # warm-up
            for k in range(slices):
                got = {}
                for m in modes[k % len(modes):] + modes[:k % len(modes)]:
                    if m != "off":
                        _attach(objs[m])
                    try:
                        got[m] = slice_ns()
                    finally:
                        if m != "off":
                            _detach(objs[m])
                for m in modes:
                    per[m].append(got[m])
                for m in objs:
                    ratio[m].append(got[m] / got["off"])
                for m in objs:
                    if m != "floor":
                        above[m].append((got[m] - got["floor"]) / 4)
            # per program, from the kernel's own counters
            stats_slices = int(os.environ.get("BENCH_STATS_SLICES", 10))
            runs = {m: {} for m in objs}  # the floor's: what the counting itself costs
            with bpf_stats():
                for _ in range(stats_slices):
                    for m in runs:
                        before = prog_stats(os.getpid())
                        _attach(objs[m])
                        try:
                            slice_ns()
                        finally:
                            _detach(objs[m])
                        after = prog_stats(os.getpid())
                        for pid_, name in prog_ids(objs[m]).items():
                            c = after[pid_][0] - before.get(pid_, (0, 0))[0]
                            ns = after[pid_][1] - before.get(pid_, (0, 0))[1]
                            n0, t0 = runs[m].get(name, (0, 0))
                            runs[m][name] = (n0 + c, t0 + ns)
            for a, b in pairs:
                a.close()
                b.close()
            lst.close()
        finally:
            for bpf in objs.values():
                bpf.close()
    print(f"loopback TCP ping-pong, 64 bytes, {nconns} connections in turn, "
          f"{slices} slices of {trips} round trips per mode")
    for m in modes:
        print(f"{m}_cpu_ns_per_round_trip_median: {statistics.median(per[m]):.0f}")
    for m in objs:
        print(f"{m}_cpu_per_call_ratio_median: {statistics.median(ratio[m]):.3f}")
    for m in above:
        print(f"{m}_ns_per_call_above_floor_median: {statistics.median(above[m]):.0f}")
    for m, progs in runs.items():
        for name, (n, ns) in sorted(progs.items()):
            if n:
                print(f"{m}_prog {name}: {n / (stats_slices * trips):.2f} runs/round trip, {ns / n:.0f} ns/run")
    print(f"load_average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main():
    if os.environ.get("BENCH_PART") == "calls":
        return calls_part()
    from dkebpf import kernel
    kernel.ensure_mounts()
    ratios = {m: {"rps": [], "lat": [], "cpu": []} for m in MODES[1:]}
    cpu = []
    with tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
        floor_obj = build_bpf("netflow_floor", tmp)
        server_pids = family_of(ngx.proc.pid)
        wrk(ngx.port)  # warm-up
        print(f"wrk: -t2 -c32 -d{SECONDS}s, nginx 1 worker, loopback, {ROUNDS} rounds", flush=True)
        for r in range(ROUNDS):
            order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
            got = {m: run_mode(m, tmp, floor_obj, ngx.port, server_pids, r) for m in order}
            base_rps, base_lat, base_cpu, _ = got["off"]
            for m in MODES[1:]:
                ratios[m]["rps"].append(got[m][0] / base_rps)
                ratios[m]["lat"].append(got[m][1] / base_lat)
                ratios[m]["cpu"].append(got[m][2] / base_cpu)
            cpu.append(got["netflow"][3] / SECONDS / (got["netflow"][0] / 1e4))
            print(f"round {r} ({' '.join(order)}): " + ", ".join(
                f"{m} {got[m][0]:.0f} req/s {got[m][1] * 1e3:.3f} ms {got[m][2] * 1e6:.2f} us cpu/req"
                for m in MODES), flush=True)
    for m in MODES[1:]:
        print(f"{m}_throughput_ratio_median: {statistics.median(ratios[m]['rps']):.3f}")
        print(f"{m}_throughput_ratios: {' '.join(f'{x:.3f}' for x in ratios[m]['rps'])}")
        print(f"{m}_latency_ratio_median: {statistics.median(ratios[m]['lat']):.3f}")
        print(f"{m}_app_cpu_per_request_ratio_median: {statistics.median(ratios[m]['cpu']):.3f}")
        print(f"{m}_app_cpu_per_request_ratios: {' '.join(f'{x:.3f}' for x in ratios[m]['cpu'])}")
    print(f"netflow_collector_cpu_per_10k_rps_median: {statistics.median(cpu):.4f}")
    print(f"load_average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
