"""ebpf-trace's span builder: message starts of bpf/trace.bpf.c (struct
span_msg, one per run of calls in one direction on a socket) -> spans, one
per request/response exchange, without a Python object per message.

``pair()`` walks each connection's messages in time order (records sorted
by socket, then time; what an earlier batch left unanswered comes first,
carried by the caller). A connection's protocol and which way its requests
go are told once, from the first message that says so (an HTTP/1.x request
or status line, a Redis command array, a PostgreSQL startup packet, a
MySQL server greeting: ``detect``); a connection that does not say within
DETECT_TRIES message starts is not traced (as the original, which turns
the protocol off for it). Then every message start in the request
direction is a request and the next one back its response; the one after
that (the next request, or the socket's close record) tells where the
response ended: its ``ts_last_*`` and byte counters. A response nothing
followed yet is reported once it has been quiet for the settle time, ended
at its own first call.

``link_threads()`` gives every request its ``thread_trace_id``: a request a
process received (an entry span) a new id; a request it sent (an exit
span) the id of the one request its thread has open at that moment (from
the request's start to its span's end), else an id of its own: with none
open, or with several (an event loop), where any choice could be wrong.
Done on message starts, not on finished spans, because a server's span
finishes after the client calls it made while serving.

``tests/reference/trace_ref.py`` holds the pairing rules in plain Python.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

import numpy as np
import pyarrow as pa
cimport numpy as cnp

from trace cimport *
from dk_common cimport offset_of, be32, mix64
from utf8 cimport utf8_replace_invalid
from payloads cimport payload_view, view_payloads, payload_start
from h2frame cimport h2_preface_at
from dkebpf._http cimport http_msg, parse_first_line, K_REQUEST, K_RESPONSE

from dkebpf import _records

cnp.import_array()

__all__ = ["MSG_DTYPE", "MSG_MIN_SIZE", "DROP_NAMES", "SPAN_DTYPE", "CONN_DTYPE",
           "pair", "link_threads", "payloads", "http_lines", "slices", "split_pipelines", "PIPE_DTYPE", "PROTO_NAMES", "TRACE_CONN_DTYPE",
           "TRACE_FLAGS_DTYPE", "FLAG_IGNORED", "FLAG_WHOLE", "PROTO_GIVEN_UP"]

OP_SEND = TRACE_OP_SEND
OP_RECV = TRACE_OP_RECV
OP_CLOSE = TRACE_OP_CLOSE
PID_TRACED = TRACE_PID_TRACED
PID_EXCLUDED = TRACE_PID_EXCLUDED

cdef trace_conn _tc
# the value of the kernel's trace_conns map: read only (TracePlugin reads
# `born`); never written back from here (include/trace.h)
TRACE_CONN_DTYPE = _records._dtype("trace_conn", [
    ("sent", "<u8", offset_of(&_tc, &_tc.sent)),
    ("recv", "<u8", offset_of(&_tc, &_tc.recv)),
    ("ts_last_send", "<u8", offset_of(&_tc, &_tc.ts_last_send)),
    ("ts_last_recv", "<u8", offset_of(&_tc, &_tc.ts_last_recv)),
    ("last_op", "u1", offset_of(&_tc, &_tc.last_op)),
    ("short_start", "u1", offset_of(&_tc, &_tc.short_start)),
    ("ignored", "u1", offset_of(&_tc, &_tc.ignored)),
    ("h2", "u1", offset_of(&_tc, &_tc.h2)),
    ("whole", "u1", offset_of(&_tc, &_tc.whole)),
    ("born", "<u8", offset_of(&_tc, &_tc.born)),
], sizeof(trace_conn))
cdef trace_flags _tf
# the value of the kernel's trace_flags map, which TracePlugin writes (a
# value made with np.zeros: its padding is sent too)
TRACE_FLAGS_DTYPE = _records._dtype("trace_flags", [
    ("born", "<u8", offset_of(&_tf, &_tf.born)),
    ("bits", "<u4", offset_of(&_tf, &_tf.bits)),
], sizeof(trace_flags))
FLAG_IGNORED = TRACE_FLAG_IGNORED
FLAG_WHOLE = TRACE_FLAG_WHOLE
PAYLOAD_MAX = TRACE_PAYLOAD_MAX
MSG_MIN_SIZE = SPAN_MSG_MIN_SIZE

# connection protocols (CONN_DTYPE.proto, SPAN_DTYPE.proto)
cdef enum:
    P_UNKNOWN = 0
    P_HTTP = 1
    P_REDIS = 2
    P_MYSQL = 3
    P_PGSQL = 4
    P_HTTP2 = 5   # told apart, not paired here: streams interleave (ext/h2trace.pyx)
    P_NONE = 255  # not a protocol we trace: nothing more is looked at

PROTO_NAMES = {P_HTTP: "http", P_REDIS: "redis", P_MYSQL: "mysql", P_PGSQL: "postgresql", P_HTTP2: "http2"}
PROTO = {v: k for k, v in PROTO_NAMES.items()}
PROTO_GIVEN_UP = P_NONE  # CONN_DTYPE.proto of a connection whose protocol was not told

# message starts a connection gets to say what it speaks
DEF DETECT_TRIES = 4

cdef span_msg _m
MSG_DTYPE = _records._dtype("span_msg", [
    ("ts", "<u8", offset_of(&_m, &_m.ts_ns)),
    ("sk", "<u8", offset_of(&_m, &_m.sk)),
    ("sk_sent", "<u8", offset_of(&_m, &_m.sk_sent)),
    ("sk_recv", "<u8", offset_of(&_m, &_m.sk_recv)),
    ("ts_last_send", "<u8", offset_of(&_m, &_m.ts_last_send)),
    ("ts_last_recv", "<u8", offset_of(&_m, &_m.ts_last_recv)),
    ("user", "<u8", offset_of(&_m, &_m.user)),
    ("laddr", "V16", offset_of(&_m, &_m.laddr)),
    ("raddr", "V16", offset_of(&_m, &_m.raddr)),
    ("pid", "<u4", offset_of(&_m, &_m.pid)),
    ("tid", "<u4", offset_of(&_m, &_m.tid)),
    ("seq", "<u4", offset_of(&_m, &_m.seq)),
    ("bytes", "<u4", offset_of(&_m, &_m.bytes)),
    ("lport", "<u2", offset_of(&_m, &_m.lport)),
    ("rport", "<u2", offset_of(&_m, &_m.rport)),
    ("cap_len", "<u2", offset_of(&_m, &_m.cap_len)),
    ("family", "u1", offset_of(&_m, &_m.family)),
    ("op", "u1", offset_of(&_m, &_m.op)),
    ("more", "u1", offset_of(&_m, &_m.more)),
    ("seq_unknown", "u1", offset_of(&_m, &_m.seq_unknown)),
    ("comm", "S16", offset_of(&_m, &_m.comm)),
    ("pcomm", "S16", offset_of(&_m, &_m.pcomm)),
    ("payload", f"V{TRACE_PAYLOAD_MAX}", offset_of(&_m, &_m.payload)),
], sizeof(span_msg))

DROP_NAMES = _records._drop_names("trace.bpf.c", {
    TRACE_DROP_RING: "events_ring_full", TRACE_DROP_CONNS: "trace_conns_map_full",
    TRACE_DROP_READ: "payload_unreadable", TRACE_DROP_PIDS: "trace_pids_map_full"}, TRACE_DROP_MAX)


cdef struct span_t:
    int64_t req       # index of the request's message start
    int64_t resp      # of the response's
    int64_t nxt       # of what followed the response (next request, close); -1 none
    uint64_t start_ns  # request's first call (ktime)
    uint64_t end_ns    # response's last call (ktime)
    uint64_t req_bytes
    uint64_t resp_bytes
    uint8_t proto
    uint8_t incoming   # the process received the request (an entry span)

cdef span_t _s
SPAN_DTYPE = np.dtype({
    "names": ["req", "resp", "nxt", "start_ns", "end_ns", "req_bytes", "resp_bytes", "proto", "incoming"],
    "formats": ["<i8", "<i8", "<i8", "<u8", "<u8", "<u8", "<u8", "u1", "u1"],
    "offsets": [offset_of(&_s, &_s.req), offset_of(&_s, &_s.resp), offset_of(&_s, &_s.nxt),
                offset_of(&_s, &_s.start_ns), offset_of(&_s, &_s.end_ns), offset_of(&_s, &_s.req_bytes),
                offset_of(&_s, &_s.resp_bytes), offset_of(&_s, &_s.proto), offset_of(&_s, &_s.incoming)],
    "itemsize": sizeof(span_t)})


cdef struct conn_t:
    uint64_t sk
    uint64_t last_ts
    uint8_t req_op     # TRACE_OP_* requests travel in; 0 not told yet
    uint8_t proto
    uint8_t tries      # message starts looked at without telling
    uint8_t closed

cdef conn_t _c
CONN_DTYPE = np.dtype({
    "names": ["sk", "last_ts", "req_op", "proto", "tries", "closed"],
    "formats": ["<u8", "<u8", "u1", "u1", "u1", "u1"],
    "offsets": [offset_of(&_c, &_c.sk), offset_of(&_c, &_c.last_ts), offset_of(&_c, &_c.req_op),
                offset_of(&_c, &_c.proto), offset_of(&_c, &_c.tries), offset_of(&_c, &_c.closed)],
    "itemsize": sizeof(conn_t)})

# role of a message start (pair()'s first result)
cdef enum:
    R_OTHER = 0
    R_REQUEST = 1
    R_RESPONSE = 2
    R_H2 = 3        # a call or the close of an HTTP/2 connection (ext/h2trace.pyx)
ROLE_OTHER, ROLE_REQUEST, ROLE_RESPONSE, ROLE_H2 = R_OTHER, R_REQUEST, R_RESPONSE, R_H2


cdef inline uint8_t _other(uint8_t op) noexcept nogil:
    return TRACE_OP_RECV if op == TRACE_OP_SEND else TRACE_OP_SEND


cdef bint _redis_command(const uint8_t *p, int n) noexcept nogil:
    """A RESP command: an array of bulk strings, ``*<n>\\r\\n$``."""
    cdef int i = 1
    if n < 5 or p[0] != 42:  # '*'
        return False
    while i < n and 48 <= p[i] <= 57:
        i += 1
    return i > 1 and i + 2 < n and p[i] == 13 and p[i + 1] == 10 and p[i + 2] == 36


cdef int detect(const span_msg *m, uint8_t *req_op) noexcept nogil:
    """The protocol a message start shows and which way requests go
    (*req_op); P_UNKNOWN when it does not tell."""
    cdef const uint8_t *p = m.payload
    cdef int n = m.cap_len
    cdef http_msg h
    if n > TRACE_PAYLOAD_MAX:
        n = TRACE_PAYLOAD_MAX
    if h2_preface_at(p, n) or m.more == TRACE_MORE_H2_CALL:
        # (the kernel flags every call of a connection that opened with
        # the preface: one whose state was forgotten while idle is told)
        req_op[0] = m.op
        return P_HTTP2
    if n >= 8 and parse_first_line(p, n, &h):
        req_op[0] = m.op if h.kind == K_REQUEST else _other(m.op)
        return P_HTTP
    if _redis_command(p, n):
        req_op[0] = m.op
        return P_REDIS
    # PostgreSQL StartupMessage (protocol 3.0) or SSLRequest: length, then
    # 196608 or 80877103, from the client
    if n >= 8 and be32(p) == <uint32_t>n and (be32(p + 4) == 196608 or be32(p + 4) == 80877103):
        req_op[0] = m.op
        return P_PGSQL
    # MySQL server greeting: 3-byte length, sequence 0, protocol version 10;
    # its call the whole packet, or its 4-byte header alone with the body
    # from the next call merged after it (a client that reads the header
    # first: mysql-connector-python)
    if n >= 5 and p[3] == 0 and p[4] == 10 and ((p[0] | (p[1] << 8) | (p[2] << 16)) + 4 == m.bytes
                                                  or (m.bytes == 4 and n > 4)):
        req_op[0] = _other(m.op)
        return P_MYSQL
    return P_UNKNOWN


cdef inline int64_t _find(const uint64_t *keys, int64_t n, uint64_t k) noexcept nogil:
    cdef int64_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < k:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < n and keys[lo] == k else -1


cdef inline uint64_t _sub(uint64_t a, uint64_t b) noexcept nogil:
    return a - b if a > b else 0


cdef void _finish(span_t *s, const span_msg *M, int64_t req, int64_t resp, int64_t nxt, uint8_t req_op,
                  uint8_t proto, uint64_t *until) noexcept nogil:
    """A span from its request, response and what followed (or -1); the
    request is open until the span's end (until[req])."""
    cdef const span_msg *q = &M[req]
    cdef const span_msg *r = &M[resp]
    cdef const span_msg *x
    cdef uint64_t end
    s.req = req
    s.resp = resp
    s.nxt = nxt
    s.proto = proto
    s.incoming = req_op == TRACE_OP_RECV
    s.start_ns = q.ts_ns
    # the request's bytes: the counter of its direction from its start to
    # the response's start (kept by the kernel across the calls between)
    s.req_bytes = _sub(r.sk_sent, q.sk_sent) if req_op == TRACE_OP_SEND else _sub(r.sk_recv, q.sk_recv)
    if s.req_bytes == 0:
        s.req_bytes = q.bytes
    s.end_ns = r.ts_ns
    s.resp_bytes = r.bytes
    if nxt >= 0:
        x = &M[nxt]
        end = x.ts_last_recv if req_op == TRACE_OP_SEND else x.ts_last_send
        if end > s.end_ns:
            s.end_ns = end
        end = _sub(x.sk_recv, r.sk_recv) if req_op == TRACE_OP_SEND else _sub(x.sk_sent, r.sk_sent)
        if end > s.resp_bytes:
            s.resp_bytes = end
    until[req] = s.end_ns


def pair(msgs, order, conns, uint64_t settle_before, uint64_t expire_before):
    """msgs: MSG_DTYPE records; order: their indices sorted by (sk, ts)
    (what was carried before the new at equal keys: records are large,
    so they are not moved);
    conns: CONN_DTYPE, sorted by sk (the connections' state so far).
    Returns (role, spans, carry, conns_seen, stats, until): role per message
    (ROLE_*), SPAN_DTYPE rows of the finished exchanges, a bool per message
    to carry to the next batch (a request not answered yet, a response
    still open), the new state of the connections in msgs (sorted by sk;
    closed ones flagged), counters, and per request until when it is open
    (link_threads): its span's end; the next request's or the close's time
    when it got no answer; UINT64_MAX while it is carried. A record that continues a short
    start (``more``) has its payload appended to the start's, in msgs."""
    cdef cnp.ndarray M_arr = msgs
    if M_arr.dtype != MSG_DTYPE or not M_arr.flags.c_contiguous or not M_arr.flags.writeable:
        raise TypeError("pair: msgs must be a writable contiguous MSG_DTYPE array (continuations are merged into it)")
    cdef cnp.ndarray C_arr = np.ascontiguousarray(conns, dtype=CONN_DTYPE)
    cdef Py_ssize_t n = len(M_arr), nc = len(C_arr)
    cdef span_msg *M = <span_msg *>cnp.PyArray_DATA(M_arr) if n else NULL
    cdef const conn_t *C = <const conn_t *>cnp.PyArray_DATA(C_arr) if nc else NULL
    ck = np.ascontiguousarray(C_arr["sk"]) if nc else np.zeros(0, np.uint64)
    cdef const uint64_t[::1] csk = ck
    role = np.zeros(n, np.uint8)
    carry = np.zeros(n, bool)
    spans = np.zeros(n // 2 + 1, SPAN_DTYPE)
    seen = np.zeros(n, CONN_DTYPE)
    until_arr = np.zeros(n, np.uint64)
    cdef uint64_t *U = <uint64_t *>cnp.PyArray_DATA(until_arr)
    cdef uint8_t[::1] R = role
    cdef uint8_t[::1] K = carry.view(np.uint8)
    cdef span_t *S = <span_t *>cnp.PyArray_DATA(spans)
    cdef conn_t *O = <conn_t *>cnp.PyArray_DATA(seen)
    cdef const int64_t[::1] Ord = np.ascontiguousarray(order, np.int64)
    if Ord.shape[0] != n:
        raise ValueError(f"pair: {n} records but {Ord.shape[0]} in order")
    cdef Py_ssize_t i, k = 0, j, ns = 0, no = 0
    cdef int64_t pq, pr, at
    cdef conn_t st
    cdef uint8_t op, rop
    cdef int proto
    cdef int64_t unanswered = 0, orphan_responses = 0, expired = 0, undetected = 0
    cdef int64_t prev
    cdef uint64_t run_bytes
    cdef int take
    with nogil:
        # the next calls of a run (span_msg.more: of a short start, of a
        # connection that pipelines) continue its start's payload, while
        # nothing before them is missing from it
        prev = -1
        run_bytes = 0
        for k in range(n):
            i = Ord[k]
            if M[i].more != TRACE_MORE_SHORT:
                prev = i
                run_bytes = M[i].bytes
                continue
            if prev < 0 or M[prev].sk != M[i].sk:
                continue
            if M[prev].cap_len == run_bytes and M[prev].cap_len < TRACE_PAYLOAD_MAX:
                take = M[i].cap_len
                if take > TRACE_PAYLOAD_MAX - M[prev].cap_len:
                    take = TRACE_PAYLOAD_MAX - M[prev].cap_len
                memcpy(&M[prev].payload[M[prev].cap_len], M[i].payload, take)
                M[prev].cap_len += take
            run_bytes += M[i].bytes
        k = 0
        while k < n:
            # one connection: order[k:j]
            i = Ord[k]
            j = k
            while j < n and M[Ord[j]].sk == M[i].sk:
                j += 1
            at = _find(&csk[0], nc, M[i].sk) if nc else -1
            if at >= 0:
                st = C[at]
            else:
                st.sk = M[i].sk
                st.req_op = 0
                st.proto = P_UNKNOWN
                st.tries = 0
                st.closed = 0
            pq = pr = -1
            while k < j:
                i = Ord[k]
                op = M[i].op
                if M[i].more == TRACE_MORE_SHORT:  # merged above
                    k += 1
                    continue
                st.last_ts = M[i].ts_ns
                if op == TRACE_OP_CLOSE:
                    if st.proto == P_HTTP2:
                        R[i] = R_H2
                    if pr >= 0:
                        _finish(&S[ns], M, pq, pr, i, st.req_op, st.proto, U)
                        ns += 1
                    elif pq >= 0:
                        unanswered += 1
                        U[pq] = M[i].ts_ns
                    pq = pr = -1
                    # the socket is gone; its memory (the key) may carry a
                    # new connection of any protocol and side right after
                    st.closed = 1
                    st.req_op = 0
                    st.proto = P_UNKNOWN
                    st.tries = 0
                    k += 1
                    continue
                st.closed = 0
                if st.proto == P_UNKNOWN:
                    proto = detect(&M[i], &rop)
                    if proto == P_UNKNOWN:
                        st.tries += 1
                        if st.tries >= DETECT_TRIES:
                            st.proto = P_NONE
                            undetected += 1
                        k += 1
                        continue
                    st.proto = proto
                    st.req_op = rop
                if st.proto == P_HTTP2:  # streams interleave: ext/h2trace.pyx follows them
                    R[i] = R_H2
                if st.proto == P_NONE or st.proto == P_HTTP2:
                    k += 1
                    continue
                if op == st.req_op:
                    R[i] = R_REQUEST
                    if pr >= 0:
                        _finish(&S[ns], M, pq, pr, i, st.req_op, st.proto, U)
                        ns += 1
                    elif pq >= 0:
                        unanswered += 1
                        U[pq] = M[i].ts_ns
                    pq = i
                    U[i] = 0xffffffffffffffffULL
                    pr = -1
                else:
                    R[i] = R_RESPONSE
                    if pq >= 0 and pr < 0:
                        pr = i
                    else:
                        orphan_responses += 1
                k += 1
            # what is still open at the end of the batch
            if pr >= 0:
                if M[pr].ts_ns < settle_before:
                    # ended at its response's start as far as linking goes
                    # (its last call is not known without a next message)
                    _finish(&S[ns], M, pq, pr, -1, st.req_op, st.proto, U)
                    ns += 1
                else:
                    K[pq] = 1
                    K[pr] = 1
            elif pq >= 0:
                if M[pq].ts_ns < expire_before:
                    expired += 1
                    U[pq] = M[pq].ts_ns
                else:
                    K[pq] = 1
            O[no] = st
            no += 1
    stats = {"unanswered": unanswered, "orphan_responses": orphan_responses, "expired_requests": expired,
             "undetected_connections": undetected}
    return role, spans[:ns], carry, seen[:no], stats, until_arr


# entries open on one thread at once that link_threads keeps apart; past
# it, the thread's exits get no parent until some close
DEF OPEN_MAX = 64


cdef inline uint64_t _entry_id(const span_msg *m) noexcept nogil:
    cdef uint64_t id_ = mix64(m.sk ^ mix64(m.ts_ns) ^ (<uint64_t>m.tid << 32)) & 0x7fffffffffffffffULL
    return id_ if id_ != 0 else 1


def link_threads(msgs, role, until, pipelines=None):
    """Give every request of msgs without one (msgs['user'] == 0) its
    thread_trace_id, in msgs['user'] (as uint64 of a positive int64).

    A request the process received (an entry) gets a new id and is open on
    its thread (pid, tid) from its start until ``until`` (pair()'s: the end
    of its span, or of its wait). A request the process sent (an exit)
    gets the id of the entry open on the same thread at its start when
    there is exactly one; with none it is a root of its own; with more than
    one (an event loop serving several requests at once: nginx, asyncio,
    Node) it is a root of its own too, and counted: which one it serves
    cannot be told from the thread, and a guess could be a wrong parent.
    Entries still unanswered or whose response is still open are carried
    by the caller with their id, so they are open again in the next batch.
    `pipelines` (bool per message, optional): entries that are several
    requests at once (pipelining): which of them an exit serves cannot be
    told either, so they count as several open.
    Returns {"exits_ambiguous_parent": n, "exits_without_entry": n}."""
    cdef cnp.ndarray M_arr = msgs
    if M_arr.dtype != MSG_DTYPE or not M_arr.flags.c_contiguous:
        raise TypeError("link_threads: msgs must be a contiguous MSG_DTYPE array (it is written)")
    cdef span_msg *M = <span_msg *>cnp.PyArray_DATA(M_arr) if len(M_arr) else NULL
    cdef const uint64_t[::1] U = np.ascontiguousarray(until, np.uint64)
    rq = np.asarray(role) == ROLE_REQUEST
    if U.shape[0] != len(M_arr) or rq.shape[0] != len(M_arr):
        raise ValueError(f"link_threads: {len(M_arr)} records but {U.shape[0]} until and {rq.shape[0]} roles")
    cdef const uint8_t[::1] P = np.ascontiguousarray(np.zeros(len(M_arr), bool) if pipelines is None else pipelines,
                                                     np.uint8)
    if P.shape[0] != len(M_arr):
        raise ValueError(f"link_threads: {len(M_arr)} records but {P.shape[0]} pipeline flags")
    idx = np.flatnonzero(rq)
    ops = msgs["op"][idx]
    # per thread, in time order, an entry before an exit at the same time
    order = np.lexsort((ops != TRACE_OP_RECV, msgs["ts"][idx],
                        (msgs["pid"][idx].astype(np.uint64) << 32) | msgs["tid"][idx]))
    cdef const int64_t[::1] I = idx[order].astype(np.int64)
    cdef Py_ssize_t n = I.shape[0], k, j, live
    cdef uint64_t open_until[OPEN_MAX]
    cdef uint64_t open_id[OPEN_MAX]
    cdef Py_ssize_t nopen = 0
    cdef uint64_t overflow_until = 0  # an entry not kept (OPEN_MAX): no parent before this
    cdef uint64_t key = 0, k2, t
    cdef bint have = False
    cdef int64_t ambiguous = 0, orphan = 0
    cdef span_msg *m
    with nogil:
        for k in range(n):
            m = &M[I[k]]
            k2 = (<uint64_t>m.pid << 32) | m.tid
            if not have or k2 != key:
                key = k2
                have = True
                nopen = 0
                overflow_until = 0
            t = m.ts_ns
            # the entries of this thread still open at t
            live = 0
            for j in range(nopen):
                if open_until[j] > t:
                    open_until[live] = open_until[j]
                    open_id[live] = open_id[j]
                    live += 1
            nopen = live
            if m.op == TRACE_OP_RECV:
                if m.user == 0:
                    m.user = _entry_id(m)
                if U[I[k]] > t:
                    for j in range(2 if P[I[k]] else 1):  # a pipeline: several requests open
                        if nopen < OPEN_MAX:
                            open_until[nopen] = U[I[k]]
                            open_id[nopen] = m.user
                            nopen += 1
                        elif overflow_until < U[I[k]]:
                            overflow_until = U[I[k]]
            elif m.user == 0:
                if nopen == 1 and overflow_until <= t:
                    m.user = open_id[0]
                else:
                    m.user = span_root_id(m)
                    if nopen == 0 and overflow_until <= t:
                        orphan += 1
                    else:
                        ambiguous += 1
    return {"exits_ambiguous_parent": ambiguous, "exits_without_entry": orphan}


def payloads(msgs, idx, off=None, length=None):
    """The captured payloads of msgs[idx] as one pyarrow BinaryArray (for
    the protocol parsers), copied in one pass; with `off` and `length`
    (per row) only those bytes of each, as far as they were captured (one
    message of a pipelined call: split_pipelines)."""
    cdef cnp.ndarray M_arr = np.ascontiguousarray(msgs, dtype=MSG_DTYPE)
    cdef const span_msg *M = <const span_msg *>cnp.PyArray_DATA(M_arr) if len(M_arr) else NULL
    cdef const int64_t[::1] I = np.ascontiguousarray(idx, np.int64)
    cdef Py_ssize_t n = I.shape[0], k
    cdef bint part = off is not None
    cdef const int64_t[::1] Off = np.ascontiguousarray(off if part else np.zeros(0), np.int64)
    cdef const int64_t[::1] Len = np.ascontiguousarray(length if part else np.zeros(0), np.int64)
    if part and (Off.shape[0] != n or Len.shape[0] != n):
        raise ValueError(f"payloads: {n} rows but {Off.shape[0]} offsets and {Len.shape[0]} lengths")
    cdef cnp.ndarray offsets = np.empty(n + 1, np.int32)
    cdef int32_t *O = <int32_t *>cnp.PyArray_DATA(offsets)
    cdef cnp.ndarray starts = np.zeros(n, np.int32)
    cdef int32_t *A = <int32_t *>cnp.PyArray_DATA(starts)
    cdef int32_t pos = 0
    cdef int64_t L, a, b
    with nogil:
        for k in range(n):
            O[k] = pos
            L = M[I[k]].cap_len
            if L > TRACE_PAYLOAD_MAX:
                L = TRACE_PAYLOAD_MAX
            a = 0
            if part:
                a = Off[k] if 0 <= Off[k] < L else L
                b = a + Len[k] if Len[k] >= 0 else a
                L = b if b < L else L
            A[k] = <int32_t>a
            pos += <int32_t>(L - a)
        O[n] = pos
    cdef cnp.ndarray data = np.empty(max(pos, 1), np.uint8)
    cdef uint8_t *D = <uint8_t *>cnp.PyArray_DATA(data)
    with nogil:
        for k in range(n):
            memcpy(D + O[k], M[I[k]].payload + A[k], O[k + 1] - O[k])
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data[:pos])])


# per span of split_pipelines: which message of its calls it is
PIPE_DTYPE = np.dtype([("span", "<i8"), ("sub", "<i8"), ("req_off", "<i8"), ("resp_off", "<i8"),
                       ("req_len", "<i8"), ("resp_len", "<i8"), ("many", "?"), ("rest", "?")])


cdef struct side_t:   # one side (request or response run) of an exchange
    int64_t first     # its first parser row
    int64_t known     # messages delimited, from `first` on
    int64_t rest      # where what could not be delimited begins; -1 nothing
    int64_t total     # the run's bytes (at least what was captured and delimited)


cdef void _side(const int64_t *ev, const int64_t *off, const int64_t *ln, const uint8_t *valid,
                Py_ssize_t nrows, Py_ssize_t *at, Py_ssize_t k, int64_t total, int64_t cap,
                side_t *s) noexcept nogil:
    """The rows of payload k (from *at on: rows come in payload order):
    how many messages are delimited one after the other from its start,
    and where the rest begins."""
    cdef int64_t end = 0
    cdef Py_ssize_t i
    while at[0] < nrows and ev[at[0]] < k:
        at[0] += 1
    s.first = at[0]
    s.known = 0
    s.rest = -1
    while at[0] < nrows and ev[at[0]] == k:
        i = at[0]
        at[0] += 1
        if s.rest >= 0:
            continue
        if valid[i] and ln[i] > 0 and off[i] == end:
            s.known += 1
            end = off[i] + ln[i]
        else:
            s.rest = off[i]
    total = total if total > cap else cap
    s.total = total if total > end else end
    if s.rest < 0 and end < s.total:
        s.rest = end


def _row_fields(rows):
    return (np.ascontiguousarray(rows["ev"], np.int64), np.ascontiguousarray(rows["off"], np.int64),
            np.ascontiguousarray(rows["length"], np.int64), np.ascontiguousarray(rows["valid"], np.uint8))


def split_pipelines(req_rows, resp_rows, req_total, resp_total, req_cap, resp_cap):
    """Exchanges whose calls carry several messages (pipelining) -> one
    row per message pair, the same way for every protocol that has a
    message-bounds parser (ext/http.pyx message_bounds, ext/redis.pyx
    parse: rows with ev, off, length, valid, in payload order).

    Exchange k: its request run's payload (rows of ev k in req_rows, its
    run's bytes req_total[k], of which req_cap[k] captured) and its
    response run's. The i-th request pairs with the i-th response. When
    both runs delimit into the same number of messages, one row each.
    When a run goes on past what its capture delimits (the rest of the
    bytes not captured, a body whose end is not in them), the messages
    delimited on both sides are rows and one last row (``rest``) stands
    for everything after them, from the first message not paired on each
    side (its offsets known: never another message's). When the counts
    contradict each other (a side with fewer messages and nothing more),
    the exchange stays one row: no pairing could be trusted.

    Returns (PIPE_DTYPE rows, in exchange order: span = k, sub = the
    message's place, offsets and lengths in the runs, many = one of
    several; stats)."""
    qe, qo, ql, qv = _row_fields(req_rows)
    re_, ro, rl, rv = _row_fields(resp_rows)
    cdef const int64_t[::1] QE = qe, QO = qo, QL = ql, RE = re_, RO = ro, RL = rl
    cdef const uint8_t[::1] QV = qv, RV = rv
    cdef const int64_t[::1] QT = np.ascontiguousarray(req_total, np.int64)
    cdef const int64_t[::1] RT = np.ascontiguousarray(resp_total, np.int64)
    cdef const int64_t[::1] QC = np.ascontiguousarray(req_cap, np.int64)
    cdef const int64_t[::1] RC = np.ascontiguousarray(resp_cap, np.int64)
    cdef Py_ssize_t n = QT.shape[0], k, qat = 0, rat = 0, j, total = 0, w = 0, sub
    cdef Py_ssize_t nq = QE.shape[0], nr = RE.shape[0]
    if RT.shape[0] != n or QC.shape[0] != n or RC.shape[0] != n:
        raise ValueError(f"split_pipelines: {n} request totals but {RT.shape[0]} response totals, "
                         f"{QC.shape[0]} and {RC.shape[0]} captured lengths")
    if nq and (QE[0] < 0 or QE[nq - 1] >= n) or nr and (RE[0] < 0 or RE[nr - 1] >= n):
        raise ValueError(f"split_pipelines: parser rows name payloads outside 0..{n - 1}")
    counts_arr = np.ones(n, np.int64)
    cdef int64_t[::1] CNT = counts_arr
    cdef int64_t split = 0, rests = 0, mismatched = 0, m
    cdef side_t q, r
    # per exchange: its two sides, kept for the second pass
    cdef cnp.ndarray SIDES = np.zeros(2 * n * sizeof(side_t) + 1, np.uint8)
    cdef side_t *S2 = <side_t *>cnp.PyArray_DATA(SIDES)
    with nogil:
        for k in range(n):
            _side(&QE[0] if nq else NULL, &QO[0] if nq else NULL, &QL[0] if nq else NULL, &QV[0] if nq else NULL,
                  nq, &qat, k, QT[k], QC[k], &q)
            _side(&RE[0] if nr else NULL, &RO[0] if nr else NULL, &RL[0] if nr else NULL, &RV[0] if nr else NULL,
                  nr, &rat, k, RT[k], RC[k], &r)
            S2[2 * k] = q
            S2[2 * k + 1] = r
            if q.known == r.known and q.rest < 0 and r.rest < 0:
                CNT[k] = q.known if q.known > 1 else 1
            else:
                m = q.known if q.known < r.known else r.known
                if (m < q.known or q.rest >= 0) and (m < r.known or r.rest >= 0):
                    CNT[k] = m + 1
                    if m > 0:
                        rests += 1
                elif q.known > 1 or r.known > 1:
                    mismatched += 1
            if CNT[k] > 1:
                split += 1
            total += CNT[k]
    cols = {name: np.zeros(total, np.int64) for name in ("span", "sub", "req_off", "resp_off", "req_len", "resp_len")}
    cdef int64_t[::1] OS = cols["span"], OB = cols["sub"], OQO = cols["req_off"], ORO = cols["resp_off"]
    cdef int64_t[::1] OQL = cols["req_len"], ORL = cols["resp_len"]
    many_arr = np.zeros(total, np.uint8)
    rest_arr = np.zeros(total, np.uint8)
    cdef uint8_t[::1] MANY = many_arr, REST = rest_arr
    with nogil:
        for k in range(n):
            q = S2[2 * k]
            r = S2[2 * k + 1]
            if CNT[k] == 1:  # one span of the whole calls, as they are
                OS[w] = k
                OQL[w] = q.total
                ORL[w] = r.total
                w += 1
                continue
            m = q.known if q.known < r.known else r.known
            for sub in range(CNT[k]):
                OS[w] = k
                OB[w] = sub
                MANY[w] = 1
                if sub < m:
                    OQO[w] = QO[q.first + sub]
                    OQL[w] = QL[q.first + sub]
                    ORO[w] = RO[r.first + sub]
                    ORL[w] = RL[r.first + sub]
                else:  # the rest, from the first message not paired on each side
                    REST[w] = 1
                    OQO[w] = QO[q.first + sub] if sub < q.known else q.rest
                    ORO[w] = RO[r.first + sub] if sub < r.known else r.rest
                    OQL[w] = q.total - OQO[w]
                    ORL[w] = r.total - ORO[w]
                w += 1
    out = np.zeros(total, PIPE_DTYPE)
    for name, col in cols.items():
        out[name] = col
    out["many"] = many_arr.view(bool)
    out["rest"] = rest_arr.view(bool)
    return out, {"pipelined_calls": split, "pipelined_rest_spans": rests, "pipelined_mismatched": mismatched}


cdef http_msg _h
HTTP_LINE_DTYPE = np.dtype({
    "names": ["kind", "method", "version", "status", "path_off", "path_len", "truncated"],
    "formats": ["u1", "u1", "u1", "<u2", "<u2", "<u2", "u1"],
    "offsets": [offset_of(&_h, &_h.kind), offset_of(&_h, &_h.method), offset_of(&_h, &_h.version),
                offset_of(&_h, &_h.status), offset_of(&_h, &_h.path_off), offset_of(&_h, &_h.path_len),
                offset_of(&_h, &_h.truncated)],
    "itemsize": sizeof(http_msg)})


def http_lines(msgs, idx, off=None):
    """HTTP/1.x first line of each msgs[idx] (httpflow's parser,
    dkebpf._http), at `off` bytes into its payload when given (one message
    of a pipelined call; path_off then counts from there): HTTP_LINE_DTYPE
    rows (kind 0 where none)."""
    cdef cnp.ndarray M_arr = np.ascontiguousarray(msgs, dtype=MSG_DTYPE)
    cdef const span_msg *M = <const span_msg *>cnp.PyArray_DATA(M_arr) if len(M_arr) else NULL
    cdef const int64_t[::1] I = np.ascontiguousarray(idx, np.int64)
    cdef Py_ssize_t n = I.shape[0], k
    cdef const int64_t[::1] Off = np.ascontiguousarray(np.zeros(n) if off is None else off, np.int64)
    if Off.shape[0] != n:
        raise ValueError(f"http_lines: {n} rows but {Off.shape[0]} offsets")
    out = np.zeros(n, HTTP_LINE_DTYPE)
    cdef http_msg *H = <http_msg *>cnp.PyArray_DATA(out)
    cdef int L
    with nogil:
        for k in range(n):
            L = M[I[k]].cap_len
            if L > TRACE_PAYLOAD_MAX:
                L = TRACE_PAYLOAD_MAX
            if Off[k] < 0 or Off[k] >= L or not parse_first_line(M[I[k]].payload + Off[k], L - <int>Off[k], &H[k]):
                H[k].kind = 0
    return out


def slices(data, starts, lengths, valid):
    """Strings cut out of a BinaryArray's rows: row k gives
    data[k][starts[k]:starts[k]+lengths[k]] (clamped to the row), made valid
    UTF-8 by the project's one policy; null where not valid[k]."""
    cdef payload_view pv = view_payloads(data)
    cdef Py_ssize_t n = pv.n, k
    cdef const int32_t[::1] St = np.ascontiguousarray(starts, np.int32)
    valid = np.ascontiguousarray(valid, bool)
    cdef const int32_t[::1] Ln = np.where(valid, np.asarray(lengths, np.int64), 0).astype(np.int32)
    if St.shape[0] != n or Ln.shape[0] != n:
        raise ValueError(f"slices: {n} rows but {St.shape[0]} starts and {Ln.shape[0]} lengths")
    if valid.shape[0] != n:
        raise ValueError(f"slices: {n} rows but {valid.shape[0]} valid flags")
    cdef cnp.ndarray offs = np.empty(n + 1, np.int32)
    cdef int32_t *O = <int32_t *>cnp.PyArray_DATA(offs)
    total = int(np.maximum(np.asarray(Ln), 0).sum()) if n else 0
    cdef cnp.ndarray out = np.empty(max(3 * total, 1), np.uint8)
    cdef uint8_t *B = <uint8_t *>cnp.PyArray_DATA(out)
    cdef int64_t a, b, row_end
    cdef int32_t pos = 0
    with nogil:
        for k in range(n):
            O[k] = pos
            if Ln[k] <= 0 or pv.data == NULL:
                continue
            a = payload_start(&pv, k) + St[k]
            b = a + Ln[k]
            row_end = payload_start(&pv, k + 1)
            if b > row_end:
                b = row_end
            if a < b:
                pos += utf8_replace_invalid(pv.data + a, b - a, B + pos)
        O[n] = pos
    mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.StringArray.from_buffers(n, pa.py_buffer(offs), pa.py_buffer(out[:pos]), mask)
