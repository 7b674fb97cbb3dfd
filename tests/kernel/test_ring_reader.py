"""RingReader (ext/libbpf.pyx, ext/includes/dk_ringbuf.h) against a real
BPF ring: the data pages are mapped once (not twice in a row as libbpf
does), so a record that wraps around the ring's end is copied in two
pieces; every byte must arrive, through poll() and through take()."""
import os

import numpy as np
import pytest

from support.bpf_build import compile_test_bpf

RING_BYTES = 1 << 14
PAD = 92
WRAP_DTYPE = np.dtype([("seq", "<u8"), ("pad", "u1", PAD)])


@pytest.fixture(scope="module")
def producer(tmp_path_factory):
    return compile_test_bpf("ring_wrap", tmp_path_factory.mktemp("bpf"))


def ring_mappings():
    """{(start, size)} of this process's read-only BPF map mappings (the
    producer page and data of ring buffers)."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if parts[1].startswith("r--") and len(parts) > 5 and parts[5].startswith("anon_inode:bpf"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.add((lo, hi - lo))
    return out


def expected_pad(seq):
    return (seq[:, None] + np.arange(PAD, dtype=np.uint64)[None, :]).astype(np.uint8)


@pytest.mark.requires("btf")
# poll: records wait in the reader's C buffer, a short copy out at 256;
# poll_large: more than the buffer's first size (4096), handed over to numpy
# as they are; take: straight from the ring into the array
@pytest.mark.parametrize("how", ["poll", "poll_large", "take"])
def test_records_wrapping_the_ring_end_arrive_whole(bpf_ok, producer, how):
    from dkebpf.bpf_objects import BpfSkeleton, ObjectSpec, Ring

    spec = ObjectSpec("ring_wrap", knobs=("target_tgid", "per_call"), rings=(Ring("ring", WRAP_DTYPE),))
    per_call = 32  # 32 * 112 bytes: a quarter of the ring, never full between reads
    calls = 600    # ~19k records, the ring's end crossed ~1300 times
    before = ring_mappings()
    with BpfSkeleton(spec, path=producer).start(knobs={"target_tgid": os.getpid(), "per_call": per_call}) as bpf:
        # the producer page and the data once: the data's pages are in RSS once
        assert [size for _, size in ring_mappings() - before] == [os.sysconf("SC_PAGE_SIZE") + RING_BYTES]
        reader = bpf.rings.ring
        got = []
        for _ in range(calls):
            os.getppid()
            if how.startswith("poll"):
                reader.poll(0)
                if reader.held >= (256 if how == "poll" else 6000):
                    got.append(reader.take())
                    assert reader.held == 0 and reader.buffer_bytes == 4096 * WRAP_DTYPE.itemsize
            else:
                got.append(reader.take())
        got.append(reader.take())
        counters = reader.counters()
    # the arrays outlive the reader (a handed-over buffer is the array's own)
    recs = np.concatenate(got)
    assert len(recs) == per_call * calls, (len(recs), counters)
    seq = recs["seq"]
    assert (np.diff(seq) == 1).all(), "records lost or out of order"
    assert (recs["pad"] == expected_pad(seq)).all(), "a record's bytes were not copied whole"
    assert counters["bad_size"] == 0


@pytest.mark.requires("btf")
def test_take_into_keeps_the_callers_rows_and_leaves_what_does_not_fit(bpf_ok, producer):
    """take_into (the span builder's path): records land after the rows the
    caller carries, which stay as they are; what does not fit waits (held
    by the reader, or in the kernel ring) and comes next time, in order;
    every record once, whole, across the ring's end."""
    from dkebpf.bpf_objects import BpfSkeleton, ObjectSpec, Ring

    spec = ObjectSpec("ring_wrap", knobs=("target_tgid", "per_call"), rings=(Ring("ring", WRAP_DTYPE),))
    per_call, calls = 32, 400  # 3 calls (96 records of 112 bytes) fit in the 16 KiB ring
    out = np.zeros(50, WRAP_DTYPE)
    got, carried, partial = [], 0, 0
    with BpfSkeleton(spec, path=producer).start(knobs={"target_tgid": os.getpid(), "per_call": per_call}) as bpf:
        reader = bpf.rings.ring
        with pytest.raises(TypeError, match="take_into needs a writable contiguous array of 100-byte"):
            reader.take_into(np.zeros(4, np.uint64))
        with pytest.raises(ValueError, match="take_into at row 51 of 50"):
            reader.take_into(out, 51)
        for call in range(calls):
            os.getppid()
            if call % 3 != 2:
                if call % 6 == 1:
                    reader.poll(0)  # some wait in the reader's buffer first: they come first
                continue
            # the caller's carried rows: marked, and they must stay
            carried = call % 7
            out[:carried] = np.zeros(carried, WRAP_DTYPE)
            out["seq"][:carried] = np.uint64(1 << 63) + np.arange(carried, dtype=np.uint64)
            while True:
                n = reader.take_into(out, carried)
                assert carried <= n <= len(out)
                assert (out["seq"][:carried] == np.uint64(1 << 63) + np.arange(carried, dtype=np.uint64)).all()
                got.append(out[carried:n].copy())
                if n < len(out):
                    break
                partial += 1  # the buffer was full: the rest waits for the next call
        while True:
            n = reader.take_into(out, 0)
            got.append(out[:n].copy())
            if n == 0:
                break
        counters = reader.counters()
    recs = np.concatenate(got)
    assert partial > 50  # 96 records into a room of 43-50: the rest came later
    assert len(recs) == per_call * calls, (len(recs), counters)
    seq = recs["seq"]
    assert seq[0] == 0 and (np.diff(seq) == 1).all(), "records lost, repeated or out of order"
    assert (recs["pad"] == expected_pad(seq)).all(), "a record's bytes were not copied whole"
    assert counters["bad_size"] == 0 and counters["received"] == per_call * calls
