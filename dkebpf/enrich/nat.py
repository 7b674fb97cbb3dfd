"""DNAT view of the kernel's connection tracking: for a local socket's
connection, where its destination was really translated to.

A conntrack entry holds the original tuple (as the first packet left the
socket: src = local, dst = what the socket connected to) and the reply tuple
(as answers come back, after NAT). The destination was translated (DNAT,
e.g. a Kubernetes service IP -> a pod IP) when the reply's source differs
from the original destination, address or port
(net/netfilter/nf_nat_core.c: nf_nat_setup_info inverts the translated
tuple into the reply direction). SNAT/masquerade changes only the reply's
destination and is not reported.

The table keeps only translated connections, as sorted numpy arrays keyed by
the original tuple packed into 38 bytes; events (EVENT_DTYPE rows from
dkebpf._nfct) are buffered and applied in one vectorised step (last event per
key wins), lookups are a searchsorted. Destroyed entries stay for a grace
period (netflow reports a closed connection's totals in the interval after
it closed); the entry count is bounded (oldest evicted first, destroyed
before live, counted).
"""
import time

import numpy as np
import pyarrow as pa

from .._nfct import EV_DESTROY, EV_DUMP
from .addr import format_addrs


# original tuple as a byte string: sorts and compares with memcmp as numpy
# void; IPv4 addresses in the first 4 bytes, the rest zero
KEY_DTYPE = np.dtype([("src", "V16"), ("dst", "V16"), ("sport", ">u2"), ("dport", ">u2"),
                      ("proto", "u1"), ("family", "u1")])
KEY_VOID = np.dtype((np.void, KEY_DTYPE.itemsize))

DEFAULT_MAX_ENTRIES = 65536
PENDING_MAX_ROWS = 65536  # buffered events applied at once beyond this


def _zero_v4_tail(addrs, family):
    """Copy of 16-byte addresses with bytes 4..15 zeroed for IPv4 rows."""
    a = np.ascontiguousarray(addrs).view(np.uint8).reshape(-1, 16).copy()
    a[np.asarray(family) == 4, 4:] = 0
    return a.view("V16").ravel()


def pack_keys(family, proto, src, sport, dst, dport):
    """Vectorised 38-byte keys of (family, proto, src, sport, dst, dport)."""
    family = np.asarray(family, np.uint8)
    k = np.empty(len(family), KEY_DTYPE)
    k["src"] = _zero_v4_tail(src, family)
    k["dst"] = _zero_v4_tail(dst, family)
    k["sport"] = sport
    k["dport"] = dport
    k["proto"] = proto
    k["family"] = family
    return k.view(KEY_VOID)


class NatTable:
    """Translated connections keyed by their original tuple. Times are
    time.monotonic_ns()."""

    def __init__(self, max_entries=DEFAULT_MAX_ENTRIES, grace_ns=120 * 10**9):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.grace_ns = grace_ns
        self._keys = np.empty(0, KEY_VOID)          # sorted
        self._nat_addr = np.empty(0, "V16")         # reply source: the real destination
        self._nat_port = np.empty(0, np.uint16)
        self._family = np.empty(0, np.uint8)
        self._ct_id = np.empty(0, np.uint32)
        self._born = np.empty(0, np.int64)          # insertion order, for eviction
        self._destroyed = np.empty(0, np.int64)     # 0: live; else when it was destroyed
        self._seen = np.empty(0, np.int64)          # last event or dump row applied
        self._next_born = 0
        self._wild = None  # (sorted keys with the source zeroed, their rows); built when needed
        self._pending = []
        self._pending_rows = 0
        self.totals = dict(events=0, events_translated=0, inserted=0, destroyed=0, expired=0,
                           evicted=0, resync_removed=0, untranslated_replaced=0, lookups=0,
                           lookup_hits=0)

    def __len__(self):
        self.apply()
        return len(self._keys)

    # ------------------------------------------------------------ updates

    def add(self, events, now_ns=None):
        """Buffer EVENT_DTYPE rows in arrival order; applied before the next
        lookup (or at once when many are waiting)."""
        if len(events) == 0:
            return
        self._pending.append(events)
        self._pending_rows += len(events)
        if self._pending_rows >= PENDING_MAX_ROWS:
            self.apply(now_ns)

    def _columns(self):
        return (self._keys, self._nat_addr, self._nat_port, self._family, self._ct_id,
                self._born, self._destroyed, self._seen)

    def _set_columns(self, cols):
        self._wild = None
        (self._keys, self._nat_addr, self._nat_port, self._family, self._ct_id,
         self._born, self._destroyed, self._seen) = cols

    def apply(self, now_ns=None):
        """Apply the buffered events: the last event of each original tuple
        decides. A translated NEW/UPDATE/DUMP makes the entry live, a
        translated DESTROY starts its grace period (inserting it when the
        connection came and went within one batch), an untranslated event
        removes the key (the tuple has since belonged to an untranslated
        connection: a conntrack's reply tuple never changes).
        A dump row does not revive an entry destroyed under the same
        conntrack id (the dump was taken before the destroy event)."""
        if not self._pending:
            return
        now = time.monotonic_ns() if now_ns is None else now_ns
        ev = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        self.totals["events"] += len(ev)

        keys = pack_keys(ev["family"], ev["proto"], ev["orig_src"], ev["orig_sport"],
                         ev["orig_dst"], ev["orig_dport"])
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        last = np.ones(len(sk), bool)
        last[:-1] = sk[1:] != sk[:-1]
        idx = order[last]           # each key's last event, in key order
        fk, fe = keys[idx], ev[idx]

        nat_addr = _zero_v4_tail(fe["reply_src"], fe["family"])
        translated = ((nat_addr != _zero_v4_tail(fe["orig_dst"], fe["family"]))
                      | (fe["reply_sport"] != fe["orig_dport"]))
        self.totals["events_translated"] += int(np.count_nonzero(
            (ev["reply_src"] != ev["orig_dst"]) | (ev["reply_sport"] != ev["orig_dport"])))
        typ = fe["type"]
        destroy = typ == EV_DESTROY
        live = ~destroy

        n = len(self._keys)
        pos = np.searchsorted(self._keys, fk)
        found = pos < n
        found[found] = self._keys[pos[found]] == fk[found]
        fpos = pos[found]

        # updates of existing entries (found rows: column views by fpos)
        f_tr, f_live, f_destroy = translated[found], live[found], destroy[found]
        same_id = self._ct_id[fpos] == fe["ct_id"][found]
        stale_dump = ((typ[found] == EV_DUMP) & (self._destroyed[fpos] != 0) & same_id)
        upd = f_tr & ~stale_dump & (f_live | f_destroy)
        up = fpos[upd]
        self._nat_addr[up] = nat_addr[found][upd]
        self._nat_port[up] = fe["reply_sport"][found][upd]
        new_conn = upd & ~same_id  # another connection on the same tuple
        self._born[fpos[new_conn]] = np.arange(self._next_born, self._next_born + int(new_conn.sum()))
        self._next_born += int(new_conn.sum())
        self._ct_id[up] = fe["ct_id"][found][upd]
        self._seen[up] = now
        revive = upd & f_live
        self._destroyed[fpos[revive]] = 0
        kill = upd & f_destroy
        # a destroy of another connection on the tuple starts a new grace period
        was_live = (self._destroyed[fpos[kill]] == 0) | ~same_id[kill]
        self.totals["destroyed"] += int(was_live.sum())
        self._destroyed[fpos[kill]] = np.where(was_live, now, self._destroyed[fpos[kill]])
        drop = np.zeros(n, bool)
        drop[fpos[~f_tr]] = True
        self.totals["untranslated_replaced"] += int(drop.sum())

        # new entries
        ins = ~found & translated
        m = int(ins.sum())
        self.totals["inserted"] += m
        self.totals["destroyed"] += int((ins & destroy).sum())
        cols = self._columns()
        if m or drop.any():
            keep = ~drop
            new = (fk[ins], nat_addr[ins], fe["reply_sport"][ins], fe["family"][ins],
                   fe["ct_id"][ins], np.arange(self._next_born, self._next_born + m, dtype=np.int64),
                   np.where(destroy[ins], now, 0).astype(np.int64), np.full(m, now, np.int64))
            self._next_born += m
            cols = [np.concatenate([c[keep], x.astype(c.dtype, copy=False)]) for c, x in zip(cols, new)]
            order = np.argsort(cols[0], kind="stable")
            cols = [c[order] for c in cols]
            self._set_columns(cols)
        self._bound()

    def _bound(self):
        over = len(self._keys) - self.max_entries
        if over <= 0:
            return
        # destroyed entries go first, then the oldest live ones
        age = np.lexsort((self._born, self._destroyed == 0))
        keep = np.ones(len(self._keys), bool)
        keep[age[:over]] = False
        self._set_columns([c[keep] for c in self._columns()])
        self.totals["evicted"] += over

    def expire(self, now_ns=None):
        """Drop destroyed entries whose grace period is over."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        self.apply(now)
        gone = (self._destroyed != 0) & (self._destroyed <= now - self.grace_ns)
        if gone.any():
            self._set_columns([c[~gone] for c in self._columns()])
            self.totals["expired"] += int(gone.sum())

    def sweep(self, since_ns, now_ns=None):
        """After a complete dump that started at since_ns: live entries that
        neither the dump nor an event touched since then are gone from the
        kernel (their DESTROY event was lost); start their grace period."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        self.apply(now)
        stale = (self._destroyed == 0) & (self._seen < since_ns)
        self._destroyed[stale] = now
        self.totals["resync_removed"] += int(stale.sum())

    # ------------------------------------------------------------ lookups

    def lookup(self, family, proto, laddr, lport, raddr, rport):
        """Per connection as a local socket sees it (numpy columns: family
        4/6, proto, 16-byte addresses, host-order ports): the translated
        destination as two string columns (ip, port), null where the
        connection was not translated."""
        self.apply()
        n = len(family)
        self.totals["lookups"] += n
        if n == 0 or len(self._keys) == 0:
            return pa.nulls(n, pa.string()), pa.nulls(n, pa.string())
        q = pack_keys(family, proto, laddr, lport, raddr, rport)
        pos = np.searchsorted(self._keys, q)
        hit = pos < len(self._keys)
        hit[hit] = self._keys[pos[hit]] == q[hit]
        # an unconnected UDP socket bound to the wildcard address does not
        # know its source address (netflow reports 0.0.0.0 / ::): match such
        # rows on everything else
        wild = ~hit & ~q.view(np.uint8).reshape(-1, KEY_DTYPE.itemsize)[:, :16].any(axis=1)
        if wild.any():
            wkeys, wrows = self._wild_index()
            wpos = np.searchsorted(wkeys, q[wild])
            whit = wpos < len(wkeys)
            whit[whit] = wkeys[wpos[whit]] == q[wild][whit]
            pos[np.flatnonzero(wild)[whit]] = wrows[wpos[whit]]
            hit[np.flatnonzero(wild)[whit]] = True
        nhit = int(hit.sum())
        self.totals["lookup_hits"] += nhit
        if nhit == 0:
            return pa.nulls(n, pa.string()), pa.nulls(n, pa.string())
        rows = pos[hit]
        ips = format_addrs(self._nat_addr[rows], self._family[rows])
        ports = pa.array(self._nat_port[rows]).cast(pa.string())
        take = pa.array(np.cumsum(hit, dtype=np.int32) - 1, mask=~hit)
        return ips.take(take), ports.take(take)

    def _wild_index(self):
        """The keys with their source address zeroed, sorted, and the row
        each comes from (when several local addresses share the rest of a
        tuple, one of them answers)."""
        if self._wild is None:
            raw = self._keys.view(np.uint8).reshape(-1, KEY_DTYPE.itemsize).copy()
            raw[:, :16] = 0
            wkeys = raw.view(KEY_VOID).ravel()
            order = np.argsort(wkeys, kind="stable")
            self._wild = (wkeys[order], order)
        return self._wild

    def counters(self):
        c = dict(self.totals)
        c["entries"] = len(self._keys)
        c["entries_destroyed"] = int(np.count_nonzero(self._destroyed))
        c["pending_events"] = self._pending_rows
        return c
