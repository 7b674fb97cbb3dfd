"""Point sampling: keep a fraction of the rows of each RecordBatch.

The decision for a row is a pure function of (measurement, interval_id, the
values of the key columns): the row is kept iff a 64-bit hash of those maps
below the current rate. The same key in the same interval therefore always
gets the same decision, and a different interval draws a different subset.

Hashing is vectorised: each key column is turned into one uint64 per row
(string-like columns are dictionary-encoded, every distinct value is hashed
once with blake2b and spread to the rows through the indices; numeric
columns use their bit patterns), then the columns are combined per row with
a splitmix64-style mix in numpy. No Python object is made per row.

Two modes, exclusive (dkebpf.config refuses both at once):
  * rate: a fixed fraction, 0.01..1.0;
  * pts_per_min: every 60 s (by ``clock``) the rate becomes
    clamp(pts_per_min / points seen in the last minute, 0.01, 1.0); it
    starts at 1.0.
With neither set, ``apply`` returns the batch unchanged.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

# hashlib would load OpenSSL's libcrypto (~3 MiB of RSS) for a hash it takes from _blake2
from _blake2 import blake2b

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DkebpfError

MIN_RATE = 0.01
MAX_RATE = 1.0
PERIOD_S = 60.0

_U64 = np.uint64
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_NULL_HASH = _U64(0x6A09E667F3BCC908)
_TWO53 = float(1 << 53)


def _clamp(v: float) -> float:
    return min(MAX_RATE, max(MIN_RATE, v))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on a uint64 array (wraps mod 2**64)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> _U64(30))
        x = x * _M1
        x = x ^ (x >> _U64(27))
        x = x * _M2
        x = x ^ (x >> _U64(31))
    return x


def _bytes_hash(b: bytes) -> int:
    return int.from_bytes(blake2b(b, digest_size=8).digest(), "little")


def _hash_values(values: pa.Array) -> np.ndarray:
    """One uint64 per distinct value of a string/binary array (no nulls)."""
    out = np.empty(len(values), dtype=np.uint64)
    for i, v in enumerate(values.to_pylist()):  # once per distinct value
        if v is None:
            out[i] = _NULL_HASH
        else:
            out[i] = _bytes_hash(v.encode() if isinstance(v, str) else bytes(v))
    return out


def _from_dictionary(arr: pa.DictionaryArray) -> np.ndarray:
    dict_vals = arr.dictionary
    if not (pa.types.is_string(dict_vals.type) or pa.types.is_large_string(dict_vals.type)
            or pa.types.is_binary(dict_vals.type) or pa.types.is_large_binary(dict_vals.type)):
        dict_vals = dict_vals.cast(pa.string())
    vh = _hash_values(dict_vals)
    idx = arr.indices
    valid = None
    if idx.null_count:
        valid = idx.is_valid().to_numpy(zero_copy_only=False)
        idx = idx.fill_null(0)
    idx_np = idx.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    h = vh[idx_np] if len(vh) else np.zeros(len(idx_np), dtype=np.uint64)
    if valid is not None:
        h = np.where(valid, h, _NULL_HASH)
    return h


def _column_hash(arr) -> np.ndarray:
    """A uint64 per row for one column (pyarrow Array or ChunkedArray)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_dictionary(t):
        return _from_dictionary(arr)
    if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        return _from_dictionary(pc.dictionary_encode(arr))
    valid = None
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(t):
        arr = arr.cast(pa.uint8())
    elif pa.types.is_temporal(t):
        arr = arr.cast(pa.int64())
    if pa.types.is_integer(arr.type):
        a = arr.fill_null(0).to_numpy(zero_copy_only=False)
        h = a.astype(np.int64, copy=False).view(np.uint64) if a.dtype.kind == "i" \
            else a.astype(np.uint64, copy=False)
    elif pa.types.is_floating(arr.type):
        a = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        h = a.view(np.uint64)
    else:  # anything else: through its text form
        return _from_dictionary(pc.dictionary_encode(arr.cast(pa.string())))
    h = _mix(h ^ _GOLDEN)
    if valid is not None:
        h = np.where(valid, h, _NULL_HASH)
    return h


def row_hashes(measurement: str, batch: pa.RecordBatch, key_columns: List[str],
               interval_id: int) -> np.ndarray:
    """uint64 hash per row of (measurement, interval_id, key column values)."""
    n = batch.num_rows
    seed = _bytes_hash(f"{measurement}\x00{int(interval_id)}".encode())
    h = np.full(n, seed, dtype=np.uint64)
    names = batch.schema.names
    for i, name in enumerate(key_columns):
        if name not in names:
            raise DkebpfError(f"sampling: measurement {measurement!r} has no key column "
                              f"{name!r} (columns: {', '.join(names)})")
        col = _column_hash(batch.column(names.index(name)))
        with np.errstate(over="ignore"):
            h = _mix(h * _GOLDEN + col + _U64(i + 1))
    return h


class Sampler:
    def __init__(self, rate: Optional[float], pts_per_min: Optional[int],
                 clock: Callable[[], float] = time.monotonic):
        if rate is not None and not MIN_RATE <= float(rate) <= MAX_RATE:
            raise DkebpfError(f"sampling rate {rate} outside {MIN_RATE}..{MAX_RATE}")
        if pts_per_min is not None and int(pts_per_min) <= 0:
            raise DkebpfError(f"sampling pts_per_min {pts_per_min} must be positive")
        self._fixed = None if rate is None else float(rate)
        self._target = None if pts_per_min is None else int(pts_per_min)
        self._clock = clock
        self._rate = self._fixed if self._fixed is not None else 1.0
        self._window_start = clock() if self._target is not None else 0.0
        self._window_seen = 0
        self._seen: Dict[str, int] = {}
        self._kept: Dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self._fixed is not None or self._target is not None

    def rate(self) -> float:
        return self._rate

    def counters(self) -> dict:
        """{'points_seen': {measurement: n}, 'points_kept': {measurement: n}}."""
        return {"points_seen": dict(self._seen), "points_kept": dict(self._kept)}

    def _adapt(self) -> None:
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < PERIOD_S:
            return
        # Points per minute over the window just ended (normally ~60 s long;
        # longer if apply was not called for a while).
        per_min = self._window_seen * PERIOD_S / elapsed
        self._rate = _clamp(self._target / per_min) if per_min > 0 else MAX_RATE
        self._window_start = now
        self._window_seen = 0

    def apply(self, measurement: str, batch: pa.RecordBatch, key_columns: List[str],
              interval_id: int) -> pa.RecordBatch:
        if self._fixed is None and self._target is None:
            return batch
        if self._target is not None:
            self._adapt()
        n = batch.num_rows
        self._seen[measurement] = self._seen.get(measurement, 0) + n
        self._window_seen += n
        if n == 0 or self._rate >= MAX_RATE:
            self._kept[measurement] = self._kept.get(measurement, 0) + n
            return batch
        h = row_hashes(measurement, batch, key_columns, interval_id)
        threshold = _U64(min(int(self._rate * _TWO53), 1 << 53))
        mask = (h >> _U64(11)) < threshold
        kept = batch.filter(pa.array(mask, type=pa.bool_()))
        self._kept[measurement] = self._kept.get(measurement, 0) + kept.num_rows
        return kept
