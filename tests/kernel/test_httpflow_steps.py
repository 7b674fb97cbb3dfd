"""The httpflow plugin pairs and pre-aggregates records during the interval
once its ring readers hold many (instead of holding every record until the
interval ends): counts and bytes must come out the same as one step would
give. Real http.bpf.o, a Python http.server and curl on loopback; the
threshold is lowered so that a few hundred requests cross it many times."""
import logging
import os
import socket
import subprocess
import sys
import time
import types

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast")]

REQUESTS = 240
CURLS = 8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 100)
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--protocol",
                          "HTTP/1.1", str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    yield p, port
    p.kill()
    p.wait()


def test_early_steps_give_the_same_counts(bpf_ok, server, monkeypatch):
    from dkebpf.plugins import httpflow
    from dkebpf.plugins.base import PluginContext

    monkeypatch.setattr(httpflow, "STEP_RECORDS", 16)
    monkeypatch.setattr(httpflow, "MERGE_PARTIALS", 3)  # partial sums are merged again and again
    srv, port = server
    cfg = types.SimpleNamespace(interval=60.0, ipv6_disabled=False, ephemeral_port=0, host_proc="/proc")
    plugin = httpflow.HttpflowPlugin(PluginContext(cfg=cfg, logger=logging.getLogger("test"),
                                                   self_pid=os.getpid()))
    plugin.start()
    try:
        url = f"http://127.0.0.1:{port}/a.txt"

        def drain_while(busy):
            # the agent's loop: the readers are drained every few ms (the
            # BPF rings are system-wide: other HTTP load on this machine
            # fills them too), so the threshold is crossed again and again
            while busy():
                for f in plugin.fileobjs():
                    plugin.on_readable(f)
                time.sleep(0.01)

        # several curls, each with many URLs (keep-alive requests on one
        # connection)
        for _ in range(CURLS):
            p = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", *[url] * (REQUESTS // CURLS)],
                                 stderr=subprocess.PIPE, text=True)
            drain_while(lambda: p.poll() is None)
            assert p.wait() == 0, p.stderr.read()
        end = time.monotonic() + 1.2  # the last responses settle (1 s quiet)
        drain_while(lambda: time.monotonic() < end)
        batches = plugin.collect(time.time_ns())
        counters = plugin.counters()
    finally:
        plugin.stop()
    assert plugin.early_steps >= CURLS // 2, counters
    pts = batches[0].batch.to_pylist()
    mine = [p for p in pts if p["server_port"] == str(port) and p["path"] == "/a.txt"]
    server_side = [p for p in mine if p["direction"] == "incoming" and p["pid"] == str(srv.pid)]
    client_side = [p for p in mine if p["direction"] == "outgoing"]
    assert sum(p["count"] for p in server_side) == REQUESTS, str(counters)
    assert sum(p["count"] for p in client_side) == REQUESTS
    for side in (server_side, client_side):
        assert {(p["method"], p["status_code"], p["http_version"]) for p in side} == {("GET", 200, "1.1")}
        assert all(p["latency"] > 0 for p in side)
    # 100 body bytes per response plus the headers, the same on both ends
    assert sum(p["bytes_read"] for p in client_side) == sum(p["bytes_written"] for p in server_side)
    assert sum(p["bytes_read"] for p in client_side) > 100 * REQUESTS
    assert len({p["pid"] for p in client_side}) == CURLS
