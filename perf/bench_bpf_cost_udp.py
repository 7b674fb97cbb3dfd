"""In-kernel cost of netflow's programs for unconnected UDP (the peer read
from the sendto/recvfrom address): 100k datagram round trips on loopback
(sendto + recvfrom of 32 bytes) with the collector's netflow attached;
prints ns per run and the total BPF ns per round (kernel.bpf_stats_enabled
is set for the run and restored).

    cd /tmp && PYTHONPATH=<tree> python3 <tree>/perf/bench_bpf_cost_udp.py
"""
import os, sys, socket, signal, subprocess, tempfile, time
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE); sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from bench_bpf_cost import prog_fds, prog_names, STATS
from support.nginx import free_port
old = open(STATS).read().strip(); open(STATS, "w").write("1")
tmp = tempfile.mkdtemp()
log = os.path.join(tmp, "dkebpf.log")
proc = subprocess.Popen([sys.executable, "-m", "dkebpf", "run", "--enabled", "ebpf-net", "--l7net-disabled", "httpflow",
    "--interval", "2s", "--output", os.path.join(tmp, "points.lp"), "--log", log, "--pprof-port", str(free_port())],
    cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while "dkebpf started" not in (open(log).read() if os.path.exists(log) else ""): time.sleep(0.1)
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.1", 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("127.0.0.1", 0))
before = prog_fds(proc.pid)
N = 100000
for i in range(N):
    a.sendto(b"x" * 32, b.getsockname()); b.recvfrom(64)
after = prog_fds(proc.pid); names = prog_names(set(after))
proc.send_signal(signal.SIGTERM); proc.wait(30); open(STATS, "w").write(old)
tot = 0
for pid_, (c, ns) in after.items():
    c0, n0 = before.get(pid_, (0, 0))
    if c - c0:
        tot += ns - n0
        print(f"{names.get(pid_)}: {(c-c0)/N:.2f}/dgram {(ns-n0)/(c-c0):.0f} ns/run")
print(f"total ns per datagram round: {tot/N:.0f}")
