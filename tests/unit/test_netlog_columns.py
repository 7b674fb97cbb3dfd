"""bpf_net_l7_log built column by column (dkebpf.plugins.netlog.l7_batch)
gives exactly what the per-row construction it replaced gave: paths,
trace ids and message JSON, on generated exchanges whose paths and
traceparent values hold quotes, backslashes, control bytes, non-ASCII and
invalid UTF-8 (the rows built the slow way) next to plain ones."""
import json
import types

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _http, _netlog
from dkebpf.plugins.netlog import COUNTS, l7_batch, request_rows

PATH_MAX = _netlog.L7_DTYPE["path"].itemsize
TP_LEN = _netlog.L7_DTYPE["traceparent"].itemsize
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ODD = [b'"', b"\\", b"\x00", b"\x01", b"\x7f", b"\xc3\xa9", b"\xff", b"\xe2\x82", b"-"]

text = st.lists(st.one_of(st.sampled_from([b"/a", b"/b?c=1", b"x", b"-"]), st.sampled_from(ODD)),
                max_size=12).map(b"".join)
exchange = st.fixed_dictionaries({
    "path": st.one_of(text, st.just(b"/ok")),
    "traceparent": st.one_of(st.just(TRACEPARENT), text, st.just(b"")),
    "has_traceparent": st.integers(0, 1),
    "has_resp": st.integers(0, 1),
    "incoming": st.integers(0, 1),
    "method": st.integers(0, len(_http.METHODS) - 1),
    "status": st.sampled_from([0, 200, 404, 503]),
    "counts": st.lists(st.integers(0, 1 << 40), min_size=len(COUNTS), max_size=len(COUNTS)),
    "chunks": st.tuples(st.integers(0, 1 << 31), st.integers(0, 1 << 31)),
})


def rows_of(draws):
    x = np.zeros(len(draws), _netlog.L7_DTYPE)
    for i, d in enumerate(draws):
        path = d["path"][:PATH_MAX]
        x[i]["path"] = path
        x[i]["path_len"] = len(path)
        x[i]["traceparent"] = d["traceparent"][:TP_LEN]
        for k in ("has_traceparent", "has_resp", "incoming", "method", "status"):
            x[i][k] = d[k]
        x[i]["first_chunk"], x[i]["last_chunk"] = d["chunks"]
        for k, v in zip(COUNTS, d["counts"]):
            x[i][k] = v if "packets" not in k and "retrans" not in k else v & 0xFFFFFFFF
        x[i]["family"] = 4
    return x


def reference(x):
    """The per-row construction l7_batch had: (paths, trace ids, parent ids, messages)."""
    paths = [bytes(p[:n]).decode("utf-8", "replace") for p, n in zip(x["path"], x["path_len"])]
    split = [v.decode("ascii", "replace").split("-") if h else [] for v, h in zip(x["traceparent"],
                                                                                  x["has_traceparent"])]
    tids = [p[1] if len(p) == 4 else "" for p in split]
    pids = [p[2] if len(p) == 4 else "" for p in split]
    msgs = []
    for i in range(len(x)):
        has_resp = x["has_resp"][i] == 1
        msgs.append(json.dumps({
            "l4_proto": "tcp", "l7_proto": "http",
            "http": {"direction": "incoming" if x["incoming"][i] == 1 else "outgoing",
                     "pkt_chunk_range": [int(x["first_chunk"][i]), int(x["last_chunk"][i])],
                     "trace_id": tids[i], "parent_id": pids[i], "path": paths[i],
                     "method": _http.METHODS[x["method"][i]], "status_code": int(x["status"][i]) if has_resp else 0},
            "tcp": {k: int(x[k][i]) for k in COUNTS}}))
    return paths, tids, pids, msgs


def capture():
    nic = types.SimpleNamespace(name="eth0", mac="00:00:00:00:00:00")
    return types.SimpleNamespace(nic=nic, netns=1, host_network=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(exchange, min_size=1, max_size=20))
def test_columns_equal_the_per_row_reference(draws):
    x = rows_of(draws)
    got = l7_batch([(capture(), x)]).to_pydict()
    paths, tids, pids, msgs = reference(x)
    assert got["http_path"] == paths
    assert got["trace_id"] == tids
    assert got["parent_id"] == pids
    assert got["message"] == msgs
    assert request_rows(x[x["has_resp"] == 1]).column("path").to_pylist() == [
        p for p, r in zip(paths, x["has_resp"]) if r == 1]


def test_plain_rows_and_a_real_traceparent():
    x = rows_of([{"path": b"/api/v1?q=1", "traceparent": TRACEPARENT, "has_traceparent": 1, "has_resp": 1,
                  "incoming": 1, "method": 1, "status": 200, "counts": [1, 2, 3, 4, 0, 0], "chunks": (0, 1)}])
    got = l7_batch([(capture(), x)]).to_pylist()[0]
    assert (got["trace_id"], got["parent_id"]) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert json.loads(got["message"]) == {
        "l4_proto": "tcp", "l7_proto": "http",
        "http": {"direction": "incoming", "pkt_chunk_range": [0, 1], "trace_id": "0af7651916cd43dd8448eb211c80319c",
                 "parent_id": "b7ad6b7169203331", "path": "/api/v1?q=1", "method": "GET", "status_code": 200},
        "tcp": dict(zip(COUNTS, [1, 2, 3, 4, 0, 0]))}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1),
                          st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1)), min_size=1, max_size=20))
def test_trace_tags_equal_their_text_formats(ids):
    x = rows_of([{"path": b"/", "traceparent": b"", "has_traceparent": 0, "has_resp": 0, "incoming": 0,
                  "method": 1, "status": 0, "counts": [0] * len(COUNTS), "chunks": (0, 0)}] * len(ids))
    for i, (hi, lo, syn, synack) in enumerate(ids):
        x[i]["inner_hi"], x[i]["inner_lo"], x[i]["syn_seq"], x[i]["synack_seq"] = hi, lo, syn, synack
    got = l7_batch([(capture(), x)]).to_pydict()
    assert got["inner_traceid"] == [f"{hi:016x}{lo:016x}" for hi, lo, _s, _a in ids]
    assert got["nic_traceid"] == [f"{s}_{a}" for _h, _l, s, a in ids]
