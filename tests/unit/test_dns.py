"""dkebpf._dns (DNS parser, TCP framing, names as text, pairing) and
dkebpf._packets.decode_packets against the pure-Python reference
(tests/reference/dns_ref.py) with hypothesis, against dnspython on valid
messages, and random-bytes fuzzing (no crash, no hang)."""
import os
import random
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkebpf import _dns, _packets
from reference import dns_ref as ref
from support.packets import ip4, ip6, tcp, udp

# DKEBPF_HYPOTHESIS_EXAMPLES=20000 for a long run
SETTINGS = settings(max_examples=int(os.environ.get("DKEBPF_HYPOTHESIS_EXAMPLES", 400)), deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------ message builder

class Writer:
    """DNS wire writer with optional name compression (pointers to the
    suffixes already written), as servers do."""

    def __init__(self, compress):
        self.buf = bytearray()
        self.seen = {}
        self.compress = compress

    def name(self, labels):
        for i in range(len(labels)):
            suffix = tuple(x.lower() for x in labels[i:])
            if self.compress and suffix in self.seen:
                self.buf += struct.pack("!H", 0xC000 | self.seen[suffix])
                return
            if len(self.buf) < 0x3FFF:
                self.seen.setdefault(suffix, len(self.buf))
            self.buf += bytes([len(labels[i])]) + labels[i]
        self.buf.append(0)


label = st.binary(min_size=1, max_size=12).filter(lambda b: True)
ascii_label = st.text("abcdefgABCXYZ0123456789-", min_size=1, max_size=10).map(str.encode)
name = st.lists(st.one_of(ascii_label, label), min_size=0, max_size=5)


@st.composite
def message(draw):
    w = Writer(draw(st.booleans()))
    qname = draw(name)
    names = [qname]
    flags = draw(st.integers(0, 0xFFFF))
    records = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["A", "AAAA", "CNAME", "TXT", "Abad"]))
        owner = draw(st.sampled_from(names)) if draw(st.booleans()) else draw(name)
        records.append((kind, owner, draw(st.integers(0, 2 ** 32 - 1))))
        if kind == "CNAME":
            target = draw(name)
            names.append(target)
            records[-1] += (target,)
    qd = draw(st.integers(1, 2))
    w.buf += struct.pack("!HHHHHH", draw(st.integers(0, 0xFFFF)), flags, qd, len(records), 0, 0)
    for _ in range(qd):
        w.name(qname)
        w.buf += struct.pack("!HH", draw(st.sampled_from([1, 28, 5, 15])), 1)
    for rec in records:
        kind, owner, ttl = rec[:3]
        w.name(owner)
        if kind == "CNAME":
            start = len(w.buf)
            w.buf += struct.pack("!HHIH", 5, 1, ttl, 0)
            w.name(rec[3])
            struct.pack_into("!H", w.buf, start + 8, len(w.buf) - start - 10)
        else:
            typ, data = {"A": (1, draw(st.binary(min_size=4, max_size=4))),
                         "AAAA": (28, draw(st.binary(min_size=16, max_size=16))),
                         "TXT": (16, draw(st.binary(max_size=20))),
                         "Abad": (1, draw(st.binary(min_size=5, max_size=6)))}[kind]
            w.buf += struct.pack("!HHIH", typ, 1, ttl, len(data)) + data
    return bytes(w.buf)


@st.composite
def mutated(draw):
    m = bytearray(draw(message()))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["cut", "flip", "ptr"]))
        if not m:
            break
        i = draw(st.integers(0, len(m) - 1))
        if op == "cut":
            m = m[:i]
        elif op == "flip":
            m[i] = draw(st.integers(0, 255))
        else:
            m[i:i + 2] = struct.pack("!H", 0xC000 | draw(st.integers(0, len(m))))
    return bytes(m)


# ------------------------------------------------------------ parser

@SETTINGS
@given(message())
def test_parser_agrees_with_reference_on_messages(m):
    assert _dns.parse(m) == ref.parse(m)


@SETTINGS
@given(mutated())
def test_parser_agrees_with_reference_on_damaged_messages(m):
    assert _dns.parse(m) == ref.parse(m)


@SETTINGS
@given(st.binary(max_size=600))
def test_parser_agrees_with_reference_on_random_bytes(m):
    assert _dns.parse(m) == ref.parse(m)


def test_random_bytes_fuzz_no_crash_no_hang():
    rng = random.Random(1)
    n_ok = 0
    t = time.perf_counter()
    for i in range(50_000):
        size = rng.choice([12, 20, 64, 512, 4096])
        head = struct.pack("!HHHHHH", rng.getrandbits(16), rng.getrandbits(16), rng.randint(0, 3),
                           rng.randint(0, 40), 0, 0)
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, size)))
        # lots of pointer-looking bytes: the loop traps
        if i % 2:
            body = bytes(b | 0xC0 if rng.random() < 0.3 else b for b in body)
        n_ok += _dns.parse(head + body) is not None
    assert time.perf_counter() - t < 60
    assert n_ok < 50_000


@pytest.mark.parametrize("tail", [
    b"\xc0\x0c",                      # points at itself
    b"\x01a\xc0\x0c",                 # label then back to its own start
    b"\xc0\x0e\xc0\x0c",              # forward, then back
    b"\x01a" * 128 + b"\x00",         # 257 bytes: longer than 255
    b"\x41" + b"x" * 65 + b"\x00",    # extended label type 0x40
])
def test_bad_names_rejected(tail):
    m = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + tail + b"\x00\x01\x00\x01"
    assert _dns.parse(m) is None and ref.parse(m) is None


def test_pointer_chain_through_answers_and_cname_chain():
    import dns.message  # a test dependency (pyproject [test]): missing is a failure, not a skip
    import dns.rrset
    q = dns.message.make_query("Alias.EXAMPLE.test", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("alias.example.test.", 300, "IN", "CNAME", "mid.example.net."))
    r.answer.append(dns.rrset.from_text("mid.example.net.", 300, "IN", "CNAME", "edge.cdn.test."))
    r.answer.append(dns.rrset.from_text("edge.cdn.test.", 30, "IN", "A", "10.0.0.1", "10.0.0.2"))
    r.answer.append(dns.rrset.from_text("edge.cdn.test.", 30, "IN", "AAAA", "fd00::1"))
    r.answer.append(dns.rrset.from_text("unrelated.test.", 30, "IN", "A", "10.9.9.9"))
    wire = r.to_wire()
    got = _dns.parse(wire)
    assert got == ref.parse(wire)
    assert got["qname"] == b"\x05alias\x07example\x04test\x00" and got["qr"] == 1 and got["id"] == q.id
    assert sorted(got["answers"]) == [(4, bytes([10, 0, 0, 1]), 30), (4, bytes([10, 0, 0, 2]), 30),
                              (6, bytes.fromhex("fd000000000000000000000000000001"), 30)]
    nx = dns.message.make_response(q)
    nx.set_rcode(3)
    assert _dns.parse(nx.to_wire())["rcode"] == 3


def test_agrees_with_dnspython_on_valid_messages():
    import dns.message  # a test dependency (pyproject [test]): missing is a failure, not a skip
    import dns.rrset
    rng = random.Random(7)
    for i in range(300):
        qn = ".".join(rng.choice(["www", "API", "a-b", "x1", "c" * 20]) for _ in range(rng.randint(1, 4)))
        q = dns.message.make_query(qn + ".test", rng.choice(["A", "AAAA", "MX"]))
        r = dns.message.make_response(q)
        r.set_rcode(rng.choice([0, 2, 3, 5]))
        ips = [f"10.{rng.randint(0, 255)}.{i % 256}.{rng.randint(1, 254)}" for _ in range(rng.randint(0, 4))]
        if ips:
            r.answer.append(dns.rrset.from_text(qn + ".test.", rng.randint(0, 9999), "IN", "A", *ips))
        for wire in (q.to_wire(), r.to_wire()):
            ours, theirs = _dns.parse(wire), dns.message.from_wire(wire)
            assert ours["id"] == theirs.id and ours["rcode"] == theirs.rcode()
            assert _dns.name_text(ours["qname"]) == theirs.question[0].name.to_text(True).lower()
            assert ours["qtype"] == theirs.question[0].rdtype
            want = [a.address for rr in theirs.answer for a in rr]
            assert [".".join(map(str, a[1])) for a in ours["answers"]] == want


@SETTINGS
@given(name)
def test_names_as_text_agree(labels):
    wire = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    if len(wire) > 255:
        return
    assert _dns.name_text(wire) == ref.name_text(wire)


def test_names_as_text_escapes():
    assert _dns.name_text(b"\x00") == "."
    assert _dns.name_text(b"\x03a.b\x02c\\\x00") == "a\\046b.c\\092"
    assert _dns.name_text(b"\x03a b\x02\x00\xff\x00") == "a\\032b.\\000\\255"
    arr = np.zeros(3, [("q", "V256"), ("n", "<u2")])
    for i, w in enumerate([b"\x03www\x04test\x00", b"\x00", b"\x01x\x00"]):
        arr["q"][i] = w + bytes(256 - len(w))
        arr["n"][i] = len(w)
    assert _dns.names_to_arrow(arr["q"], arr["n"]).to_pylist() == ["www.test", ".", "x"]


# ------------------------------------------------------------ packets

def decode(packets):
    data = b"".join(p for p, _ in packets)
    offs = np.cumsum([0] + [len(p) for p, _ in packets[:-1]]) if packets else []
    return _packets.decode_packets(data, offs, [len(p) for p, _ in packets], [e for _, e in packets])


@st.composite
def packet(draw):
    data = draw(st.binary(max_size=40))
    l4 = draw(st.sampled_from([udp, tcp]))(draw(st.integers(0, 65535)), draw(st.integers(0, 65535)), data)
    proto = draw(st.sampled_from([6, 17, 1]))
    if draw(st.booleans()):
        ext = draw(st.lists(st.tuples(st.sampled_from([0, 43, 60, 44, 51, 135]), st.integers(0, 3),
                                      st.sampled_from([0, 0, 1, 185])), max_size=9))
        p, eth = ip6(proto, l4, ext=ext), 0x86DD
    else:
        p, eth = ip4(proto, l4, frag=draw(st.sampled_from([0, 0, 0x2000, 5])),
                     pad=draw(st.binary(max_size=6))), 0x0800
    p = bytearray(p)
    for _ in range(draw(st.integers(0, 2))):
        if p:
            i = draw(st.integers(0, len(p) - 1))
            if draw(st.booleans()):
                p = p[:i]
            else:
                p[i] = draw(st.integers(0, 255))
    return bytes(p), draw(st.sampled_from([eth, eth, 0x0806]))


@pytest.mark.parametrize("count, want", [(8, "decoded"), (9, "not_tcp_udp")])
def test_ipv6_extension_headers_are_followed_up_to_eight(count, want):
    p = ip6(17, udp(5353, 53, b"q"), ext=[(60, 0, 0)] * count)
    _pkts, _payload, status = decode([(p, 0x86DD)])
    assert _packets.DECODE_STATUS[status[0]] == want
    got = ref.decode_network(p, 0x86DD)
    assert (got if isinstance(got, str) else "decoded") == want


@SETTINGS
@given(st.lists(packet(), max_size=8))
def test_packet_decode_agrees_with_reference(packets):
    pkts, payload, status = decode(packets)
    names = _packets.DECODE_STATUS
    j = 0
    for i, (p, eth) in enumerate(packets):
        want = ref.decode_network(p, eth)
        if isinstance(want, str):
            assert names[status[i]] == want
            continue
        assert names[status[i]] == "decoded"
        fields, data = want
        row = pkts[j]
        for k, v in fields.items():
            got = bytes(row[k]) if k in ("saddr", "daddr") else int(row[k])
            assert got == v, k
        assert bytes(payload[row["payload_off"]:row["payload_off"] + row["payload_len"]]) == data
        j += 1
    assert j == len(pkts)


def test_tcp_framing_several_messages_and_a_partial_one():
    q1 = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01"
    q2 = struct.pack("!HHHHHH", 2, 0, 1, 0, 0, 0) + b"\x01b\x00\x00\x01\x00\x01"
    seg = struct.pack("!H", len(q1)) + q1 + struct.pack("!H", len(q2)) + q2
    packets = [(ip4(6, tcp(40000, 53, seg)), 0x0800),
               (ip4(6, tcp(40000, 53, seg + b"\x00\x20abc")), 0x0800),   # a message split over segments
               (ip4(6, tcp(40000, 53, b"", flags=0x10)), 0x0800),       # a bare ACK
               (ip4(17, udp(40001, 53, q1)), 0x0800),
               (ip4(17, udp(40001, 53, b"\x00junk")), 0x0800)]
    pkts, payload, _ = decode(packets)
    msgs, addrs, counts = _dns.parse_packets(pkts, payload)
    assert list(msgs["id"]) == [1, 2, 1, 2, 1]
    assert list(msgs["proto"]) == [6, 6, 6, 6, 17]
    assert counts == {"malformed": 1, "tcp_partial": 1, "truncated": 0, "empty": 1}
    for (p, _e), seg_msgs in zip(packets[:2], ([q1, q2], [q1, q2])):
        got, cut = ref.split_tcp(ref.decode_network(p, 0x0800)[1])
        assert got == seg_msgs


def test_parse_packets_agrees_with_reference_on_random_payloads():
    rng = random.Random(3)
    packets = []
    for _ in range(400):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80)))
        if rng.random() < 0.5:
            body = struct.pack("!HHHHHH", rng.getrandbits(16), 0x8180, 1, 1, 0, 0) + b"\x01x\x00\x00\x01\x00\x01" \
                + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + body[:4]
        proto = rng.choice([6, 17])
        if proto == 6:
            body = struct.pack("!H", rng.choice([len(body), len(body) + 1, max(len(body) - 3, 0)])) + body
        l4 = tcp(53, 40000, body) if proto == 6 else udp(53, 40000, body)
        packets.append((ip4(proto, l4), 0x0800))
    pkts, payload, _ = decode(packets)
    msgs, addrs, counts = _dns.parse_packets(pkts, payload)
    want = []
    for p, _e in packets:
        fields, data = ref.decode_network(p, 0x0800)
        parts = ref.split_tcp(data)[0] if fields["proto"] == 6 else ([data] if data else [])
        want += [r for r in map(ref.parse, parts) if r is not None]
    assert len(msgs) == len(want)
    for m, w in zip(msgs, want):
        assert (m["id"], m["rcode"], m["qtype"]) == (w["id"], w["rcode"], w["qtype"])
        assert bytes(m["qname"])[:m["qname_len"]] == w["qname"]
        rows = addrs[m["answers_off"]:m["answers_off"] + m["answers_n"]]
        assert [(int(a["family"]), bytes(a["addr"])[:4], int(a["ttl"])) for a in rows] == w["answers"]


# ------------------------------------------------------------ pairing

def msg_rows(specs):
    """specs: dicts for PairRef; returns the MSG_DTYPE array."""
    arr = np.zeros(len(specs), _dns.MSG_DTYPE)
    for i, s in enumerate(specs):
        for k in ("ts_ns", "id", "qr", "opcode", "rcode", "family", "proto", "sport", "dport", "qtype"):
            arr[i][k] = s[k]
        arr[i]["saddr"] = s["saddr"]
        arr[i]["daddr"] = s["daddr"]
        arr[i]["qname"] = s["qname"] + bytes(256 - len(s["qname"]))
        arr[i]["qname_len"] = len(s["qname"])
    return arr


CLIENTS = [bytes([10, 0, 0, i]) + bytes(12) for i in (1, 2)]
SERVERS = [bytes([10, 0, 1, 53]) + bytes(12)]


@st.composite
def exchange_ops(draw):
    """A history: queries and answers over a small key space (so there are
    retransmissions, unmatched answers, reuse), with expire() calls."""
    ops, t = [], 0
    for _ in range(draw(st.integers(0, 60))):
        t += draw(st.integers(0, 3_000_000_000))
        if draw(st.integers(0, 9)) == 0:
            ops.append(("expire", t))
            continue
        c, s = draw(st.sampled_from(CLIENTS)), SERVERS[0]
        cport, qid = draw(st.sampled_from([40000, 40001])), draw(st.integers(0, 2))
        qr = draw(st.booleans())
        m = dict(ts_ns=t, id=qid, qr=int(qr), opcode=draw(st.sampled_from([0, 0, 0, 0, 4])),
                 rcode=draw(st.integers(0, 5)) if qr else 0, family=4, proto=draw(st.sampled_from([6, 17])),
                 qtype=1, qname=b"\x01" + bytes([97 + qid]) + b"\x00")
        if qr:
            m.update(saddr=s, daddr=c, sport=53, dport=cport)
        else:
            m.update(saddr=c, daddr=s, sport=cport, dport=53)
        ops.append(("msgs", [m]))
    return ops


def canon(rows):
    out = []
    for r in rows:
        if not isinstance(r, dict):
            r = {k: r[k] for k in _dns.PAIR_DTYPE.names}
            r["qname"] = bytes(r["qname"])[:int(r["qname_len"])]
            r["caddr"], r["saddr"] = bytes(r["caddr"]), bytes(r["saddr"])
            del r["qname_len"]
        out.append(tuple(sorted((k, int(v) if not isinstance(v, bytes) else v) for k, v in r.items())))
    return sorted(out)


@SETTINGS
@given(exchange_ops(), st.integers(1, 5))
def test_pairing_agrees_with_reference(ops, capacity):
    table, model = _dns.PairTable(capacity), ref.PairRef(capacity)
    for kind, arg in ops:
        if kind == "expire":
            assert table.expire(arg) == model.expire(arg)
        else:
            assert list(table.add(msg_rows(arg))) == model.add(arg)
        assert canon(table.take()) == canon(model.take())
    c = table.counters()
    assert c.pop("pending") == len(model.pending)
    assert c == model.counts


def test_timeout_after_six_seconds_with_a_fake_clock():
    table = _dns.PairTable(16)
    q = dict(ts_ns=1_000, id=7, qr=0, opcode=0, rcode=0, family=4, proto=17, qtype=1, qname=b"\x01q\x00",
             saddr=CLIENTS[0], daddr=SERVERS[0], sport=40000, dport=53)
    table.add(msg_rows([q]))
    assert table.expire(1_000 + 5_999_999_999) == 0 and len(table.take()) == 0
    assert table.expire(1_000 + 6_000_000_000) == 1
    (row,) = table.take()
    assert (int(row["rcode"]), int(row["latency_ns"])) == (-1, 0)
    # the answer arriving later has nothing to pair with
    a = dict(q, qr=1, saddr=SERVERS[0], daddr=CLIENTS[0], sport=53, dport=40000, ts_ns=7_000_000_000)
    assert list(table.add(msg_rows([a]))) == [0]
    assert table.counters()["unmatched_answers"] == 1


def test_an_answer_later_than_the_timeout_counts_as_a_timeout():
    table = _dns.PairTable(16)
    q = dict(ts_ns=0, id=7, qr=0, opcode=0, rcode=0, family=4, proto=17, qtype=1, qname=b"\x01q\x00",
             saddr=CLIENTS[0], daddr=SERVERS[0], sport=40000, dport=53)
    a = dict(q, qr=1, rcode=0, saddr=SERVERS[0], daddr=CLIENTS[0], sport=53, dport=40000)
    late, in_time = dict(a, ts_ns=6_000_000_000), dict(a, id=8, ts_ns=5_999_999_999)
    assert list(table.add(msg_rows([q, dict(q, id=8), late, in_time]))) == [0, 0, 1, 1]
    got = sorted((int(r["rcode"]), int(r["latency_ns"])) for r in table.take())
    assert got == [(-1, 0), (0, 5_999_999_999)]
    assert table.counters()["timeouts"] == 1 and table.counters()["paired"] == 1


def test_pairing_many_entries_survives_rebuilds():
    table = _dns.PairTable(1000)
    rng = random.Random(5)
    pending = {}
    for step in range(20_000):
        qid = rng.randrange(5000)
        if qid in pending:
            m = dict(ts_ns=step, id=qid, qr=1, opcode=0, rcode=0, family=4, proto=17, qtype=1, qname=b"\x00",
                     saddr=SERVERS[0], daddr=CLIENTS[0], sport=53, dport=40000)
            assert list(table.add(msg_rows([m]))) == [1]
            del pending[qid]
        else:
            m = dict(ts_ns=step, id=qid, qr=0, opcode=0, rcode=0, family=4, proto=17, qtype=1, qname=b"\x00",
                     saddr=CLIENTS[0], daddr=SERVERS[0], sport=40000, dport=53)
            table.add(msg_rows([m]))
            if len(pending) < 1000:
                pending[qid] = step
        assert table.pending == len(pending)
