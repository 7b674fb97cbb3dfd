"""RingReader (ext/libbpf.pyx, ext/includes/dk_ringbuf.h) against a real
BPF ring: the data pages are mapped once (not twice in a row as libbpf
does), so a record that wraps around the ring's end is copied in two
pieces; every byte must arrive, through poll() and through take()."""
import os
import subprocess

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BPF_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "bpf")
RING_BYTES = 1 << 14
PAD = 92
WRAP_DTYPE = np.dtype([("seq", "<u8"), ("pad", "u1", PAD)])


@pytest.fixture(scope="module")
def producer(tmp_path_factory):
    obj = str(tmp_path_factory.mktemp("bpf") / "ring_wrap.bpf.o")
    subprocess.check_call(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-I", BPF_DIR,
                           "-c", os.path.join(HERE, "ring_wrap.bpf.c"), "-o", obj])
    return obj


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
