"""IP -> domain from the DNS answers dnsflow sees (ctx.domains): netflow and
httpflow tag connections to that IP with dst_domain / server_domain.

The domain is the name the client asked for, also when the address came
at the end of a CNAME chain (what a user typed, not the CDN's name).
Memory is bounded twice: an entry lives as long as the record's TTL, but
at least `min_ttl_s` (a connection is counted up to an interval after the
lookup, and resolvers hand out TTL 0), at most `max_ttl_s`; and at most
`max_entries` entries, the oldest insertions leaving first. Work is per
distinct address, never per row."""
import time
from collections import OrderedDict

import numpy as np
import pyarrow as pa


def _keys(family, addr):
    """Distinct 17-byte (address, family) keys and the row -> key index."""
    n = len(family)
    combo = np.empty((n, 17), dtype=np.uint8)
    combo[:, :16] = np.frombuffer(np.ascontiguousarray(addr).tobytes(), dtype=np.uint8).reshape(n, 16)
    combo[:, 16] = family
    view = np.ascontiguousarray(combo).view(np.dtype((np.void, 17))).ravel()
    uniq, inverse = np.unique(view, return_inverse=True)
    return uniq, inverse.ravel()


class DnsCache:
    def __init__(self, max_entries=65536, min_ttl_s=300, max_ttl_s=3600, clock=time.monotonic_ns):
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self.min_ttl_ns = int(min_ttl_s * 1e9)
        self.max_ttl_ns = int(max(max_ttl_s, min_ttl_s) * 1e9)
        self.clock = clock
        self._entries = OrderedDict()   # key bytes -> (domain, expires_ns)
        self.evicted = 0
        self.expired = 0

    def __len__(self):
        return len(self._entries)

    def update(self, family, addr, ttl_s, domains):
        """family uint8 (4/6), addr 'V16', ttl_s uint32 arrays and domains (a
        pa.StringArray or a list of str), one row per A/AAAA answer. For an address given
        more than once the last row wins."""
        n = len(family)
        if n == 0:
            return
        now = self.clock()
        uniq, inverse = _keys(np.asarray(family, np.uint8), addr)
        last = np.zeros(len(uniq), np.int64)
        last[inverse] = np.arange(n)   # numpy keeps the last write for repeated indices
        ttl = np.asarray(ttl_s, np.uint64)
        entries = self._entries
        for key, row in zip(uniq, last):
            life = min(max(int(ttl[row]) * 1_000_000_000, self.min_ttl_ns), self.max_ttl_ns)
            k = bytes(key)
            entries.pop(k, None)
            d = domains[int(row)]
            entries[k] = (d.as_py() if isinstance(d, pa.Scalar) else d, now + life)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evicted += 1

    def purge(self):
        """Drop expired entries (the agent calls it each interval)."""
        now = self.clock()
        dead = [k for k, (_d, exp) in self._entries.items() if exp <= now]
        for k in dead:
            del self._entries[k]
        self.expired += len(dead)
        return len(dead)

    def lookup(self, family, addr):
        """family: numpy uint8 (4/6); addr: numpy 'V16' (IPv4 in the first
        4 bytes). Returns a pa.StringArray, null where unknown or expired."""
        n = len(family)
        if n == 0 or not self._entries:
            return pa.nulls(n, pa.string())
        now = self.clock()
        uniq, inverse = _keys(np.asarray(family, np.uint8), addr)
        found = []
        for key in uniq:
            hit = self._entries.get(bytes(key))
            found.append(hit[0] if hit is not None and hit[1] > now else None)
        return pa.array(found, pa.string()).take(pa.array(inverse.astype(np.int32)))
