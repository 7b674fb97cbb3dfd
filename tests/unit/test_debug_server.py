"""The debug HTTP server (dkebpf/debug_server.py), driven over 127.0.0.1."""
import socket

import pytest
import requests

from dkebpf.debug_server import DebugServer, Metric, render_metrics
from dkebpf.errors import ConfigError

TRICKY = 'say "hi"\nback\\slash'


def collect():
    return [
        Metric("flows_total", "counter", "Flows seen.\nSecond line.", [
            ({"transport": "tcp", "note": TRICKY}, 12),
            ({"transport": "udp", "note": "plain"}, 3),
        ]),
        Metric("dkebpf_queue_depth", "gauge", "Queued batches.", [({}, 2.5)]),
    ]


def url(server, path):
    return "http://127.0.0.1:%d%s" % (server.port, path)


@pytest.fixture
def server():
    s = DebugServer("127.0.0.1", 0, collect)
    s.start()
    yield s
    s.close()


def test_metrics_text(server):
    r = requests.get(url(server, "/metrics"), timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = r.text
    assert "# HELP dkebpf_flows_total Flows seen.\\nSecond line.\n" in text
    assert "# TYPE dkebpf_flows_total counter\n" in text
    assert "# TYPE dkebpf_queue_depth gauge\n" in text
    assert 'note="say \\"hi\\"\\nback\\\\slash"' in text
    assert "dkebpf_queue_depth 2.5\n" in text
    assert "dkebpf_dkebpf_" not in text
    for name in ("dkebpf_process_resident_memory_bytes",
                 "dkebpf_process_cpu_seconds_total", "dkebpf_threads"):
        assert "# TYPE %s " % name in text


def test_metrics_parse_with_prometheus_client(server):
    import pyarrow  # noqa: F401  (the collector's arrow pool is served once pyarrow is loaded)
    from prometheus_client import parser  # a test dependency: missing is a failure, not a skip
    text = requests.get(url(server, "/metrics"), timeout=5).text
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}

    # prometheus_client names a counter family without its _total suffix
    flows = families["dkebpf_flows"]
    assert flows.type == "counter"
    samples = {s.labels["transport"]: s for s in flows.samples}
    assert samples["tcp"].name == "dkebpf_flows_total"
    assert samples["tcp"].labels == {"transport": "tcp", "note": TRICKY}
    assert samples["tcp"].value == 12
    assert samples["udp"].labels == {"transport": "udp", "note": "plain"}
    assert samples["udp"].value == 3

    depth = families["dkebpf_queue_depth"]
    assert depth.type == "gauge"
    assert [(s.labels, s.value) for s in depth.samples] == [({}, 2.5)]

    rss = families["dkebpf_process_resident_memory_bytes"]
    assert rss.type == "gauge" and rss.samples[0].value > 0
    cpu = families["dkebpf_process_cpu_seconds"]
    assert cpu.type == "counter" and cpu.samples[0].value >= 0
    threads = families["dkebpf_threads"]
    assert threads.type == "gauge" and threads.samples[0].value >= 2
    peak = families["dkebpf_process_resident_memory_peak_bytes"].samples[0].value
    assert peak >= rss.samples[0].value
    held = {s.labels["holder"]: s.value for s in families["dkebpf_memory_bytes"].samples}
    assert held["anonymous"] > 0 and held["lib_python"] > 0
    assert held["arrow_pool"] >= 0  # served once pyarrow is imported, as it is above
    assert held["bpf_kernel"] == 0  # this process holds no BPF map


SMAPS = """\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                 100 kB
7f0000000000-7f0000001000 rw-s 00000000 00:0e 1066                       anon_inode:bpf-map
Rss:                   4 kB
7f0000001000-7f0002002000 r--s 00001000 00:0e 1066                       anon_inode:bpf-map
Rss:               32772 kB
7f1000000000-7f1000400000 rw-s 00000000 00:08 5638042                    socket:[5638042]
Rss:                4096 kB
7f2000000000-7f2000100000 r-xp 00000000 fe:01 42  /venv/lib/python3.11/site-packages/pyarrow/libarrow.so.2600
Rss:                1000 kB
7f2000100000-7f2000200000 r-xp 00000000 fe:01 43  /venv/lib/python3.11/site-packages/numpy/_core/x.so
Rss:                  20 kB
7f2000200000-7f2000300000 r-xp 00000000 fe:01 44  /venv/lib/python3.11/site-packages/dkebpf/_http.so
Rss:                  12 kB
7f2000300000-7f2000400000 r-xp 00000000 fe:01 45  /usr/lib/libpython3.11.so.1.0
Rss:                 300 kB
7f2000400000-7f2000500000 r-xp 00000000 fe:01 46  /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 200 kB
7f3000000000-7f3000100000 rw-p 00000000 00:00 0
Rss:                  50 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                   8 kB
"""


def test_memory_breakdown_by_holder(tmp_path):
    from dkebpf.debug_server import memory_breakdown

    path = tmp_path / "smaps"
    path.write_text(SMAPS)
    assert memory_breakdown(str(path)) == {
        "anonymous": 150 * 1024, "bpf_maps": 4 * 1024, "bpf_ring_buffers": 32772 * 1024,
        "packet_rings": 4096 * 1024, "lib_pyarrow": 1000 * 1024, "lib_numpy": 20 * 1024,
        "lib_dkebpf": 12 * 1024, "lib_python": 300 * 1024, "lib_other": 200 * 1024,
        "stack_and_kernel": 8 * 1024}
    assert memory_breakdown(str(tmp_path / "missing")) == {}


def test_stacks(server):
    r = requests.get(url(server, "/debug/stacks"), timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "MainThread" in r.text
    assert "dkebpf-debug-server" in r.text
    assert 'File "' in r.text


def test_index_and_404(server):
    r = requests.get(url(server, "/"), timeout=5)
    assert r.status_code == 200
    assert "/metrics" in r.text and "/debug/stacks" in r.text
    assert requests.get(url(server, "/nope"), timeout=5).status_code == 404


def test_failing_collect_gives_500_and_keeps_serving():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("map gone\nreally")
        return collect()

    s = DebugServer("127.0.0.1", 0, flaky)
    s.start()
    try:
        r = requests.get(url(s, "/metrics"), timeout=5)
        assert r.status_code == 500
        assert r.text.count("\n") == 1 and "map gone" in r.text
        r = requests.get(url(s, "/metrics"), timeout=5)
        assert r.status_code == 200 and "dkebpf_flows_total" in r.text
        assert requests.get(url(s, "/debug/stacks"), timeout=5).status_code == 200
    finally:
        s.close()


def test_port_in_use_is_config_error():
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        s = DebugServer("127.0.0.1", port, collect)
        with pytest.raises(ConfigError) as info:
            s.start()
        message = str(info.value)
        assert message.startswith(
            'invalid pprof_port "%d": cannot listen on 127.0.0.1:%d: ' % (port, port))
        assert "in use" in message.lower()
    finally:
        busy.close()


def test_close_is_idempotent_and_stops_serving():
    s = DebugServer("127.0.0.1", 0, collect)
    s.close()  # before start: no-op
    s.start()
    port = s.port
    assert port != 0
    s.close()
    s.close()
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:%d/" % port, timeout=2)


def test_render_special_values():
    text = render_metrics([Metric("x", "gauge", "", [({}, float("inf")),
                                                    ({"a": "1"}, float("nan"))])])
    assert "dkebpf_x +Inf\n" in text
    assert 'dkebpf_x{a="1"} NaN\n' in text


def raw_request(server, data):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_bad_requests_get_an_answer_and_the_server_goes_on(server):
    assert raw_request(server, b"hello\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    assert raw_request(server, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").startswith(b"HTTP/1.0 405 ")
    assert raw_request(server, b"").startswith(b"HTTP/1.0 400 ")
    reply = raw_request(server, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n") and b"dkebpf_flows_total" in reply

