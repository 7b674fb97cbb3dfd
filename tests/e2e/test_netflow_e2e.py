"""The whole collector against real traffic: exact byte counts, directions,
ports, established/closed counts and rtt in the points DataKit receives,
every point checked against the netflow schema."""
import os
import signal
import subprocess
import sys
import uuid

import pytest

from dkebpf.plugins import PLUGINS, requirements

from support import traffic
from support.dnsmasq import Dnsmasq, dig
from support.netns import NetNS
from support.schema import check_point
from support.timed_exchange import timed_exchanges

pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("ebpf-net",), ("httpflow",)))]


def flows(receiver, pid):
    return [p for p in receiver.points(measurement="netflow") if p.tags.get("pid") == str(pid)]


def total(points, field):
    return sum(p.fields.get(field, 0) for p in points)


def wait_totals(receiver, pid, written, read, timeout=30):
    def done():
        pts = flows(receiver, pid)
        return pts if total(pts, "bytes_written") >= written and total(pts, "bytes_read") >= read else None
    return traffic.wait_until(done, timeout) or flows(receiver, pid)


def check_all(receiver):
    pts = receiver.points(measurement="netflow")
    assert pts, "no netflow point at all"
    for p in pts:
        check_point("netflow", p, extra_tags=("team", "env"))
        assert p.tags["host"] == "e2e-host" and p.tags["service"] == "ebpf"
        assert p.tags["team"] == "net" and p.tags["env"] == "test" and p.tags["source"] == "netflow"
    inputs = {i for (_c, i, p) in receiver.records if p.measurement == "netflow"}
    assert inputs == {"ebpf-net/netflow"}


def test_tcp_and_udp_with_a_namespace_host(collector, receiver):
    collector.start()
    with NetNS() as ns:
        srv = traffic.tcp_server(ns.peer_ip, 5000, prefix=ns.prefix(), conns=2)
        usrv = traffic.udp_server(ns.peer_ip, 40, prefix=ns.prefix(), datagrams=5)
        try:
            short_pid, _, short = traffic.run_client("tcp-client", ns.peer_ip, srv.info["port"], 20000)
            # long-lived: 4 chunks 1.5 s apart, across several 2 s intervals
            long_pid, _, lng = traffic.run_client("tcp-client", ns.peer_ip, srv.info["port"], 40000, 4, 1.5)
            udp_pid, _, ures = traffic.run_client("udp-client", ns.peer_ip, usrv.info["port"], 300, 5)
            srv.wait()
            usrv.wait()
        finally:
            srv.stop()
            usrv.stop()
        port = str(srv.info["port"])

        pts = wait_totals(receiver, short_pid, 20000, 5000)
        assert total(pts, "bytes_written") == 20000 and total(pts, "bytes_read") == 5000
        assert total(pts, "tcp_established") == 1 and total(pts, "tcp_closed") == 1
        for p in pts:
            t = p.tags
            assert (t["direction"], t["transport"], t["family"]) == ("outgoing", "tcp", "IPv4")
            assert (t["src_ip"], t["dst_ip"], t["dst_port"]) == (ns.host_ip, ns.peer_ip, port)
            assert t["src_port"] == "*" and t["client_port"] == "*"  # ephemeral client port
            assert (t["client_ip"], t["server_ip"], t["server_port"]) == (ns.host_ip, ns.peer_ip, port)
            assert t["process_name"].startswith("python")
            assert t["src_ip_type"] == "private" and t["dst_ip_type"] == "private"
        assert any(p.fields.get("rtt", 0) > 0 for p in pts)

        pts = wait_totals(receiver, long_pid, 40000, 5000)
        assert total(pts, "bytes_written") == 40000 and total(pts, "bytes_read") == 5000
        assert len(pts) >= 2, "a connection open across intervals reports in each of them"
        assert total(pts, "tcp_established") == 1 and total(pts, "tcp_closed") == 1

        # the server inside the namespace sees both connections as incoming
        pts = wait_totals(receiver, srv.pid, 10000, 60000)
        assert total(pts, "bytes_read") == 60000 and total(pts, "bytes_written") == 10000
        assert total(pts, "tcp_established") == 2 and total(pts, "tcp_closed") == 2
        for p in pts:
            assert p.tags["direction"] == "incoming"
            assert (p.tags["src_ip"], p.tags["src_port"]) == (ns.peer_ip, port)
            assert p.tags["dst_port"] == "*" and p.tags["server_port"] == port

        pts = wait_totals(receiver, udp_pid, 1500, 200)
        assert total(pts, "bytes_written") == 1500 and total(pts, "bytes_read") == 200
        assert {p.tags["transport"] for p in pts} == {"udp"}
        assert {p.tags["dst_port"] for p in pts} == {str(usrv.info["port"])}
        assert {p.tags["src_ip"] for p in pts} == {ns.host_ip}
        assert total(pts, "tcp_established") == 0

        pts = wait_totals(receiver, usrv.pid, 200, 1500)
        assert {p.tags["direction"] for p in pts} == {"incoming"}
        assert total(pts, "bytes_read") == 1500 and total(pts, "bytes_written") == 200
    check_all(receiver)


def test_loopback_ipv6_and_sigterm_flushes_last_interval(collector, receiver):
    # a long interval: the only flush is the one SIGTERM triggers
    collector.start(interval="10m")
    srv = traffic.tcp_server("::1", 777)
    try:
        pid, _, res = traffic.run_client("tcp-client", "::1", srv.info["port"], 3333)
        srv.wait()
    finally:
        srv.stop()
    assert collector.stop(signal.SIGTERM) == 0
    pts = flows(receiver, pid)
    assert total(pts, "bytes_written") == 3333 and total(pts, "bytes_read") == 777
    assert {(p.tags["family"], p.tags["dst_ip"], p.tags["dst_ip_type"]) for p in pts} == {("IPv6", "::1", "loopback")}
    assert total(pts, "tcp_established") == 1 and total(pts, "tcp_closed") == 1
    assert "dkebpf stopped" in collector.log_text()
    assert not collector.pidfile.exists()
    check_all(receiver)


def test_retransmits_reported(collector, receiver):
    collector.start()
    with NetNS() as ns:
        ns.drop_randomly(0.25)
        srv = traffic.tcp_server(ns.peer_ip, 100, prefix=ns.prefix())
        try:
            pid, _, res = traffic.run_client("tcp-client", ns.peer_ip, srv.info["port"], 400000)
            srv.wait(60)
        finally:
            srv.stop()
    pts = wait_totals(receiver, pid, 400000, 100)
    assert total(pts, "bytes_written") == 400000
    assert total(pts, "retransmits") > 0
    check_all(receiver)


def test_stdout_output_is_line_protocol(collector, tmp_path):
    from support.lineproto_parser import parse
    out = tmp_path / "points.txt"
    with open(out, "w") as f:
        collector.start(interval="1s", output="-", stdout=f)
        srv = traffic.tcp_server("127.0.0.1", 10)
        try:
            pid, _, _ = traffic.run_client("tcp-client", "127.0.0.1", srv.info["port"], 1234)
            srv.wait()
        finally:
            srv.stop()
        assert collector.stop(signal.SIGINT) == 0
    pts = [p for p in parse(out.read_text()) if p.measurement == "netflow" and p.tags.get("pid") == str(pid)]
    assert total(pts, "bytes_written") == 1234 and total(pts, "bytes_read") == 10


def test_rtt_lies_within_the_clients_own_timings(collector, receiver):
    """rtt is in µs: above 0 (in ms a loopback round trip would be 0) and
    at most what the client measured for its handshake or its exchange (in
    ns it would be 1000 times that)."""
    collector.start(interval="1s")
    port, timings = timed_exchanges(b"q" * 100, b"a" * 100, n=3)
    bound_us = max(max(t.connect_ns, t.answer_ns) for t in timings) / 1000

    def mine():
        pts = [p for p in flows(receiver, os.getpid())
               if p.tags["direction"] == "outgoing" and p.tags["dst_port"] == str(port)]
        return pts if total(pts, "tcp_closed") == 3 else None
    pts = traffic.wait_until(mine, 20)
    assert pts, flows(receiver, os.getpid())
    rtts = [p.fields["rtt"] for p in pts if "rtt" in p.fields]
    assert rtts and all(0 < r <= bound_us for r in rtts), (rtts, bound_us)


# a plugin the table knows but this version does not build yet, if any
UNIMPLEMENTED = [r.name for r in PLUGINS if not r.implemented][:1]


@pytest.mark.parametrize("args,needle", [
    (["--interval", "500ms"], "interval"),
    (["--enabled", "ebpf-nope"], "ebpf-nope"),
    *[(["--enabled", name], "not implemented") for name in UNIMPLEMENTED],
    (["--res-mem", "lots"], "lots"),
    (["--sampling-rate", "0.5", "--sampling-rate-ptsperminute", "100"], "exclusive"),
])
def test_bad_input_is_one_clear_line(bpf_ok, tmp_path, args, needle):
    p = subprocess.run([sys.executable, "-m", "dkebpf", "run", *args, "--output", "-"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    err = p.stderr.strip()
    assert needle in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err


def test_check_reports_netflow_runs(bpf_ok, tmp_path):
    p = subprocess.run([sys.executable, "-m", "dkebpf", "check"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ebpf-net: yes" in p.stdout
    for name in UNIMPLEMENTED:
        assert f"{name}: no\n  - not implemented in this version" in p.stdout


def test_memory_limit_below_footprint_exits_with_its_status(collector, receiver):
    # RSS of the running collector is tens of MiB: 1 MiB is exceeded at the first check
    collector.start("--res-mem", "1MiB", wait_started=False)
    rc = collector.proc.wait(30)
    err = collector.proc.stderr.read()
    assert rc == 4, (rc, err)
    assert "mem_limit exceeded" in err and "Traceback" not in err
    assert "dkebpf started" in collector.log_text()  # it ran, then hit the limit
    assert "flushing, detaching and exiting" in collector.log_text()
    assert not collector.pidfile.exists()


@pytest.mark.parametrize("rate,tolerance", [(0.5, 0.1), (0.1, 0.05)])
def test_sampling_keeps_the_fraction(collector, receiver, rate, tolerance):
    # 400 distinct flows (one datagram to each of 400 loopback ports), one
    # interval ended by SIGTERM; binomial sd is 2.5% (0.5) and 1.5% (0.1)
    flows_n = 400
    collector.start("--sampling-rate", str(rate), interval="10m")
    pid, _, _ = traffic.run_client("udp-fanout", "127.0.0.1", 20000, flows_n, 10)
    assert collector.stop() == 0
    pts = flows(receiver, pid)
    assert all(p.fields["bytes_written"] == 10 for p in pts)
    kept = len(pts) / flows_n
    assert abs(kept - rate) <= tolerance, f"kept {len(pts)} of {flows_n} at rate {rate}"


def test_metrics_endpoint_scrapes_as_prometheus_text(collector, receiver):
    import socket as _socket

    import requests
    from prometheus_client.parser import text_string_to_metric_families

    with _socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    collector.start("--pprof-port", str(port), interval="1s")
    srv = traffic.tcp_server("127.0.0.1", 10)
    try:
        traffic.run_client("tcp-client", "127.0.0.1", srv.info["port"], 100)
        srv.wait()
    finally:
        srv.stop()
    assert traffic.wait_until(lambda: receiver.points(measurement="netflow"), 15)

    def scrape():
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        sent = fams.get("dkebpf_output_points_sent")
        return fams if sent and sent.samples[0].value > 0 else None
    fams = traffic.wait_until(scrape, 15)
    assert fams, "points_sent never became positive"
    assert fams["dkebpf_process_resident_memory_bytes"].samples[0].value > 1 << 20
    merged = fams["dkebpf_plugin_connections_merged"].samples[0]
    assert merged.labels == {"plugin": "ebpf-net/netflow"} and merged.value > 0
    assert "dkebpf_plugin_kernel_drop_conns_map_full" in fams
    # what holds the memory: the kernel rings (netflow's closed ring,
    # httpflow's events ring, each mapped once; sized in bpf_objects.py) and
    # the readers' buffers, within their fixed budget
    from dkebpf.bpf_objects import HTTP_RING_BYTES, NETFLOW_CLOSED_RING_BYTES, READER_BUFFER_BYTES
    held = {s.labels["holder"]: s.value for s in fams["dkebpf_memory_bytes"].samples}
    rings = NETFLOW_CLOSED_RING_BYTES + HTTP_RING_BYTES
    assert rings <= held["bpf_ring_buffers"] < 2 * rings, held
    assert held["anonymous"] > 1 << 20 and held["lib_pyarrow"] > 1 << 20, held
    assert held["bpf_kernel"] >= rings, held  # the rings, once, plus the maps
    buffers = {(s.labels["plugin"], s.labels["holder"]): s.value for s in fams["dkebpf_plugin_memory_bytes"].samples}
    assert 0 < buffers[("ebpf-net/netflow", "ring_closed_buffer")] <= READER_BUFFER_BYTES, buffers
    assert 0 < buffers[("ebpf-net/httpflow", "ring_events_buffer")] <= READER_BUFFER_BYTES, buffers
    stacks = requests.get(f"http://127.0.0.1:{port}/debug/stacks", timeout=5).text
    assert "MainThread" in stacks


def test_datakit_restart_loses_nothing_with_a_spool(collector, receiver, tmp_path):
    import time as _time
    spool = tmp_path / "spool"
    collector.start("--spool-dir", str(spool), interval="1s")
    receiver.stop()  # DataKit goes away for 30 s while traffic goes on
    pids = []
    down_until = _time.monotonic() + 30
    srv = traffic.tcp_server("127.0.0.1", 50, conns=6)
    try:
        for _ in range(6):
            pid, _, _ = traffic.run_client("tcp-client", "127.0.0.1", srv.info["port"], 1000)
            pids.append(pid)
            _time.sleep(4)
        srv.wait()
    finally:
        srv.stop()
    # the collector itself restarts while DataKit is still away: what it
    # could not deliver goes to the spool on shutdown, the next run sends it
    assert collector.stop() == 0
    assert [f for f in spool.iterdir() if f.suffix == ".lp"], "nothing spooled on shutdown"
    collector.start("--spool-dir", str(spool), interval="1s")
    _time.sleep(max(0.0, down_until - _time.monotonic()))
    receiver.start()
    for pid in pids:
        pts = wait_totals(receiver, pid, 1000, 50, timeout=60)
        assert total(pts, "bytes_written") == 1000 and total(pts, "bytes_read") == 50
        assert total(pts, "tcp_established") == 1 and total(pts, "tcp_closed") == 1
    assert traffic.wait_until(lambda: not [f for f in spool.iterdir() if f.suffix == ".lp"], 20), \
        "spool not emptied"
    assert collector.stop() == 0
    assert "dropped" not in collector.log_text()


def test_cpu_limit_exceeded_under_generated_load(collector, receiver):
    # 0.02 cores over the 10 s window: an idle collector stays far below,
    # merging and encoding thousands of new flows every second does not
    import time as _time
    collector.start("--res-cpu", "0.02", interval="1s")
    end = _time.monotonic() + 60
    base = 1024
    while collector.proc.poll() is None and _time.monotonic() < end:
        traffic.run_client("udp-fanout", "127.0.0.1", base, 3000, 10)
        base = 1024 if base > 20000 else base + 3000
    rc = collector.proc.wait(30)
    err = collector.proc.stderr.read()
    assert rc == 4, (rc, err)
    assert "cpu_limit exceeded" in err and "cores" in err and "Traceback" not in err


def test_dns_forwarders_upstream_queries_are_outgoing(collector, receiver):
    """dnsmasq on the host forwards to an upstream dnsmasq inside a test
    namespace, from random source ports it binds explicitly (with a port
    range set, as unbound does by default; below the ephemeral range): its
    upstream flows began with a datagram it sent, so they are outgoing;
    the queries it answers began with one it received: incoming."""
    collector.start(interval="1s")
    names = [f"n{i}.{uuid.uuid4().hex[:8]}.test" for i in range(3)]
    with NetNS() as ns:
        with Dnsmasq(ns, [ns.peer_ip], [f"--host-record={n},10.9.8.{i}" for i, n in enumerate(names)]), \
                Dnsmasq(None, [ns.host_ip], [f"--server={ns.peer_ip}", "--min-port=20000", "--max-port=30000"]) as fwd:
            for n in names:
                assert dig(ns.host_ip, n)[0] == "NOERROR"

            def upstream():
                return [p for p in flows(receiver, fwd.p.pid)
                        if p.tags["dst_ip"] == ns.peer_ip and p.tags["dst_port"] == "53"]
            traffic.wait_until(lambda: sum(p.fields["bytes_read"] for p in upstream()) > 0, 15)
            up = upstream()
            answered = [p for p in flows(receiver, fwd.p.pid) if p.tags["src_port"] == "53"]
    assert up and {p.tags["direction"] for p in up} == {"outgoing"}, [p.tags for p in up]
    assert all(p.tags["transport"] == "udp" and p.tags["src_ip"] == ns.host_ip for p in up)
    assert answered and {p.tags["direction"] for p in answered} == {"incoming"}
    check_all(receiver)
