"""dkebpf linker end to end over HTTP: spans posted by "collectors" to its
/v1/bpftracing, linked spans read back from a DataKit-compatible receiver,
counters from its /metrics. And link() on its own for the join rules."""
import gzip
import os
import time

import numpy as np
import pyarrow as pa
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf.errors import ConfigError
from dkebpf.linker.join import History, hex_column, link
from dkebpf.linker.server import build
from dkebpf.output.sink import HttpSink
from support.datakit_receiver import DataKitReceiver

W3C_TRACE, W3C_PARENT = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
BASE_US = 1_764_000_000_000_000


def span(service, direction, ttid, req, resp, src, dst, start_us, **extra):
    f = {"ebpf_span_type": "entry" if direction == "incoming" else "exit", "direction": direction,
         "thread_trace_id": ttid, "req_seq": req, "resp_seq": resp, "start": start_us, "duration": 100}
    f.update(extra)
    fields = ",".join(f"{k}={v}i" if isinstance(v, int) else f'{k}="{v}"' for k, v in f.items())
    tags = f"service={service},src_ip={src[0]},src_port={src[1]},dst_ip={dst[0]},dst_port={dst[1]}"
    return f"dketrace,{tags} {fields} {start_us * 1000}"


def chain(t0, a_trace=None, seq=0):
    """A -> B -> C over HTTP: A serves a request (entry) and calls B (exit);
    B's entry calls C (exit); C's entry. Each hop's client and server see
    the same req_seq/resp_seq and mirrored addresses. Returns the lines of
    host 1 (A, B) and host 2 (C)."""
    A, B, C = ("10.0.0.1", 8080), ("10.0.0.2", 8081), ("10.0.0.3", 8082)
    app = {"app_trace_id": a_trace, "app_parent_id": W3C_PARENT, "app_span_sampled": 1} if a_trace else {}
    host1 = [
        span("a", "incoming", 100 + seq, 7000 + seq, 7100 + seq, A, ("192.168.1.9", 50000 + seq), t0, **app),
        span("a", "outgoing", 100 + seq, 1000 + seq, 2000 + seq, ("10.0.0.1", 40000 + seq), B, t0 + 10),
        span("b", "incoming", 200 + seq, 1000 + seq, 2000 + seq, B, ("10.0.0.1", 40000 + seq), t0 + 20),
        span("b", "outgoing", 200 + seq, 3000 + seq, 4000 + seq, ("10.0.0.2", 41000 + seq), C, t0 + 30),
    ]
    host2 = [span("c", "incoming", 300 + seq, 3000 + seq, 4000 + seq, C, ("10.0.0.2", 41000 + seq), t0 + 40)]
    return host1, host2


@pytest.fixture
def stack(tmp_path):
    with DataKitReceiver() as dk:
        sink = HttpSink(dk.apiserver)
        linker = build(["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "spans"), "--window", "1s",
                        "--lateness", "1s"], sink=sink)
        linker.start()
        try:
            yield linker, dk, f"http://127.0.0.1:{linker.port}"
        finally:
            linker.close()


def post(url, lines, gz=False):
    body = "\n".join(lines).encode()
    headers = {"Content-Encoding": "gzip"} if gz else {}
    return requests.post(url + "/v1/bpftracing?input=ebpf-net%2Fbpftracing", data=gzip.compress(body) if gz else body,
                         headers=headers, timeout=5)


def spans_by_service(dk, n):
    assert dk.wait_for(lambda: len(dk.points("dketrace")) >= n, timeout=15), dk.points("dketrace")
    return [(p.tags.get("service"), p.fields) for p in dk.points("dketrace")]


def test_two_collectors_chain_joins_into_one_trace_app_trace_id_wins(stack):
    linker, dk, url = stack
    host1, host2 = chain(BASE_US, a_trace=W3C_TRACE)
    # two collectors, each posting its own host's spans, C's first
    assert post(url, host2).json() == {"accepted": 1, "rejected": 0}
    assert post(url, host1, gz=True).status_code == 200
    got = spans_by_service(dk, 5)
    assert len(got) == 5
    by = {(s, f["direction"]): f for s, f in got}
    a_in, a_out = by[("a", "incoming")], by[("a", "outgoing")]
    b_in, b_out, c_in = by[("b", "incoming")], by[("b", "outgoing")], by[("c", "incoming")]
    assert a_in["ebpf_parent_id"] == "0"
    assert a_out["ebpf_parent_id"] == a_in["span_id"]
    assert b_in["ebpf_parent_id"] == a_out["span_id"]
    assert b_out["ebpf_parent_id"] == b_in["span_id"]
    assert c_in["ebpf_parent_id"] == b_out["span_id"]
    assert len({f["ebpf_trace_id"] for _, f in got}) == 1
    # the app's traceparent becomes trace_id of the whole chain; its parent
    # id the parent of the span that carried it
    assert {f["trace_id"] for _, f in got} == {W3C_TRACE}
    assert a_in["parent_id"] == W3C_PARENT and c_in["parent_id"] == b_out["span_id"]
    assert len({f["span_id"] for _, f in got}) == 5


def test_many_requests_one_trace_each_and_sequence_collision_not_joined(stack):
    linker, dk, url = stack
    lines = []
    for i in range(20):
        h1, h2 = chain(BASE_US + i * 1000, seq=i)
        lines += h1 + h2
    # an unrelated connection whose sequence numbers collide with request 0's
    # A -> B hop: other addresses, so it must not join
    lines.append(span("x", "incoming", 999, 1000, 2000, ("10.9.9.9", 80), ("10.9.9.8", 5555), BASE_US + 5))
    assert post(url, lines).status_code == 200
    got = spans_by_service(dk, 101)
    traces = {}
    for s, f in got:
        traces.setdefault(f["ebpf_trace_id"], []).append(s)
    assert sorted(len(v) for v in traces.values()) == [1] + [5] * 20
    x = [f for s, f in got if s == "x"][0]
    assert x["ebpf_parent_id"] == "0"


def test_event_time_windows_link_across_windows_and_late_spans(stack):
    linker, dk, url = stack
    host1, host2 = chain(BASE_US)
    assert post(url, host1).status_code == 200
    # later spans push the watermark past the chain's window: it is linked
    # before C's span (same event time, posted late) arrives
    assert post(url, [span("z", "incoming", 5, 1, 2, ("10.5.5.5", 1), ("10.5.5.6", 2), BASE_US + 5_000_000)]).ok
    assert dk.wait_for(lambda: len(dk.points("dketrace")) >= 4, timeout=10)
    assert post(url, host2).status_code == 200
    got = spans_by_service(dk, 6)
    by = {(s, f["direction"]): f for s, f in got}
    assert by[("c", "incoming")]["ebpf_parent_id"] == by[("b", "outgoing")]["span_id"]
    assert by[("c", "incoming")]["ebpf_trace_id"] == by[("a", "incoming")]["ebpf_trace_id"]
    metrics = requests.get(url + "/metrics", timeout=5).text
    assert "dkebpf_linker_spans_late_total 1" in metrics
    assert "dkebpf_linker_spans_received_total 6" in metrics


def test_bad_points_are_rejected_by_line_good_ones_kept(stack):
    linker, dk, url = stack
    good = span("a", "incoming", 1, 1, 2, ("10.0.0.1", 80), ("10.0.0.9", 9), BASE_US)
    r = post(url, [good, "dketrace,service=a direction=\"incoming\" 1", "not line protocol at all"])
    assert r.status_code == 200
    assert r.json()["accepted"] == 1 and r.json()["rejected"] == 2
    assert r.json()["first_error"] == ("line 2, column 1: required field 'ebpf_span_type' (a string) missing: "
                                       "'dketrace,service=a direction=\"incoming\" 1'")
    assert r.json()["errors"][1].startswith("line 3, column 9: unescaped ' ' in field key")
    r = post(url, ["garbage"])
    assert r.status_code == 400 and r.json()["rejected"] == 1
    assert requests.post(url + "/v1/other", data=b"x", timeout=5).status_code == 404
    assert requests.post(url + "/v1/bpftracing", data=b"x", headers={"Content-Encoding": "gzip"},
                         timeout=5).status_code == 400
    spans_by_service(dk, 1)
    assert "dkebpf_linker_spans_rejected_total 3" in requests.get(url + "/metrics", timeout=5).text


def test_acknowledged_spans_survive_a_restart(tmp_path):
    with DataKitReceiver() as dk:
        args = ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "spans"), "--window", "1s",
                "--lateness", "600s"]
        first = build(args, sink=HttpSink(dk.apiserver))
        first.start()
        host1, host2 = chain(BASE_US)
        assert post(f"http://127.0.0.1:{first.port}", host1 + host2).status_code == 200
        # killed before linking: nothing flushed, the spans are on disk
        first._stop.set()
        first.server.shutdown()
        first.server.server_close()
        assert dk.points("dketrace") == []
        second = build(args, sink=HttpSink(dk.apiserver))
        second.start()
        second.close()  # links what is pending
        got = spans_by_service(dk, 5)
        assert len({f["ebpf_trace_id"] for _, f in got}) == 1 and len(got) == 5
        assert os.listdir(tmp_path / "spans") == []


def test_sampling_keeps_or_drops_whole_traces():
    lines = []
    for i in range(200):
        h1, h2 = chain(BASE_US + i, seq=i * 10)
        lines += h1 + h2
    from dkebpf.linker.ingest import parse_spans
    table, rejected, _ = parse_spans("\n".join(lines), 0)
    table = table.append_column("span_id", pa.array(np.arange(1, table.num_rows + 1, dtype=np.uint64)))
    out, keep, _, _ = link(table, History(), sampling_rate=0.3)
    trace = np.asarray(out["ebpf_trace_id"].to_numpy(zero_copy_only=False))
    for t in np.unique(trace):
        assert len(set(keep[trace == t].tolist())) == 1
    assert 0.15 < keep.mean() < 0.45


def test_cycles_from_hostile_input_are_cut():
    # two exits and entries pointing at each other through both joins
    lines = [span("p", "incoming", 1, 5, 6, ("1.1.1.1", 1), ("2.2.2.2", 2), BASE_US),
             span("p", "outgoing", 1, 5, 6, ("2.2.2.2", 2), ("1.1.1.1", 1), BASE_US)]
    from dkebpf.linker.ingest import parse_spans
    table, _, _ = parse_spans("\n".join(lines), 0)
    table = table.append_column("span_id", pa.array(np.array([1, 2], np.uint64)))
    out, keep, _, _ = link(table, History())
    assert "0" in out["ebpf_parent_id"].to_pylist()


def test_hex_column():
    assert hex_column(np.array([0, 255, 2**64 - 1], np.uint64)).to_pylist() == ["0", "00000000000000ff",
                                                                               "ffffffffffffffff"]
    assert hex_column((np.array([1], np.uint64), np.array([2], np.uint64)), 32, None).to_pylist() == [
        "0000000000000001" "0000000000000002"]


def test_bad_flags_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="sampling-rate"):
        build(["--sampling-rate", "2", "--data-dir", str(tmp_path)], sink=object())
    with pytest.raises(ConfigError, match="not a duration"):
        build(["--window", "soon", "--data-dir", str(tmp_path)], sink=object())


def test_arrow_stream_ingest(stack):
    import pyarrow.ipc as ipc
    from dkebpf.linker.ingest import parse_spans
    linker, dk, url = stack
    host1, host2 = chain(BASE_US)
    table, _, _ = parse_spans("\n".join(host1 + host2), 0)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    r = requests.post(url + "/v1/bpftracing", data=sink.getvalue().to_pybytes(),
                      headers={"Content-Type": "application/vnd.apache.arrow.stream"}, timeout=5)
    assert r.json() == {"accepted": 5, "rejected": 0}
    got = spans_by_service(dk, 5)
    assert len({f["ebpf_trace_id"] for _, f in got}) == 1
    bad = requests.post(url + "/v1/bpftracing", data=b"not arrow",
                        headers={"Content-Type": "application/vnd.apache.arrow.stream"}, timeout=5)
    assert bad.status_code == 400 and "not an Arrow IPC stream" in bad.json()["error"]


def test_memory_bound_spills_to_disk_and_disk_budget_answers_503(tmp_path):
    with DataKitReceiver() as dk:
        linker = build(["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "spans"), "--window", "1s",
                        "--lateness", "600s", "--memory-spans", "3", "--max-disk-bytes", "20000"],
                       sink=HttpSink(dk.apiserver))
        linker.start()
        url = f"http://127.0.0.1:{linker.port}"
        try:
            host1, host2 = chain(BASE_US)
            assert post(url, host1).status_code == 200  # 4 spans > 3 in memory: spilled
            assert post(url, host2).status_code == 200
            r = post(url, [span("big", "incoming", 1, 1, 2, ("10.0.0.1", 80), ("10.0.0.2", 9), BASE_US,
                                resource="x" * 30000)])
            assert r.status_code == 503 and "disk budget" in r.json()["error"]
            metrics = requests.get(url + "/metrics", timeout=5).text
            assert "dkebpf_linker_spilled_windows_total 1" in metrics
            assert "dkebpf_linker_spans_dropped_total 1" in metrics
        finally:
            linker.close()  # links the spilled window, read back from disk
        got = spans_by_service(dk, 5)
        assert len(got) == 5 and len({f["ebpf_trace_id"] for _, f in got}) == 1


def test_the_command_links_and_flushes_on_sigterm(tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with DataKitReceiver() as dk:
        proc = subprocess.Popen([sys.executable, "-m", "dkebpf", "linker", "--listen", f"127.0.0.1:{port}",
                                 "--datakit", dk.apiserver, "--data-dir", str(tmp_path / "spans"),
                                 "--lateness", "600s"], stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 15
            while True:
                try:
                    requests.get(url + "/metrics", timeout=1)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                    time.sleep(0.1)
            host1, host2 = chain(BASE_US)
            assert post(url, host1 + host2).json() == {"accepted": 5, "rejected": 0}
            proc.send_signal(signal.SIGTERM)  # links what is pending, hands it to DataKit, exits
            assert proc.wait(timeout=20) == 0
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        got = spans_by_service(dk, 5)
        assert len({f["ebpf_trace_id"] for _, f in got}) == 1
    bad = subprocess.run([sys.executable, "-m", "dkebpf", "linker", "--window", "0s", "--data-dir",
                          str(tmp_path / "x")], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "--window must be > 0" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x-out").exists()


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(texts.filter(bool), texts, st.integers(-2**63, 2**63 - 1), st.booleans()), min_size=1,
                max_size=5))
def test_ingest_reads_what_the_project_encoder_writes(rows):
    """Line protocol written by dkebpf._lineproto (escapes, quotes, spaces
    in strings) reads back the same."""
    from dkebpf._lineproto import encode_batch
    from dkebpf.linker.ingest import parse_spans
    n = len(rows)
    batch = pa.table({"service": [r[0] for r in rows], "resource": [r[1] for r in rows],
                      "req_seq": [r[2] for r in rows], "flag": [r[3] for r in rows],
                      "ebpf_span_type": ["entry"] * n, "direction": ["incoming"] * n,
                      "resp_seq": [1] * n, "thread_trace_id": [2] * n})
    body, skipped = encode_batch("dketrace", batch, ["service"],
                                 ["resource", "req_seq", "flag", "ebpf_span_type", "direction", "resp_seq",
                                  "thread_trace_id"], {}, 1_000_000_000)
    table, rejected, err = parse_spans(body, 0)
    assert rejected == 0, err
    # tags lose newlines and trailing backslashes by the encoder's rules
    assert table.column("resource").to_pylist() == [r[1] for r in rows]
    assert table.column("req_seq").to_pylist() == [r[2] for r in rows]
    assert table.column("flag").to_pylist() == [r[3] for r in rows]
    assert table.num_rows == n


def test_a_window_that_fails_to_link_is_quarantined_and_later_ones_go_on(stack, monkeypatch):
    import dkebpf.linker.windows as windows_mod
    linker, dk, url = stack
    real = windows_mod.link

    def failing_once(table, history, **kw):
        if kw.get("window") == BASE_US // 1_000_000:
            raise RuntimeError("injected")
        return real(table, history, **kw)

    monkeypatch.setattr(windows_mod, "link", failing_once)
    host1, _ = chain(BASE_US)
    later, _ = chain(BASE_US + 3_000_000, seq=1)
    assert post(url, host1 + later).status_code == 200
    got = spans_by_service(dk, 4)  # the later chain only, linked whole
    assert {f["req_seq"] for _, f in got} == {7001, 1001, 3001}
    assert len(got) == 4 and len({f["ebpf_trace_id"] for _, f in got}) == 1
    assert "dkebpf_linker_quarantined_windows_total 1" in requests.get(url + "/metrics", timeout=5).text
    failed = os.path.join(linker.windows.dir, "failed", str(BASE_US // 1_000_000))
    assert os.listdir(failed)


def test_bad_requests_get_clear_answers_and_the_linker_serves_on(stack, monkeypatch):
    import socket

    from dkebpf.linker import server
    linker, dk, url = stack
    port = linker.port

    def raw(request, wait=5):
        with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
            s.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                    answer.split(b"Content-Length: ")[1].split(b"\r")[0]):
                answer += s.recv(65536)
            return answer.decode()

    assert raw(b"POST /v1/bpftracing HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n").startswith("HTTP/1.1 400")
    monkeypatch.setattr(server._Handler, "timeout", 0.5)
    monkeypatch.setattr(server, "READ_TIMEOUT_S", 0.5)
    answer = raw(b"POST /v1/bpftracing HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this")
    assert answer.startswith("HTTP/1.1 408") and "body cut: 9 of 100 bytes" in answer
    monkeypatch.setattr(server, "MAX_INFLATED", 1 << 20)
    bomb = gzip.compress(b"\n" * (4 << 20))  # 4 MiB of nothing in a few KiB
    r = requests.post(url + "/v1/bpftracing", data=bomb, headers={"Content-Encoding": "gzip"}, timeout=5)
    assert r.status_code == 413 and "inflates to more than 1048576 bytes" in r.json()["error"]
    cut = gzip.compress(b"x" * 1000)[:-10]
    r = requests.post(url + "/v1/bpftracing", data=cut, headers={"Content-Encoding": "gzip"}, timeout=5)
    assert r.status_code == 400 and "bad gzip body" in r.json()["error"]
    # and it still links what is good
    host1, host2 = chain(BASE_US)
    assert post(url, host1 + host2, gz=True).json() == {"accepted": 5, "rejected": 0}
    assert len({f["ebpf_trace_id"] for _, f in spans_by_service(dk, 5)}) == 1
    metrics = requests.get(url + "/metrics", timeout=5).text
    for gauge in ("pending_windows", "memory_spans", "history_spans", "disk_bytes"):
        assert f"\ndkebpf_linker_{gauge} " in metrics


def test_history_is_bounded_oldest_spans_go_first(tmp_path):
    from dkebpf.linker.ingest import parse_spans
    from dkebpf.linker.windows import Windows

    out = []
    w = Windows(str(tmp_path), out.append, window_s=1, lateness_s=1, history_spans=6)
    for k in range(3):  # three windows of one chain (5 spans) each
        host1, host2 = chain(BASE_US + k * 1_000_000, seq=k)
        assert w.add(parse_spans("\n".join(host1 + host2), 0)[0])
    w.flush()
    assert w.gauges()["history_spans"] == 6 and w.counters["history_evicted"] == 15 - 6
    assert w.counters["written"] == 15 and w.counters["orphan"] == 0
    # a late exit whose entry was forgotten: linked as an orphan, not lost
    late = span("b", "outgoing", 200, 1, 2, ("10.0.0.2", 1), ("10.0.0.3", 2), BASE_US + 30)
    assert w.add(parse_spans(late, 0)[0])
    assert w.counters["late"] == 1 and w.counters["orphan"] == 1 and w.counters["written"] == 16


def _linked_window(history, lines, first_id, window):
    """link() one window of line-protocol spans (span ids from first_id)
    and add it to history; returns (ids columns, stats)."""
    from dkebpf.linker.ingest import parse_spans
    table, rejected, _ = parse_spans("\n".join(lines), 0)
    assert rejected == 0
    table = table.append_column("span_id", pa.array(np.arange(first_id, first_id + table.num_rows, dtype=np.uint64)))
    out, _, hist, stats = link(table, history, window=window)
    history.add(hist)
    return out, stats


def _indexes_as_built_from_scratch(history):
    """The history's kept-sorted join indexes equal ones built from its rows."""
    from dkebpf.linker.join import _join_keys, _sorted_index
    for name, (keys, rows) in history.indexes.items():
        want_keys, want_rows = _sorted_index(*_join_keys(history.cols, name))
        assert keys.tolist() == want_keys.tolist() and rows.tolist() == want_rows.tolist(), name


def test_history_join_indexes_follow_adds_and_prunes():
    """Windows join to earlier ones through the history's indexes, which
    stay right as windows are added and pruned (the oldest first: the start
    moves; or rows in the middle: renumbered)."""
    A, B = ("10.0.0.1", 8080), ("10.0.0.2", 8081)
    history = History()
    # window 0: A serves a request and calls B
    out0, _ = _linked_window(history, [span("a", "incoming", 11, 1, 2, A, ("9.9.9.9", 1), BASE_US),
                                       span("a", "outgoing", 11, 70, 80, ("10.0.0.1", 4000), B, BASE_US + 1)], 1, 0)
    # window 1: B's side of that call, and an exit of B's request
    out1, stats = _linked_window(history, [span("b", "incoming", 22, 70, 80, B, ("10.0.0.1", 4000), BASE_US + 2),
                                           span("b", "outgoing", 22, 90, 91, ("10.0.0.2", 4001), A, BASE_US + 3)],
                                 3, 1)
    assert out1["ebpf_parent_id"].to_pylist() == ["%016x" % 2, "%016x" % 3] and stats["orphan"] == 0
    assert out1["ebpf_trace_id"].to_pylist() == [out0["ebpf_trace_id"][0].as_py()] * 2
    _indexes_as_built_from_scratch(history)
    assert history.prune(1) == 0 and len(history) == 2  # window 0 goes: the start moves
    _indexes_as_built_from_scratch(history)
    # window 2: another exit of A's request (forgotten: an orphan) and of B's (joined)
    out2, stats = _linked_window(history, [span("a", "outgoing", 11, 5, 6, ("10.0.0.1", 4002), B, BASE_US + 4),
                                           span("b", "outgoing", 22, 7, 8, ("10.0.0.2", 4003), A, BASE_US + 5)],
                                 5, 2)
    assert out2["ebpf_parent_id"].to_pylist() == ["0", "%016x" % 3] and stats["orphan"] == 1
    # rows out of window order (not how the linker adds them): pruned by a mask
    _linked_window(history, [span("c", "incoming", 33, 1, 2, A, ("9.9.9.9", 2), BASE_US + 6)], 7, 0)
    assert history.prune(1) == 0 and history.cols["span_id"].tolist() == [3, 4, 5, 6]
    _indexes_as_built_from_scratch(history)
    out3, stats = _linked_window(history, [span("c", "outgoing", 33, 9, 9, A, B, BASE_US + 7),
                                           span("b", "outgoing", 22, 9, 9, B, A, BASE_US + 8)], 8, 3)
    assert out3["ebpf_parent_id"].to_pylist() == ["0", "%016x" % 3] and stats["orphan"] == 1
