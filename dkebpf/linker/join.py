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
    text = np.frombuffer(raw.tobytes().hex().encode(), np.uint8).reshape(n, digits)
    if zero_as is None or not zero.any():
        offsets = np.arange(n + 1, dtype=np.int32) * digits
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))
    keep = np.ones((n, digits), bool)
    keep[zero, len(zero_as):] = False
    text = text.copy()
    text[zero, :len(zero_as)] = np.frombuffer(zero_as.encode(), np.uint8)
    widths = np.where(zero, len(zero_as), digits).astype(np.int32)
    offsets = np.concatenate(([0], np.cumsum(widths))).astype(np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text[keep].tobytes()))


class History:
    """Linked spans still able to be parents of later ones: what link()
    needs of them, as columns (app trace ids as one Arrow string array);
    older windows are pruned by the caller."""

    NUMERIC = {"span_id": U64, "incoming": bool, "ttid": np.int64, "req_seq": np.int64, "resp_seq": np.int64,
               "local": U64, "remote": U64, "trace_hi": U64, "trace_lo": U64, "app_dec": np.int8, "keep": bool,
               "window": np.int64}

    def __init__(self):
        self.cols = {c: np.zeros(0, t) for c, t in self.NUMERIC.items()}
        self.app_trace = pa.array([], pa.string())  # the app trace id each span's trace took ("" none)

    def __len__(self):
        return len(self.cols["span_id"])

    def add(self, cols):
        self.cols = {c: np.concatenate([self.cols[c], np.asarray(cols[c], t)]) for c, t in self.NUMERIC.items()}
        self.app_trace = pa.concat_arrays([self.app_trace, cols["app_trace"]])

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
        if not keep.all():
            self.cols = {c: v[keep] for c, v in self.cols.items()}
            self.app_trace = self.app_trace.filter(pa.array(keep))
        return evicted


def _ints(table, name, dtype, fill):
    if name not in table.column_names:
        return np.full(table.num_rows, fill, dtype)
    wide = pa.uint64() if dtype is U64 else pa.int64()
    return table.column(name).cast(wide).fill_null(fill).to_numpy().astype(dtype)


def _strings(table, name):
    """The column as one Arrow string array, nulls as ""."""
    if name not in table.column_names:
        return pa.array(np.full(table.num_rows, ""), pa.string())
    return pc.fill_null(table.column(name).cast(pa.string()), "").combine_chunks()


def _addresses(table):
    """Hashes of the local and remote ip:port of the process's socket."""
    h = {c: hash_strings(_strings(table, c)) for c in ("src_ip", "src_port", "dst_ip", "dst_port")}
    with np.errstate(over="ignore"):
        return (h["src_ip"] ^ mix64(h["src_port"] + U64(0x9E3779B97F4A7C15)),
                h["dst_ip"] ^ mix64(h["dst_port"] + U64(0x9E3779B97F4A7C15)))


def _match(keys_from, keys_to):
    """For each keys_from[i], an index j with keys_to[j] == keys_from[i],
    else -1 (first such j in sorted order when several)."""
    if not len(keys_to) or not len(keys_from):
        return np.full(len(keys_from), -1, np.int64)
    order = np.argsort(keys_to, kind="stable")
    sorted_keys = keys_to[order]
    pos = np.searchsorted(sorted_keys, keys_from)
    pos_c = np.minimum(pos, len(sorted_keys) - 1)
    found = sorted_keys[pos_c] == keys_from
    return np.where(found, order[pos_c], -1)


def _roots(parent):
    """Root of every node of the forest `parent` (-1 = none), by pointer
    doubling; returns (root, parent), parent with any cycle cut."""
    idx = np.arange(len(parent))
    for attempt in range(2):
        jump = np.where(parent >= 0, parent, idx)
        for _ in range(65):  # 2**64 levels: more than any real trace
            if (parent[jump] < 0).all():
                return jump, parent
            jump = jump[jump]
        # still not at a root: those nodes sit on a cycle or below one,
        # and their jump has landed on the cycle; those become roots
        parent = parent.copy()
        parent[np.unique(jump[parent[jump] >= 0])] = -1
    raise AssertionError("cycles left after cutting them")  # cannot happen: a cut cycle is a tree


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

    # the union: new spans 0..n-1, history n..n+m-1
    all_in = np.concatenate([incoming, h["incoming"]])
    all_ttid = np.concatenate([ttid, h["ttid"]])
    all_req = np.concatenate([req, h["req_seq"]])
    all_resp = np.concatenate([resp, h["resp_seq"]])
    all_local = np.concatenate([local, h["local"]])
    all_remote = np.concatenate([remote, h["remote"]])
    parent = np.full(n + m, -1, np.int64)

    new = np.arange(n)
    # inside a process: exit -> entry with its thread_trace_id
    entries = np.flatnonzero(all_in)
    exits_new = new[~incoming]
    got = _match(all_ttid[exits_new], all_ttid[entries])
    parent[exits_new[got >= 0]] = entries[got[got >= 0]]
    orphans = int((got < 0).sum())
    # across hosts: entry -> exit of the same exchange
    exits = np.flatnonzero(~all_in & (all_req >= 0))
    entries_new = new[incoming & (req >= 0)]

    def key(r, s, a, b):
        with np.errstate(over="ignore"):
            k = mix64(r.astype(U64)) ^ mix64(s.astype(U64) + U64(0x9E3779B97F4A7C15))
            if match_addresses:
                k = k ^ mix64(a * U64(0xD6E8FEB86659FD93)) ^ mix64(b * U64(0xA0761D6478BD642F) + U64(2))
            return k

    got = _match(key(all_req[entries_new], all_resp[entries_new], all_remote[entries_new], all_local[entries_new]),
                 key(all_req[exits], all_resp[exits], all_local[exits], all_remote[exits]))
    ok = got >= 0
    cand = exits[np.where(ok, got, 0)] if len(exits) else np.zeros(len(got), np.int64)
    ok &= (all_req[cand] == all_req[entries_new]) & (all_resp[cand] == all_resp[entries_new])
    if match_addresses:
        ok &= (all_local[cand] == all_remote[entries_new]) & (all_remote[cand] == all_local[entries_new])
    parent[entries_new[ok]] = cand[ok]
    parent[n:] = -1  # history is final

    root, parent = _roots(parent)
    root_new = root[:n]
    # trace id: history roots keep theirs; new roots derive one from the span id
    sid_all = np.concatenate([span_id, h["span_id"]])
    trace_hi = np.concatenate([mix64(span_id), h["trace_hi"]])[root_new]
    trace_lo = np.concatenate([span_id, h["trace_lo"]])[root_new]

    # app trace: the nearest span on the way to the root that carried one
    # (history spans stand for their whole trace: they are roots here)
    all_app = np.concatenate([has_app, pc.not_equal(history.app_trace, "").to_numpy(zero_copy_only=False)])
    sentinel = n + m
    owner = np.append(np.where(all_app, np.arange(n + m), np.where(parent >= 0, parent, sentinel)), sentinel)
    settled = np.append(all_app, True)
    for _ in range(65):
        step = np.where(settled[owner], owner, owner[owner])
        if np.array_equal(step, owner):
            break
        owner = step
    own = owner[:n]
    own_has = own < sentinel
    all_app_trace = pa.concat_arrays([app_trace, history.app_trace, pa.array([""], pa.string())])
    own_trace = all_app_trace.take(pa.array(own))
    own_dec = np.concatenate([app_dec, h["app_dec"], [0]]).astype(np.int8)[own]

    # sampling per trace: the app's decision, else the history's, else a hash
    with np.errstate(over="ignore"):
        hashed = (trace_lo + trace_hi) * KNUTH
    if sampling_rate >= 1:
        keep = np.ones(n, bool)
    elif sampling_rate <= 0:
        keep = np.zeros(n, bool)
    else:
        keep = hashed < U64(sampling_rate * 2.0**64)
    from_history = root_new >= n
    keep = np.where(from_history, np.concatenate([np.zeros(n, bool), h["keep"]])[root_new], keep)
    keep = np.where(own_dec != 0, own_dec > 0, keep)

    parent_new = parent[:n]
    ebpf_parent = np.where(parent_new >= 0, sid_all[np.maximum(parent_new, 0)], U64(0)).astype(U64)
    ebpf_trace_id = hex_column((trace_hi, trace_lo), 32, None)
    ebpf_parent_id = hex_column(ebpf_parent)
    if use_app_trace_id:
        trace_id = pc.if_else(pa.array(own_has), own_trace, ebpf_trace_id)
        parent_id = pc.if_else(pa.array(has_app), _strings(table, "app_parent_id"), ebpf_parent_id)
    else:
        trace_id, parent_id = ebpf_trace_id, ebpf_parent_id
    out = {"span_id": hex_column(span_id, 16, None), "ebpf_trace_id": ebpf_trace_id,
           "ebpf_parent_id": ebpf_parent_id, "trace_id": trace_id, "parent_id": parent_id}
    hist = {"span_id": span_id, "incoming": incoming, "ttid": ttid, "req_seq": req, "resp_seq": resp,
            "local": local, "remote": remote, "trace_hi": trace_hi, "trace_lo": trace_lo, "app_trace": own_trace,
            "app_dec": own_dec, "keep": keep, "window": np.full(n, window, np.int64)}
    return out, keep, hist, {"orphan": orphans}
