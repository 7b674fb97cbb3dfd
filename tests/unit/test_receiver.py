"""The DataKit-compatible test receiver (tests/support/datakit_receiver.py),
driven with requests as our sender will drive it."""
import gzip
import socket
import threading
import time

import pyarrow as pa
import pytest
import requests

from dkebpf._lineproto import encode_batch
from support.datakit_receiver import DataKitReceiver
from support.schema import check_point, check_record, required_tags

BODY = (b"netflow,host=h1,src_ip=10.0.0.1,transport=tcp bytes_read=10i,rtt=5i 1000\n"
        b"netflow,host=h1,src_ip=10.0.0.2,transport=udp bytes_read=7i 2000\n")


@pytest.fixture
def dk():
    with DataKitReceiver() as receiver:
        yield receiver


def post(dk, body, category="network", input="ebpf-net/netflow", gzip_it=False, **params):
    headers = {}
    if gzip_it:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return requests.post(f"{dk.url}/v1/write/{category}",
                         params={"input": input, "precision": "ns", **params},
                         data=body, headers=headers, timeout=5)


def test_url_and_apiserver(dk):
    assert dk.port > 0
    assert dk.url == f"http://127.0.0.1:{dk.port}"
    assert dk.apiserver == f"127.0.0.1:{dk.port}"
    assert requests.get(f"{dk.url}/v1/ping", timeout=5).status_code == 200


def test_plain_and_gzip_bodies_are_stored(dk):
    r1 = post(dk, BODY)
    r2 = post(dk, BODY.replace(b"netflow", b"httpflow"), input="ebpf-net/httpflow",
              gzip_it=True)
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert dk.request_count == 2
    assert dk.requests[1].headers["Content-Encoding"] == "gzip"
    flows = dk.points("netflow")
    assert [(p.tags["src_ip"], p.fields["bytes_read"], p.timestamp) for p in flows] == \
        [("10.0.0.1", 10, 1000), ("10.0.0.2", 7, 2000)]
    http = dk.points(input="ebpf-net/httpflow")
    assert [p.measurement for p in http] == ["httpflow", "httpflow"]
    assert dk.points(category="network", measurement="httpflow") == http
    assert dk.points(input="nope") == []
    rec = dk.records[0]
    assert (rec.category, rec.input) == ("network", "ebpf-net/netflow")
    category, input_name, point = rec          # records unpack as 3-tuples
    assert (category, input_name, point) == ("network", "ebpf-net/netflow", flows[0])
    # posted where the spec says (else that would be the complaint), but partial
    with pytest.raises(AssertionError, match="required tag 'dst_ip' is missing"):
        check_record(rec)


def test_url_escaped_input_and_other_precisions(dk):
    r = requests.post(f"{dk.url}/v1/write/logging?input=ebpf%2Dbash&precision=ms",
                      data=b'bash,host=h message="ls" 3\n', timeout=5)
    assert r.status_code == 200
    (rec,) = dk.records
    assert rec.input == "ebpf-bash" and rec.category == "logging"
    assert rec.point.timestamp == 3_000_000


def test_garbage_gets_400_with_the_parser_message(dk):
    r = post(dk, b"netflow,host=h1 bytes_read=oops 1\n")
    assert r.status_code == 400
    assert "invalid value 'oops' of field 'bytes_read'" in r.json()["message"]
    r = post(dk, b"\x1f\x8b not utf-8")
    assert r.status_code == 400 and "not valid UTF-8" in r.json()["message"]
    r = requests.post(f"{dk.url}/v1/write/network", data=b"not gzip",
                      headers={"Content-Encoding": "gzip"}, timeout=5)
    assert r.status_code == 400 and "bad gzip body" in r.json()["message"]
    r = post(dk, BODY, precision="parsec")
    assert r.status_code == 400
    assert dk.points() == []
    assert dk.request_count == 4
    assert [q.status for q in dk.requests] == [400] * 4
    assert requests.post(f"{dk.url}/v2/elsewhere", data=BODY, timeout=5).status_code == 404


def test_fail_with_then_recover(dk):
    dk.fail_with(500)
    assert post(dk, BODY).status_code == 500
    assert post(dk, BODY).status_code == 500
    assert dk.points() == []
    dk.fail_with(None)
    assert post(dk, BODY).status_code == 200
    dk.fail_with(503, count=1)
    assert post(dk, BODY).status_code == 503
    assert post(dk, BODY).status_code == 200
    assert [q.status for q in dk.requests] == [500, 500, 200, 503, 200]
    assert len(dk.points()) == 4


def test_stop_refuses_and_start_reuses_the_port(dk):
    port = dk.port
    assert post(dk, BODY).status_code == 200
    dk.stop()
    assert not dk.running
    with pytest.raises(requests.ConnectionError):
        post(dk, BODY)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    dk.start()
    assert dk.port == port
    assert post(dk, BODY).status_code == 200
    assert len(dk.points()) == 4


def test_wait_for_polls_and_times_out(dk):
    def later():
        time.sleep(0.2)
        post(dk, BODY)

    t = threading.Thread(target=later)
    t.start()
    got = dk.wait_for(lambda: dk.points("netflow"), timeout=5)
    t.join()
    assert len(got) == 2
    with pytest.raises(AssertionError, match="condition not met within 0.1s; received 1 requests"):
        dk.wait_for(lambda: dk.points("dnsflow"), timeout=0.1)


def test_chunked_body(dk):
    def gen():
        yield BODY[:30]
        yield BODY[30:]

    r = requests.post(f"{dk.url}/v1/write/network?input=ebpf-net%2Fnetflow", data=gen(),
                      timeout=5)
    assert r.status_code == 200
    assert "chunked" in dk.requests[0].headers.get("Transfer-Encoding", "")
    assert len(dk.points("netflow")) == 2


def test_encoder_output_through_receiver_matches_schema(dk):
    """What encode_batch writes is accepted, and matches the netflow schema;
    a row whose tag is null or empty lacks that tag, which the checker names."""
    others = sorted(required_tags("netflow") - {"host", "src_ip", "src_port", "process_name"})
    batch = pa.record_batch({
        "src_ip": ["10.0.0.1", "10.0.0.2", None],
        "dst_ip": ["10.0.0.9", "10.0.0.9", "10.0.0.9"],
        "src_port": pa.array([40000, 40001, 40002], pa.uint16()),
        "process_name": ["curl x", "a,b=c", ""],
        **{t: [f"{t}-v"] * 3 for t in others if t != "dst_ip"},
        "bytes_read": pa.array([1, 2, 3], pa.uint64()),
        "bytes_written": pa.array([4, None, 6], pa.int64()),
        "rtt": pa.array([100, 200, None], pa.uint32()),
    })
    tags = ["src_ip", "src_port", "process_name", *others]
    body, skipped = encode_batch("netflow", batch, tags, ["bytes_read", "bytes_written", "rtt"],
                                 {"host": "node-1", "service": "ebpf"}, 1_700_000_000_000_000_000)
    assert skipped == 0
    assert post(dk, body, gzip_it=True).status_code == 200
    points = dk.points("netflow", input="ebpf-net/netflow")
    assert len(points) == 3
    full, partial = dk.records[:2], dk.records[2]
    for rec in full:
        check_record(rec)
    with pytest.raises(AssertionError, match="required tag 'process_name' is missing; "
                                             "required tag 'src_ip' is missing"):
        check_record(partial)
    assert [p.tags.get("process_name") for p in points] == ["curl x", "a,b=c", None]
    assert [p.fields.get("bytes_written") for p in points] == [4, None, 6]
    assert points[1].tags["src_port"] == "40001"
    with pytest.raises(AssertionError, match="tag 'bogus'"):
        check_point("netflow", points[0]._replace(tags={**points[0].tags, "bogus": "1"}))
