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
