"""ebpf-trace end to end: `dkebpf run --enabled ebpf-trace` posting spans to
a real `dkebpf linker`, which writes linked spans to a DataKit-compatible
receiver. Real programs on loopback: curl -> a threaded Python HTTP server
-> redis-server, all three traced (this test's env variable in
--trace-env-list). Every request becomes one trace: curl's span, the
server's span, its two Redis calls and redis-server's two spans, parented
in that order, with the app's traceparent as trace_id."""
import os
import subprocess
import time

import pytest

from support.trace_apps import TracedApps, free_port, wait_port

from .conftest import dkebpf_cmd

pytestmark = [pytest.mark.e2e, pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast")]

W3C_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
MARK = "DKEBPF_TRACE_E2E_%d" % os.getpid()


@pytest.fixture
def linker(tmp_path, receiver):
    port = free_port()
    p = subprocess.Popen([*dkebpf_cmd(), "linker", "--listen", f"127.0.0.1:{port}", "--datakit", receiver.apiserver,
                          "--data-dir", str(tmp_path / "spans"), "--window", "1s", "--lateness", "2s"],
                         cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, p, "dkebpf linker")
        yield f"http://127.0.0.1:{port}"
    finally:
        p.terminate()
        p.wait(15)


def test_linked_traces_from_real_programs(collector, receiver, linker):
    apps = TracedApps(MARK)
    try:
        collector.start("--trace-server", linker, "--trace-env-list", MARK,
                        # redis-server overwrites its environment with its title: by name
                        "--trace-name-list", "redis-server", enabled="ebpf-trace", interval="1s")
        time.sleep(1.5)  # the collector attaches, then requests come
        n = 3
        pids = {"web": str(apps.web.pid), "redis": str(apps.redis.pid)}
        curl_pids = set()
        for i in range(n):
            parent = "%016x" % (0x1000 + i)
            curl = apps.curl(f"/item/e{i}", headers=[f"traceparent: 00-{W3C_TRACE}-{parent}-01"])
            assert curl.wait(30) == 0
            curl_pids.add(str(curl.pid))
        want = {str(p) for p in pids.values()} | curl_pids

        def mine():
            return [{**p.fields, **p.tags} for p in receiver.points("dketrace") if p.fields.get("pid") in want]

        # per request: curl 1, web 1 + 2, redis-server 2
        assert receiver.wait_for(lambda: len(mine()) >= 6 * n, timeout=40), \
            (len(mine()), collector.log_text()[-3000:])
        spans = mine()
    finally:
        apps.stop()
    assert len(spans) == 6 * n
    by_id = {s["span_id"]: s for s in spans}
    traces = {}
    for s in spans:
        traces.setdefault(s["ebpf_trace_id"], []).append(s)
    assert len(traces) == n
    for members in traces.values():
        roots = [s for s in members if s["ebpf_parent_id"] == "0"]
        assert len(roots) == 1 and roots[0]["pid"] in curl_pids and roots[0]["direction"] == "outgoing"
        web_in = [s for s in members if s["pid"] == pids["web"] and s["direction"] == "incoming"]
        web_out = [s for s in members if s["pid"] == pids["web"] and s["direction"] == "outgoing"]
        at_redis = [s for s in members if s["pid"] == pids["redis"]]
        assert len(web_in) == 1 and len(web_out) == 2 and len(at_redis) == 2
        assert web_in[0]["ebpf_parent_id"] == roots[0]["span_id"]
        assert (web_in[0]["service"], at_redis[0]["service"]) == ("web-test", "redis-server")
        assert sorted(s["resource"] for s in web_out) == ["GET", "SET"]
        for s in web_out:
            assert s["ebpf_parent_id"] == web_in[0]["span_id"]
        for s in at_redis:
            assert by_id[s["ebpf_parent_id"]] in web_out
        assert {s["trace_id"] for s in members} == {W3C_TRACE}
        assert roots[0]["http_route"] == web_in[0]["http_route"]
    assert "Traceback" not in collector.log_text()
