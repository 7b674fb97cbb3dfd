"""End-to-end cost of httpflow: nginx (1 worker) + wrk -t2 on loopback, in
the same run, rounds alternating between the modes:
  off           no collector
  floor         empty BPF programs on the hooks httpflow uses (tp_btf
                sock_send_length, sock_recv_length, tcp_destroy_sock;
                perf/tpfloor.bpf.c), no collector
  pktsock_all   a packet socket alone (no collector): ETH_P_ALL, on no
                device, its classic BPF filter dropping everything: what
                the kernel's clone of each packet for it costs
  pktsock_in    the same with PACKET_IGNORE_OUTGOING (received packets
                only: the kernel skips it before cloning a sent packet)
  pktsock_dev   the same as pktsock_all bound to the default route's
                device (or a dummy device the bench makes): not on
                loopback's path at all
  netflow_only  the collector, ebpf-net without httpflow
  netflow_nodns the collector, ebpf-net without httpflow and dnsflow (no
                packet socket: what netflow's own programs cost)
  httpflow      the collector, ebpf-net with httpflow
Needs root, nginx and wrk.

Prints, per mode, the median over rounds of wrk's requests/s and mean
latency as ratios against `off` of the same round, the CPU ratio (CPU
seconds per request of wrk, the nginx worker and the collector, off's over
the mode's: what other load on a shared machine leaves intact), the
collector's CPU
(user and system, /proc/<pid>/stat) per 10k requests/s and per request; for
httpflow every kernel drop counter, and the requests reported in the points
of each end against wrk's own count (exact: both ends report every request
wrk made, since wrk's connections close at its end), and per request
the machine's context switches and IPIs (/proc/stat, /proc/interrupts:
irq work is how a ring's wakeup reaches its reader). Then, unless
BENCH_PROG_COST=0, one more wrk run per collector mode inside
collector.bpf_stats() (only then: the stats cost two clock reads per
program run): runs per request, ns per run and ns per request of each of
the collector's BPF programs.

    python3 perf/bench_httpflow_e2e.py
    BENCH_SECONDS=10 BENCH_ROUNDS=3 BENCH_CONNS=32 BENCH_INTERVALS=10s,60s
    BENCH_COMPARE_HTTP_OBJ=/path/old/http.bpf.o   adds mode httpflow_compare:
        httpflow with that object in place of the installed one (swapped in
        for its runs only), to compare two builds in the same run; or
        name=/path/a.bpf.o,name2=/path/b.bpf.o: modes httpflow_<name>...
    BENCH_ABLATE=1,5   adds modes httpflow_ablate<n>: httpflow with
        bpf/http.bpf.c of this tree built with -DHTTP_ABLATE=<n> (a stage
        left out, listed in bpf/http.bpf.c), to tell what each stage costs
    BENCH_NETFLOW_ABLATE=1,2   adds modes netflow_ablate<n>: netflow_only
        with bpf/netflow.bpf.c of this tree built with -DNETFLOW_ABLATE=<n>
        (the socket-call programs stopped after a stage, listed there)
    BENCH_COMPARE_NETFLOW_OBJ=name=/path/a.bpf.o,...   adds modes
        netflow_<name>: netflow_only with that netflow.bpf.o in place of
        the installed one (swapped in for its runs only)
    BENCH_COMPARE_PYTHONPATH=/path/old/tree   adds mode netflow_compare:
        netflow_only with dkebpf imported from that tree (built in place, or
        a build/lib.* directory), e.g. the main branch's
    BENCH_MODES=netflow_only,netflow_compare   run only these modes (and off,
        every round's baseline)

Prints `name: value` lines.
"""
import contextlib
import glob
import os
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from bench_tracepoint_floor import attached
from collector import BPF_SRC_DIR, Collector, bpf_stats, build_bpf, stats_already_on, cpu_seconds, prog_cost, wrk as wrk_url
from support.nginx import Nginx

SECONDS = int(os.environ.get("BENCH_SECONDS", 10))
CONNS = int(os.environ.get("BENCH_CONNS", 32))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
INTERVALS = os.environ.get("BENCH_INTERVALS", "10s,60s").split(",")
H = "ebpf-net/httpflow"
LOST = ("kernel_drop_events_ring_full", "kernel_drop_http_conns_map_full", "kernel_drop_payload_unreadable")


def wrk(port):
    return wrk_url(f"http://127.0.0.1:{port}/ok", SECONDS, CONNS)


SYSTEM_COUNTS = ("IWI", "RES", "CAL")  # irq work, rescheduling, function call IPIs


def system_counts():
    """{name: count} of the machine: context switches and the IPIs of
    SYSTEM_COUNTS, summed over CPUs."""
    got = {}
    with open("/proc/interrupts") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() in SYSTEM_COUNTS:
                got[name.strip()] = sum(int(x) for x in rest.split() if x.isdigit())
    with open("/proc/stat") as f:
        got["ctxt"] = next(int(line.split()[1]) for line in f if line.startswith("ctxt "))
    return got


def nginx_workers(ngx):
    """The pids of nginx's workers (the master's children)."""
    pid = ngx.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def load_cpu(workers):
    """CPU seconds so far of wrk (a child: RUSAGE_CHILDREN) and the nginx
    workers."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime + sum(cpu_seconds(p) for p in workers)


def wrk_counted(ngx):
    """wrk against ngx, and per request of its run the system counts and
    `cpu_req`: the CPU seconds of wrk and the nginx worker (where the BPF
    programs run, in their syscalls), which other load on this shared
    machine does not inflate as it does wall-clock throughput."""
    workers = nginx_workers(ngx)
    before, cpu0 = system_counts(), load_cpu(workers)
    rps, lat, total = wrk(ngx.port)
    counts = {f"{k}_per_req": round((v - before[k]) / total, 3) for k, v in system_counts().items()}
    counts["cpu_req"] = (load_cpu(workers) - cpu0) / total
    return rps, lat, total, counts


def reported_each_end(c, port, total):
    """Requests in the points of the server's and the client's end (every
    httpflow point of nginx's port: server_port is nginx's on both ends)."""
    inc = out = 0
    if os.path.exists(c.out):
        for line in open(c.out):
            if line.startswith("httpflow,") and f"server_port={port}," in line:
                n = int(line.split("count=")[1].split("i")[0])
                if "direction=incoming" in line:
                    inc += n
                else:
                    out += n
    return inc, out


PKTSOCK_MODES = ("pktsock_all", "pktsock_in", "pktsock_dev")


def default_route_dev():
    """The ifindex of the default route's device (/proc/net/route), or None."""
    with open("/proc/net/route") as f:
        for line in list(f)[1:]:
            cols = line.split()
            if cols[1] == "00000000":
                return socket.if_nametoindex(cols[0])
    return None


@contextlib.contextmanager
def drop_all_socket(name):
    """The packet socket of pktsock_<...> mode `name`, open while inside."""
    from dkebpf import _packets
    from dkebpf.packetfilter import RET, K, assemble
    drop_all = assemble([(None, RET | K, 0, None, None)])
    made = None
    ifindex = 0
    if name == "pktsock_dev":
        ifindex = default_route_dev()
        if ifindex is None:
            made = "dkbench-dummy0"
            subprocess.run(["ip", "link", "add", made, "type", "dummy"], check=True)
            subprocess.run(["ip", "link", "set", made, "up"], check=True)
            ifindex = socket.if_nametoindex(made)
    ring = _packets.PacketRing(drop_all, block_size=1 << 16, block_nr=2, ifindex=ifindex,
                               ignore_outgoing=name == "pktsock_in")
    try:
        yield
    finally:
        ring.close()
        if made:
            subprocess.run(["ip", "link", "del", made], check=True)


def with_collector(tmp, ngx, name, extra, interval):
    with Collector(tmp, name, ["--enabled", "ebpf-net", *extra], interval=interval) as c:
        time.sleep(1)
        r0 = c.metrics().get((H, "ring_events_received"), 0)
        c0 = c.cpu_times()
        rps, lat, total, counts = wrk_counted(ngx)
        user, system = (b - a for a, b in zip(c0, c.cpu_times()))
        counts["cpu_req"] += (user + system) / total  # and the collector's
        # the rings are system-wide: the records of the wrk window include
        # other HTTP load on this machine, so CPU is also given per record
        extra_m = {"window_records": int(c.metrics().get((H, "ring_events_received"), 0) - r0), **counts}
        if name.startswith("httpflow") and name not in NO_RECORDS:
            # the last exchanges come with the connections' ends; the next
            # flush reports them
            deadline = time.monotonic() + float(interval.rstrip("s")) + 5
            while time.monotonic() < deadline and reported_each_end(c, ngx.port, total) != (total, total):
                time.sleep(0.5)
            m = c.metrics()
            extra_m.update({k: int(v) for (p, k), v in m.items() if p == H and k.startswith("kernel_")})
            extra_m["reported_incoming"], extra_m["reported_outgoing"] = reported_each_end(c, ngx.port, total)
            extra_m["records"] = int(m.get((H, "ring_events_received"), 0))
    return rps, lat, total, user, system, extra_m


def prog_cost_run(tmp, port, name, args, interval="2s"):
    """(requests/s, requests, prog_cost rows) of one wrk run with the
    collector (`--enabled ebpf-net` + args); bpf_stats must be on."""
    with Collector(tmp, name, ["--enabled", "ebpf-net", *args], interval=interval) as c:
        time.sleep(1)
        before = c.prog_stats()
        rps, _, total = wrk(port)
        return rps, total, prog_cost(before, c.prog_stats(), total)


def compare_objs(var, plugin):
    """{mode: object path} of the variable `var` (one path: mode
    <plugin>_compare; or name=path,...: modes <plugin>_<name>)."""
    value = os.environ.get(var)
    if not value:
        return {}
    if "=" not in value:
        return {f"{plugin}_compare": value}
    return {f"{plugin}_{name}": path for name, _, path in (x.partition("=") for x in value.split(","))}


COMPARE_HTTP_OBJS = compare_objs("BENCH_COMPARE_HTTP_OBJ", "httpflow")
COMPARE_NETFLOW_OBJS = compare_objs("BENCH_COMPARE_NETFLOW_OBJ", "netflow")
ABLATE = [int(x) for x in os.environ.get("BENCH_ABLATE", "").split(",") if x]
NETFLOW_ABLATE = [int(x) for x in os.environ.get("BENCH_NETFLOW_ABLATE", "").split(",") if x]
# the ablations that report no exchange: nothing to wait for
NO_RECORDS = {f"httpflow_ablate{n}" for n in ABLATE if 1 <= n <= 5}
COMPARE_PYTHONPATH = os.environ.get("BENCH_COMPARE_PYTHONPATH")
CHOSEN_MODES = [m for m in os.environ.get("BENCH_MODES", "").split(",") if m]


@contextlib.contextmanager
def installed_object(name, path):
    """The collector that starts inside loads `path` as its <name>.bpf.o
    (copied over the installed one, which is put back after)."""
    if path is None:
        yield
        return
    from dkebpf.bpf_objects import BPF_DIR
    installed = os.path.join(BPF_DIR, f"{name}.bpf.o")
    saved = installed + ".bench-saved"
    shutil.copy2(installed, saved)
    try:
        shutil.copy2(path, installed)
        yield
    finally:
        os.replace(saved, installed)


@contextlib.contextmanager
def python_path(path):
    """The collector that starts inside imports dkebpf from `path`."""
    if path is None:
        yield
        return
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.path.abspath(path)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def build_ablations(tmp):
    """Add to COMPARE_HTTP_OBJS the BENCH_ABLATE builds of bpf/http.bpf.c,
    to COMPARE_NETFLOW_OBJS the BENCH_NETFLOW_ABLATE ones of
    bpf/netflow.bpf.c."""
    for n in ABLATE:
        COMPARE_HTTP_OBJS[f"httpflow_ablate{n}"] = build_bpf("http", tmp, src_dir=BPF_SRC_DIR,
                                                             defines={"HTTP_ABLATE": n}, out=f"http-ablate{n}")
    for n in NETFLOW_ABLATE:
        COMPARE_NETFLOW_OBJS[f"netflow_ablate{n}"] = build_bpf("netflow", tmp, src_dir=BPF_SRC_DIR,
                                                               defines={"NETFLOW_ABLATE": n},
                                                               out=f"netflow-ablate{n}")


def mode_env(name):
    """What a mode changes for its collector: an object, or the tree."""
    if name in COMPARE_HTTP_OBJS:
        return installed_object("http", COMPARE_HTTP_OBJS[name])
    if name in COMPARE_NETFLOW_OBJS:
        return installed_object("netflow", COMPARE_NETFLOW_OBJS[name])
    return python_path(COMPARE_PYTHONPATH if name == "netflow_compare" else None)


def check_compare_tree():
    """A tree without its built extensions would silently give the
    collector the installed dkebpf instead: stop before any run."""
    if COMPARE_PYTHONPATH and not glob.glob(os.path.join(COMPARE_PYTHONPATH, "dkebpf", "_conntable*.so")):
        raise SystemExit(f"BENCH_COMPARE_PYTHONPATH: no built dkebpf in {COMPARE_PYTHONPATH} "
                         "(build it in place with `make dev`, or give its build/lib.* directory)")


def chosen(modes):
    """The modes BENCH_MODES names (all when unset); an unknown name stops."""
    if not CHOSEN_MODES:
        return modes
    unknown = set(CHOSEN_MODES) - {m[0] for m in modes} - {"off"}
    if unknown:
        raise SystemExit(f"BENCH_MODES: no mode {', '.join(sorted(unknown))} here "
                         f"(modes: {', '.join(m[0] for m in modes)})")
    return [m for m in modes if m[0] in CHOSEN_MODES]


def main():
    from dkebpf import kernel
    check_compare_tree()
    kernel.ensure_mounts()
    res = {}
    with tempfile.TemporaryDirectory() as tmp, Nginx(tmp) as ngx:
        floor_obj = build_bpf("tpfloor", tmp)
        build_ablations(tmp)
        wrk(ngx.port)  # warm-up
        print(f"wrk: -t2 -c{CONNS} -d{SECONDS}s, nginx 1 worker, loopback; {ROUNDS} rounds")
        stats_already_on()
        modes = [("floor", None, None), *[(m, None, None) for m in PKTSOCK_MODES], ("netflow_only", ["--l7net-disabled", "httpflow"], INTERVALS[0]),
                 ("netflow_nodns", ["--l7net-disabled", "httpflow,dnsflow"], INTERVALS[0])]
        modes += [(f"httpflow_{iv}", [], iv) for iv in INTERVALS]
        modes += [(name, [], INTERVALS[0]) for name in COMPARE_HTTP_OBJS]
        modes += [(name, ["--l7net-disabled", "httpflow"], INTERVALS[0]) for name in COMPARE_NETFLOW_OBJS]
        if COMPARE_PYTHONPATH:
            modes.append(("netflow_compare", ["--l7net-disabled", "httpflow"], INTERVALS[0]))
        modes = chosen(modes)
        for r in range(ROUNDS):
            off = wrk_counted(ngx)
            res.setdefault("off", []).append((*off[:3], 0, 0, off[3]))
            print(f"round {r} off: {off[0]:.0f} req/s {off[3]}", flush=True)
            # a rotating order: no mode always runs right after off
            for name, extra, iv in modes[r % len(modes):] + modes[:r % len(modes)]:
                if name == "floor":
                    bpf = attached(floor_obj, "httpflow_hooks")
                    try:
                        rps, lat, total, counts = wrk_counted(ngx)
                        got = (rps, lat, total, 0, 0, counts)
                    finally:
                        bpf.close()
                elif name in PKTSOCK_MODES:
                    with drop_all_socket(name):
                        rps, lat, total, counts = wrk_counted(ngx)
                    got = (rps, lat, total, 0, 0, counts)
                else:
                    with mode_env(name):
                        got = with_collector(tmp, ngx, f"{name}-{r}", extra, iv)
                res.setdefault(name, []).append(got)
                rps, lat, total, user, system, m = got
                print(f"round {r} {name}: {rps:.0f} req/s ({rps / off[0]:.3f}), latency {lat / off[1]:.3f}, "
                      f"user {user:.2f} s sys {system:.2f} s {m}", flush=True)
        if os.environ.get("BENCH_PROG_COST", "1") != "0":
            with bpf_stats():
                cost_modes = ("netflow_only", f"httpflow_{INTERVALS[0]}", "netflow_compare", *COMPARE_HTTP_OBJS,
                              *COMPARE_NETFLOW_OBJS)
                for name, extra, iv in [m for m in modes if m[0] in cost_modes]:
                    with mode_env(name):
                        rps, total, rows = prog_cost_run(tmp, ngx.port, f"{name}-cost", extra, iv)
                    for prog, per_req, ns_run, ns_req in rows:
                        print(f"{name}_prog {prog}: {per_req:.2f} runs/request, {ns_run:.0f} ns/run, "
                              f"{ns_req:.0f} ns/request")
                    print(f"{name}_bpf_ns_per_request: {sum(r[3] for r in rows):.0f} ({rps:.0f} req/s)", flush=True)
    off = res["off"]
    print(f"off_requests_per_s: {statistics.median(x[0] for x in off):.0f}")
    print(f"off_latency_ms: {statistics.median(x[1] for x in off) * 1e3:.3f}")
    for name, runs in res.items():
        if name == "off":
            continue
        print(f"{name}_throughput_ratio: {statistics.median(x[0] / o[0] for x, o in zip(runs, off)):.3f}")
        print(f"{name}_latency_ratio: {statistics.median(x[1] / o[1] for x, o in zip(runs, off)):.3f}")
        # CPU per request of off / of the mode: the throughput ratio of a
        # machine that wrk + nginx saturate alone, load or not
        print(f"{name}_cpu_ratio: {statistics.median(o[5]['cpu_req'] / x[5]['cpu_req'] for x, o in zip(runs, off)):.3f} "
              f"({statistics.median(x[5]['cpu_req'] for x in runs) * 1e6:.2f} us/request, "
              f"off {statistics.median(o[5]['cpu_req'] for o in off) * 1e6:.2f})")
        for k in (*SYSTEM_COUNTS, "ctxt"):
            print(f"{name}_{k}_per_request: {statistics.median(x[5][f'{k}_per_req'] for x in runs):.3f} "
                  f"(off {statistics.median(o[5][f'{k}_per_req'] for o in off):.3f})")
        if name != "floor" and name not in PKTSOCK_MODES:
            user = statistics.median(x[3] / SECONDS / (x[0] / 1e4) for x in runs)
            cpu = statistics.median((x[3] + x[4]) / SECONDS / (x[0] / 1e4) for x in runs)
            print(f"{name}_collector_user_cpu_per_10k_rps: {user:.4f}")
            print(f"{name}_collector_cpu_per_10k_rps: {cpu:.4f}")
            print(f"{name}_user_us_per_request: {statistics.median(x[3] / x[2] * 1e6 for x in runs):.3f}")
            if name.startswith("httpflow"):
                # each request is two records (both ends on this host)
                print(f"{name}_user_us_per_record: "
                      f"{statistics.median(x[3] / max(x[5]['window_records'], 1) * 1e6 for x in runs):.3f}")
        if name.startswith("httpflow"):
            for x in runs:
                m = x[5]
                print(f"{name}_wrk_requests: {x[2]} reported incoming {m.get('reported_incoming')} "
                      f"outgoing {m.get('reported_outgoing')} lost {sum(m.get(k, 0) for k in LOST)} {m}")
    print(f"load_average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
