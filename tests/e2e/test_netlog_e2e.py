"""bpf-netlog as a user runs it: `dkebpf run --enabled bpf-netlog` with a
DataKit receiver, an HTTP server in a test namespace (found through its
process), keep-alive requests from the host through the veth; every point
checked against the measurement schema and the input the spec lists."""
import http.client
import subprocess
import time

import pytest

from dkebpf.plugins import requirements
from support.netns import NetNS
from support.servers import OK_SERVER
from support.schema import check_record

pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("bpf-netlog",)))]

PORT = 18081

def test_l4_l7_logs_and_metrics_from_packets(collector, receiver):
    with NetNS() as ns:
        srv = subprocess.Popen(ns.prefix() + ["python3", "-c", OK_SERVER, ns.peer_ip, str(PORT)],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == "ready"
            collector.start("--netlog-log", "--netlog-metric", "--netlog-interfaces", f"^{ns.veth_peer}$",
                            enabled="bpf-netlog")
            end = time.monotonic() + 15
            while f"capturing on {ns.veth_peer}" not in collector.log_text():
                assert time.monotonic() < end, collector.log_text()
                time.sleep(0.1)
            conn = http.client.HTTPConnection(ns.peer_ip, PORT, timeout=5)
            for i in range(3):
                conn.request("GET", f"/e2e/{i}")
                assert conn.getresponse().read() == b"ok"
            conn.close()
            time.sleep(3)   # one interval (2 s) flushes them
        finally:
            srv.kill()
            srv.wait()
        assert collector.stop() == 0
    records = [r for r in receiver.records if r.point.tags.get("src_port") == str(PORT)]
    by = {}
    for r in records:
        check_record(r, extra_tags=("team", "env"))
        by.setdefault(r.point.measurement, []).append(r.point)
    assert sorted(by) == ["bpf_net_l4_log", "bpf_net_l7_log", "httpflow", "netflow"]
    l7 = sorted(by["bpf_net_l7_log"], key=lambda p: p.fields["req_seq"])
    assert sorted(p.fields["http_path"] for p in l7) == ["/e2e/0", "/e2e/1", "/e2e/2"]
    assert all(p.tags["l7_traceid"] == f'{p.fields["req_seq"]}_{p.fields["resp_seq"]}' for p in l7)
    assert sum(p.fields["count"] for p in by["httpflow"]) == 3
    l4 = by["bpf_net_l4_log"]
    assert sum(p.fields["rx_packets"] for p in l4) > 0 and {p.tags["l7_proto"] for p in l4} == {"http"}
    assert sum(p.fields["tcp_established"] for p in by["netflow"]) == 1
