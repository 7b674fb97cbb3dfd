"""The HTTP/2 "whole frames" rule (bpf/include/h2frame.h h2_frames_exact)
is one C source compiled twice: into the BPF programs (span_h2_mark flags a
connection seen mid-stream) and into user space (ext/includes/h2frame.pxd,
ext/h2trace.pyx follows the flagged calls). Here both builds judge the same
generated corpus: the kernel's through a real program run
(BPF_PROG_TEST_RUN of h2frame_rule.bpf.c, which includes the header as
trace.bpf.c does), user space's through a Cython module that cimports
h2frame.pxd (support/cimport_probe.py). Every verdict must be equal; the
cases built to be whole frames or to break one part of the rule must also
get the verdict they were built for."""
import ctypes
import random
import struct

import pytest

from support import cimport_probe
from support.bpf_build import compile_test_bpf

PAYLOAD_MAX = 1024  # include/trace.h TRACE_PAYLOAD_MAX: what a message start carries
MAX_FRAMES = 8      # include/h2frame.h H2_DETECT_FRAMES
BPF_SYSCALL = 321   # x86_64 __NR_bpf
BPF_PROG_TEST_RUN = 10

# RFC 9113 6: the flags each frame type defines, and the stream it goes on
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
DEFINED_FLAGS = {DATA: 0x09, HEADERS: 0x2d, SETTINGS: 0x01, PUSH_PROMISE: 0x0c, PING: 0x01, CONTINUATION: 0x04}
ON_STREAM_0 = {SETTINGS, PING, GOAWAY}
FIXED_LEN = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}


def header(length, ftype, flags, stream):
    return struct.pack("!I", length)[1:] + bytes([ftype, flags]) + struct.pack("!I", stream)


def valid_frame(rng, ftype=None):
    """One frame of the rule's kind: a random type, defined flags only, its
    stream, a length the type allows (PADDED ones carry their padding)."""
    ftype = rng.randrange(10) if ftype is None else ftype
    flags = DEFINED_FLAGS.get(ftype, 0) & rng.randrange(256)
    if ftype in ON_STREAM_0:
        stream = 0
    elif ftype == WINDOW_UPDATE:
        stream = rng.choice((0, rng.randrange(1, 1 << 31)))
    else:
        stream = rng.randrange(1, 1 << 31)
    if ftype in FIXED_LEN:
        body = rng.randbytes(FIXED_LEN[ftype])
    elif ftype == SETTINGS:
        body = b"" if flags else rng.randbytes(6 * rng.randrange(5))  # an ACK is empty
    elif ftype == GOAWAY:
        body = rng.randbytes(8 + rng.randrange(20))
    elif flags & 0x08:  # PADDED: pad length, the data, the padding
        pad = rng.randrange(12)
        body = bytes([pad]) + rng.randbytes(rng.randrange(30)) + bytes(pad)
    else:
        body = rng.randbytes(rng.randrange(50))
    return header(len(body), ftype, flags, stream) + body


def frames(rng, k):
    return [valid_frame(rng) for _ in range(k)]


def corpus(seed=20261203):
    """[(payload, expected verdict or None)]: None for the fuzzed cases,
    whose verdict only the two builds' agreement checks."""
    rng = random.Random(seed)
    cases = []

    def add(payload, want):
        if len(payload) <= PAYLOAD_MAX:
            cases.append((payload, want))

    for t in range(10):  # every type alone, then runs of every size up to the limit and past it
        for _ in range(20):
            add(valid_frame(rng, t), True)
    for k in range(1, 13):
        for _ in range(40):
            add(b"".join(frames(rng, k)), k <= MAX_FRAMES)
    # the longest call the kernel copies, one DATA frame filling it
    add(header(PAYLOAD_MAX - 9, DATA, 0, 1) + rng.randbytes(PAYLOAD_MAX - 9), True)
    add(header(PAYLOAD_MAX - 8, DATA, 0, 1) + rng.randbytes(PAYLOAD_MAX - 9), False)
    for _ in range(300):
        fs = frames(rng, rng.randrange(1, MAX_FRAMES + 1))
        whole = b"".join(fs)
        ends = {sum(len(f) for f in fs[:i]) for i in range(len(fs) + 1)}
        cut = rng.choice([c for c in range(len(whole)) if c not in ends] or [0])
        add(whole[:cut], False)                                # short: ends inside a frame
        add(whole + rng.randbytes(rng.randrange(1, 9)), False)  # long: bytes past the last frame
        j = rng.randrange(len(fs))
        f = bytearray(fs[j])
        ftype, length = f[3], int.from_bytes(f[0:3], "big")
        bad = []
        f2 = bytearray(f)
        f2[5] |= 0x80                                          # the reserved bit
        bad.append(f2)
        for t in (10, rng.randrange(11, 255), 255):            # an unregistered type
            f2 = bytearray(f)
            f2[3] = t
            bad.append(f2)
        undefined = 0xff & ~DEFINED_FLAGS.get(ftype, 0)
        for b in range(8):                                     # each flag the type lacks
            if undefined >> b & 1:
                f2 = bytearray(f)
                f2[4] |= 1 << b
                bad.append(f2)
        if ftype != WINDOW_UPDATE:                             # the wrong stream
            f2 = bytearray(f)
            f2[5:9] = struct.pack("!I", rng.randrange(1, 1 << 31) if ftype in ON_STREAM_0 else 0)
            bad.append(f2)
        # every length the type forbids next to those it allows
        wrongs = (range(length + 1, length + 6) if ftype == SETTINGS else range(8) if ftype == GOAWAY else
                  (FIXED_LEN[ftype] - 1, FIXED_LEN[ftype] + 1) if ftype in FIXED_LEN else ())
        for wrong in wrongs:
            f2 = bytearray(f[:9])
            f2[0:3] = wrong.to_bytes(3, "big")
            bad.append(f2 + rng.randbytes(wrong))
        for f2 in bad:
            add(b"".join(fs[:j]) + bytes(f2) + b"".join(fs[j + 1:]), False)
        # the last frame's length one more or past the call (0xffffff), or
        # (where the type allows it) one less: the run no longer ends at the end
        last = bytearray(fs[-1])
        length = int.from_bytes(last[0:3], "big")
        wrongs = [length + 1, 0xFFFFFF]
        if length and last[3] not in FIXED_LEN and last[3] not in (SETTINGS, GOAWAY):
            wrongs.append(length - 1)
        for wrong in wrongs:
            last[0:3] = wrong.to_bytes(3, "big")
            add(b"".join(fs[:-1]) + bytes(last), False)
    for text in (b"", b"\0" * 8, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
                 b"*1\r\n$4\r\nPING\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(500),
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        add(text, False)
    for _ in range(3000):  # fuzz: flipped bytes of valid runs, random bytes, zeros
        p = bytearray(b"".join(frames(rng, rng.randrange(1, 10))))
        for _ in range(rng.randrange(1, 4)):
            if p:
                p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
        add(bytes(p), None)
        add(rng.randbytes(rng.randrange(40)), None)
        add(bytes(rng.randrange(9, 80)), None)
    return cases


@pytest.fixture(scope="module")
def kernel_rule(bpf_ok, tmp_path_factory):
    """payload -> the kernel build's verdict, from one program run each."""
    from dkebpf._libbpf import BpfObject

    obj = compile_test_bpf("h2frame_rule", tmp_path_factory.mktemp("bpf"))
    libc = ctypes.CDLL(None, use_errno=True)
    with BpfObject(obj) as bpf:
        bpf.load()
        fd = bpf.program("h2_rule").fd
        rng = random.Random(1)

        def run(payload):
            # struct h2_case: the payload, garbage after it (the rule must not read past n), n
            ctx = ctypes.create_string_buffer(payload + rng.randbytes(PAYLOAD_MAX - len(payload))
                                              + struct.pack("=I", len(payload)), PAYLOAD_MAX + 4)
            # union bpf_attr .test: prog_fd, retval, data sizes and pointers, repeat,
            # duration, ctx_size_in, ctx_size_out, ctx_in, ctx_out
            attr = ctypes.create_string_buffer(struct.pack("=IIIIQQIIIIQQ", fd, 0, 0, 0, 0, 0, 0, 0,
                                                           PAYLOAD_MAX + 4, 0, ctypes.addressof(ctx), 0), 80)
            if libc.syscall(BPF_SYSCALL, BPF_PROG_TEST_RUN, attr, ctypes.sizeof(attr)) != 0:
                raise OSError(ctypes.get_errno(), "bpf(BPF_PROG_TEST_RUN)")
            retval = struct.unpack_from("=i", attr, 4)[0]
            assert retval in (0, 1), retval
            return bool(retval)

        yield run


@pytest.fixture(scope="module")
def user_rule(tmp_path_factory):
    return cimport_probe.build(tmp_path_factory.mktemp("cimport")).frames_exact


def test_kernel_and_user_space_agree_on_every_case(kernel_rule, user_rule):
    cases = corpus()
    labelled = [c for c in cases if c[1] is not None]
    assert sum(w for _, w in labelled) > 400 and sum(not w for _, w in labelled) > 2000, "a corpus without both kinds"
    disagree, wrong = [], []
    for payload, want in cases:
        k, u = kernel_rule(payload), user_rule(payload)
        if k != u:
            disagree.append((payload.hex(), k, u))
        elif want is not None and u != want:
            wrong.append((payload.hex(), u, want))
    assert not disagree, f"{len(disagree)} of {len(cases)} verdicts differ (payload, kernel, user): {disagree[:3]}"
    assert not wrong, f"{len(wrong)} of {len(labelled)} verdicts not as built (payload, got, built): {wrong[:3]}"
