"""dnsflow end to end: dnsmasq inside a test namespace answers fixed
records (no query leaves the machine: --no-resolv, every name local), dig
in the host namespace asks over UDP and TCP, IPv4 and IPv6; the points
must count exactly what dig did, per domain, rcode and transport. And the
A answers name the addresses in netflow points (dst_domain)."""
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from dkebpf.plugins import requirements

from support import traffic
from support.dnsmasq import Dnsmasq, dig
from support.dnat import dnat_rule, service_ip
from support.netns import NetNS, routed_through_host
from support.schema import check_point

pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("ebpf-net",), ("httpflow",)))]


def mine(receiver, servers):
    return [p for p in receiver.points(measurement="dnsflow")
            if p.tags.get("dst_ip") in servers or p.tags.get("src_ip") in servers]


def tally(points):
    """(domain, rcode, transport, family) -> count, and the points."""
    out = {}
    for p in points:
        k = (p.tags["dst_domain"], p.fields["rcode"], p.tags["transport"], p.tags["family"])
        out[k] = out.get(k, 0) + p.fields["count"]
    return out


def test_dnsflow_counts_latency_timeouts_and_domains(collector, receiver):
    tag = uuid.uuid4().hex[:8]
    web, alias, mid, target, nx, lost = (f"{x}.{tag}.test" for x in
                                         ("web", "alias", "mid", "target", "nx", "lost"))
    collector.start(interval="2s")
    with NetNS() as ns:
        base = ns.peer_ip.rsplit(".", 1)[0]
        blackhole, web_ip, target_ip = f"{base}.3", f"{base}.5", f"{base}.6"
        for a in (blackhole, web_ip, target_ip):
            ns.exec("ip", "addr", "add", f"{a}/24", "dev", ns.veth_peer)
        # queries to the blackhole address vanish: the timeout case
        ns.exec("iptables", "-A", "INPUT", "-d", blackhole, "-p", "udp", "--dport", "53", "-j", "DROP")
        records = [f"--host-record={web},{web_ip},{ns.peer_ip6}", f"--host-record={target},{target_ip}",
                   f"--cname={mid},{target}", f"--cname={alias},{mid}", f"--address=/{nx}/"]
        with Dnsmasq(ns, [ns.peer_ip, ns.peer_ip6], records):
            expect = {}

            def ask(server, name, rcode, transport="udp", family="IPv4", **kw):
                status, answers = dig(server, name, tcp=transport == "tcp", **kw)
                assert status == {0: "NOERROR", 3: "NXDOMAIN", -1: None}[rcode], (name, status)
                key = (name, rcode, transport, family)
                expect[key] = expect.get(key, 0) + 1
                return answers

            for _ in range(3):
                ans = ask(ns.peer_ip, web, 0)
                assert ans[0][-1] == web_ip
            for _ in range(2):
                ask(ns.peer_ip, web, 0, "tcp")
            ask(ns.peer_ip, nx, 3)
            ask(ns.peer_ip, nx, 3, "tcp")
            chain = ask(ns.peer_ip, alias, 0)
            assert [a[3] for a in chain] == ["CNAME", "CNAME", "A"] and chain[-1][-1] == target_ip
            ask(ns.peer_ip6, web, 0, "udp", "IPv6", qtype="AAAA")
            ask(blackhole, lost, -1)

            # connections to the addresses just resolved carry their names
            srv = traffic.tcp_server(web_ip, 10, prefix=ns.prefix(), conns=1)
            srv2 = traffic.tcp_server(target_ip, 10, prefix=ns.prefix(), conns=1)
            try:
                web_pid, _, _ = traffic.run_client("tcp-client", web_ip, srv.info["port"], 100)
                tgt_pid, _, _ = traffic.run_client("tcp-client", target_ip, srv2.info["port"], 100)
                srv.wait()
                srv2.wait()
            finally:
                srv.stop()
                srv2.stop()

            servers = {ns.peer_ip, ns.peer_ip6, blackhole}
            # the timeout needs 6 s and one more flush
            traffic.wait_until(lambda: tally(mine(receiver, servers)) == expect or None, 25)
            pts = mine(receiver, servers)
            assert tally(pts) == expect

    for p in pts:
        check_point("dnsflow", p, extra_tags=("team", "env"))
        t = p.tags
        assert t["source"] == "dnsflow" and t["host"] == "e2e-host"
        assert t["direction"] == "outgoing" and t["src_port"] == "*" and t["dst_port"] == "53"
        assert t["src_ip"] in (ns.host_ip, ns.host_ip6)
        assert t["src_ip_type"] == "private" and t["dst_ip_type"] == "private"
        if p.fields["rcode"] == -1:
            assert p.fields["latency"] == 0 and p.fields["latency_max"] == 0
            assert t["dst_ip"] == blackhole and t["dst_domain"] == lost
        else:
            assert p.fields["latency"] > 0 and p.fields["latency_max"] >= p.fields["latency"]
    assert {(p.tags["family"], p.tags["dst_ip"]) for p in pts if p.tags["family"] == "IPv6"} == \
        {("IPv6", ns.peer_ip6)}

    def netflow_domains(pid):
        return {p.tags.get("dst_domain") for p in receiver.points(measurement="netflow")
                if p.tags.get("pid") == str(pid)}
    assert traffic.wait_until(lambda: netflow_domains(web_pid) == {web}, 10), netflow_domains(web_pid)
    # through the two CNAMEs: the name the client asked for
    assert traffic.wait_until(lambda: netflow_domains(tgt_pid) == {alias}, 10), netflow_domains(tgt_pid)
    for p in receiver.points(measurement="netflow"):
        if p.tags.get("pid") == str(web_pid):
            assert p.tags.get("server_domain") == web


# A resolver that answers every query NOERROR with no records, DELAY seconds
# after it came: header with QR and RA set, the question echoed back.
SLOW_RESOLVER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    time.sleep(float(sys.argv[2]))
    s.sendto(q[:2] + bytes([0x81, 0x80]) + q[4:6] + bytes(6) + q[12:], peer)
"""


def dns_query(qid, name):
    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split("."))
    return qid.to_bytes(2, "big") + b"\x01\x00\x00\x01" + bytes(6) + labels + b"\x00\x00\x01\x00\x01"


def test_latency_lies_within_the_clients_own_timings(collector, receiver):
    """latency is in ns: at least the 50 ms the resolver waits (in µs or ms
    it would be far less), at most the time the client measured from sending
    the query to receiving the answer."""
    delay_s = 0.05
    name = f"slow.{uuid.uuid4().hex[:8]}.test"
    collector.start(interval="1s")
    with NetNS() as ns:
        resolver = subprocess.Popen([*ns.prefix(), sys.executable, "-c", SLOW_RESOLVER, ns.peer_ip, str(delay_s)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert resolver.stdout.readline().strip() == "ready", resolver.stderr.read()
            measured = []
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(5)
                for qid in (0x1001, 0x1002, 0x1003):
                    t0 = time.monotonic_ns()
                    c.sendto(dns_query(qid, name), (ns.peer_ip, 53))
                    answer = c.recv(512)
                    measured.append(time.monotonic_ns() - t0)
                    assert answer[:2] == qid.to_bytes(2, "big") and answer[3] & 0x0F == 0
        finally:
            resolver.kill()
            resolver.wait()
        got = traffic.wait_until(
            lambda: sum(p.fields["count"] for p in mine(receiver, {ns.peer_ip})) >= 3 or None, 15)
        pts = mine(receiver, {ns.peer_ip})
    assert got and tally(pts) == {(name, 0, "udp", "IPv4"): 3}
    for p in pts:
        assert delay_s * 1e9 <= p.fields["latency"] <= p.fields["latency_max"] <= max(measured), \
            (p, measured)


def test_queries_this_host_answers_are_incoming(collector, receiver):
    tag = uuid.uuid4().hex[:8]
    name = f"here.{tag}.test"
    collector.start(interval="1s")
    with NetNS() as ns:
        # the resolver on the host side of the veth, the client in the namespace
        with Dnsmasq(None, [ns.host_ip], [f"--host-record={name},10.1.2.3"]):
            for tcp in (False, False, True):
                assert dig(ns.host_ip, name, tcp=tcp, prefix=ns.prefix())[0] == "NOERROR"
            got = traffic.wait_until(
                lambda: sum(p.fields["count"] for p in mine(receiver, {ns.host_ip})) >= 3 or None, 15)
            pts = mine(receiver, {ns.host_ip})
    assert got and tally(pts) == {(name, 0, "udp", "IPv4"): 2, (name, 0, "tcp", "IPv4"): 1}
    for p in pts:
        check_point("dnsflow", p, extra_tags=("team", "env"))
        t = p.tags
        assert (t["direction"], t["forwarded"], t["src_ip"], t["src_port"]) == ("incoming", "false", ns.host_ip, "53")
        assert (t["dst_ip"], t["dst_port"]) == (ns.peer_ip, "*")
        assert p.fields["latency"] > 0


def test_forwarded_queries_are_reported_once_and_tagged(collector, receiver):
    """A client namespace reaches a dnsmasq namespace through the host
    (routes via the veths, ip_forward on): the host neither asked nor
    answered, so the exchange is forwarded=true, src = the client,
    direction outgoing (src initiated), one point per query -- also when
    the host DNATs a service address to the server (a kube-proxy ClusterIP
    in front of CoreDNS), which the host sees before and after DNAT. The
    host's own dig to the same server stays outgoing, forwarded=false."""
    tag = uuid.uuid4().hex[:8]
    direct, via_svc, own = (f"{x}.{tag}.test" for x in ("direct", "svc", "own"))
    n = 220 + (os.getpid() % 17) * 2     # two subnets apart from NetNS's default range
    collector.start(interval="1s")
    with NetNS(index=n) as client, NetNS(index=n + 1) as server, routed_through_host(client, server):
        svc = service_ip(server)
        records = [f"--host-record={name},10.1.2.3" for name in (direct, via_svc, own)]
        with Dnsmasq(server, [server.peer_ip], records), \
                dnat_rule(svc, 53, server.peer_ip, 53, proto="udp", chain="PREROUTING"):
            for _ in range(3):
                assert dig(server.peer_ip, direct, prefix=client.prefix())[0] == "NOERROR"
            for _ in range(2):
                assert dig(svc, via_svc, prefix=client.prefix())[0] == "NOERROR"
            assert dig(server.peer_ip, own)[0] == "NOERROR"
            expect = {(direct, 0, "udp", "IPv4"): 3, (via_svc, 0, "udp", "IPv4"): 2, (own, 0, "udp", "IPv4"): 1}
            servers = {server.peer_ip, svc}
            traffic.wait_until(lambda: tally(mine(receiver, servers)) == expect or None, 15)
            time.sleep(2)      # a second copy of a DNATed query would come in the next interval at the latest
            pts = mine(receiver, servers)
    assert tally(pts) == expect
    got = {}
    for p in pts:
        check_point("dnsflow", p, extra_tags=("team", "env"))
        t = p.tags
        got[t["dst_domain"]] = (t["src_ip"], t["dst_ip"], t["direction"], t["forwarded"])
    assert got == {direct: (client.peer_ip, server.peer_ip, "outgoing", "true"),
                   via_svc: (client.peer_ip, svc, "outgoing", "true"),
                   own: (server.host_ip, server.peer_ip, "outgoing", "false")}


def test_loopback_and_a_veth_made_after_start_count_each_exchange_once(collector, receiver):
    """dnsflow's split capture: received packets from one socket on every
    interface, sent ones from a socket per interface, followed as they come.
    Over loopback (dig to the host's own address; loopback packets are only
    taken as received) and over a veth made after the collector started
    (query sent on the veth: its socket was opened when the veth appeared;
    answer received), UDP and TCP: each exchange paired exactly once, none
    counted twice, none left unanswered (an answer read before its query
    would leave the query to time out, rcode -1, 6 s later)."""
    tag = uuid.uuid4().hex[:8]
    local, far = f"local.{tag}.test", f"far.{tag}.test"
    collector.start(interval="1s")
    assert "received on all interfaces, transmitted on each of" in collector.log_text()
    with NetNS() as ns:
        with Dnsmasq(ns, [ns.peer_ip], [f"--host-record={far},10.1.2.4"]), \
                Dnsmasq(None, [ns.host_ip], [f"--host-record={local},10.1.2.3"]):
            for tcp in (False, False, True):
                assert dig(ns.host_ip, local, tcp=tcp)[0] == "NOERROR"
                assert dig(ns.peer_ip, far, tcp=tcp)[0] == "NOERROR"
            done = time.monotonic()
            expect = {(n, 0, t, "IPv4"): c for n in (local, far) for t, c in (("udp", 2), ("tcp", 1))}
            servers = {ns.host_ip, ns.peer_ip}
            traffic.wait_until(lambda: tally(mine(receiver, servers)) == expect or None, 15)
            # a query taken as unanswered would show 6 s on, at the next flush
            time.sleep(max(0.0, done + 8 - time.monotonic()))
            pts = mine(receiver, servers)
    assert tally(pts) == expect
    assert {p.tags["dst_ip"] for p in pts} == servers
    assert all(p.fields["latency"] > 0 for p in pts)
    veth = collector.log_text().split("dnsflow: transmit socket on interface ")
    assert any(x.startswith(ns.veth_host + " ") for x in veth[1:]), "the veth was followed"


def test_check_reports_dnsflow(bpf_ok, tmp_path):
    p = subprocess.run([sys.executable, "-m", "dkebpf", "check"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "dnsflow: packet socket opens" in p.stdout
    assert "one for packets received on every interface (PACKET_IGNORE_OUTGOING" in p.stdout
