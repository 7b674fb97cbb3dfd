"""dkebpf._tracectx against tests/reference/tracectx_ref.py (hypothesis),
and each header format pinned with the examples of its specification."""
import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _tracectx as tc
from reference import tracectx_ref as ref

W3C = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # W3C Trace Context spec example


def request(*headers):
    return b"GET /api HTTP/1.1\r\nHost: svc\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def extract(*payloads):
    got = tc.extract(pa.array(payloads, pa.binary()))
    want = ref.extract(payloads)
    for k in want:
        assert got[k].tolist() == want[k].tolist(), k
    ids = tc.format_ids(got["trace_hi"], got["trace_lo"], got["parent"], got["source"])
    dd = tc.format_ids(got["trace_hi"], got["trace_lo"], got["parent"], got["source"], conv_to_ddtrace=True)
    assert (ids[0].to_pylist(), ids[1].to_pylist()) == ref.format_ids(
        want["trace_hi"], want["trace_lo"], want["parent"], want["source"])
    assert (dd[0].to_pylist(), dd[1].to_pylist()) == ref.format_ids(
        want["trace_hi"], want["trace_lo"], want["parent"], want["source"], True)
    return [dict(zip(got, r)) for r in zip(*(c.tolist() for c in got.values()))], ids, dd


def test_traceparent_any_case_sampled_flag_and_conv_to_ddtrace():
    rows, ids, dd = extract(request(b"Traceparent: " + W3C), request(b"traceparent: " + W3C[:-2] + b"00"))
    assert [(r["source"], r["sampled"]) for r in rows] == [(tc.SRC_W3C, 1), (tc.SRC_W3C, -1)]
    assert ids[0].to_pylist()[0] == "0af7651916cd43dd8448eb211c80319c"
    assert ids[1].to_pylist()[0] == "b7ad6b7169203331"
    # conv_to_ddtrace: decimal of the low 64 bits of the trace id, decimal parent
    assert dd[0].to_pylist()[0] == str(0x8448eb211c80319c)
    assert dd[1].to_pylist()[0] == str(0xb7ad6b7169203331)


def test_invalid_traceparents_are_ignored():
    rows, _, _ = extract(request(b"traceparent: ff" + W3C[2:]), request(b"traceparent: 00-" + b"0" * 32 + W3C[35:]),
                         request(b"traceparent: " + W3C + b"-extra"), request(b"traceparent: " + W3C[:-1]))
    assert [r["source"] for r in rows] == [0, 0, 0, 0]


def test_datadog_headers_decimal_negative_and_priority():
    rows, ids, _ = extract(
        request(b"X-Datadog-Trace-Id: 1234567890123", b"x-datadog-parent-id: 42", b"x-datadog-sampling-priority: 2"),
        request(b"x-datadog-trace-id: -1", b"x-datadog-parent-id: 7", b"x-datadog-sampling-priority: -1"),
        request(b"x-datadog-trace-id: 5"))
    assert [(r["source"], r["sampled"]) for r in rows] == [(tc.SRC_DATADOG, 1), (tc.SRC_DATADOG, -1), (0, 0)]
    assert ids[0].to_pylist()[:2] == ["1234567890123", str(2**64 - 1)]


def test_b3_single_and_multi():
    rows, ids, _ = extract(
        request(b"b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
        request(b"B3: 463ac35c9f6413ad-a2fb4a1d1a96d312-d"),
        request(b"b3: 0"),
        request(b"X-B3-TraceId: 463ac35c9f6413ad", b"X-B3-SpanId: a2fb4a1d1a96d312", b"X-B3-Sampled: 0"),
        request(b"x-b3-traceid: 463ac35c9f6413ad", b"x-b3-spanid: a2fb4a1d1a96d312", b"x-b3-flags: 1"))
    assert [(r["source"], r["sampled"]) for r in rows] == [
        (tc.SRC_B3, 1), (tc.SRC_B3_64, 1), (0, 0), (tc.SRC_B3_64, -1), (tc.SRC_B3_64, 1)]
    assert ids[0].to_pylist()[:2] == ["80f198ee56343ba864fe8b2a57d3eff7", "463ac35c9f6413ad"]


def test_precedence_first_name_wins_and_header_end():
    rows, ids, _ = extract(
        request(b"x-datadog-trace-id: 9", b"x-datadog-parent-id: 9", b"traceparent: " + W3C),
        request(b"traceparent: " + W3C, b"traceparent: 00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\ntraceparent: " + W3C + b"\r\n",
        b"GET / HTTP/1.1\r\ntraceparent: " + W3C)  # cut by the capture: not trusted
    assert [r["source"] for r in rows] == [tc.SRC_W3C, tc.SRC_W3C, 0, 0]
    assert ids[0].to_pylist()[1] == "0af7651916cd43dd8448eb211c80319c"


def test_only_http_requests_count():
    rows, _, _ = extract(b"HTTP/1.1 200 OK\r\ntraceparent: " + W3C + b"\r\n\r\n",
                         b"BREW /pot HTTP/1.1\r\ntraceparent: " + W3C + b"\r\n\r\n",
                         b"POST /x HTTP/1.0\r\ntraceparent: " + W3C + b"\r\n\r\n")
    assert [r["source"] for r in rows] == [0, 0, tc.SRC_W3C]


def test_empty_and_bad_input():
    import pytest
    assert tc.extract(pa.array([], pa.binary()))["source"].tolist() == []
    with pytest.raises(ValueError, match="different lengths"):
        tc.format_ids(np.zeros(1, np.uint64), np.zeros(2, np.uint64), np.zeros(1, np.uint64), np.zeros(1, np.uint8))


hexs = st.text("0123456789abcdefABCDEF-", min_size=0, max_size=40).map(str.encode)
values = st.one_of(hexs, st.sampled_from([W3C, W3C[:-2] + b"00", b"0", b"1", b"d", b"true", b"-5", b"123"]),
                   st.integers(-2**64, 2**65).map(lambda v: str(v).encode()),
                   st.builds(lambda a, b, c: b"-".join([a, b, c]), hexs, hexs, st.sampled_from([b"1", b"0", b"d", b"x"])))
names = st.sampled_from(list(ref.NAMES) + [b"Traceparent", b"X-B3-TraceId", b"X-Datadog-Trace-Id", b"host"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(st.tuples(names, values, st.sampled_from([b": ", b":", b":\t", b" :"])), max_size=6),
                max_size=5), st.integers(0, 300))
def test_agrees_with_reference(reqs, cut):
    payloads = [request(*(n + sep + v for n, v, sep in hs)) for hs in reqs]
    extract(*payloads, *(p[:cut] for p in payloads))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_fuzz_random_bytes(payloads):
    extract(*payloads, *(b"GET / HTTP/1.1\r\n" + p for p in payloads), *(b"GET /" + p for p in payloads))
