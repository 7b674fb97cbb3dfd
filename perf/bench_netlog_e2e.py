"""bpf-netlog end to end (root): traffic through a veth pair into a test
namespace, captured by the plugin's socket inside the namespace (ring,
socket program, decode, L4 state) while this process drains it as the
plugin's reader thread does (NicCapture.drain of the ring's spill, which
its spiller thread fills without the GIL); each round runs the same traffic with capture off first
(the baseline, same run) and then on.

The veth is set for the most packets/s: TSO, GSO and GRO off on both ends
(every segment is a packet) and MTU 300 (small segments: the packet rate
of a bulk transfer is what the CPU makes of per-packet work, not of bytes).
Loads, each the most packets/s this machine makes of its kind:
  bulk: BENCH_STREAMS TCP transfers at once (the socket program cuts the
        segments after their headers: packetfilter.netlog_keep);
  http: nginx (1 worker) in the namespace, wrk -t2 -c32 from the host side;
  udp:  BENCH_SENDERS C senders (perf/netlog_udpflood.c, sendmmsg) of
        32-byte datagrams to a socket in the namespace.
Then the bulk and http loads once more with the real collector (`dkebpf
run --enabled bpf-netlog --netlog-log --netlog-metric`, 2 s interval,
points encoded and written each interval as in production): its socket
drops and CPU (from /proc) per 100k packets/s; and bulk again with
--netlog-metric only (no bpf_net_l4_log, so no per-packet series and
messages): the cost of the logs, in the same run.

    python3 perf/bench_netlog_e2e.py     (BENCH_SECONDS=5, BENCH_ROUNDS=3, BENCH_SENDERS=2, BENCH_STREAMS=4,
                                          BENCH_LOADS=bulk,http,udp, BENCH_PPS=, BENCH_AGENT_NICE=0,
                                          BENCH_READER_PRIO=, BENCH_BOTH_ENDS=0, BENCH_SPILL=1,
                                          BENCH_FOLD=1, BENCH_AGENT_ROUNDS=1, BENCH_BLACKLIST=)

BENCH_PPS (e.g. 200000,300000): the bulk load again at each of these
rates (data segments/s into the namespace, every stream paced by the
kernel's TCP pacing, SO_MAX_PACING_RATE) with capture on, in this process
and with the collector: "0 drops at a rate" measured at a controlled rate
rather than at whatever the machine makes; prints the highest delivered
rate whose rounds dropped nothing. The reader here runs at the plugin's
priority (reader_priority_held: SCHED_FIFO) unless BENCH_READER_PRIO=default.
BENCH_SPILL=0: the in-process runs read the rings themselves (no spiller
thread; read() lingering LINGER_MS while heavy), as the reader did before.
BENCH_FOLD=0,1: every measurement with NicCapture.fold off (the reader
calls read() and add() apart, taking the GIL back after each) and on (one
call, ConnTable.fold_ring, reads and folds without the GIL), names ending
in _fold0 and _fold1: before/after in the same run. BENCH_AGENT_ROUNDS:
runs of each whole-agent measurement (the folds alternating).
BENCH_BLACKLIST (a netlog_blacklist rule, e.g. 'has_prefix(k8s_dst_pod,
"datakit-")'): every capture, in this process and the collector's
(DKE_NETLOG_NET_FILTER), with that filter; statements on pod or namespace
fields are evaluated in user space for every packet the socket program
passes (dkebpf/netlog/conn_filter.py).
BENCH_BOTH_ENDS=1: the in-process runs capture the host's end of the veth
too (a second socket, the same packets once more: what it costs the kernel).
BENCH_AGENT_NICE (e.g. -10): the collector's other threads reniced once it
runs, to see what the reader loses waiting for the GIL held by a thread
that the machine's other work keeps off the CPU (priority inversion).

Prints `name: value` lines per load, medians of the rounds: packets/s
delivered to the namespace with capture off and on and their ratio,
packets/s captured, drops (tp_drops plus the spill's, must be 0; summed over the
rounds), this process's CPU (user + system, which includes softirq work
the kernel happens to run on its time slices) per 100k packets/s, the
reader's worst lag (how long after the kernel closed a ring block it was
read: the ring must hold that long's packets) and the load average; after
each whole-agent run, the collector's VmRSS once it has been idle IDLE_S
(10 s), with what its spills then hold touched and what they released."""
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from support.netns import NetNS, call_in_netns  # noqa: E402
from support.nginx import Nginx  # noqa: E402

from dkebpf.netlog.filter import parse_rules  # noqa: E402
from dkebpf.plugins.netlog import (FOLD_LINGER_MS, LINGER_MS, NicCapture, in_netns, list_nics,  # noqa: E402
                                   reader_priority_held)

HERE = os.path.dirname(os.path.abspath(__file__))
PORT = 18090
SECONDS = float(os.environ.get("BENCH_SECONDS", 5))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
SENDERS = int(os.environ.get("BENCH_SENDERS", 2))
STREAMS = int(os.environ.get("BENCH_STREAMS", 4))
# paced bulk rates (data segments/s into the namespace, all streams together), e.g. "200000,300000"
PACED = [int(r) for r in os.environ.get("BENCH_PPS", "").replace(",", " ").split()]
LOADS = os.environ.get("BENCH_LOADS", "bulk,http,udp").split(",")
AGENT_NICE = int(os.environ.get("BENCH_AGENT_NICE", 0))
BOTH_ENDS = int(os.environ.get("BENCH_BOTH_ENDS", 0))   # 1: this process captures the host's veth end too
SPILL = os.environ.get("BENCH_SPILL") != "0"   # the rings emptied by spiller threads, as the plugin does
# NicCapture.fold values to run (e.g. "0,1": before/after in the same run): 1 reads and folds the spill
# in one call without the GIL (ConnTable.fold_ring), 0 read() and add() apart
AGENT_ROUNDS = int(os.environ.get("BENCH_AGENT_ROUNDS", 1))   # runs of each whole-agent measurement
IDLE_S = 10   # the collector idle after each whole-agent run before its VmRSS is read
FOLDS = [int(f) for f in os.environ.get("BENCH_FOLD", "1").split(",")]
BLACKLIST = os.environ.get("BENCH_BLACKLIST", "")
RULES = parse_rules(BLACKLIST) if BLACKLIST.strip() else None
if RULES is not None:
    os.environ["DKE_NETLOG_NET_FILTER"] = BLACKLIST   # the collectors' netlog_blacklist
MTU = 300
WRK_CONNS = 32

# one thread per accepted stream, each reading until its sender closes
SINK_TCP = ("import socket,sys,threading;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            "s.bind((sys.argv[1],int(sys.argv[2])));s.listen();print('ready',flush=True)\n"
            "def rd(c):\n while c.recv(1<<20): pass\n"
            "while True: threading.Thread(target=rd,args=(s.accept()[0],),daemon=True).start()")
# argv[4], when not 0: segments/s this stream is paced to (SO_MAX_PACING_RATE, in payload bytes/s: the
# MSS times the rate; the kernel's TCP pacing spaces the segments, no qdisc needed)
SEND_TCP = ("import socket,sys,time;c=socket.create_connection((sys.argv[1],int(sys.argv[2])));b=bytes(1<<20)\n"
            "pps=float(sys.argv[4])\n"
            "if pps: c.setsockopt(socket.SOL_SOCKET,47,int(pps*c.getsockopt(socket.IPPROTO_TCP,socket.TCP_MAXSEG)))\n"
            "end=time.monotonic()+float(sys.argv[3])\nwhile time.monotonic()<end: c.sendall(b)\nc.close()")
# a bound UDP socket nobody reads: datagrams are delivered (and dropped at its full buffer), no ICMP
SINK_UDP = ("import socket,sys,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.bind((sys.argv[1],int(sys.argv[2])));print('ready',flush=True);time.sleep(3600)")


def rx_packets(ns):
    return int(ns.exec("cat", f"/sys/class/net/{ns.veth_peer}/statistics/rx_packets").stdout)


def started(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def load_procs(ns, load, flood, ngx, pps=0):
    """The processes making `load` for SECONDS; bulk paced to pps data segments/s when not 0."""
    if load == "bulk":
        return [subprocess.Popen([sys.executable, "-c", SEND_TCP, ns.peer_ip, str(PORT), str(SECONDS),
                                  str(pps / STREAMS)]) for _ in range(STREAMS)]
    if load == "http":
        return [subprocess.Popen(["wrk", "-t2", f"-c{WRK_CONNS}", f"-d{SECONDS:g}s", f"http://{ns.peer_ip}:{ngx.port}/ok"],
                                 stdout=subprocess.DEVNULL)]
    return [subprocess.Popen([flood, ns.peer_ip, str(PORT), str(SECONDS), "32"], stdout=subprocess.DEVNULL)
            for _ in range(SENDERS)]


def sink_for(ns, load):
    if load == "http":   # nginx, started once in main()
        return None
    return started(ns.prefix() + ["python3", "-c", SINK_TCP if load == "bulk" else SINK_UDP, ns.peer_ip, str(PORT)])


def run(ns, load, flood, ngx, capture, pps=0):
    """One run of `load`: (delivered packets/s, captured packets/s, drops, CPU s, reader's worst lag ms)."""
    caps = []
    if capture:
        ends = [(f"/var/run/netns/{ns.name}", ns.veth_peer)] + ([("/proc/self/ns/net", ns.veth_host)] * BOTH_ENDS)
        for path, name in ends:
            with in_netns(path):
                nic = next(n for n in list_nics() if n.name == name)
            caps.append(NicCapture.open(path, 0, nic, False, rules=RULES, spill=SPILL))
    by_ring = {c.ring: c for c in caps}
    sink = sink_for(ns, load)
    try:
        r0, t0, c0 = rx_packets(ns), time.monotonic(), os.times()
        senders = load_procs(ns, load, flood, ngx, pps)
        # this thread reads as the plugin's reader thread does, at its priority (once the senders
        # started: they would inherit it); BENCH_READER_PRIO=default: as any other thread
        with reader_priority_held() if os.environ.get("BENCH_READER_PRIO") != "default" else nullcontext():
            while any(s.poll() is None for s in senders):
                if caps:
                    for ring in select.select(list(by_ring), [], [], 0.02)[0]:
                        by_ring[ring].drain(FOLD_LINGER_MS if SPILL else LINGER_MS)
                else:
                    time.sleep(0.02)
            t1 = time.monotonic()
            delivered = rx_packets(ns) - r0
            for cap in caps:
                cap.flush()
        c1 = os.times()
    finally:
        if sink is not None:
            sink.kill()
            sink.wait()
    rcs = [cap.ring.counters() for cap in caps]
    for cap in caps:
        cap.close()
    secs = t1 - t0
    return delivered / secs, sum(rc["packets"] for rc in rcs) / secs, \
        sum(rc["kernel_drops"] + rc["spill_drops"] for rc in rcs), \
        (c1.user - c0.user) + (c1.system - c0.system), max((rc["reader_lag_max_ns"] / 1e6 for rc in rcs), default=0.0)


def agent_run(tmp, ns, load, flood, ngx, logs=True, pps=0, fold=1, tag=""):
    """`load` with `dkebpf run` capturing on the namespace's veth:
    (delivered packets/s, captured packets/s, drops (socket and spill), collector CPU s, seconds,
    reader's worst lag ms, spill's peak MiB, spill's drops)."""
    from collector import Collector
    sink = sink_for(ns, load)
    try:
        flags = ["--enabled", "bpf-netlog", "--netlog-metric", "--netlog-interfaces", f"^{ns.veth_peer}$"]
        # a log file per run: "dkebpf started" of an earlier run must not count
        c = Collector(tmp, (f"netlog-{load}{pps or ''}" if logs else f"netlog-{load}-metric") + f"-fold{fold}{tag}",
                      flags + (["--netlog-log"] if logs else []))
        if not fold:   # `dkebpf run` with NicCapture.fold off
            c.cmd[1:4] = ["-c", "import sys; from dkebpf.plugins.netlog import NicCapture; NicCapture.fold = False; "
                          "from dkebpf.cli import main; sys.exit(main())", "run"]
        with c:
            end = time.monotonic() + 30
            while f"capturing on {ns.veth_peer}" not in c.log_text():
                if time.monotonic() > end:
                    raise SystemExit(f"collector never captured: {c.log_text()}")
                time.sleep(0.1)
            if AGENT_NICE:   # the collector's threads but the reader (SCHED_FIFO already) reniced
                for tid in os.listdir(f"/proc/{c.proc.pid}/task"):
                    with open(f"/proc/{c.proc.pid}/task/{tid}/comm") as f:
                        if f.read().strip() != "netlog-reader":
                            os.setpriority(os.PRIO_PROCESS, int(tid), AGENT_NICE)
            r0, cpu0, t0 = rx_packets(ns), c.cpu_seconds(), time.monotonic()
            for p in load_procs(ns, load, flood, ngx, pps):
                if p.wait():
                    raise SystemExit(f"{load} load failed: {p.args}")
            t1 = time.monotonic()
            delivered = rx_packets(ns) - r0
            time.sleep(0.5)
            cpu1 = c.cpu_seconds()
            text = urllib.request.urlopen(f"http://127.0.0.1:{c.metrics_port}/metrics", timeout=5).read().decode()
            # then idle: what stays resident (the spill releases what a burst touched once drained)
            time.sleep(IDLE_S)
            with open(f"/proc/{c.proc.pid}/status") as f:
                rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024
            idle = urllib.request.urlopen(f"http://127.0.0.1:{c.metrics_port}/metrics", timeout=5).read().decode()
            held = idle_memory(c.proc.pid, idle)
    finally:
        if sink is not None:
            sink.kill()
            sink.wait()

    def total(counter, text=text):   # per socket: <netns inode>/<interface>_<counter>, "/" sanitized to "_"
        rx = re.compile(r'\w*plugin_\d+_[^_{]+_' + counter + r'\{plugin="bpf-netlog"\} (\S+)$')
        return sum(float(m.group(1)) for m in map(rx.match, text.splitlines()) if m)
    lag = max(float(m.group(1)) for m in map(re.compile(r'\w*_reader_lag_max_ns\{plugin="bpf-netlog"\} (\S+)$').match,
                                             text.splitlines()) if m)
    return delivered / (t1 - t0), total("packets") / (t1 - t0), total("kernel_drops") + total("spill_drops"), \
        cpu1 - cpu0, t1 - t0, lag / 1e6, total("spill_bytes_peak") / (1 << 20), total("spill_drops"), \
        rss, total("spill_touched_bytes", idle) / (1 << 20), total("spill_released_bytes", idle) / (1 << 20), held


def idle_memory(pid, metrics):
    """What the idle collector holds, in MiB: its resident memory by holder
    (dkebpf_memory_bytes), bpf-netlog's own allocations
    (plugin_memory_bytes) and its largest resident anonymous mappings
    (/proc/<pid>/smaps: size/resident)."""
    from dkebpf import procmem
    rx = re.compile(r'\w*?(plugin_memory_bytes|memory_bytes)\{(?:plugin="bpf-netlog",)?holder="([^"]+)"\} (\S+)$')
    parts = []
    for m in map(rx.match, metrics.splitlines()):
        if m and float(m.group(3)) >= 1 << 20:
            parts.append(f"{'netlog_' if m.group(1).startswith('plugin') else ''}{m.group(2)} "
                         f"{float(m.group(3)) / (1 << 20):.1f}")
    anon = sorted(((e - s, sizes.get("Rss", 0)) for s, e, _perms, path, sizes in procmem.mappings(f"/proc/{pid}/smaps")
                   if not path or path.startswith("[heap]")), key=lambda m: -m[1])
    parts.append("anonymous mappings " + " ".join(f"{size / (1 << 20):.1f}/{rss / (1 << 20):.1f}"
                                                  for size, rss in anon[:8] if rss >= 1 << 20))
    return "; ".join(parts)


def fast_veth(ns):
    """Every segment a packet, and small ones: TSO/GSO/GRO off, MTU 300, both ends."""
    for prefix, dev in (([], ns.veth_host), (ns.prefix(), ns.veth_peer)):
        subprocess.run(prefix + ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"], check=True,
                       capture_output=True)
        subprocess.run(prefix + ["ip", "link", "set", "dev", dev, "mtu", str(MTU)], check=True)


def main():
    with tempfile.TemporaryDirectory() as tmp, NetNS() as ns:
        flood = os.path.join(tmp, "udpflood")
        subprocess.run(["cc", "-O2", "-o", flood, os.path.join(HERE, "netlog_udpflood.c")], check=True)
        fast_veth(ns)
        # nginx started from a thread in the namespace: it listens there (fork keeps the thread's netns)
        ngx = call_in_netns(ns.name, lambda: Nginx(tmp, ns.peer_ip).__enter__())
        try:
            bench(tmp, ns, flood, ngx)
        finally:
            ngx.__exit__()


def capture_rounds(ns, load, flood, ngx, pps=0, baseline=False, fold=1):
    """ROUNDS runs of `load` with capture on, each after one with capture
    off when baseline: delivered packets/s with capture off and on,
    captured packets/s, CPU % per 100k packets/s (lists, per round), drops
    summed, the reader's worst lag in ms."""
    off, on, got, cpu, drops, lag = [], [], [], [], 0, 0.0
    NicCapture.fold = bool(fold)
    for _ in range(ROUNDS):
        if baseline:
            off.append(run(ns, load, flood, ngx, False)[0])
        d, c, dr, s, lg = run(ns, load, flood, ngx, True, pps)
        on.append(d)
        got.append(c)
        cpu.append(100 * s / SECONDS / (c / 1e5) if c else 0.0)
        drops += dr
        lag = max(lag, lg)
    return off, on, got, cpu, drops, lag


def bench(tmp, ns, flood, ngx):
    print(f"setup: veth (MTU {MTU}, TSO/GSO/GRO off) into a test namespace, {ROUNDS} rounds x {SECONDS:g} s "
          f"per load, capture off then on; bulk {STREAMS} streams, http wrk -c{WRK_CONNS} to nginx"
          + (f"; netlog_blacklist {BLACKLIST!r}" if RULES is not None else ""))
    med = statistics.median
    # with several BENCH_FOLD values, each name ends in _fold<value>
    suffixes = [(fold, f"_fold{fold}" if len(FOLDS) > 1 else "") for fold in FOLDS]
    for load in LOADS:
        for fold, sfx in suffixes:
            off, on, got, cpu, drops, lag = capture_rounds(ns, load, flood, ngx, baseline=True, fold=fold)
            print(f"{load}{sfx}_packets_per_s_capture_off: {med(off):.0f}")
            print(f"{load}{sfx}_packets_per_s_capture_on: {med(on):.0f}")
            print(f"{load}{sfx}_ratio_on_over_off: {med(b / a for a, b in zip(off, on)):.3f}")
            print(f"{load}{sfx}_captured_packets_per_s: {med(got):.0f} (rounds: {' '.join(f'{x:.0f}' for x in got)})")
            print(f"{load}{sfx}_socket_drops: {drops}")
            print(f"{load}{sfx}_collector_cpu_percent_per_100k_pps: {med(cpu):.1f}")
            print(f"{load}{sfx}_reader_lag_max_ms: {lag:.1f}")
    # bulk paced: drops at a controlled rate; the highest rate without any
    for fold, sfx in suffixes:
        clean = []
        for pps in PACED:
            _off, on, got, cpu, drops, lag = capture_rounds(ns, "bulk", flood, ngx, pps, fold=fold)
            print(f"paced_{pps}{sfx}_delivered_packets_per_s: {med(on):.0f}")
            print(f"paced_{pps}{sfx}_captured_packets_per_s: {med(got):.0f}")
            print(f"paced_{pps}{sfx}_socket_drops: {drops}")
            print(f"paced_{pps}{sfx}_collector_cpu_percent_per_100k_pps: {med(cpu):.1f}")
            print(f"paced_{pps}{sfx}_reader_lag_max_ms: {lag:.1f}")
            if not drops:
                clean.append(med(on))
        if PACED:
            print(f"paced{sfx}_highest_delivered_packets_per_s_with_0_drops: {max(clean, default=0):.0f}")
    agents = [(f"agent_{load}", load, True, 0) for load in ("bulk", "http") if load in LOADS]
    agents += [("agent_bulk_metric_only", "bulk", False, 0)] if "bulk" in LOADS else []
    agents += [(f"agent_bulk_paced_{pps}", "bulk", True, pps) for pps in PACED]
    # AGENT_ROUNDS runs of each (the folds alternating, so that both see the same load)
    for name, load, logs, pps in agents:
        for rnd in range(AGENT_ROUNDS):
            for fold, sfx in suffixes:
                agent_print(f"{name}{sfx}" + (f"_round{rnd + 1}" if AGENT_ROUNDS > 1 else ""),
                            agent_run(tmp, ns, load, flood, ngx, logs, pps, fold, f"-{rnd}"))
    print(f"load_average: {os.getloadavg()[0]:.2f}")


def agent_print(name, result):
    delivered, got, drops, cpu, secs, lag, spill, spill_drops, rss, touched, released, held = result
    print(f"{name}_delivered_packets_per_s: {delivered:.0f}")
    print(f"{name}_captured_packets_per_s: {got:.0f}")
    print(f"{name}_socket_drops: {drops:.0f} (the spill's: {spill_drops:.0f})")
    print(f"{name}_collector_cpu_percent_per_100k_pps: {100 * cpu / secs / (got / 1e5) if got else 0:.1f}")
    print(f"{name}_reader_lag_max_ms: {lag:.1f}")
    print(f"{name}_spill_peak_mib: {spill:.1f}")
    print(f"{name}_collector_rss_idle_mib: {rss:.1f} (after {IDLE_S} s idle; the spill touched {touched:.1f} MiB, "
          f"released {released:.1f} MiB)")
    print(f"{name}_collector_idle_memory_mib: {held}")
    print(f"{name}_load_average: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
