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
  ip:port is the server's remote one and the other way round. Sequence
  numbers are 32-bit, so unrelated connections do collide; the addresses
  keep such collisions from joining them.

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

__all__ = ["History", "link", "hex_column", "JOIN_COLUMNS"]

# the columns link() reads (others travel along untouched)
JOIN_COLUMNS = ("span_id", "direction", "thread_trace_id", "req_seq", "resp_seq", "src_ip", "src_port",
                "dst_ip", "dst_port", "app_trace_id", "app_parent_id", "app_span_sampled")

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
    needs of them, as columns; older windows are pruned by the caller."""

    COLS = ("span_id", "incoming", "ttid", "req_seq", "resp_seq", "local", "remote", "trace_hi", "trace_lo",
            "app_owner_trace", "app_dec", "keep", "window")

    def __init__(self):
        self.cols = {c: np.zeros(0, self._dtype(c)) for c in self.COLS}

    @staticmethod
    def _dtype(c):
        return {"incoming": bool, "keep": bool, "app_dec": np.int8, "local": object, "remote": object,
                "app_owner_trace": object, "ttid": np.int64, "req_seq": np.int64, "resp_seq": np.int64,
                "window": np.int64}.get(c, np.uint64)

    def __len__(self):
        return len(self.cols["span_id"])

    def add(self, cols):
        self.cols = {c: np.concatenate([self.cols[c], np.asarray(cols[c], self._dtype(c))]) for c in self.COLS}

    def prune(self, before_window):
        keep = self.cols["window"] >= before_window
        if not keep.all():
            self.cols = {c: v[keep] for c, v in self.cols.items()}


def _col(table, name, dtype, fill):
    if name not in table.column_names:
        return np.full(table.num_rows, fill, dtype)
    arr = table.column(name)
    if dtype is object:
        return np.asarray(arr.cast(pa.string()).fill_null(fill).to_numpy(zero_copy_only=False), object)
    wide = pa.uint64() if dtype is U64 else pa.int64()
    return arr.cast(wide).fill_null(fill).to_numpy().astype(dtype)


def _addresses(table):
    """local and remote ip:port of the process's socket, as strings."""
    s = {c: _col(table, c, object, "") for c in ("src_ip", "src_port", "dst_ip", "dst_port")}
    return s["src_ip"] + ":" + s["src_port"], s["dst_ip"] + ":" + s["dst_port"]


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
    """Link the spans of `table` (pyarrow Table with JOIN_COLUMNS, some
    may be absent) among themselves and to `history`. Returns (columns,
    stats): columns are the output id columns (pyarrow arrays, one per
    span: span_id, ebpf_trace_id, ebpf_parent_id, trace_id, parent_id)
    and ``keep`` (numpy bool, the sampling decision), plus ``history``:
    what to History.add(); stats: counts of orphans."""
    n = table.num_rows
    h = history.cols
    m = len(history)
    span_id = _col(table, "span_id", U64, 0)
    incoming = _col(table, "direction", object, "") == "incoming"
    ttid = _col(table, "thread_trace_id", np.int64, 0)
    req = _col(table, "req_seq", np.int64, -1)
    resp = _col(table, "resp_seq", np.int64, -1)
    local, remote = _addresses(table)
    app_trace = _col(table, "app_trace_id", object, "")
    app_parent = _col(table, "app_parent_id", object, "")
    app_dec = _col(table, "app_span_sampled", np.int8, 0)
    has_app = app_trace != ""

    # the union: new spans 0..n-1, history n..n+m-1
    all_in = np.concatenate([incoming, h["incoming"]])
    all_ttid = np.concatenate([ttid, h["ttid"]])
    all_req = np.concatenate([req, h["req_seq"]])
    all_resp = np.concatenate([resp, h["resp_seq"]])
    codes = pa.compute.dictionary_encode(pa.array(np.concatenate([local, remote, h["local"], h["remote"]]),
                                                  pa.string())).indices.to_numpy().astype(np.uint64)
    all_local = np.concatenate([codes[:n], codes[2 * n:2 * n + m]])
    all_remote = np.concatenate([codes[n:2 * n], codes[2 * n + m:]])
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
    with np.errstate(over="ignore"):
        def key(r, s, a, b):
            k = mix64(r.astype(U64)) ^ mix64(s.astype(U64) + U64(0x9E3779B97F4A7C15))
            if match_addresses:
                k = k ^ mix64(a * U64(0xD6E8FEB86659FD93) + U64(1)) ^ mix64(b * U64(0xA0761D6478BD642F) + U64(2))
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
    hi_all = np.concatenate([mix64(span_id), h["trace_hi"]])
    lo_all = np.concatenate([span_id, h["trace_lo"]])
    trace_hi, trace_lo = hi_all[root_new], lo_all[root_new]

    # app trace: nearest span on the way to the root that has one
    all_has_app = np.concatenate([has_app, h["app_owner_trace"] != ""])
    owner = np.where(all_has_app, np.arange(n + m), np.where(parent >= 0, parent, -1))
    sentinel = n + m
    owner = np.where(owner < 0, sentinel, owner)
    owner_ext = np.append(owner, sentinel)
    has_ext = np.append(all_has_app, True)
    for _ in range(64):
        step = np.where(has_ext[owner_ext], owner_ext, owner_ext[owner_ext])
        if np.array_equal(step, owner_ext):
            break
        owner_ext = step
    own = owner_ext[:n]
    all_app_trace = np.concatenate([app_trace, h["app_owner_trace"], [""]])
    all_app_dec = np.concatenate([app_dec, h["app_dec"], [0]])
    own_trace = all_app_trace[own]
    own_dec = all_app_dec[own]

    # sampling per trace: history decided already; else app, else hash
    all_keep_hist = np.concatenate([np.zeros(n, bool), h["keep"].astype(bool)])
    from_history = root_new >= n
    with np.errstate(over="ignore"):
        hashed = (trace_lo + trace_hi) * KNUTH
    keep_hash = np.ones(n, bool) if sampling_rate >= 1 else hashed < U64(min(sampling_rate, 1.0) * 2.0**64 - 1) \
        if sampling_rate > 0 else np.zeros(n, bool)
    keep = np.where(own_dec != 0, own_dec > 0, keep_hash)
    keep = np.where(from_history & (own_dec == 0), all_keep_hist[root_new], keep)

    parent_new = parent[:n]
    ebpf_parent = np.where(parent_new >= 0, sid_all[np.maximum(parent_new, 0)], U64(0)).astype(U64)
    ebpf_trace_id = hex_column((trace_hi, trace_lo), 32, None)
    ebpf_parent_id = hex_column(ebpf_parent)
    span_hex = hex_column(span_id, 16, None)
    if use_app_trace_id:
        trace_id = pa.array(np.where(own_trace != "", own_trace, np.asarray(ebpf_trace_id.to_numpy(
            zero_copy_only=False), object)), pa.string())
        parent_id = pa.array(np.where(has_app, app_parent, np.asarray(ebpf_parent_id.to_numpy(
            zero_copy_only=False), object)), pa.string())
    else:
        trace_id, parent_id = ebpf_trace_id, ebpf_parent_id
    out = {"span_id": span_hex, "ebpf_trace_id": ebpf_trace_id, "ebpf_parent_id": ebpf_parent_id,
           "trace_id": trace_id, "parent_id": parent_id}
    hist = {"span_id": span_id, "incoming": incoming, "ttid": ttid, "req_seq": req, "resp_seq": resp,
            "local": local, "remote": remote, "trace_hi": trace_hi,
            "trace_lo": trace_lo, "app_owner_trace": own_trace, "app_dec": own_dec, "keep": keep,
            "window": np.full(n, window, np.int64)}
    return out, keep, hist, {"orphan": orphans}

