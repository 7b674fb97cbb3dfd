"""Joining spans into traces, over numpy columns (no Python object per
span): the heart of ``dkebpf linker``.

Input: the spans of one event-time window plus the already linked spans of
the windows before it (``History``), whose ids are final. Links:

* inside a process: an outgoing span (``direction`` outgoing, an exit) is
  the child of the incoming span (entry) with the same ``thread_trace_id``
  (the collector gave the exit the id of the request its thread or
  goroutine was serving);
* across hosts: an entry (the server's side of a request) is the child of
  the exit (the client's side) with the same ``req_seq`` and ``resp_seq``
  -- the TCP sequence numbers of the first request and response bytes,
  equal on both ends of a connection -- and, unless ``match_addresses`` is
  off (NAT between the hosts), mirrored addresses: the client's local
  ip:port is the server's remote one and the other way round (compared as
  64-bit hashes, dkebpf._spanhash). Sequence numbers are 32-bit, so
  unrelated connections do collide; the addresses keep such collisions
  from joining them.

Each join looks its keys up in sorted indexes: the window's own (sorted
here) and the history's (kept sorted by History as windows come and go);
among equal keys (only hostile input repeats one) the window's spans win,
then the oldest history row.

Then: the root of every span (following parents; a cycle, which only
hostile input makes, is cut and its spans start traces), the eBPF trace id (from the
root: its span id and a 64-bit mix of it), the app trace id (the nearest
span on the way to the root that carried one, itself included), and the
sampling decision per trace (the app's decision where one is known, else
a hash of the trace id against ``sampling_rate``, as Datadog's agent does:
the same trace id is kept or dropped in every window and by every linker).
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._spanhash import hash_strings

__all__ = ["History", "link", "hex_column"]

KNUTH = np.uint64(1111111111111111111)  # Datadog's sampler constant (dd-agent sampler.go)
U64 = np.uint64


def mix64(x):
    """splitmix64 finalizer: a well spread 64-bit value from x (uint64 array)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> U64(30))) * U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> U64(27))) * U64(0x94D049BB133111EB)
        return x ^ (x >> U64(31))


# every byte pair's four hex digits, as the little-endian uint32 of their
# ASCII codes: an array of big-endian bytes viewed as uint16 becomes its
# hex text in one gather
_HEX_QUADS = np.frombuffer(bytes.fromhex("".join(f"{b & 0xff:02x}{b >> 8:02x}".encode().hex() for b in range(65536))),
                           "<u4")


def hex_column(values, digits=16, zero_as="0"):
    """pyarrow strings: each uint64 as `digits` lowercase hex digits (16 or
    32 from a (hi, lo) pair); 0 as `zero_as` when given."""
    if isinstance(values, tuple):
        hi, lo = values
        raw = np.empty((len(lo), 2), ">u8")
        raw[:, 0], raw[:, 1] = hi, lo
        zero = (hi == 0) & (lo == 0)
    else:
        raw = np.asarray(values).astype(">u8")
        zero = raw == 0
    n = len(zero)
    text = _HEX_QUADS[raw.view("<u2")].view(np.uint8)
    offsets = np.arange(n + 1, dtype=np.int32) * digits
    column = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))
    if zero_as is None or not zero.any():
        return column
    return pc.if_else(pa.array(zero), pa.scalar(zero_as), column)  # (3x a byte mask's copy)


def _join_keys(cols, name):
    """(keys, rows) of the spans of `cols` (new spans or History.cols) that
    can be parents in join `name`: entries by thread_trace_id ("thread"),
    exits by their exchange ("exchange": sequence numbers and addresses;
    "exchange_seq": sequence numbers only)."""
    if name == "thread":
        rows = np.flatnonzero(cols["incoming"])
        return cols["ttid"][rows], rows
    rows = np.flatnonzero(~cols["incoming"] & (cols["req_seq"] >= 0))
    return _exchange_key(cols["req_seq"][rows], cols["resp_seq"][rows], cols["local"][rows], cols["remote"][rows],
                         name == "exchange"), rows


def _exchange_key(req, resp, client, server, with_addresses):
    """One 64-bit key per exchange, equal at its two ends: the client's
    (local, remote) is the server's (remote, local)."""
    with np.errstate(over="ignore"):
        k = mix64(req.astype(U64)) ^ mix64(resp.astype(U64) + U64(0x9E3779B97F4A7C15))
        if with_addresses:
            k ^= mix64(client * U64(0xD6E8FEB86659FD93)) ^ mix64(server * U64(0xA0761D6478BD642F) + U64(2))
        return k


def _sorted_index(keys, rows):
    """(keys sorted, their rows): stable, so among equal keys the first row
    comes first."""
    order = np.argsort(keys, kind="stable")
    return keys[order], rows[order]


class History:
    """Linked spans still able to be parents of later ones: what link()
    needs of them, as columns (``cols``: numpy views; app trace ids as one
    chunked Arrow string array), and their join indexes (the keys of each
    join, sorted, with their rows), kept sorted as windows come (a merge of
    two sorted runs), so that a window's join sorts only its own spans
    however long the history. Rows live in buffers with room to grow:
    adding a window writes its rows only, and pruning the oldest (the
    caller prunes by window, and windows come in order) moves the start.
    Costs per window follow the window's size, not the history's (but for
    the renumbering of the indexes and an occasional compaction)."""

    NUMERIC = {"span_id": U64, "incoming": bool, "ttid": np.int64, "req_seq": np.int64, "resp_seq": np.int64,
               "local": U64, "remote": U64, "trace_hi": U64, "trace_lo": U64, "app_dec": np.int8, "keep": bool,
               "has_app": bool, "window": np.int64}

    def __init__(self):
        self._buf = {c: np.zeros(0, t) for c, t in self.NUMERIC.items()}
        self._start = self._end = 0
        self.cols = {c: b[:0] for c, b in self._buf.items()}
        # the app trace id each span's trace took ("" none)
        self.app_trace = pa.chunked_array([], pa.string())
        self.with_app = 0  # spans whose trace took an app trace id
        self.indexes = {}  # join name -> (sorted keys, rows)

    def __len__(self):
        return self._end - self._start

    def _views(self):
        self.cols = {c: b[self._start:self._end] for c, b in self._buf.items()}

    def index(self, name):
        """The sorted (keys, rows) of join `name`, built on first use."""
        if name not in self.indexes:
            self.indexes[name] = _sorted_index(*_join_keys(self.cols, name))
        return self.indexes[name]

    def add(self, cols):
        """Append link()'s history rows; their join indexes (in cols
        ["indexes"], rows counted from 0) merge into the history's."""
        base, k = len(self), len(cols["span_id"])
        for name, (keys, rows) in cols["indexes"].items():
            if name in self.indexes or not base:
                old_keys, old_rows = self.indexes.get(name, (keys[:0], rows[:0]))
                self.indexes[name] = _sorted_index(np.concatenate([old_keys, keys]),
                                                   np.concatenate([old_rows, rows + base]))
        if self._end + k > len(self._buf["span_id"]):  # full: compact, with room for as many again
            room = max(2 * (base + k), 4096)
            for c, b in self._buf.items():
                grown = np.empty(room, b.dtype)
                grown[:base] = b[self._start:self._end]
                self._buf[c] = grown
            self._start, self._end = 0, base
        for c, t in self.NUMERIC.items():
            self._buf[c][self._end:self._end + k] = cols[c]
        self._end += k
        self._views()
        self.app_trace = pa.chunked_array([*self.app_trace.chunks, cols["app_trace"]], pa.string())
        self.with_app += int(np.count_nonzero(cols["has_app"]))

    def prune(self, before_window, max_spans=None):
        """Forget the spans of windows before `before_window`, then the
        oldest beyond `max_spans` (the memory bound); returns how many of
        the latter went (their late children will be orphans)."""
        keep = self.cols["window"] >= before_window
        evicted = 0
        if max_spans is not None and len(keep) > max_spans:
            # spans are added window after window (late ones with the last
            # window linked): the oldest come first
            keep[:len(keep) - max_spans] = False
            evicted = int((self.cols["window"][:len(keep) - max_spans] >= before_window).sum())
        if keep.all():
            return evicted
        self.with_app -= int(np.count_nonzero(self.cols["has_app"][~keep]))
        cut = int(np.argmax(keep)) if keep.any() else len(keep)
        if keep[cut:].all():  # the oldest rows: the start moves
            self._start += cut
            self.app_trace = self.app_trace.slice(cut)
            for name, (keys, rows) in self.indexes.items():
                kept = rows >= cut
                self.indexes[name] = keys[kept], rows[kept] - cut
        else:  # (not how windows prune; kept right all the same)
            for c, b in self._buf.items():
                b[:int(keep.sum())] = b[self._start:self._end][keep]
            self._start, self._end = 0, int(keep.sum())
            self.app_trace = self.app_trace.filter(pa.array(keep))
            renumber = np.cumsum(keep) - 1
            for name, (keys, rows) in self.indexes.items():
                kept = keep[rows]
                self.indexes[name] = keys[kept], renumber[rows[kept]]
        self._views()
        return evicted


def _ints(table, name, dtype, fill):
    if name not in table.column_names:
        return np.full(table.num_rows, fill, dtype)
    wide = pa.uint64() if dtype is U64 else pa.int64()
    return table.column(name).cast(wide).fill_null(fill).to_numpy().astype(dtype)


def _empty_strings(n):
    """n "" as an Arrow string array: offsets of zeros, no characters."""
    return pa.StringArray.from_buffers(n, pa.py_buffer(np.zeros(n + 1, np.int32)), pa.py_buffer(b""))


def _strings(table, name):
    """The column as one Arrow string array, nulls as ""."""
    if name not in table.column_names:
        return _empty_strings(table.num_rows)
    return pc.fill_null(table.column(name).cast(pa.string()), "").combine_chunks()


def _addresses(table):
    """Hashes of the local and remote ip:port of the process's socket."""
    h = {c: hash_strings(_strings(table, c)) for c in ("src_ip", "src_port", "dst_ip", "dst_port")}
    with np.errstate(over="ignore"):
        return (h["src_ip"] ^ mix64(h["src_port"] + U64(0x9E3779B97F4A7C15)),
                h["dst_ip"] ^ mix64(h["dst_port"] + U64(0x9E3779B97F4A7C15)))


def _match(queries, *indexes):
    """For each query key, the row of the first equal key in the first of
    `indexes` ((sorted keys, rows, added to rows) triples) that has one,
    else -1. The queries
    are sorted first: searches in key order walk the index forward, several
    times faster than random ones into a large index."""
    found = np.full(len(queries), -1, np.int64)
    if not len(queries):
        return found
    order = np.argsort(queries)
    q = queries[order]
    got = np.full(len(q), -1, np.int64)
    for keys, rows, base in reversed(indexes):  # the first index's hits written last: they win
        if not len(keys):
            continue
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        hit = keys[pos] == q
        got[hit] = rows[pos[hit]] + base
    found[order] = got
    return found


def _roots(parent, n):
    """Root of each of the n new spans, by pointer doubling: `parent`
    (-1 = none) points to new spans (< n) or to history spans (>= n), which
    are final and so roots here. Returns (root, parent), parent with any
    cycle cut (only hostile input makes one; its spans start traces)."""
    idx = np.arange(n)
    for attempt in range(2):
        jump = np.where(parent >= 0, parent, idx)
        for _ in range(65):  # 2**64 levels: more than any real trace
            inner = np.flatnonzero(jump < n)
            open_ = inner[parent[jump[inner]] >= 0]
            if not len(open_):
                return jump, parent
            jump[open_] = jump[jump[open_]]
        # still not at a root: those nodes sit on a cycle or below one,
        # and their jump has landed on the cycle; those become roots
        parent = parent.copy()
        parent[np.unique(jump[open_])] = -1
    raise AssertionError("cycles left after cutting them")  # cannot happen: a cut cycle is a tree


def _either(new, old, at, n):
    """Values at union rows `at`: new[at] below n, else old[at - n]."""
    out = np.empty(len(at), new.dtype)
    is_new = at < n
    out[is_new] = new[at[is_new]]
    out[~is_new] = old[at[~is_new] - n]
    return out


def link(table, history, *, sampling_rate=1.0, match_addresses=True, use_app_trace_id=True, window=0):
    """Link the spans of `table` among themselves and to `history`.
    `table`: a pyarrow Table of dketrace columns; the join reads span_id,
    direction, thread_trace_id, req_seq, resp_seq, the addresses and ports
    and the app_* ids, any of which may be absent. Returns (columns, keep,
    history_rows, stats): the id columns of each span (pyarrow
    arrays: span_id, ebpf_trace_id, ebpf_parent_id, trace_id, parent_id),
    the sampling decision (numpy bool), what to History.add(), and the
    count of orphans (exits without the entry of their thread)."""
    n = table.num_rows
    h = history.cols
    m = len(history)
    span_id = _ints(table, "span_id", U64, 0)
    incoming = pc.equal(_strings(table, "direction"), "incoming").to_numpy(zero_copy_only=False)
    ttid = _ints(table, "thread_trace_id", np.int64, 0)
    req = _ints(table, "req_seq", np.int64, -1)
    resp = _ints(table, "resp_seq", np.int64, -1)
    local, remote = _addresses(table)
    app_trace = _strings(table, "app_trace_id")
    has_app = pc.not_equal(app_trace, "").to_numpy(zero_copy_only=False)
    app_dec = _ints(table, "app_span_sampled", np.int8, 0)

    new = {"incoming": incoming, "ttid": ttid, "req_seq": req, "resp_seq": resp, "local": local, "remote": remote}
    # rows: new spans 0..n-1, history n..n+m-1; parent of each new span
    parent = np.full(n, -1, np.int64)
    indexes = {}

    def index_pair(name):
        """The join's index of the new spans (kept for History.add) and
        the history's, its rows counted from n."""
        indexes[name] = _sorted_index(*_join_keys(new, name))
        keys, rows = history.index(name)
        return (*indexes[name], 0), (keys, rows, n)

    # inside a process: exit -> entry with its thread_trace_id
    exits_new = np.flatnonzero(~incoming)
    got = _match(ttid[exits_new], *index_pair("thread"))
    parent[exits_new] = got
    orphans = int((got < 0).sum())
    # across hosts: entry -> exit of the same exchange (the key's hash
    # checked against the values: a 64-bit collision joins nothing)
    entries_new = np.flatnonzero(incoming & (req >= 0))
    exchange = "exchange" if match_addresses else "exchange_seq"
    cand = _match(_exchange_key(req[entries_new], resp[entries_new], remote[entries_new], local[entries_new],
                                match_addresses), *index_pair(exchange))
    found = cand >= 0
    entries_new, cand = entries_new[found], cand[found]
    ok = ((_either(req, h["req_seq"], cand, n) == req[entries_new])
          & (_either(resp, h["resp_seq"], cand, n) == resp[entries_new]))
    if match_addresses:
        ok &= ((_either(local, h["local"], cand, n) == remote[entries_new])
               & (_either(remote, h["remote"], cand, n) == local[entries_new]))
    parent[entries_new[ok]] = cand[ok]

    root, parent = _roots(parent, n)
    # trace id: history roots keep theirs; new roots derive one from the span id
    trace_hi = _either(mix64(span_id), h["trace_hi"], root, n)
    trace_lo = _either(span_id, h["trace_lo"], root, n)

    # app trace: the nearest span on the way to the root that carried one
    # (history spans stand for their whole trace: they are roots here)
    sentinel = n + m  # none
    if has_app.any() or history.with_app:
        at_history = parent >= n
        hist_has = np.zeros(n, bool)
        hist_has[at_history] = h["has_app"][parent[at_history] - n]
        owner = np.where(has_app, np.arange(n), np.where((parent >= 0) & (~at_history | hist_has), parent, sentinel))
        for _ in range(65):
            walking = np.flatnonzero(owner < n)
            walking = walking[~has_app[owner[walking]]]
            if not len(walking):
                break
            owner[walking] = owner[owner[walking]]
        own_has = owner < sentinel
        own_trace = pa.chunked_array([app_trace, *history.app_trace.chunks, pa.array([""], pa.string())],
                                     pa.string()).take(pa.array(owner)).combine_chunks()
        own_dec = np.zeros(n, np.int8)
        own_dec[own_has] = _either(app_dec, h["app_dec"], owner[own_has], n)
    else:  # no app trace id anywhere: nothing to walk
        own_has, own_trace, own_dec = np.zeros(n, bool), _empty_strings(n), np.zeros(n, np.int8)

    # sampling per trace: the app's decision, else the history's, else a hash
    with np.errstate(over="ignore"):
        hashed = (trace_lo + trace_hi) * KNUTH
    if sampling_rate >= 1:
        keep = np.ones(n, bool)
    elif sampling_rate <= 0:
        keep = np.zeros(n, bool)
    else:
        keep = hashed < U64(sampling_rate * 2.0**64)
    from_history = root >= n
    keep[from_history] = h["keep"][root[from_history] - n]
    keep = np.where(own_dec != 0, own_dec > 0, keep)

    ebpf_parent = np.zeros(n, U64)
    linked = parent >= 0
    ebpf_parent[linked] = _either(span_id, h["span_id"], parent[linked], n)
    ebpf_trace_id = hex_column((trace_hi, trace_lo), 32, None)
    ebpf_parent_id = hex_column(ebpf_parent)
    if use_app_trace_id:  # (no string work where no span has an app id)
        trace_id = pc.if_else(pa.array(own_has), own_trace, ebpf_trace_id) if own_has.any() else ebpf_trace_id
        parent_id = (pc.if_else(pa.array(has_app), _strings(table, "app_parent_id"), ebpf_parent_id)
                     if has_app.any() else ebpf_parent_id)
    else:
        trace_id, parent_id = ebpf_trace_id, ebpf_parent_id
    out = {"span_id": hex_column(span_id, 16, None), "ebpf_trace_id": ebpf_trace_id,
           "ebpf_parent_id": ebpf_parent_id, "trace_id": trace_id, "parent_id": parent_id}
    hist = {"span_id": span_id, "incoming": incoming, "ttid": ttid, "req_seq": req, "resp_seq": resp,
            "local": local, "remote": remote, "trace_hi": trace_hi, "trace_lo": trace_lo, "app_trace": own_trace,
            "app_dec": own_dec, "keep": keep, "has_app": own_has, "window": np.full(n, window, np.int64),
            "indexes": indexes}
    return out, keep, hist, {"orphan": orphans}
