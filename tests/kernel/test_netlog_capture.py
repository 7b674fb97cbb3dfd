"""bpf-netlog's capture on the real kernel: a packet socket opened inside a
test namespace on its veth, real TCP and UDP traffic through the pair, and
every count compared with what tcpdump captured on the same interface in
the same run (the pcap read with dpkt, not by hand)."""
import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import types

import pyarrow as pa
import pytest

from support.netns import NetNS, sh
from support.traffic import tcp_server, wait_until

pytestmark = [pytest.mark.kernel, pytest.mark.requires("packet_socket")]

PORT = 18080
# tcpdump's capture buffer: its default 2 MiB dropped packets of the 2 MB transfer under load
TCPDUMP_BUFFER_KIB = 32768


def send_and_drain(addr, nbytes, timeout=None):
    """One TCP connection to addr: nbytes sent, our side shut, the peer's
    reply read to its end, closed."""
    c = socket.create_connection(addr, timeout=timeout)
    c.sendall(b"x" * nbytes)
    c.shutdown(socket.SHUT_WR)
    while c.recv(65536):
        pass
    c.close()


@pytest.fixture
def ns(bpf_ok):
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is needed (apt-get install tcpdump)")
    with NetNS() as n:
        yield n


class Tcpdump:
    """tcpdump -w on an interface of the namespace, started before the
    traffic (it says "listening on" once its socket is bound)."""

    def __init__(self, ns, path):
        self.path = path
        self.proc = subprocess.Popen(ns.prefix() + ["tcpdump", "-i", ns.veth_peer, "-U", "-n", "-s", "0",
                                                    "-B", str(TCPDUMP_BUFFER_KIB), "-w", str(path), "ip or ip6"],
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert "listening on" in line, line

    def stop(self):
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.communicate(timeout=10)[1]
        assert "\n0 packets dropped by kernel" in "\n" + err, err
        return read_pcap(self.path)


def read_pcap(path):
    import dpkt
    out = []
    with open(path, "rb") as f:
        for ts, frame in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            out.append((ts, eth, ip, ip.data))
    return out


def capture(ns):
    from dkebpf.plugins.netlog import NicCapture, list_nics, in_netns
    path = f"/var/run/netns/{ns.name}"
    with in_netns(path):
        nic = next(n for n in list_nics() if n.name == ns.veth_peer)
    return NicCapture.open(path, 1, nic, False)


def drain_until_quiet(cap, seconds=1.0):
    """Drain for a while, then until every packet the kernel put in the
    ring (PACKET_STATISTICS tp_packets, drops excluded) has been walked:
    a loaded machine may hand the last block over late."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        cap.ring.wait(50)
        cap.drain()
    end = time.monotonic() + 20
    while time.monotonic() < end:
        c = cap.ring.counters()
        if c["kernel_packets"] - c["kernel_drops"] == c["packets"]:
            return
        cap.ring.wait(50)
        cap.drain()


def tcp_payload_len(ip, tcp):
    """TCP payload bytes as the headers say (as tcpdump prints "length"):
    a GSO packet tunnelled through VXLAN is captured with outer lengths of
    one segment, so the bytes dpkt slices can be fewer than the inner
    headers describe."""
    import dpkt
    if isinstance(ip, dpkt.ip6.IP6):
        return ip.plen - tcp.off * 4
    return ip.len - ip.hl * 4 - tcp.off * 4


def connection_packets(pkts, local_ip, local_port):
    """(direction, eth, ip, tcp) of the pcap's packets of the TCP
    connection to local_ip:local_port."""
    import dpkt
    for _ts, eth, ip, tcp in pkts:
        if not isinstance(tcp, dpkt.tcp.TCP):
            continue
        src = socket.inet_ntop(socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET, ip.src)
        tx = src == local_ip and tcp.sport == local_port
        if tx or tcp.dport == local_port:
            yield "tx" if tx else "rx", eth, ip, tcp


def expected_from_pcap(pkts, local_ip, local_port):
    """Per-direction packets and payload bytes of the TCP connection to
    local_ip:local_port, as tcpdump saw them; and the client's SYN seq and
    the server's SYN|ACK seq."""
    import dpkt
    e = {"tx_packets": 0, "rx_packets": 0, "tx_bytes": 0, "rx_bytes": 0}
    syn = synack = None
    for d, _eth, ip, tcp in connection_packets(pkts, local_ip, local_port):
        e[f"{d}_packets"] += 1
        e[f"{d}_bytes"] += tcp_payload_len(ip, tcp)
        if tcp.flags & dpkt.tcp.TH_SYN:
            if tcp.flags & dpkt.tcp.TH_ACK:
                synack = tcp.seq
            else:
                syn = tcp.seq
    return e, syn, synack


TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")   # bits 0..7


def series_from_pcap(pkts, local_ip, local_port):
    """The connection's packets as tcpdump saw them, as the message's
    series says them once made absolute: (txrx, src mac, dst mac, flags,
    seq, ack (0 without ACK), payload size, window: scaled by the shift
    its sender's SYN announced once both SYNs carried one, RFC 7323 2.2)."""
    import dpkt
    conn = list(connection_packets(pkts, local_ip, local_port))
    shift = {}
    for d, _eth, _ip, tcp in conn:
        if tcp.flags & dpkt.tcp.TH_SYN:
            ws = [v for k, v in dpkt.tcp.parse_opts(tcp.opts) if k == dpkt.tcp.TCP_OPT_WSCALE]
            if ws:
                shift[d] = min(ws[0][0], 14)
    out = []
    for d, eth, ip, tcp in conn:
        flags = "|".join(n for b, n in enumerate(TCP_FLAG_NAMES) if tcp.flags & (1 << b))
        scaled = len(shift) == 2 and not tcp.flags & dpkt.tcp.TH_SYN
        out.append((d, eth.src.hex(":"), eth.dst.hex(":"), flags, tcp.seq,
                    tcp.ack if tcp.flags & dpkt.tcp.TH_ACK else 0, tcp_payload_len(ip, tcp),
                    tcp.win << shift[d] if scaled else tcp.win))
    assert len(shift) == 2 or not conn or not conn[0][3].flags & dpkt.tcp.TH_SYN   # Linux sends the option
    return out


def series_from_messages(messages, time_range):
    """The per-packet series of bpf_net_l4_log messages (one connection's
    chunks in order), made absolute with their positions and mac_map; the
    chunk ids and each row's time checked on the way (time_range: (first,
    last) capture time in ns the rows must fall in)."""
    import json
    out = []
    for i, text in enumerate(messages):
        m = json.loads(text)["tcp"]
        assert m["chunk_id"] == i + 1 and m["series_unwritten"] == 0
        assert m["tcp_series_col_name"] == ["txrx", "src_mac", "dst_mac", "flags", "seq", "ack_seq",
                                            "payload_size", "win", "ts"]
        assert len(m["tcp_series"]) == m["tx_packets"] + m["rx_packets"]
        mac = {v: k for k, v in m["mac_map"].items()}
        pos = {"tx": m["tx_seq_pos"], "rx": m["rx_seq_pos"]}
        for d, smac, dmac, flags, seq, ack, size, win, ts in m["tcp_series"]:
            other = "rx" if d == "tx" else "tx"
            assert time_range[0] <= m["time_pos"] + ts <= time_range[1]
            out.append((d, mac[smac], mac[dmac], flags, (pos[d] + seq) & 0xFFFFFFFF,
                        (pos[other] + ack) & 0xFFFFFFFF if "ACK" in flags.split("|") else ack, size, win))
    return out


def syn_retransmits_from_pcap(pkts, local_ip, local_port):
    """SYNs and SYN|ACKs of the connection after the first of each, as
    tcpdump saw them (the table's syn_retrans rule)."""
    import dpkt
    seen = {True: 0, False: 0}   # by ACK flag
    for _d, _eth, _ip, tcp in connection_packets(pkts, local_ip, local_port):
        if tcp.flags & dpkt.tcp.TH_SYN:
            seen[bool(tcp.flags & dpkt.tcp.TH_ACK)] += 1
    return sum(max(0, n - 1) for n in seen.values())


def retransmits_from_pcap(pkts, local_port):
    """The reference rule (tests/reference/netlog_ref.py) on tcpdump's
    packets: per direction, a segment occupying sequence space of which
    some was seen before is a retransmission (keep-alive probes excepted)."""
    import dpkt

    from reference.netlog_ref import _cover
    nxt, seen, count = {}, {"tx": [], "rx": []}, {"tx": 0, "rx": 0}
    for _ts, _eth, _ip, tcp in pkts:
        if not isinstance(tcp, dpkt.tcp.TCP) or local_port not in (tcp.sport, tcp.dport):
            continue
        d = "tx" if tcp.sport == local_port else "rx"
        syn, fin = bool(tcp.flags & dpkt.tcp.TH_SYN), bool(tcp.flags & dpkt.tcp.TH_FIN)
        span = tcp_payload_len(_ip, tcp) + syn + fin
        if not span:
            continue
        end = (tcp.seq + span) & 0xFFFFFFFF
        keepalive = d in nxt and span <= 1 and not fin and tcp.seq == (nxt[d] - 1) & 0xFFFFFFFF
        if _cover(seen[d], tcp.seq, end) and not syn and not keepalive:
            count[d] += 1
        if d not in nxt or ((nxt[d] - end) & 0xFFFFFFFF) >= 0x80000000:
            nxt[d] = end
    return count


@pytest.mark.parametrize("family,loss", [(4, 0), (6, 0), (4, 0.03)])
def test_tcp_transfer_counts_equal_tcpdump(ns, tmp_path, family, loss):
    # with loss, 2 MB: at least 1381 MSS-sized data segments come in, more than 3 chunks hold
    # (256 + 256 + 320 packets) however few ACKs the server sends; 1 MB made ~700, and in a run
    # under load the server acknowledged the first 223 with 33 ACKs: all fitted in 3 chunks
    nbytes = 2_000_000 if loss else 1_000_000
    if loss:
        ns.drop_randomly(loss)   # also cuts the host side's GSO: MSS-sized packets, many chunks
    cap = capture(ns)
    dump = Tcpdump(ns, tmp_path / "t.pcap")
    try:
        peer = ns.peer_ip if family == 4 else ns.peer_ip6
        srv = tcp_server(peer, 300_000, prefix=ns.prefix())
        port = srv.info["port"]
        c = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6)
        c.connect((peer, port))
        c.sendall(b"x" * nbytes)
        c.shutdown(socket.SHUT_WR)
        got = 0
        while True:
            b = c.recv(65536)
            if not b:
                break
            got += len(b)
        c.close()
        assert got == 300_000
        srv.wait(10)
        drain_until_quiet(cap)
        pkts = dump.stop()
        drain_until_quiet(cap, 0.3)
        got = cap.conns.collect(time.time_ns(), True)
        ring = cap.ring.counters()
    finally:
        cap.close()
    # a mismatch seen once under load: these say whether the ring lost packets or tcpdump saw fewer
    assert ring["kernel_drops"] == 0, ring
    chunks = got.chunks
    exp, syn, synack = expected_from_pcap(pkts, peer, port)
    which = (chunks["lport"] == port) & (chunks["proto"] == 6)
    mine = chunks[which]
    assert len(mine) >= 1
    got_counts = {k: int(mine[k].sum()) for k in exp}
    assert got_counts == exp, (ring, len(pkts))
    # retransmitted payload counts again, as on the wire; without loss too a segment may go
    # twice (a tail loss probe or a spurious timeout on a busy machine: CI saw rx_bytes != nbytes
    # with the counts equal to tcpdump's), so only the loss case must exceed nbytes
    assert exp["rx_bytes"] >= nbytes, exp
    if loss:
        assert exp["rx_bytes"] > nbytes, exp
    assert exp["tx_bytes"] >= 300_000
    assert list(mine["chunk_id"]) == list(range(1, len(mine) + 1))
    # more than one chunk: 256 packets each unless the close is in it
    assert all(int(r["tx_packets"] + r["rx_packets"]) == 256 for r in mine[:-1] if not r["chunk_fin"])
    if loss:
        assert len(mine) > 3
    first, last = mine[0], mine[-1]
    assert first["chunk_syn"] == 1 and first["direction"] == 1   # the client came in
    assert int(first["rx_seq_min"]) == syn and int(first["tx_seq_min"]) == synack
    assert (int(first["syn_seq"]), int(first["synack_seq"])) == (syn, synack)   # nic_traceid
    assert first["hs_cost_ns"] > 0 and last["chunk_fin"] == 1 and last["closed"] == 1
    assert last["close_cost_ns"] >= 0
    retrans = retransmits_from_pcap(pkts, port)
    got_retrans = {"tx": int(mine["tx_retrans"].sum()), "rx": int(mine["rx_retrans"].sum())}
    # exact: a segment reordered between the two packet sockets (ours and
    # tcpdump's see packets of different CPUs interleaved differently) fills
    # a hole in both streams, so it is no retransmission in either
    assert got_retrans == retrans
    if loss:
        assert retrans["rx"] > 0
    # as tcpdump saw them: the random drop takes the SYN at times (the client sends it again a
    # second later), and the connection then has one SYN retransmission
    assert int(mine["syn_retrans"].max()) == syn_retransmits_from_pcap(pkts, peer, port)
    assert mine["rtt_samples"].sum() >= 1
    assert len({(int(r["inner_hi"]), int(r["inner_lo"])) for r in mine}) == 1
    # the message's per-packet series: every packet tcpdump saw, each exactly (direction, MACs,
    # flags, seq, ack, length, window), the interface's MAC the source of what it sent; as a
    # multiset, the two sockets may see packets of different CPUs in a different order
    series = series_from_messages(got.messages.filter(pa.array(which)).to_pylist(),
                                  (int(pkts[0][0] * 1e9) - 10**9, int(pkts[-1][0] * 1e9) + 10**9))
    assert sorted(series) == sorted(series_from_pcap(pkts, peer, port))
    assert {r[1] for r in series if r[0] == "tx"} == {cap.nic.mac}
    rc = cap.ring.counters()
    assert rc["kernel_drops"] == 0
    # the socket program cut the bulk segments after their headers (packetfilter.netlog_keep):
    # the counts above came from the headers, a few dozen bytes of each segment reached user space;
    # cut on purpose, so counted apart from real truncation
    assert rc["cut_bulk_segments"] > 0 and rc["truncated"] == 0 and rc["payload_bytes"] < exp["rx_bytes"] // 10


def test_udp_flow_counts_equal_tcpdump(ns, tmp_path):
    import dpkt
    cap = capture(ns)
    dump = Tcpdump(ns, tmp_path / "u.pcap")
    try:
        echo = subprocess.Popen(ns.prefix() + ["python3", "-c", (
            f"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('{ns.peer_ip}',{PORT}));"
            f"print('ready',flush=True)\nfor i in range(50):\n d,a=s.recvfrom(2000);s.sendto(d[:100],a)")],
            stdout=subprocess.PIPE, text=True)
        assert echo.stdout.readline().strip() == "ready"
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(5)
        for i in range(50):
            u.sendto(bytes(700 + i), (ns.peer_ip, PORT))
            u.recvfrom(2000)
        assert echo.wait(10) == 0
        drain_until_quiet(cap)
        pkts = dump.stop()
        drain_until_quiet(cap, 0.3)
        chunks = cap.conns.collect(time.time_ns(), True).chunks
    finally:
        cap.close()
    tx = [p for p in pkts if isinstance(p[3], dpkt.udp.UDP) and p[3].sport == PORT]
    rx = [p for p in pkts if isinstance(p[3], dpkt.udp.UDP) and p[3].dport == PORT]
    mine = chunks[(chunks["lport"] == PORT) & (chunks["proto"] == 17)]
    assert len(tx) == len(rx) == 50
    assert int(mine["tx_packets"].sum()) == 50 and int(mine["rx_packets"].sum()) == 50
    assert int(mine["tx_bytes"].sum()) == sum(len(p[3].data) for p in tx)
    assert int(mine["rx_bytes"].sum()) == sum(len(p[3].data) for p in rx)


def test_plugin_follows_a_namespace_that_comes_and_goes(bpf_ok, tmp_path):
    """The plugin as the agent runs it: a namespace created after start()
    (found through the server process living in it), its connection as a
    bpf_net_l4_log point with the interface's tags, then the namespace
    deleted: its socket is flushed and closed at the next scan."""
    import logging

    from dkebpf.config import load_config
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.netlog import NetlogPlugin
    with NetNS() as ns:
        cfg = load_config(["--enabled", "bpf-netlog", "--netlog-log", "--netlog-metric",
                           "--netlog-interfaces", f"^{ns.veth_peer}$"], environ={})
        plugin = NetlogPlugin(PluginContext(cfg=cfg, logger=logging.getLogger("test"), self_pid=0))
        plugin.start()
        try:
            assert plugin.captures == {}   # no process lives in the namespace yet
            srv = tcp_server(ns.peer_ip, 5000, prefix=ns.prefix())
            port = srv.info["port"]
            plugin.rescan()
            assert [name for _ino, name in plugin.captures] == [ns.veth_peer]
            send_and_drain((ns.peer_ip, port), 20000)
            srv.wait(10)
            plugin.rescan()   # the server exited: no process holds the namespace any more
            assert plugin.captures == {}
            assert plugin.totals["closed"] == 1
            batches = plugin.collect(time.time_ns())
        finally:
            plugin.stop()
    by_name = {b.measurement: b for b in batches}
    assert sorted(by_name) == ["bpf_net_l4_log", "netflow"]   # no HTTP here: no bpf_net_l7_log, no httpflow
    nf = [r for r in by_name["netflow"].batch.to_pylist() if r["src_port"] == str(port)]
    assert by_name["netflow"].input_name == "bpf-netlog/netflow"
    assert len(nf) == 1
    assert (nf[0]["src_ip"], nf[0]["dst_ip"], nf[0]["dst_port"], nf[0]["direction"], nf[0]["transport"]) == (
        ns.peer_ip, ns.host_ip, "*", "incoming", "tcp")
    assert (nf[0]["bytes_read"], nf[0]["bytes_written"], nf[0]["tcp_established"], nf[0]["tcp_closed"],
            nf[0]["retransmits"]) == (20000, 5000, 1, 1, 0)
    assert nf[0]["rtt"] > 0
    rows = [r for r in by_name["bpf_net_l4_log"].batch.to_pylist() if r["src_port"] == str(port)]
    assert len(rows) == 1
    r = rows[0]
    assert (r["src_ip"], r["dst_ip"], r["nic_name"], r["l4_proto"]) == (ns.peer_ip, ns.host_ip, ns.veth_peer, "tcp")
    assert (r["direction"], r["conn_side"], r["server_port"], r["client_ip"]) == (
        "incoming", "server", str(port), ns.host_ip)
    assert r["rx_bytes"] == 20000 and r["tx_bytes"] == 5000
    assert r["chunk_syn"] and r["chunk_fin"] and r["chunk_id"] == 1
    assert r["host_network"] == "false" and r["virtual_nic"] == "true" and r["vxlan_packet"] == "false"
    assert r["l7_proto"] == "unknown"   # not HTTP
    assert len(r["inner_traceid"]) == 32 and r["tcp_3whs_cost"] > 0
    import json
    msg = json.loads(r["message"])
    assert msg["l4_proto"] == "tcp" and set(msg) == {"l4_proto", "tcp"}
    m = msg["tcp"]
    assert {k: m[k] for k in ("chunk_id", "tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "tx_retrans",
                              "rx_retrans", "tx_rst", "rx_rst", "series_unwritten")} == {
        "chunk_id": 1, "tx_bytes": 5000, "rx_bytes": 20000, "tx_packets": r["tx_packets"],
        "rx_packets": r["rx_packets"], "tx_retrans": 0, "rx_retrans": 0, "tx_rst": 0, "rx_rst": 0,
        "series_unwritten": 0}
    assert len(m["tcp_series"]) == r["tx_packets"] + r["rx_packets"] and m["time_pos"] == r["time"]
    assert m["tcp_series"][0][0] == "rx" and m["tcp_series"][0][3] == "SYN" and m["tcp_series"][0][4] == 1
    assert m["rx_seq_pos"] + 1 == int(r["nic_traceid"].split("_")[0])   # the client's SYN seq


HTTP_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"z" * int(self.path.split("/")[-1].split("?")[0])
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
s.serve_forever()
"""


def test_http_exchanges_l7_traceid_equal_tcpdump_seqs(ns, tmp_path):
    """Keep-alive HTTP/1.1 through the veth: one exchange per request, its
    l7_traceid the raw sequence numbers of the segments tcpdump saw start
    the request line and the status line; traceparent split into ids."""
    import http.client

    import dpkt
    cap = capture(ns)
    dump = Tcpdump(ns, tmp_path / "h.pcap")
    srv = subprocess.Popen(ns.prefix() + ["python3", "-c", HTTP_SERVER, ns.peer_ip, str(PORT)],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        conn = http.client.HTTPConnection(ns.peer_ip, PORT, timeout=5)
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        sizes = [10, 70000, 5, 3]
        for i, size in enumerate(sizes):
            path = f"/missing/{size}" if i == 2 else f"/a/b/{size}?q=1"
            conn.request("GET", path, headers={"traceparent": tp} if i == 1 else {})
            r = conn.getresponse()
            assert len(r.read()) == size
        conn.close()
        drain_until_quiet(cap)
        pkts = dump.stop()
        drain_until_quiet(cap, 0.3)
        got = cap.conns.collect(time.time_ns(), True)
        chunks, xs = got.chunks, got.exchanges
    finally:
        srv.kill()
        srv.wait()
        cap.close()
    reqs = [p[3].seq for p in pkts if isinstance(p[3], dpkt.tcp.TCP) and p[3].dport == PORT
            and p[3].data.startswith(b"GET ")]
    resps = [p[3].seq for p in pkts if isinstance(p[3], dpkt.tcp.TCP) and p[3].sport == PORT
             and p[3].data.startswith(b"HTTP/1.")]
    assert len(reqs) == len(resps) == 4
    assert set(chunks[chunks["lport"] == PORT]["l7_http"]) == {1}
    from dkebpf.plugins.netlog import l7_batch
    nic = types.SimpleNamespace(name=ns.veth_peer, mac="00:00:00:00:00:00")
    rows = l7_batch([(types.SimpleNamespace(nic=nic, netns=1, host_network=False), xs)]).to_pylist()
    assert [r["l7_traceid"] for r in rows] == [f"{a}_{b}" for a, b in zip(reqs, resps)]
    assert [r["http_status_code"] for r in rows] == [200, 200, 404, 200]
    assert [r["http_path"] for r in rows] == ["/a/b/10", "/a/b/70000", "/missing/5", "/a/b/3"]
    assert {r["http_method"] for r in rows} == {"GET"} and {r["direction"] for r in rows} == {"incoming"}
    assert (rows[1]["trace_id"], rows[1]["parent_id"]) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert rows[0]["trace_id"] == ""
    assert rows[1]["tx_bytes"] > 70000 and rows[1]["cost_cnt_dl"] >= 0 and rows[1]["cost_resp_wait"] > 0
    assert (rows[1]["tx_seq"], rows[1]["rx_seq"]) == (resps[1], reqs[1])
    assert len({r["inner_traceid"] for r in rows}) == 1
    import json
    assert json.loads(rows[1]["message"])["http"] == {
        "direction": "incoming", "pkt_chunk_range": [1, 1], "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "parent_id": "b7ad6b7169203331", "path": "/a/b/70000", "method": "GET", "status_code": 200}
    # httpflow from the same exchanges (what the plugin sends as bpf-netlog/httpflow)
    from dkebpf.enrich.addr import LocalAddressResolver
    from dkebpf.plugins.httpflow import aggregate_requests
    from dkebpf.plugins.netlog import request_rows
    hf = aggregate_requests(request_rows(xs), 32768, LocalAddressResolver(), None, None, None).to_pylist()
    assert sorted((r["path"], r["status_code"], r["count"]) for r in hf) == [
        ("/a/b/10", 200, 1), ("/a/b/3", 200, 1), ("/a/b/70000", 200, 1), ("/missing/5", 404, 1)]
    assert all(r["method"] == "GET" and r["http_version"] == "1.1" and r["latency"] > 0 for r in hf)
    assert all(r["direction"] == "incoming" and r["src_port"] == str(PORT) for r in hf)
    assert next(r for r in hf if r["path"] == "/a/b/70000")["bytes_written"] > 70000


@pytest.mark.parametrize("port", [4789, 8472])
def test_vxlan_inner_connection_equals_tcpdump(ns, tmp_path, port):
    """A VXLAN device at each end of the veth (VNI 42): the socket on the
    veth sees the tunnel and reports the inner connection (vxlan, vni,
    inner addresses), counted exactly as tcpdump's inner packets."""
    import dpkt
    n = ns.host_ip.split(".")[2]
    vx_host, vx_peer = f"dkx{ns.veth_host[3:]}", "vx0"
    inner_host, inner_peer = f"10.215.{n}.1", f"10.215.{n}.2"   # 10.214 is the bench's veth range
    sh("ip", "link", "add", vx_host, "type", "vxlan", "id", "42", "local", ns.host_ip, "remote", ns.peer_ip,
       "dstport", str(port))
    try:
        sh("ip", "addr", "add", f"{inner_host}/24", "dev", vx_host)
        sh("ip", "link", "set", vx_host, "up")
        ns.exec("ip", "link", "add", vx_peer, "type", "vxlan", "id", "42", "local", ns.peer_ip, "remote",
                ns.host_ip, "dstport", str(port))
        ns.exec("ip", "addr", "add", f"{inner_peer}/24", "dev", vx_peer)
        ns.exec("ip", "link", "set", vx_peer, "up")
        cap = capture(ns)
        dump = Tcpdump(ns, tmp_path / "v.pcap")
        try:
            srv = tcp_server(inner_peer, 3000, prefix=ns.prefix())
            srv_port = srv.info["port"]
            send_and_drain((inner_peer, srv_port), 50000, timeout=5)
            srv.wait(10)
            drain_until_quiet(cap)
            pkts = dump.stop()
            drain_until_quiet(cap, 0.3)
            got = cap.conns.collect(time.time_ns(), True)
        finally:
            cap.close()
    finally:
        sh("ip", "link", "del", vx_host, check=False)
    chunks = got.chunks
    inner = []
    for ts, eth, ip, udp in pkts:
        if isinstance(udp, dpkt.udp.UDP) and udp.dport == port:
            e = dpkt.ethernet.Ethernet(bytes(udp.data)[8:])
            if isinstance(e.data, dpkt.ip.IP) and isinstance(e.data.data, dpkt.tcp.TCP):
                inner.append((ts, e, e.data, e.data.data))
    exp, syn, synack = expected_from_pcap(inner, inner_peer, srv_port)
    which = (chunks["lport"] == srv_port) & (chunks["vxlan"] == 1)
    mine = chunks[which]
    assert len(mine) >= 1 and set(mine["vni"]) == {42}
    assert {k: int(mine[k].sum()) for k in exp} == exp
    # the series: the inner packets, with the inner frames' MAC addresses (the VXLAN devices')
    series = series_from_messages(got.messages.filter(pa.array(which)).to_pylist(),
                                  (int(pkts[0][0] * 1e9) - 10**9, int(pkts[-1][0] * 1e9) + 10**9))
    assert sorted(series) == sorted(series_from_pcap(inner, inner_peer, srv_port))
    assert cap.nic.mac not in {r[1] for r in series}
    assert exp["rx_bytes"] == 50000 and exp["tx_bytes"] == 3000
    assert socket.inet_ntoa(bytes(mine[0]["laddr"])[:4]) == inner_peer
    assert int(mine[0]["rx_seq_min"]) == syn and int(mine[0]["tx_seq_min"]) == synack


@pytest.mark.parametrize("where", ["kernel", "connection"])
def test_netlog_blacklist_drops_one_port(bpf_ok, where):
    """netlog_blacklist from the environment, as a user sets it: the TCP
    port of the second server dropped, either by the socket's classic BPF program (a header
    field: the packets never reach user space) or by the Cython evaluator
    per connection (has_prefix on an address cannot run in classic BPF);
    the other connection is counted exactly."""
    import logging

    from dkebpf.config import load_config
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.netlog import NetlogPlugin
    with NetNS() as ns:
        servers = [tcp_server(ns.peer_ip, 100, prefix=ns.prefix()) for _ in range(2)]
        kept, blocked = (s.info["port"] for s in servers)
        # on the namespace's interface the server is the local end: src_port is its port
        rule = {"kernel": f"tcp && src_port == {blocked}",
                "connection": f"# per connection\nhas_prefix(ip_saddr, '{ns.peer_ip}') &&\n  src_port == {blocked}"}[where]
        cfg = load_config(["--enabled", "bpf-netlog", "--netlog-log", "--netlog-interfaces", f"^{ns.veth_peer}$"],
                          environ={"DKE_NETLOG_NET_FILTER": rule})
        plugin = NetlogPlugin(PluginContext(cfg=cfg, logger=logging.getLogger("test"), self_pid=0))
        plugin.start()
        try:
            assert [name for _ino, name in plugin.captures] == [ns.veth_peer]
            ino = next(iter(plugin.captures))[0]
            for port in (kept, blocked):
                send_and_drain((ns.peer_ip, port), 7000)
            for s in servers:
                s.wait(10)
            time.sleep(0.3)
            for f in plugin.fileobjs():
                plugin.on_readable(f)
            batches = plugin.collect(time.time_ns())
            counters = plugin.counters()
        finally:
            plugin.stop()
    assert counters[f"{ino}/{ns.veth_peer}_kernel_drops"] == 0
    assert counters[f"{ino}/{ns.veth_peer}_conn_new_connections"] == 1   # the blocked one never came
    if where == "kernel":   # never copied to user space
        assert counters["filter_dropped_packets"] == counters["filter_dropped_connections"] == 0
    else:   # SYN, SYN-ACK, data, FIN, ACKs: every packet of the blocked connection, counted
        assert counters["filter_dropped_packets"] >= 6 and counters["filter_dropped_connections"] == 1
    rows = next(b for b in batches if b.measurement == "bpf_net_l4_log").batch.to_pylist()
    ports = {r["src_port"] for r in rows}
    assert str(kept) in ports and str(blocked) not in ports
    assert sum(r["rx_bytes"] for r in rows if r["src_port"] == str(kept)) == 7000


def test_plugin_emits_a_living_connections_chunk_when_it_ages(bpf_ok):
    """The original's 30 s rule, with the age lowered through the plugin's
    constructor: a connection that stays open has its chunk emitted once
    the chunk is that old, the next one with chunk_id 2; netflow gets its
    bytes at every collect, whether its chunk went out or not."""
    import logging

    from dkebpf.config import load_config
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.netlog import NetlogPlugin
    age_s = 2.0
    with NetNS() as ns:
        srv = tcp_server(ns.peer_ip, 10, prefix=ns.prefix())
        port = srv.info["port"]
        cfg = load_config(["--enabled", "bpf-netlog", "--netlog-log", "--netlog-metric",
                           "--netlog-interfaces", f"^{ns.veth_peer}$"], environ={})
        plugin = NetlogPlugin(PluginContext(cfg=cfg, logger=logging.getLogger("test"), self_pid=0),
                              chunk_age_ns=int(age_s * 1e9))
        plugin.start()

        def collect():
            time.sleep(0.3)   # the ring's block timeout
            for f in plugin.fileobjs():
                plugin.on_readable(f)
            by_name = {b.measurement: b.batch.to_pylist() for b in plugin.collect(time.time_ns())}
            return ([r for r in by_name.get("bpf_net_l4_log", []) if r["src_port"] == str(port)],
                    [r for r in by_name.get("netflow", []) if r["src_port"] == str(port)])

        try:
            c = socket.create_connection((ns.peer_ip, port))
            c.sendall(b"x" * 1000)
            logs, flows = collect()
            assert logs == []   # younger than the age, the connection open: held
            assert [f["bytes_read"] for f in flows] == [1000] and flows[0]["tcp_established"] == 1
            time.sleep(age_s)
            logs, flows = collect()
            assert [(r["chunk_id"], r["rx_bytes"], r["chunk_syn"], r["chunk_fin"]) for r in logs] == [
                (1, 1000, True, False)]
            assert flows == []   # nothing new
            c.sendall(b"y" * 500)
            logs, flows = collect()
            assert logs == [] and [f["bytes_read"] for f in flows] == [500]
            time.sleep(age_s)
            logs, _flows = collect()
            assert [(r["chunk_id"], r["rx_bytes"], r["chunk_syn"]) for r in logs] == [(2, 500, False)]
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass
            c.close()
            srv.wait(10)
            logs, flows = collect()   # closed: out at once
            assert [(r["chunk_id"], r["tx_bytes"], r["chunk_fin"]) for r in logs] == [(3, 10, True)]
            assert [(f["bytes_written"], f["tcp_closed"]) for f in flows] == [(10, 1)]
            # a young chunk of a living connection is held, but not past the
            # collector's last flush (the agent's collect_last at shutdown)
            srv = tcp_server(ns.peer_ip, 10, prefix=ns.prefix())
            port = srv.info["port"]
            c = socket.create_connection((ns.peer_ip, port))
            c.sendall(b"z" * 300)
            logs, _flows = collect()
            assert logs == []
            time.sleep(0.3)
            for f in plugin.fileobjs():
                plugin.on_readable(f)
            last = {b.measurement: b.batch.to_pylist() for b in plugin.collect_last(time.time_ns())}
            held = [r for r in last["bpf_net_l4_log"] if r["src_port"] == str(port)]
            assert [(r["chunk_id"], r["rx_bytes"], r["chunk_syn"]) for r in held] == [(1, 300, True)]
            c.close()
            srv.wait(10)
        finally:
            plugin.stop()


def test_plugin_reader_thread_drains_alone_and_hands_its_failure_over(bpf_ok):
    """The plugin's reader thread empties the ring while the agent's thread
    does nothing (no on_readable, no drain, no collect); when folding fails
    there, the error is raised at the agent's next step, not lost with the
    thread."""
    with NetNS() as ns:
        srv = tcp_server(ns.peer_ip, 10, prefix=ns.prefix())
        plugin = netlog_plugin(ns)
        plugin.start()
        try:
            (cap,) = plugin.captures.values()
            c = socket.create_connection((ns.peer_ip, srv.info["port"]))
            c.sendall(b"x" * 5000)
            assert wait_until(lambda: cap.conns.packets >= 3, 5)   # SYN, SYN|ACK, ACK at least

            class Broken:
                def add(self, pkts, payload, conn_filter=None):
                    raise RuntimeError("folding failed")
            cap.conns = Broken()
            c.sendall(b"y" * 5000)
            c.close()
            assert wait_until(lambda: plugin._reader_error is not None, 5)
            with pytest.raises(RuntimeError, match="folding failed"):
                plugin.on_readable(plugin.fileobjs()[0])
            srv.wait(10)
        finally:
            plugin.stop()


def thread_cpu_s(native_id):
    """CPU time (user + system) of one thread of this process."""
    import os
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spiller_tids():
    """The native ids of this process's ring spiller threads (PacketRing.start_spill)."""
    import os
    tids = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            if f.read().strip() == "packet-spill":
                tids.append(int(tid))
    return tids


def netlog_plugin(ns):
    import logging

    from dkebpf.config import load_config
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.netlog import NetlogPlugin
    cfg = load_config(["--enabled", "bpf-netlog", "--netlog-log", "--netlog-interfaces", f"^{ns.veth_peer}$"],
                      environ={})
    return NetlogPlugin(PluginContext(cfg=cfg, logger=logging.getLogger("test-netlog"), self_pid=0))


@contextlib.contextmanager
def started_netlog(ns):
    """A TCP server (10 connections) on ns's peer side and the netlog plugin
    started on its veth: (srv, plugin, (ino, name), cap) of its one capture;
    the plugin stopped at the end."""
    srv = tcp_server(ns.peer_ip, 10, prefix=ns.prefix())
    plugin = netlog_plugin(ns)
    plugin.start()
    try:
        ((ino, name), cap), = plugin.captures.items()
        yield srv, plugin, (ino, name), cap
    finally:
        plugin.stop()


def test_plugin_reader_is_real_time_and_the_ring_emptied_while_the_lock_is_held(bpf_ok):
    """The reader thread and the ring's spiller thread run SCHED_FIFO; the
    agent's thread is raised to it while it holds the plugin's lock (the
    reader waits for it there) and put back after. The lock (and the GIL)
    held 400 ms from before a connection's packets, the block they are in
    (handed over by the 64 ms block timeout) is still taken from the ring
    at once, into the spill (reader_lag_max_ns well under those 400 ms),
    and decoded once the lock is free."""
    import os
    with NetNS() as ns:
        with started_netlog(ns) as (srv, plugin, (ino, name), cap):
            assert wait_until(lambda: os.sched_getscheduler(plugin._reader.native_id) == os.SCHED_FIFO, 5)
            (spiller,) = spiller_tids()
            assert os.sched_getscheduler(spiller) == os.SCHED_FIFO
            assert os.sched_getscheduler(0) == os.SCHED_OTHER
            with plugin.locked():
                assert os.sched_getscheduler(0) == os.SCHED_FIFO
                send_and_drain((ns.peer_ip, srv.info["port"]), 5000, timeout=10)
                time.sleep(0.4)
                assert cap.conns.packets == 0 and cap.ring.counters()["spill_bytes_peak"] > 0
            assert os.sched_getscheduler(0) == os.SCHED_OTHER
            srv.wait(10)
            assert wait_until(lambda: cap.conns.packets >= 6, 5)
            counters = plugin.counters()
            lag = counters[f"{ino}/{name}_reader_lag_max_ns"]
            assert 0 < lag < 0.2e9, lag
            assert counters[f"{ino}/{name}_spill_drops"] == 0


def test_plugin_reader_does_not_spin_after_its_interface_went_down_and_up(bpf_ok):
    """The interface taken down and up between two scans (the socket kept:
    no rescan here): the spiller thread reads the socket's ENETDOWN once,
    counts it, neither it nor the reader spins on the error (their CPU time
    over a second stays small) and the same socket captures the next connection; stop() returns
    at once."""
    with NetNS() as ns:
        with started_netlog(ns) as (srv, plugin, (ino, name), cap):
            ns.exec("ip", "link", "set", ns.veth_peer, "down")
            ns.exec("ip", "link", "set", ns.veth_peer, "up")
            assert wait_until(lambda: cap.ring.counters()["socket_errors"] == 1, 5)
            for tid in [plugin._reader.native_id] + spiller_tids():
                before = thread_cpu_s(tid)
                time.sleep(1.0)
                spent = thread_cpu_s(tid) - before
                assert spent < 0.1, f"thread {tid} used {spent:.2f} s of CPU in 1 s without traffic"
            send_and_drain((ns.peer_ip, srv.info["port"]), 5000, timeout=10)
            srv.wait(10)
            assert wait_until(lambda: cap.conns.packets >= 6, 5)   # the handshake, data, the closes
            assert list(plugin.captures.values()) == [cap]
            assert plugin.counters()[f"{ino}/{name}_socket_errors"] == 1
            t0 = time.monotonic()   # to the end of plugin.stop() in started_netlog
        stopped_in = time.monotonic() - t0
    assert stopped_in < 1.0
    assert not plugin._reader.is_alive()


def test_plugin_stop_returns_when_its_reader_thread_is_stuck(bpf_ok, caplog):
    """stop() never hangs the collector's shutdown: with the reader thread
    stuck (waiting for the lock another thread holds, with a packet to
    read), stop() returns within its bounds and logs an error naming the
    thread; the reader ends once the lock is free."""
    import logging

    from dkebpf.plugins.netlog import READER_STOP_S, RETIRE_MS
    with NetNS() as ns:
        srv = tcp_server(ns.peer_ip, 10, prefix=ns.prefix())
        plugin = netlog_plugin(ns)
        plugin.start()
        (cap,) = plugin.captures.values()
        taken, release = threading.Event(), threading.Event()

        def hold():
            with plugin.lock:
                taken.set()
                release.wait(30)
        holder = threading.Thread(target=hold)
        holder.start()
        c = None
        try:
            assert taken.wait(5)
            c = socket.create_connection((ns.peer_ip, srv.info["port"]), timeout=10)
            c.sendall(b"x" * 100)
            time.sleep(2 * RETIRE_MS / 1000 + 0.2)   # the block timeout: the reader is woken, waits for the lock
            with caplog.at_level(logging.ERROR, logger="test-netlog"):
                t0 = time.monotonic()
                plugin.stop()
                stopped_in = time.monotonic() - t0
            assert stopped_in < 2 * READER_STOP_S + 1.0
            assert plugin._reader.is_alive()
            assert any("netlog-reader did not stop" in r.getMessage() for r in caplog.records), caplog.records
        finally:
            release.set()
            holder.join(10)
            plugin._reader.join(10)
            if c is not None:
                c.close()
            srv.wait(10)
            cap.close()   # left open by stop(): the lock was held
    assert not plugin._reader.is_alive()
