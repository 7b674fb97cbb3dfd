"""HTTP/1.x over batches of struct l7_event (bpf/include/l7.h): first-line
parsing, request/response pairing per connection, path strings for arrow.

Everything here works on numpy structured arrays through C pointers with
the GIL released; no Python object is made per event or per message.

parse_events(events) -> MSG_DTYPE array, one row per message start found
    in the payload prefixes (several when pipelined messages share a call
    and fit in the prefix), one row per close record.
pair(events, msgs, ...) -> PAIR_DTYPE array + carry mask: the k-th final
    response on a connection (sk, pid) answers its k-th request (HTTP/1.1
    keeps responses in request order, RFC 9112 section 9.3.2). Interim 1xx
    responses other than 101 (100 Continue, 102, 103) precede the final one
    of the same request (RFC 9110 section 15.2): they count toward its bytes
    but are not pairing targets.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

import numpy as np
cimport numpy as cnp
import pyarrow as pa

from l7 cimport *
from dk_common cimport offset_of
from dkebpf._records import L7_EVENT_DTYPE, _dtype

cnp.import_array()

# message kinds (K_*: the module's .pxd, ext/includes/dkebpf/_http.pxd, with
# http_msg and the functions other Cython modules cimport)
KIND_REQUEST = K_REQUEST
KIND_RESPONSE = K_RESPONSE
KIND_CLOSE = K_CLOSE

# method codes; 0 = none. Index into METHODS.
METHODS = ["", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"]
cdef const char *_METHOD_TOKENS[10]
_METHOD_TOKENS[:] = [b"", b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH",
                     b"CONNECT", b"TRACE"]
cdef int _METHOD_LENS[10]
_METHOD_LENS[:] = [0, 3, 4, 3, 6, 4, 7, 5, 7, 5]
VERSIONS = {10: "1.0", 11: "1.1"}
# a 512-byte prefix holds at most this many minimal messages ("GET / HTTP/1.1\r\n\r\n")
cdef enum:
    MAX_MSGS_PER_EVENT = 32


cdef struct http_pair:
    int32_t req        # index into msgs
    int32_t resp
    uint64_t req_bytes
    uint64_t resp_bytes
    int64_t latency    # ns: first response byte - last request byte


cdef http_msg _m
cdef http_pair _p

MSG_DTYPE = _dtype("http_msg", [
    ("sk", "<u8", offset_of(&_m, &_m.sk)),
    ("ts", "<u8", offset_of(&_m, &_m.ts)),
    ("pid", "<u4", offset_of(&_m, &_m.pid)),
    ("ev", "<u4", offset_of(&_m, &_m.ev)),
    ("seg_len", "<u4", offset_of(&_m, &_m.seg_len)),
    ("off", "<u2", offset_of(&_m, &_m.off)),
    ("path_off", "<u2", offset_of(&_m, &_m.path_off)),
    ("path_len", "<u2", offset_of(&_m, &_m.path_len)),
    ("status", "<u2", offset_of(&_m, &_m.status)),
    ("kind", "u1", offset_of(&_m, &_m.kind)),
    ("method", "u1", offset_of(&_m, &_m.method)),
    ("version", "u1", offset_of(&_m, &_m.version)),
    ("truncated", "u1", offset_of(&_m, &_m.truncated)),
], sizeof(http_msg))

PAIR_DTYPE = _dtype("http_pair", [
    ("req", "<i4", offset_of(&_p, &_p.req)),
    ("resp", "<i4", offset_of(&_p, &_p.resp)),
    ("req_bytes", "<u8", offset_of(&_p, &_p.req_bytes)),
    ("resp_bytes", "<u8", offset_of(&_p, &_p.resp_bytes)),
    ("latency", "<i8", offset_of(&_p, &_p.latency)),
], sizeof(http_pair))

TOTALS_DTYPE = np.dtype([("sk", "<u8"), ("sent", "<u8"), ("recv", "<u8")])

if L7_EVENT_DTYPE.itemsize != sizeof(l7_event):
    raise ImportError("l7_event layout differs between dkebpf._records and dkebpf._http")


# --- first-line parser --------------------------------------------------------

cdef inline bint _is_tchar_target(uint8_t c) noexcept nogil:
    # request-target: visible ASCII (RFC 9112 section 3.2, RFC 3986); no SP
    return 0x21 <= c <= 0x7e


cdef inline int _version(const uint8_t *p, int i, int n, uint8_t *ver) noexcept nogil:
    """Parse "HTTP/1.0" or "HTTP/1.1" at p[i:]. Returns the index after it,
    -1 when it is not one, -2 when the capture ends inside it."""
    cdef const char *lit = b"HTTP/1."
    cdef int k
    for k in range(7):
        if i + k >= n:
            return -2
        if p[i + k] != <uint8_t>lit[k]:
            return -1
    if i + 7 >= n:
        return -2
    if p[i + 7] == 0x30:
        ver[0] = 10
    elif p[i + 7] == 0x31:
        ver[0] = 11
    else:
        return -1
    return i + 8


cdef inline int _crlf(const uint8_t *p, int i, int n) noexcept nogil:
    """1 when p[i:] is CRLF or the capture ends before it is complete, 0
    otherwise."""
    if i >= n:
        return 1
    if p[i] != 13:
        return 0
    if i + 1 >= n:
        return 1
    return p[i + 1] == 10


cdef int parse_first_line(const uint8_t *p, int n, http_msg *m) noexcept nogil:
    """Parse a request or status line at p[0:n] into m (kind, method,
    path, version, status, truncated). Returns 1 on a message start, 0
    otherwise. A line cut by the capture limit still counts when what was
    captured is well-formed."""
    cdef int i, j, k, r, code
    cdef uint8_t ver = 0
    m.kind = 0
    m.method = 0
    m.version = 0
    m.status = 0
    m.path_off = 0
    m.path_len = 0
    m.truncated = 0
    if n >= 5 and p[0] == 0x48 and p[1] == 0x54:  # "HT": a status line
        r = _version(p, 0, n, &ver)
        if r < 0:
            return 0
        # SP 3DIGIT (SP reason-phrase)? CRLF -- RFC 9112 section 4
        if r + 4 > n or p[r] != 0x20:
            return 0
        code = 0
        for k in range(1, 4):
            if p[r + k] < 0x30 or p[r + k] > 0x39:
                return 0
            code = code * 10 + (p[r + k] - 0x30)
        if code < 100 or code > 599:
            return 0
        i = r + 4
        if i < n and p[i] != 0x20 and p[i] != 13:
            return 0
        m.kind = K_RESPONSE
        m.version = ver
        m.status = code
        return 1
    for k in range(1, 10):
        j = _METHOD_LENS[k]
        if n > j and p[j] == 0x20:
            r = 0
            for i in range(j):
                if p[i] != <uint8_t>_METHOD_TOKENS[k][i]:
                    r = 1
                    break
            if r == 0:
                m.method = k
                break
    if m.method == 0:
        return 0
    i = _METHOD_LENS[m.method] + 1
    j = i
    # the target, up to SP; the path is the part before '?' or '#'
    m.path_off = i
    k = -1  # end of the path
    while j < n and p[j] != 0x20:
        if not _is_tchar_target(p[j]):
            return 0
        if k < 0 and (p[j] == 0x3f or p[j] == 0x23):
            k = j
        j += 1
    if j == i:
        return 0  # empty target
    if j >= n:
        # the capture ends inside the target: the path may be cut short
        if k < 0:
            m.truncated = 1
            k = j
        m.path_len = k - i
        m.kind = K_REQUEST
        return 1
    if k < 0:
        k = j
    m.path_len = k - i
    r = _version(p, j + 1, n, &ver)
    if r == -1:
        return 0
    if r >= 0:
        if not _crlf(p, r, n):
            return 0
        m.version = ver
    m.kind = K_REQUEST
    return 1


cdef inline int _lower(uint8_t c) noexcept nogil:
    return c + 32 if 0x41 <= c <= 0x5a else c


cdef bint _name_is(const uint8_t *p, int i, int e, const char *name, int nlen) noexcept nogil:
    cdef int k
    if e - i != nlen:
        return 0
    for k in range(nlen):
        if _lower(p[i + k]) != <uint8_t>name[k]:
            return 0
    return 1


cdef int message_end(const uint8_t *p, int n, const http_msg *m) noexcept nogil:
    """Where the message starting at p[0] ends within p[0:n], from its
    header block and Content-Length (RFC 9112 section 6.3). -1 when that
    is not inside the capture or cannot be known (chunked body, body until
    close)."""
    cdef int i = 0, e, c, k
    cdef int64_t clen = -1
    cdef bint chunked = 0
    # skip the first line
    while i + 1 < n and not (p[i] == 13 and p[i + 1] == 10):
        i += 1
    if i + 1 >= n:
        return -1
    i += 2
    while True:
        if i + 1 >= n:
            return -1
        if p[i] == 13 and p[i + 1] == 10:
            i += 2
            break
        e = i
        while e + 1 < n and not (p[e] == 13 and p[e + 1] == 10):
            e += 1
        if e + 1 >= n:
            return -1
        c = i
        while c < e and p[c] != 0x3a:
            c += 1
        if c < e:
            if _name_is(p, i, c, b"content-length", 14):
                k = c + 1
                while k < e and (p[k] == 0x20 or p[k] == 9):
                    k += 1
                clen = 0
                if k >= e:
                    return -1
                while k < e and 0x30 <= p[k] <= 0x39:
                    clen = clen * 10 + (p[k] - 0x30)
                    if clen > 0x7fffffff:
                        return -1
                    k += 1
                while k < e and (p[k] == 0x20 or p[k] == 9):
                    k += 1
                if k != e:
                    return -1
            elif _name_is(p, i, c, b"transfer-encoding", 17):
                chunked = 1
        i = e + 2
    if chunked:
        return -1
    if clen >= 0:
        return <int>(i + clen) if i + clen <= n else -1
    if m.kind == K_REQUEST:
        return i  # a request without Content-Length has no body
    if m.status < 200 or m.status == 204 or m.status == 304:
        return i
    return -1  # the body runs until the connection closes


cdef Py_ssize_t _parse_event(const l7_event *e, uint32_t ev, http_msg *out) noexcept nogil:
    """Message starts in one event's payload; returns how many were written."""
    cdef Py_ssize_t cnt = 0
    cdef int off = 0, n = e.cap_len, end
    cdef http_msg *m
    if e.op == L7_OP_CLOSE:
        m = &out[0]
        m.kind = K_CLOSE
        m.method = 0
        m.version = 0
        m.status = 0
        m.truncated = 0
        m.path_off = 0
        m.path_len = 0
        m.off = 0
        m.seg_len = 0
        m.ev = ev
        m.sk = e.sk
        m.pid = e.pid
        m.ts = e.ts_ns
        return 1
    if n > L7_PAYLOAD_MAX:
        n = L7_PAYLOAD_MAX
    while cnt < MAX_MSGS_PER_EVENT and off < n:
        m = &out[cnt]
        if not parse_first_line(e.payload + off, n - off, m):
            break
        m.off = off
        m.path_off += off
        m.ev = ev
        m.sk = e.sk
        m.pid = e.pid
        m.ts = e.ts_ns
        m.seg_len = e.bytes - off if e.bytes > <uint32_t>off else 0
        cnt += 1
        end = message_end(e.payload + off, n - off, m)
        if end <= 0:
            break
        m.seg_len = end
        off += end
    return cnt


def parse_events(events):
    """One MSG_DTYPE row per message start (and per close record) of an
    L7_EVENT_DTYPE array; returns (msgs, events without a message start)."""
    events = np.ascontiguousarray(events)
    if events.dtype != L7_EVENT_DTYPE:
        raise TypeError(f"expected L7_EVENT_DTYPE records, got {events.dtype}")
    cdef Py_ssize_t n = len(events), i, cnt = 0, got, unparsed = 0
    out = np.empty(max(n, 1) * 2, dtype=MSG_DTYPE)
    cdef const l7_event *ev = <const l7_event *>cnp.PyArray_DATA(events)
    cdef http_msg tmp[MAX_MSGS_PER_EVENT]
    cdef http_msg *o = <http_msg *>cnp.PyArray_DATA(out)
    cdef Py_ssize_t cap = len(out)
    i = 0
    while i < n:
        with nogil:
            while i < n:
                got = _parse_event(&ev[i], <uint32_t>i, tmp)
                if got == 0:
                    unparsed += 1
                if cnt + got > cap:
                    break
                memcpy(&o[cnt], tmp, got * sizeof(http_msg))
                cnt += got
                i += 1
        if i < n:  # grow (many pipelined messages per call)
            out = np.concatenate([out[:cnt], np.empty(cap + got + n, dtype=MSG_DTYPE)])
            o = <http_msg *>cnp.PyArray_DATA(out)
            cap = len(out)
            memcpy(&o[cnt], tmp, got * sizeof(http_msg))
            cnt += got
            i += 1
    return out[:cnt], unparsed


def parse_payload(bytes payload, unsigned int nbytes=0):
    """Messages in one payload (tests and benchmarks): list of dicts."""
    ev = np.zeros(1, dtype=L7_EVENT_DTYPE)
    cap = min(len(payload), L7_PAYLOAD_MAX)
    ev["payload"] = payload[:cap].ljust(L7_PAYLOAD_MAX, b"\0")
    ev["cap_len"] = cap
    ev["bytes"] = nbytes or len(payload)
    ev["op"] = L7_OP_SEND
    msgs, _ = parse_events(ev)
    out = []
    for m in msgs:
        d = {k: int(m[k]) for k in ("off", "kind", "method", "version", "status", "truncated", "seg_len")}
        d["path"] = payload[m["path_off"]: m["path_off"] + m["path_len"]] if m["kind"] == K_REQUEST else b""
        out.append(d)
    return out


def first_lines(payloads, lengths):
    """Benchmark entry: parse the first line of each row of a (n, width)
    uint8 array; returns (kind, method, status, path_len) arrays."""
    cdef const uint8_t[:, ::1] p = payloads
    cdef const int32_t[::1] ln = lengths
    cdef Py_ssize_t i, n = p.shape[0]
    kind = np.zeros(n, np.uint8)
    method = np.zeros(n, np.uint8)
    status = np.zeros(n, np.uint16)
    plen = np.zeros(n, np.uint16)
    cdef uint8_t[::1] k = kind, me = method
    cdef uint16_t[::1] st = status, pl = plen
    cdef http_msg m
    with nogil:
        for i in range(n):
            if parse_first_line(&p[i, 0], ln[i], &m):
                k[i] = m.kind
                me[i] = m.method
                st[i] = m.status
                pl[i] = m.path_len
    return kind, method, status, plen


# --- pairing ------------------------------------------------------------------

cdef inline uint64_t _pos(const l7_event *e, const http_msg *m) noexcept nogil:
    """Stream offset of a message: the connection's counter for the call's
    direction before the call, plus where the message starts in it."""
    return (e.sk_sent if e.op == L7_OP_SEND else e.sk_recv) + m.off


cdef inline uint64_t _final(const l7_event *e, uint64_t sent, uint64_t recv) noexcept nogil:
    return sent if e.op == L7_OP_SEND else recv


cdef struct pair_state:
    Py_ssize_t npairs
    uint64_t unmatched_responses, unanswered_closed, expired_requests


cdef void _emit(http_pair *pairs, pair_state *st, int32_t req, int32_t resp, uint64_t rb, uint64_t sb,
                const l7_event *ev, const http_msg *msgs) noexcept nogil:
    cdef const http_msg *q = &msgs[req]
    cdef const http_msg *s = &msgs[resp]
    cdef const l7_event *se = &ev[s.ev]
    cdef uint64_t last_req = q.ts
    # the last request byte: the response's view of the last call the other
    # way, when it is not older than the request itself
    if (se.flags & L7_F_COUNTED) and se.ts_other_ns > last_req and se.ts_other_ns <= s.ts:
        last_req = se.ts_other_ns
    cdef http_pair *p = &pairs[st.npairs]
    p.req = req
    p.resp = resp
    p.req_bytes = rb
    p.resp_bytes = sb
    p.latency = <int64_t>s.ts - <int64_t>last_req
    st.npairs += 1


cdef inline bint _interim(const http_msg *m) noexcept nogil:
    """An interim response: 1xx except 101, whose exchange continues on the
    same protocol (RFC 9110 section 15.2)."""
    return m.kind == K_RESPONSE and m.status < 200 and m.status != 101


cdef void _segment(const l7_event *ev, const http_msg *msgs, int32_t *reqs, Py_ssize_t nreq,
                   int32_t *resps, int32_t *froms, Py_ssize_t nresp, bint has_final, uint64_t fsent,
                   uint64_t frecv,
                   uint64_t ksent, uint64_t krecv, uint64_t settle_before, uint64_t expire_before,
                   http_pair *pairs, uint8_t *carry, pair_state *st) noexcept nogil:
    """Pair the requests and responses of one connection instance (in
    order). resps are the final responses; froms[k] is where the k-th
    response's bytes start (its first interim response, else itself).
    has_final: the connection closed with totals fsent/frecv; ksent/krecv:
    the latest totals known otherwise (for a last response left alone long
    enough to be complete)."""
    cdef Py_ssize_t skip = 0, i, k
    cdef int32_t q, s, f
    cdef const l7_event *qe
    cdef const l7_event *se
    cdef uint64_t rb, sb, qend, send_
    cdef bint counted, settled
    if nresp > nreq:  # answers to requests sent before we watched
        skip = nresp - nreq
        st.unmatched_responses += skip
    cdef Py_ssize_t npair = nresp - skip
    for i in range(npair):
        q = reqs[i]
        s = resps[i + skip]
        f = froms[i + skip]
        qe = &ev[msgs[q].ev]
        se = &ev[msgs[f].ev]
        counted = (qe.flags & L7_F_COUNTED) and (se.flags & L7_F_COUNTED)
        if not counted:
            _emit(pairs, st, q, s, msgs[q].seg_len,
                  msgs[s].seg_len + (msgs[f].seg_len if f != s else 0), ev, msgs)
            continue
        settled = has_final or msgs[s].ts < settle_before
        if i + 1 < nreq:
            qend = _pos(&ev[msgs[reqs[i + 1]].ev], &msgs[reqs[i + 1]])
        elif has_final:
            qend = _final(qe, fsent, frecv)
        elif settled:
            qend = _final(qe, ksent, krecv)
        else:
            qend = 0
        if i + skip + 1 < nresp:
            send_ = _pos(&ev[msgs[froms[i + skip + 1]].ev], &msgs[froms[i + skip + 1]])
        elif has_final:
            send_ = _final(se, fsent, frecv)
        elif settled:
            send_ = _final(se, ksent, krecv)
        else:
            # the response may still be arriving: keep this pair and what
            # follows for the next round
            for k in range(i, nreq):
                carry[reqs[k]] = 1
            for k in range(i + skip, nresp):
                carry[resps[k]] = 1
                carry[froms[k]] = 1
            return
        rb = qend - _pos(qe, &msgs[q]) if qend > _pos(qe, &msgs[q]) else msgs[q].seg_len
        sb = send_ - _pos(se, &msgs[f]) if send_ > _pos(se, &msgs[f]) else msgs[s].seg_len
        _emit(pairs, st, q, s, rb, sb, ev, msgs)
    for i in range(npair, nreq):  # not answered (yet)
        q = reqs[i]
        if has_final:
            st.unanswered_closed += 1
        elif msgs[q].ts < expire_before:
            st.expired_requests += 1
        else:
            carry[q] = 1


def pair(events, msgs, uint64_t settle_before, uint64_t expire_before, totals=None):
    """Pair requests with responses.

    msgs must be sorted by (sk, pid, ts) (close rows last among equal ts);
    events are the records msgs point into. A last response that started
    before settle_before (monotonic ns) is complete: its size comes from the
    connection's latest totals (totals: TOTALS_DTYPE sorted by sk, e.g.
    read from the kernel map, or the latest counters seen in events).
    Requests unanswered since before expire_before are dropped.

    Returns (pairs, carry, stats): carry marks the msgs to hand in again
    with the next batch (unanswered requests, a last response that may
    still grow)."""
    events = np.ascontiguousarray(events)
    msgs = np.ascontiguousarray(msgs)
    if totals is None:
        totals = np.empty(0, TOTALS_DTYPE)
    totals = np.ascontiguousarray(totals, dtype=TOTALS_DTYPE)
    cdef Py_ssize_t n = len(msgs), nt = len(totals)
    pairs = np.empty(n, dtype=PAIR_DTYPE)
    carry = np.zeros(n, dtype=np.uint8)
    cdef const l7_event *ev = <const l7_event *>cnp.PyArray_DATA(events)
    cdef const http_msg *m = <const http_msg *>cnp.PyArray_DATA(msgs)
    cdef http_pair *pp = <http_pair *>cnp.PyArray_DATA(pairs)
    cdef uint8_t *cp = <uint8_t *>cnp.PyArray_DATA(carry)
    cdef const uint64_t[:, ::1] tot = totals.view(np.uint64).reshape(-1, 3) if nt else np.zeros((1, 3), np.uint64)
    cdef pair_state st
    st.npairs = 0
    st.unmatched_responses = st.unanswered_closed = st.expired_requests = 0
    cdef int32_t *reqs = <int32_t *>malloc(max(n, 1) * sizeof(int32_t))
    cdef int32_t *resps = <int32_t *>malloc(max(n, 1) * sizeof(int32_t))
    cdef int32_t *froms = <int32_t *>malloc(max(n, 1) * sizeof(int32_t))
    if reqs == NULL or resps == NULL or froms == NULL:
        free(reqs)
        free(resps)
        free(froms)
        raise MemoryError()
    cdef Py_ssize_t i = 0, j, k, nreq, nresp, lo, hi, mid
    cdef int32_t interim  # first interim response of the request being answered; -1 none
    cdef uint64_t sk, ksent, krecv, v
    cdef uint32_t pid
    cdef const l7_event *e
    try:
        with nogil:
            while i < n:
                sk = m[i].sk
                pid = m[i].pid
                nreq = nresp = 0
                interim = -1
                ksent = krecv = 0
                # the kernel's totals of this socket, if given
                lo = 0
                hi = nt
                while lo < hi:
                    mid = (lo + hi) // 2
                    if tot[mid, 0] < sk:
                        lo = mid + 1
                    else:
                        hi = mid
                if lo < nt and tot[lo, 0] == sk:
                    ksent = tot[lo, 1]
                    krecv = tot[lo, 2]
                j = i
                while j < n and m[j].sk == sk and m[j].pid == pid:
                    e = &ev[m[j].ev]
                    if m[j].kind == K_CLOSE:
                        _segment(ev, m, reqs, nreq, resps, froms, nresp, 1, e.sk_sent, e.sk_recv, 0, 0,
                                 settle_before, expire_before, pp, cp, &st)
                        nreq = nresp = 0
                        interim = -1
                        ksent = krecv = 0
                    else:
                        # latest totals seen in the records themselves
                        if e.flags & L7_F_COUNTED:
                            v = e.sk_sent + (e.bytes if e.op == L7_OP_SEND else 0)
                            if v > ksent:
                                ksent = v
                            v = e.sk_recv + (e.bytes if e.op == L7_OP_RECV else 0)
                            if v > krecv:
                                krecv = v
                        # a request travels the other way from its response;
                        # which way is which depends on the side we are on
                        if m[j].kind == K_REQUEST:
                            reqs[nreq] = <int32_t>j
                            nreq += 1
                        elif _interim(&m[j]):
                            # its request's exchange goes on; one with no
                            # request waiting is ignored like its request
                            if nresp < nreq and interim < 0:
                                interim = <int32_t>j
                        elif nresp < nreq:
                            resps[nresp] = <int32_t>j
                            froms[nresp] = interim if interim >= 0 else <int32_t>j
                            interim = -1
                            nresp += 1
                        else:
                            # no request waiting: it answers one sent before
                            # we watched (a request is always read or written
                            # before its response, in time order here)
                            st.unmatched_responses += 1
                    j += 1
                if nreq or nresp:
                    _segment(ev, m, reqs, nreq, resps, froms, nresp, 0, 0, 0, ksent, krecv,
                             settle_before, expire_before, pp, cp, &st)
                    # interim responses wait with the request they belong to
                    if interim >= 0 and cp[reqs[nresp]]:
                        for k in range(interim, j):
                            if _interim(&m[k]):
                                cp[k] = 1
                i = j
    finally:
        free(reqs)
        free(resps)
        free(froms)
    stats = {"unmatched_responses": st.unmatched_responses, "unanswered_closed": st.unanswered_closed,
             "expired_requests": st.expired_requests}
    return pairs[:st.npairs], carry.view(bool), stats


def paths_to_arrow(events, msgs, idx):
    """The request paths of msgs[idx] as a pyarrow string array (ASCII: the
    parser accepts only visible ASCII in a request target)."""
    events = np.ascontiguousarray(events)
    msgs = np.ascontiguousarray(msgs)
    idx = np.ascontiguousarray(idx, dtype=np.int32)
    cdef Py_ssize_t n = len(idx), i, total = 0
    cdef const l7_event *ev = <const l7_event *>cnp.PyArray_DATA(events)
    cdef const http_msg *m = <const http_msg *>cnp.PyArray_DATA(msgs)
    cdef const int32_t[::1] ix = idx
    offsets = np.empty(n + 1, dtype=np.int32)
    cdef int32_t[::1] off = offsets
    off[0] = 0
    for i in range(n):
        total += m[ix[i]].path_len
        off[i + 1] = <int32_t>total
    data = np.empty(max(total, 1), dtype=np.uint8)
    cdef uint8_t *d = <uint8_t *>cnp.PyArray_DATA(data)
    cdef const http_msg *q
    with nogil:
        for i in range(n):
            q = &m[ix[i]]
            memcpy(d + off[i], ev[q.ev].payload + q.path_off, q.path_len)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
