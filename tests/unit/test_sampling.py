import numpy as np
import pyarrow as pa
import pytest

from dkebpf.errors import DkebpfError
from dkebpf.sampling import Sampler, row_hashes

KEYS = ["src_ip", "dst_port", "pid"]


def make_batch(n=20_000, offset=0):
    i = np.arange(offset, offset + n)
    return pa.RecordBatch.from_arrays(
        [pa.array([f"10.0.{(k // 250) % 256}.{k % 250}" for k in i]),
         pa.array((i % 1000).astype(np.int32)),
         pa.array(i.astype(np.int64)),
         pa.array(np.ones(n))],
        names=["src_ip", "dst_port", "pid", "bytes"])


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_no_sampling_returns_same_batch():
    s = Sampler(None, None)
    b = make_batch(100)
    assert s.apply("netflow", b, KEYS, 1) is b
    assert s.rate() == 1.0


@pytest.mark.parametrize("rate", [0.5, 0.1])
def test_fixed_rate_fraction(rate):
    s = Sampler(rate, None)
    b = make_batch()
    fractions = [s.apply("netflow", b, KEYS, iv).num_rows / b.num_rows for iv in range(5)]
    for f in fractions:
        assert abs(f - rate) <= 0.03, fractions
    c = s.counters()
    assert c["points_seen"]["netflow"] == 5 * b.num_rows
    assert c["points_kept"]["netflow"] == round(sum(fractions) * b.num_rows)


def test_deterministic_same_key_same_interval():
    b = make_batch()
    a1 = Sampler(0.3, None).apply("netflow", b, KEYS, 7)
    a2 = Sampler(0.3, None).apply("netflow", b, KEYS, 7)
    assert a1.equals(a2)
    # decision depends on the key, not the row position
    rev = b.take(pa.array(np.arange(b.num_rows)[::-1]))
    a3 = Sampler(0.3, None).apply("netflow", rev, KEYS, 7)
    assert sorted(a3.column("pid").to_pylist()) == sorted(a1.column("pid").to_pylist())


def test_different_interval_or_measurement_different_subset():
    b = make_batch()
    s = Sampler(0.5, None)
    p1 = set(s.apply("netflow", b, KEYS, 1).column("pid").to_pylist())
    p2 = set(s.apply("netflow", b, KEYS, 2).column("pid").to_pylist())
    p3 = set(s.apply("dnsflow", b, KEYS, 1).column("pid").to_pylist())
    assert p1 != p2 and p1 != p3
    # independent draws: overlap about 0.25 of all keys
    assert abs(len(p1 & p2) / b.num_rows - 0.25) < 0.03


def test_hash_handles_dictionary_nulls_and_types():
    b = pa.RecordBatch.from_arrays(
        [pa.array(["a", None, "a", "b"]).dictionary_encode(),
         pa.array([1, 2, None, 1], type=pa.uint16()),
         pa.array([True, False, None, True]),
         pa.array([1.5, None, 1.5, 1.5])],
        names=["s", "u", "flag", "f"])
    h = row_hashes("m", b, ["s", "u", "flag", "f"], 3)
    assert h.dtype == np.uint64 and len(h) == 4
    assert h[0] != h[3]
    assert len(set(h.tolist())) == 4
    # same values, plain string column instead of dictionary -> same hashes
    b2 = b.set_column(0, "s", pa.array(["a", None, "a", "b"]))
    assert np.array_equal(row_hashes("m", b2, ["s", "u", "flag", "f"], 3), h)


def test_missing_key_column():
    with pytest.raises(DkebpfError, match="nope"):
        Sampler(0.5, None).apply("m", make_batch(10), ["nope"], 0)


def test_rate_bounds():
    for bad in (0.0, 0.001, 1.5):
        with pytest.raises(DkebpfError):
            Sampler(bad, None)
    with pytest.raises(DkebpfError):
        Sampler(None, 0)
    assert Sampler(0.01, None).rate() == 0.01
    assert Sampler(1.0, None).rate() == 1.0
    b = make_batch(1000)
    assert Sampler(1.0, None).apply("m", b, KEYS, 0).num_rows == 1000
    # adaptive: huge traffic clamps at 0.01, tiny traffic at 1.0
    clk = FakeClock()
    s = Sampler(None, 10, clock=clk)
    s.apply("m", make_batch(20_000), KEYS, 0)
    clk.t += 60
    s.apply("m", make_batch(10), KEYS, 1)
    assert s.rate() == 0.01
    clk.t += 60
    s.apply("m", make_batch(10), KEYS, 2)
    assert s.rate() == 1.0


def test_pts_per_min_converges():
    clk = FakeClock()
    s = Sampler(None, 1500, clock=clk)
    assert s.rate() == 1.0
    kept_per_min = []
    offset = 0
    for minute in range(5):
        kept = 0
        for tick in range(6):  # 6 batches of ~1667 points = 10k points/min
            n = 10_000 // 6 + (1 if tick < 10_000 % 6 else 0)
            kept += s.apply("netflow", make_batch(n, offset), KEYS, minute * 6 + tick).num_rows
            offset += n
            clk.t += 10
        kept_per_min.append(kept)
    assert kept_per_min[0] == 10_000  # starts at 1.0
    assert s.rate() == pytest.approx(0.15, abs=1e-9)
    for k in kept_per_min[2:]:
        assert abs(k - 1500) <= 0.15 * 1500, kept_per_min
