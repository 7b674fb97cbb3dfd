"""dkebpf._nfct.parse against the pure-Python reference (tests/reference/
nfct_ref.py): exact rows for kernel-shaped messages, hypothesis property
tests over well-formed, mutated and random buffers, and a random-bytes fuzz
(no crash, no hang, malformed input counted)."""
import socket
import struct
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkebpf._nfct import EV_DESTROY, EV_DUMP, EV_NEW, EV_UPDATE, EVENT_DTYPE, NetlinkReader, parse
from reference import nfct_ref as ref
from support import ctnetlink as ctn

V4 = lambda s: socket.inet_aton(s) + bytes(12)  # noqa: E731
V6 = lambda s: socket.inet_pton(socket.AF_INET6, s)  # noqa: E731


def rows_of(arr):
    return [{n: (bytes(r[n]) if EVENT_DTYPE[n].kind == "V" else int(r[n])) for n in EVENT_DTYPE.names}
            for r in arr]


def both(buf):
    """Parse with both; assert they agree; return the Cython result."""
    out, st_c = parse(buf)
    exp, st_r = ref.parse(buf)
    assert rows_of(out) == exp
    assert st_c == st_r
    return out, st_c


def test_new_ipv4_dnat_message_row():
    msg = ctn.ct_message("new", 4, ("10.0.0.1", "10.96.0.10", 6, 40000, 80),
                         ("10.1.2.3", "10.0.0.1", 6, 8080, 40000), status=0x1a8, ct_id=0xdeadbeef)
    out, st_ = both(msg)
    assert len(out) == 1 and st_["events"] == 1 and st_["malformed"] == 0
    r = out[0]
    assert (r["type"], r["family"], r["proto"]) == (EV_NEW, 4, 6)
    assert bytes(r["orig_src"]) == V4("10.0.0.1") and bytes(r["orig_dst"]) == V4("10.96.0.10")
    assert bytes(r["reply_src"]) == V4("10.1.2.3") and bytes(r["reply_dst"]) == V4("10.0.0.1")
    assert (r["orig_sport"], r["orig_dport"], r["reply_sport"], r["reply_dport"]) == (40000, 80, 8080, 40000)
    assert (r["status"], r["ct_id"]) == (0x1a8, 0xdeadbeef)


def test_kinds_ipv6_and_control_messages_in_one_buffer():
    o6 = ("fd00::1", "fd00::a", 17, 5353, 53)
    r6 = ("fd00::b", "fd00::1", 17, 53, 5353)
    buf = (ctn.ct_message("update", 6, o6, r6) + ctn.ct_message("destroy", 6, o6, r6)
           + ctn.ct_message("dump", 6, o6, r6)
           + ctn.ct_message("new", 4, ("10.0.0.1", "10.0.0.2", 1, None, None),
                            ("10.0.0.2", "10.0.0.1", 1, None, None))  # ICMP: no ports
           + ctn.nlmsg(3, ctn.NLM_F_MULTI, struct.pack("=i", 0), seq=7)    # NLMSG_DONE
           + ctn.nlmsg(2, 0, struct.pack("=i", -16) + bytes(16), seq=9)    # NLMSG_ERROR EBUSY
           + ctn.nlmsg(2, 0, struct.pack("=i", 0) + bytes(16))             # an ack
           + ctn.nlmsg((2 << 8) | 0, 0, bytes(4)))                         # expectation subsystem
    out, st_ = both(buf)
    assert list(out["type"]) == [EV_UPDATE, EV_DESTROY, EV_DUMP, EV_NEW]
    assert list(out["family"]) == [6, 6, 6, 4]
    assert bytes(out[0]["reply_src"]) == V6("fd00::b") and out[0]["reply_sport"] == 53
    assert out[3]["proto"] == 1 and out[3]["orig_sport"] == 0
    assert st_ == dict(messages=8, events=4, malformed=0, ignored=1, done=1, errors=1, last_errno=16,
                       last_end_seq=9)


def test_missing_tuple_and_wrong_sizes_are_malformed():
    o = ("10.0.0.1", "10.0.0.2", 6, 1, 2)
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + ctn.tuple_attr(1, 4, *o)
    no_reply = ctn.nlmsg(1 << 8, 0, body)
    bad_status = ctn.ct_message("new", 4, o, o, extra=ctn.nla(3, b"\0\0"))
    truncated = ctn.ct_message("new", 4, o, o)[:-7]
    out, st_ = both(no_reply + bad_status)
    assert len(out) == 0 and st_["malformed"] == 2 and st_["messages"] == 2
    out, st_ = both(truncated)
    assert len(out) == 0 and st_["malformed"] == 1


# ------------------------------------------------------------ hypothesis

# attributes the parser skips (not tuples, CTA_STATUS or CTA_ID)
UNKNOWN_CTA = [t for t in range(4, 40) if t != 12]
ports = st.one_of(st.none(), st.integers(0, 65535))


@st.composite
def addr(draw, family):
    return draw(st.binary(min_size=4, max_size=4) if family == 4 else st.binary(min_size=16, max_size=16))


@st.composite
def ct_messages(draw):
    fam = draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from([6, 17, 1, 132]))
    tup = lambda: (draw(addr(fam)), draw(addr(fam)), proto, draw(ports), draw(ports))  # noqa: E731
    extra = b"".join(ctn.nla(draw(st.sampled_from(UNKNOWN_CTA)), draw(st.binary(max_size=12)))
                     for _ in range(draw(st.integers(0, 2))))
    return ctn.ct_message(draw(st.sampled_from(["new", "update", "destroy", "dump"])), fam, tup(), tup(),
                          status=draw(st.integers(0, 2**32 - 1)), ct_id=draw(st.integers(0, 2**32 - 1)),
                          extra=extra)


control = st.sampled_from([ctn.nlmsg(3, 2, bytes(4)), ctn.nlmsg(2, 0, struct.pack("=i", -105) + bytes(16)),
                           ctn.nlmsg(1, 0, b""), ctn.nlmsg(0x0201, 0, bytes(8))])


@st.composite
def mutated(draw):
    """A valid message with some bytes overwritten or cut short."""
    raw = bytearray(draw(ct_messages()))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        raw = raw[:draw(st.integers(0, len(raw)))]
    return bytes(raw)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(ct_messages(), control), max_size=8))
def test_wellformed_buffers_agree(parts):
    out, st_ = both(b"".join(parts))
    assert st_["malformed"] == 0
    assert len(out) == sum(1 for p in parts if p[4:6] in (b"\x00\x01", b"\x02\x01"))


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(ct_messages(), mutated(), control), max_size=6))
def test_mutated_buffers_agree(parts):
    both(b"".join(parts))


@settings(max_examples=600, deadline=None, database=None)
@given(st.binary(max_size=600))
def test_random_bytes_agree(buf):
    both(buf)


def test_random_bytes_fuzz_no_crash_no_hang():
    """50k random buffers (random netlink-ish headers to get past the first
    checks) parse in bounded time; anything not a row is counted."""
    rng = np.random.default_rng(7)
    t0 = time.monotonic()
    total_rows = total_bad = 0
    for i in range(50_000):
        n = int(rng.integers(0, 400))
        buf = bytearray(rng.bytes(n))
        if n >= 20 and i % 2:
            struct.pack_into("=IH", buf, 0, int(rng.integers(16, n + 1)), (1 << 8) | int(rng.integers(0, 3)))
            buf[16] = (2, 10)[i % 4 // 2]
        out, st_ = parse(bytes(buf))
        total_rows += len(out)
        total_bad += st_["malformed"]
        assert st_["events"] == len(out)
    assert total_bad > 10_000
    assert time.monotonic() - t0 < 60


def test_reader_drains_a_socket_pair_and_drops_foreign_senders():
    """A netlink datagram from a process (nl_pid != 0) is not the kernel's:
    counted as foreign, never parsed."""
    a = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, ctn.NETLINK_NETFILTER)
    b = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ctn.NETLINK_NETFILTER)
    try:
        a.bind((0, 0))
        b.bind((0, 0))
        msg = ctn.ct_message("new", 4, ("10.0.0.1", "10.0.0.2", 6, 1, 2), ("10.0.0.3", "10.0.0.1", 6, 2, 1))
        b.sendto(msg, (a.getsockname()[0], 0))
        r = NetlinkReader(a.fileno())
        deadline = time.monotonic() + 5
        while r.counters()["datagrams"] == 0 and time.monotonic() < deadline:
            assert len(r.drain()) == 0
            time.sleep(0.01)
        c = r.counters()
        assert (c["datagrams"], c["foreign"], c["events"]) == (1, 1, 0)
    finally:
        a.close()
        b.close()
