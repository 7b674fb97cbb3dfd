"""netlog_blacklist as a user sets it (env DKE_NETLOG_NET_FILTER) on
`dkebpf run`: two HTTP servers in a test namespace, keep-alive requests to
both from the host through the veth; the blacklisted port is absent from
bpf_net_l4_log, bpf_net_l7_log, netflow and httpflow, the other port's
points are all there and exact. A rule that does not parse keeps
bpf-netlog from starting with its positioned message while ebpf-net runs."""
import http.client
import subprocess
import time

import pytest

from dkebpf.plugins import requirements
from support import traffic
from support.netns import NetNS
from support.servers import OK_SERVER

pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("bpf-netlog",), ("ebpf-net",)))]

KEPT, DROPPED = 18083, 18084

def wait_log(collector, text, timeout=15):
    end = time.monotonic() + timeout
    while text not in collector.log_text():
        assert time.monotonic() < end, collector.log_text()
        time.sleep(0.1)

@pytest.mark.parametrize("rule", [
    f"src_port == {DROPPED}",                                  # classic BPF on the socket
    f"has_suffix(ip_daddr, '.1') && src_port == {DROPPED}",    # Cython, per connection
], ids=["kernel", "per_connection"])
def test_blacklisted_port_absent_the_rest_exact(collector, receiver, monkeypatch, rule):
    monkeypatch.setenv("DKE_NETLOG_NET_FILTER", rule)
    with NetNS() as ns:
        servers = [subprocess.Popen(ns.prefix() + ["python3", "-c", OK_SERVER, ns.peer_ip, str(port)],
                                    stdout=subprocess.PIPE, text=True) for port in (KEPT, DROPPED)]
        try:
            assert all(s.stdout.readline().strip() == "ready" for s in servers)
            collector.start("--netlog-log", "--netlog-metric", "--netlog-interfaces", f"^{ns.veth_peer}$",
                            enabled="bpf-netlog")
            wait_log(collector, f"capturing on {ns.veth_peer}")
            for port in (KEPT, DROPPED):
                conn = http.client.HTTPConnection(ns.peer_ip, port, timeout=5)
                for i in range(3):
                    conn.request("GET", f"/{port}/{i}")
                    assert conn.getresponse().read() == b"ok"
                conn.close()
            time.sleep(3)   # one interval (2 s) flushes them
        finally:
            for s in servers:
                s.kill()
                s.wait()
        assert collector.stop() == 0
    netlog = [r.point for r in receiver.records if r.point.tags.get("nic_name") == ns.veth_peer
              or r.point.measurement in ("netflow", "httpflow")]
    by_port = {}
    for p in netlog:
        port = p.tags.get("src_port") if p.measurement.startswith("bpf_net") else p.tags.get("server_port")
        by_port.setdefault(port, {}).setdefault(p.measurement, []).append(p)
    assert str(DROPPED) not in by_port, by_port.get(str(DROPPED))
    kept = by_port[str(KEPT)]
    assert sorted(kept) == ["bpf_net_l4_log", "bpf_net_l7_log", "httpflow", "netflow"]
    assert sorted(p.fields["http_path"] for p in kept["bpf_net_l7_log"]) == [f"/{KEPT}/{i}" for i in range(3)]
    assert sum(p.fields["count"] for p in kept["httpflow"]) == 3
    assert sum(p.fields["tcp_established"] for p in kept["netflow"]) == 1
    l4 = kept["bpf_net_l4_log"]
    # the server read exactly the three requests http.client wrote
    requests = sum(len(f"GET /{KEPT}/{i} HTTP/1.1\r\nHost: {ns.peer_ip}:{KEPT}\r\n"
                       "Accept-Encoding: identity\r\n\r\n") for i in range(3))
    assert sum(p.fields["rx_bytes"] for p in l4) == requests
    assert sum(p.fields["tx_bytes"] for p in l4) == sum(p.fields["bytes_written"] for p in kept["netflow"])
    assert sum(p.fields["rx_bytes"] for p in l4) == sum(p.fields["bytes_read"] for p in kept["netflow"])

def test_bad_rule_keeps_netlog_off_with_its_position_ebpf_net_runs(collector, receiver, monkeypatch):
    monkeypatch.setenv("DKE_NETLOG_NET_FILTER", "tcp &&\n  src_port == 'x'")
    collector.start(enabled="ebpf-net,bpf-netlog")
    wait_log(collector, "bpf-netlog: start failed")
    srv = traffic.tcp_server("127.0.0.1", 3000)
    try:
        pid, _, _res = traffic.run_client("tcp-client", "127.0.0.1", srv.info["port"], 9000)
        srv.wait()
    finally:
        srv.stop()
    pts = traffic.wait_until(lambda: [p for p in receiver.points(measurement="netflow")
                                      if p.tags.get("pid") == str(pid)] or None, 30)
    assert collector.stop() == 0
    log = collector.log_text()
    assert "Traceback" not in log
    assert "netlog_blacklist:2:" in log and "src_port == 'x'" in log and "^" in log, log
    assert "; disabled" in log and "restarting" not in log
    assert pts and sum(p.fields["bytes_written"] for p in pts) == 9000
    inputs = {i for (_c, i, p) in receiver.records}
    assert not any(i.startswith("bpf-netlog") for i in inputs)
