"""numpy dtypes of the kernel records, derived from the C structs in
bpf/include/*.h (sizeof and member offsets taken from the compiler), so the
BPF side and the user side can never disagree about a layout."""
from libc.stdint cimport int32_t, uint8_t

import numpy as np
import pyarrow as pa
cimport numpy as cnp

from netflow cimport *
from bash cimport *
from http_maps cimport *
from tls cimport *
from dk_common cimport offset_of
from utf8 cimport utf8_replace_invalid

cnp.import_array()

def _dtype(name, fields, Py_ssize_t itemsize):
    """Build a dtype from (name, format, offset) and check that members lie
    in order, do not overlap and fit in sizeof(struct)."""
    names, formats, offsets = zip(*fields)
    dt = np.dtype({"names": list(names), "formats": list(formats),
                   "offsets": list(offsets), "itemsize": itemsize})
    end = 0
    for n, off in zip(names, offsets):
        if off < end:
            raise ImportError(f"{name}.{n}: offset {off} overlaps the previous member")
        end = off + dt.fields[n][0].itemsize
    if end > itemsize:
        raise ImportError(f"{name}: members end at {end}, past sizeof {itemsize}")
    return dt



def _drop_names(program, names, Py_ssize_t count):
    """A BPF program's drop counters, index -> name, checked: every index
    of its drops map (0 .. *_DROP_MAX - 1) has a name, so no counter is
    kept in the kernel and never reported."""
    if sorted(names) != list(range(count)):
        raise ImportError(f"{program}: drop counters named {sorted(names)}, its map has {count}")
    return names


cdef nf_conn_key _k
cdef nf_conn_stats _s
cdef nf_conn_event _e
cdef nf_port_key _p

KEY_DTYPE = _dtype("nf_conn_key", [
    ("sk", "<u8", offset_of(&_k, &_k.sk)),
    ("raddr", "V16", offset_of(&_k, &_k.raddr)),
    ("rport", "<u2", offset_of(&_k, &_k.rport)),
], sizeof(nf_conn_key))

STATS_DTYPE = _dtype("nf_conn_stats", [
    ("ts_first", "<u8", offset_of(&_s, &_s.ts_first)),
    ("ts_last", "<u8", offset_of(&_s, &_s.ts_last)),
    ("bytes_sent", "<u8", offset_of(&_s, &_s.bytes_sent)),
    ("bytes_recv", "<u8", offset_of(&_s, &_s.bytes_recv)),
    ("laddr", "V16", offset_of(&_s, &_s.laddr)),
    ("pid", "<u4", offset_of(&_s, &_s.pid)),
    ("retransmits", "<u4", offset_of(&_s, &_s.retransmits)),
    ("rtt_us", "<u4", offset_of(&_s, &_s.rtt_us)),
    ("rtt_var_us", "<u4", offset_of(&_s, &_s.rtt_var_us)),
    ("lport", "<u2", offset_of(&_s, &_s.lport)),
    ("family", "u1", offset_of(&_s, &_s.family)),
    ("proto", "u1", offset_of(&_s, &_s.proto)),
    ("direction", "u1", offset_of(&_s, &_s.direction)),
    ("flags", "u1", offset_of(&_s, &_s.flags)),
    ("comm", "S16", offset_of(&_s, &_s.comm)),
], sizeof(nf_conn_stats))

EVENT_DTYPE = _dtype("nf_conn_event", [
    ("key", KEY_DTYPE, offset_of(&_e, &_e.key)),
    ("stats", STATS_DTYPE, offset_of(&_e, &_e.stats)),
], sizeof(nf_conn_event))

PORT_KEY_DTYPE = _dtype("nf_port_key", [
    ("port", "<u2", offset_of(&_p, &_p.port)),
    ("proto", "u1", offset_of(&_p, &_p.proto)),
], sizeof(nf_port_key))

DIR_UNKNOWN = NF_DIR_UNKNOWN
DIR_OUTGOING = NF_DIR_OUTGOING
DIR_INCOMING = NF_DIR_INCOMING
F_ESTABLISHED = NF_F_ESTABLISHED
F_CLOSED = NF_F_CLOSED
DROP_RING = NF_DROP_RING
DROP_CONNS = NF_DROP_CONNS
DROP_BOUND = NF_DROP_BOUND
DROP_NAMES = _drop_names("netflow.bpf.c", {
    NF_DROP_RING: "closed_ring_full", NF_DROP_CONNS: "conns_map_full",
    NF_DROP_BOUND: "bound_ports_map_full", NF_DROP_UDP_PEER: "udp_peer_unknown",
    NF_DROP_PEERS_MAP: "udp_peers_map_failed"}, NF_DROP_MAX)


cdef bash_line _b

BASH_LINE_DTYPE = _dtype("bash_line", [
    ("ts", "<u8", offset_of(&_b, &_b.ts)),
    ("pid", "<u4", offset_of(&_b, &_b.pid)),
    ("uid", "<u4", offset_of(&_b, &_b.uid)),
    ("line_len", "<u4", offset_of(&_b, &_b.line_len)),
    ("captured", "<u2", offset_of(&_b, &_b.captured)),
    ("flags", "u1", offset_of(&_b, &_b.flags)),
    ("line", f"V{BASH_LINE_MAX + 1}", offset_of(&_b, &_b.line)),
], sizeof(bash_line))

if sizeof(_b.line) != BASH_LINE_MAX + 1:
    raise ImportError(f"bash_line.line: {sizeof(_b.line)} bytes in C, ext/includes/bash.pxd says {BASH_LINE_MAX + 1}")

BASH_CAPTURE_MAX = BASH_LINE_MAX  # bytes of a line a record holds
# the longest line whose length the BPF program measures exactly
BASH_LEN_SCAN_MAX = BASH_LINE_MAX + (BASH_LEN_CHUNK - 1) * BASH_LEN_CHUNKS
BASH_TRUNCATED = BASH_F_TRUNCATED
BASH_LEN_AT_LEAST = BASH_F_LEN_AT_LEAST
BASH_DROP_NAMES = _drop_names("bash.bpf.c", {
    BASH_DROP_RING: "lines_ring_full", BASH_DROP_READ: "line_unreadable"}, BASH_DROP_MAX)

cdef http_exchange _hx

HTTP_EXCHANGE_DTYPE = _dtype("http_exchange", [
    ("sk", "<u8", offset_of(&_hx, &_hx.sk)),
    ("ts_req", "<u8", offset_of(&_hx, &_hx.ts_req)),
    ("ts_resp", "<u8", offset_of(&_hx, &_hx.ts_resp)),
    ("latency", "<u8", offset_of(&_hx, &_hx.latency_ns)),
    ("req_bytes", "<u8", offset_of(&_hx, &_hx.req_bytes)),
    ("resp_bytes", "<u8", offset_of(&_hx, &_hx.resp_bytes)),
    ("laddr", "V16", offset_of(&_hx, &_hx.laddr)),
    ("raddr", "V16", offset_of(&_hx, &_hx.raddr)),
    ("lport", "<u2", offset_of(&_hx, &_hx.lport)),
    ("rport", "<u2", offset_of(&_hx, &_hx.rport)),
    ("pid", "<u4", offset_of(&_hx, &_hx.pid)),
    ("tid", "<u4", offset_of(&_hx, &_hx.tid)),
    ("status", "<u2", offset_of(&_hx, &_hx.status)),
    ("head_len", "<u2", offset_of(&_hx, &_hx.head_len)),
    ("family", "u1", offset_of(&_hx, &_hx.family)),
    ("proto", "u1", offset_of(&_hx, &_hx.proto)),
    ("direction", "u1", offset_of(&_hx, &_hx.direction)),
    ("source", "u1", offset_of(&_hx, &_hx.source)),
    ("resp_version", "u1", offset_of(&_hx, &_hx.resp_version)),
    ("flags", "u1", offset_of(&_hx, &_hx.flags)),
    ("comm", "S16", offset_of(&_hx, &_hx.comm)),
    ("head", f"V{HTTP_HEAD_MAX}", offset_of(&_hx, &_hx.head)),
], sizeof(http_exchange))

HTTP_HEAD_LEN = HTTP_HEAD_MAX          # bytes of a request a record holds
HTTP_EXCHANGE_MIN = HTTP_EXCHANGE_MIN_SIZE  # a record ends after its head bytes
HTTP_CLOSED = HTTP_X_CLOSED
HTTP_SETTLED = HTTP_X_SETTLED
HTTP_SYSCALL = HTTP_SRC_SYSCALL
HTTP_SSL = HTTP_SRC_SSL
HTTP_FLUSH_LEN = HTTP_FLUSH_BYTES

_HTTP_DROPS = {
    HTTP_DROP_RING: "events_ring_full", HTTP_DROP_CONNS: "http_conns_map_full",
    HTTP_DROP_READ: "payload_unreadable", HTTP_DROP_NOT_COVERED: "calls_not_covered",
    HTTP_DROP_FIFO_FULL: "pipelined_requests_over_limit", HTTP_DROP_UNMATCHED: "unmatched_responses",
    HTTP_DROP_UNANSWERED: "unanswered_requests_closed"}
HTTP_DROP_NAMES = _drop_names("http.bpf.c", _HTTP_DROPS, HTTP_DROP_MAX)
# what the pairing counts that is no loss of a record (bpf_objects: reported
# as kernel_<name>, not kernel_drop_<name>)
HTTP_NOT_LOSSES = frozenset({"calls_not_covered", "unmatched_responses", "unanswered_requests_closed"})

# ebpf-trace's key of a TLS connection's plaintext: the socket | this (include/tls.h)
TLS_SOCKET_TAG = TLS_SK_TAG

# httpflow-tls (bpf/tls.bpf.c): the pairing's counters, then its own
TLS_DROP_NAMES = _drop_names("tls.bpf.c", {
    **_HTTP_DROPS, TLS_DROP_NO_SOCK: "socket_unknown", TLS_DROP_NOT_TCP: "not_tcp",
    TLS_DROP_CALLS: "ssl_calls_map_full", TLS_DROP_SOCKS: "ssl_socks_map_full",
    TLS_DROP_SPAN_RING: "span_ring_full", TLS_DROP_SPAN_CONNS: "span_conns_map_full"}, TLS_DROP_MAX)


def comm_to_arrow(comm):
    """Process names of kernel records (comm: NF_COMM_LEN bytes each, NUL
    padded; a numpy S16/V16 column) -> pyarrow.StringArray. comm is
    whatever bytes the process set (prctl PR_SET_NAME, cut to 15 bytes,
    possibly mid-character), made valid by the one UTF-8 policy (utf8.pxd),
    so every plugin reports a process under the same process_name. No
    Python object per row."""
    cdef cnp.ndarray c = np.ascontiguousarray(comm)
    if c.ndim != 1 or c.dtype.itemsize != NF_COMM_LEN:
        raise TypeError(f"comm_to_arrow: expected a 1-d column of {NF_COMM_LEN}-byte names, "
                        f"got {c.ndim}-d {c.dtype}")
    cdef Py_ssize_t n = c.shape[0], i, L, pos = 0
    cdef const uint8_t *C = <const uint8_t *>cnp.PyArray_DATA(c)
    cdef cnp.ndarray offsets = np.empty(n + 1, np.int32)
    # 3 output bytes per input byte at most (one invalid byte -> U+FFFD)
    cdef cnp.ndarray data = np.empty(max(n * NF_COMM_LEN * 3, 1), np.uint8)
    cdef int32_t *O = <int32_t *>cnp.PyArray_DATA(offsets)
    cdef uint8_t *B = <uint8_t *>cnp.PyArray_DATA(data)
    with nogil:
        for i in range(n):
            O[i] = <int32_t>pos
            L = 0
            while L < NF_COMM_LEN and C[i * NF_COMM_LEN + L] != 0:
                L += 1
            pos += utf8_replace_invalid(C + i * NF_COMM_LEN, L, B + pos)
        O[n] = <int32_t>pos
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data[:pos]))
