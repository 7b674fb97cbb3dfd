"""ebpf-conntrack end to end: a Python HTTP server and a plain TCP server in
a test network namespace, reached through iptables DNAT rules in the host's
nat OUTPUT chain from a service address that exists nowhere (as a Kubernetes
ClusterIP is reached), and directly. The collector runs with
`--enabled ebpf-conntrack,ebpf-net`; the netflow points of the translated
connections carry dst_nat_ip/dst_nat_port = the server's real address and
port, while dst_ip/dst_port stay what the client's socket connected to (the
service); untranslated connections and the server's own (incoming) points
carry none."""
import subprocess
import sys

import pytest

from dkebpf.plugins import requirements

from support import traffic
from support.dnat import dnat_rule, service_ip
from support.netns import NetNS
from support.schema import check_point
from support.servers import HttpServer

pytestmark = [pytest.mark.e2e,
              pytest.mark.requires(*requirements(("ebpf-conntrack", "ebpf-net"), ("httpflow",)))]

HTTP_PORT = 8000     # inside our own namespace only
SVC_HTTP_PORT = 80
SVC_TCP_PORT = 9000


def flows(receiver, pid):
    return [p for p in receiver.points(measurement="netflow") if p.tags.get("pid") == str(pid)]


def requests(receiver, pid):
    return [p for p in receiver.points(measurement="httpflow") if p.tags.get("pid") == str(pid)]


def total(points, field):
    return sum(p.fields.get(field, 0) for p in points)


def wait_closed(receiver, pid, timeout=30):
    """The points of a client process once its connection's close was reported."""
    return traffic.wait_until(lambda: (lambda pts: pts if total(pts, "tcp_closed") >= 1 else None)(
        flows(receiver, pid)), timeout) or flows(receiver, pid)


def curl(url):
    p = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and out == "200", (out, err)
    return p.pid


def test_dnat_connections_carry_the_translated_destination(collector, receiver):
    collector.start(enabled="ebpf-conntrack,ebpf-net")
    with NetNS() as ns:
        svc = service_ip(ns)
        http = HttpServer(ns, ns.peer_ip, HTTP_PORT)
        srv = traffic.tcp_server(ns.peer_ip, 700, prefix=ns.prefix(), conns=2)
        try:
            with dnat_rule(svc, SVC_HTTP_PORT, ns.peer_ip, HTTP_PORT), \
                    dnat_rule(svc, SVC_TCP_PORT, ns.peer_ip, srv.info["port"]):
                curl_nat = curl(f"http://{svc}:{SVC_HTTP_PORT}/")
                curl_direct = curl(f"http://{ns.peer_ip}:{HTTP_PORT}/")
                tcp_nat, _, res_nat = traffic.run_client("tcp-client", svc, SVC_TCP_PORT, 3000)
                tcp_direct, _, res_direct = traffic.run_client("tcp-client", ns.peer_ip, srv.info["port"], 3000)
                srv.wait()
        finally:
            srv.stop()
            http.stop()
        assert res_nat[-1]["received"] == 700 and res_direct[-1]["received"] == 700

        # through the rule: dst is what the socket sees, dst_nat what the kernel made of it
        for pid, svc_port, real_port in ((curl_nat, SVC_HTTP_PORT, HTTP_PORT),
                                         (tcp_nat, SVC_TCP_PORT, srv.info["port"])):
            pts = wait_closed(receiver, pid)
            assert pts, f"no netflow point of pid {pid}"
            assert total(pts, "tcp_established") == 1 and total(pts, "tcp_closed") == 1
            for p in pts:
                t = p.tags
                assert (t["dst_ip"], t["dst_port"]) == (svc, str(svc_port))
                assert (t["server_ip"], t["server_port"]) == (svc, str(svc_port))
                assert (t["dst_nat_ip"], t["dst_nat_port"]) == (ns.peer_ip, str(real_port)), t
                assert t["direction"] == "outgoing" and t["src_ip"] == ns.host_ip
        pts = flows(receiver, tcp_nat)
        assert total(pts, "bytes_written") == 3000 and total(pts, "bytes_read") == 700

        # no rule on the way: no NAT tags
        for pid, port in ((curl_direct, HTTP_PORT), (tcp_direct, srv.info["port"])):
            pts = wait_closed(receiver, pid)
            assert pts and total(pts, "tcp_closed") == 1
            for p in pts:
                assert (p.tags["dst_ip"], p.tags["dst_port"]) == (ns.peer_ip, str(port))
                assert "dst_nat_ip" not in p.tags and "dst_nat_port" not in p.tags, p.tags

        # httpflow points of the same curl runs: the same NAT tags, or none
        for pid, nat in ((curl_nat, (ns.peer_ip, str(HTTP_PORT))), (curl_direct, None)):
            pts = traffic.wait_until(lambda: requests(receiver, pid), 30)
            assert total(pts, "count") == 1, pts
            for p in pts:
                t = p.tags
                assert t["direction"] == "outgoing" and p.fields["status_code"] == 200
                if nat:
                    assert (t["dst_ip"], t["dst_port"]) == (svc, str(SVC_HTTP_PORT))
                    assert (t["dst_nat_ip"], t["dst_nat_port"]) == nat, t
                else:
                    assert "dst_nat_ip" not in t and "dst_nat_port" not in t, t

        # the server sees its incoming connections untranslated (from the host's address)
        pts = traffic.wait_until(lambda: (lambda x: x if total(x, "tcp_closed") >= 2 else None)(
            flows(receiver, srv.pid)), 30) or flows(receiver, srv.pid)
        assert total(pts, "tcp_closed") == 2
        for p in pts:
            assert p.tags["direction"] == "incoming"
            assert "dst_nat_ip" not in p.tags and "dst_nat_port" not in p.tags

    assert collector.stop() == 0
    for p in receiver.points(measurement="netflow"):
        check_point("netflow", p, extra_tags=("team", "env"))
    log = collector.log_text()
    assert "ebpf-conntrack" in log and "conntrack: subscribed" in log
    assert "Traceback" not in log and "collect failed" not in log
    for p in receiver.points(measurement="httpflow"):
        check_point("httpflow", p, extra_tags=("team", "env"))
    # conntrack sends no points of its own (dnsflow: whatever DNS the host did meanwhile)
    inputs = {i for (_c, i, _p) in receiver.records}
    assert {"ebpf-net/netflow", "ebpf-net/httpflow"} <= inputs
    assert inputs <= {"ebpf-net/netflow", "ebpf-net/httpflow", "ebpf-net/dnsflow"}


def test_check_reports_conntrack(bpf_ok, tmp_path):
    p = subprocess.run([sys.executable, "-m", "dkebpf", "check"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ebpf-conntrack: yes" in p.stdout
    assert "nf_conntrack is available" in p.stdout and "event groups joined" in p.stdout


def test_unconnected_udp_through_dnat(collector, receiver):
    """sendto() from an unbound socket: netflow knows the local address as
    the wildcard; the NAT tags still come (matched on the rest of the tuple)."""
    collector.start(enabled="ebpf-conntrack,ebpf-net")
    with NetNS() as ns:
        svc = service_ip(ns)
        usrv = traffic.udp_server(ns.peer_ip, 40, prefix=ns.prefix(), datagrams=3)
        try:
            with dnat_rule(svc, 5300, ns.peer_ip, usrv.info["port"], proto="udp"):
                pid, _, res = traffic.run_client("udp-client", svc, 5300, 100, 3)
                usrv.wait()
        finally:
            usrv.stop()
        assert res[-1]["received"] == 120  # the answers came back through the rule
        pts = traffic.wait_until(lambda: (lambda x: x if total(x, "bytes_read") >= 120 else None)(
            flows(receiver, pid)), 30) or flows(receiver, pid)
        assert total(pts, "bytes_written") == 300 and total(pts, "bytes_read") == 120
        for p in pts:
            t = p.tags
            assert (t["transport"], t["dst_ip"], t["dst_port"]) == ("udp", svc, "5300")
            assert (t["dst_nat_ip"], t["dst_nat_port"]) == (ns.peer_ip, str(usrv.info["port"])), t
    assert collector.stop() == 0
    for p in receiver.points(measurement="netflow"):
        check_point("netflow", p, extra_tags=("team", "env"))
