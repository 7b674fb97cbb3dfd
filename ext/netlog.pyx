"""bpf-netlog's data plane: packets captured on one interface (PKT_DTYPE
rows from dkebpf._packets, link layer and VXLAN already decoded) folded
into per-connection state, cut into ``bpf_net_l4_log`` chunks (CHUNK_DTYPE
rows). A C loop with the GIL released; no Python object per packet.

Connections are keyed (local address, remote address, local port, remote
port, transport, VNI): an outgoing packet's source is local, any other
packet's destination is (AF_PACKET pkttype, as the original). A chunk
closes after CHUNK_PACKETS packets (CHUNK_PACKETS_CLOSING once it holds a
FIN or RST, so a close is not split from its handshake), and at a
collect() when the connection ends or the chunk is chunk_age_ns old (its
last packet that old, or its packets spanning that long: the original's
30 s rule); chunk_id counts the chunks of one connection record from 1.
A connection's counts also go, at every collect(), into a per-connection
flow record of the interval (netflow's input), whether or not its chunk
was emitted.

Each chunk keeps its packets (the original's per-packet series: direction,
MAC ids, flags, relative seq/ack, payload size, window, time) and, when it
closes, writes the original's ``message`` JSON for it in C into one
buffer (no Python object per packet or chunk); a packet that cannot be
kept (series memory budget, more than MACS_MAX addresses) is counted, in
the message and in ``series_unwritten``.

Retransmits: per direction the sequence ranges this interface has seen
(RFC 1982 serial arithmetic, at most SEQ_RANGES disjoint ranges: past
that the two oldest merge, forgetting the hole between them); a segment
occupying sequence space (payload, SYN or FIN) is a retransmission when
any of its sequence numbers was seen before. A segment arriving out of
order into a hole is not one, wherever the highest sequence is. Pure ACKs
occupy none, so duplicate ACKs never count; a keep-alive probe (RFC 9293
3.8.4: seq = next - 1, at most one byte) does not count either. A
retransmission of bytes this interface never saw (lost before it) fills a
hole: not counted, as nothing shows it was sent twice."""
from libc.errno cimport errno
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset, memcmp
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer

from collections import namedtuple

import numpy as np
import pyarrow as pa
cimport numpy as cnp

from dk_packet cimport dk_pkt, DK_NO_WSCALE
from dk_common cimport offset_of, conn_key_hash as key_hash
from dkebpf._http cimport http_msg, parse_first_line, K_REQUEST, K_RESPONSE
from dkebpf._packets cimport ring_fold
from dkebpf._netlog_filter cimport VerdictCache
from dkebpf._packets import PKT_DTYPE
from dkebpf._records import _dtype
from dkebpf.errors import kernel_error

cnp.import_array()

cdef enum:   # TCP header flags (RFC 9293 3.1)
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_ACK = 0x10

cdef extern from "<linux/if_packet.h>":
    enum:
        PACKET_OUTGOING

cdef enum:   # packets per chunk (the original's tcpPktLimitPerChunk and its close allowance)
    CHUNK_PACKETS = 256
    CHUNK_PACKETS_CLOSING = 320
    SERIES_MAX = CHUNK_PACKETS_CLOSING   # a chunk's series holds at most its packets
    SERIES_FIRST = 16        # rows allocated for a new series (doubled up to SERIES_MAX)
    MACS_MAX = 8             # distinct MAC addresses per chunk (mac_map)
    ROW_JSON_MAX = 160       # bytes of one series row in the message, at most
    CHUNK_JSON_MAX = 1024 + MACS_MAX * 32   # the rest of a message, at most

CHUNK_AGE_NS = 30_000_000_000   # an open chunk is emitted once this old (the original's 30 s)
SERIES_BUDGET = 1 << 20          # series rows (32 bytes each) one table keeps at most

cdef enum:   # l4_chunk.direction (who opened the connection)
    DIR_UNKNOWN = 0
    DIR_INCOMING = 1
    DIR_OUTGOING = 2


cdef struct l4_chunk:
    uint64_t ts_ns           # first packet of the chunk
    uint64_t inner_hi        # inner_traceid: ms timestamp << 16 | random, then 64 random bits
    uint64_t inner_lo
    int64_t hs_cost_ns       # tcp_3whs_cost; -1 when the chunk has no SYN
    int64_t close_cost_ns    # tcp_4whs_cost; -1 when the chunk has no FIN/RST
    uint64_t rtt_sum_ns      # tcp_rtt = rtt_sum_ns / rtt_samples
    uint64_t tx_bytes, rx_bytes
    uint32_t tx_packets, rx_packets, tx_retrans, rx_retrans
    uint32_t tx_seq_min, tx_seq_max, rx_seq_min, rx_seq_max
    uint32_t syn_retrans     # connection total so far
    uint32_t syn_seq, synack_seq   # nic_traceid: raw seq of the first SYN and SYN|ACK (0: not seen)
    uint32_t chunk_id
    uint32_t rtt_samples
    uint32_t vni
    uint8_t laddr[16]
    uint8_t raddr[16]
    uint16_t lport, rport
    uint8_t family, proto, vxlan, direction
    uint8_t chunk_syn, chunk_fin, closed
    uint8_t seq_seen         # bit 0: tx range set, bit 1: rx range set
    uint8_t l7_http          # an HTTP request was seen on the connection
    uint64_t msg_off         # its message in the table's message buffer (collect())
    uint32_t msg_len


cdef struct pkt_row:         # one packet of a chunk's message series
    uint64_t ts_ns
    uint32_t seq, ack        # raw
    uint32_t payload         # payload bytes the headers announce
    uint32_t win             # the window, scaled when both SYNs carried the option (conn_t.wscale)
    uint8_t flags
    uint8_t tx
    uint8_t smac, dmac       # 1-based index into conn_t.macs


cdef enum:
    PATH_MAX = 128           # bytes of the request path kept
    TRACEPARENT_LEN = 55     # "00-<32 hex>-<16 hex>-<2 hex>" (W3C Trace Context 3.2)
    HEADERS_MAX = 4096       # request headers reassembled over segments, at most


cdef struct l7_exchange:
    uint64_t req_ts          # first and last request segment, first and last response segment
    uint64_t req_last_ts
    uint64_t resp_ts
    uint64_t resp_last_ts
    uint64_t inner_hi, inner_lo
    uint64_t tx_bytes, rx_bytes
    uint32_t tx_packets, rx_packets, tx_retrans, rx_retrans
    uint32_t req_seq, resp_seq  # raw seq of the segments starting the request line and the status line
    uint32_t syn_seq, synack_seq   # the connection's (nic_traceid)
    uint32_t vni
    uint32_t first_chunk, last_chunk
    uint8_t laddr[16]
    uint8_t raddr[16]
    uint16_t lport, rport
    uint16_t status
    uint16_t path_len
    uint8_t family, vxlan, method, version
    uint8_t incoming         # the request came in on this interface
    uint8_t has_resp
    uint8_t has_traceparent
    uint8_t path[PATH_MAX]
    uint8_t traceparent[TRACEPARENT_LEN]


cdef enum:
    SEQ_RANGES = 8           # disjoint sequence ranges kept per direction
    SEQ_SPAN_MAX = 1 << 30   # bytes remembered below the highest end (serial arithmetic
                             # compares correctly only within 2^31)


cdef struct seq_ranges:      # [start, end) sequence ranges seen in one direction, oldest first
    uint32_t start[SEQ_RANGES + 1]   # + 1: room for an insert before the two oldest merge
    uint32_t end[SEQ_RANGES + 1]
    uint8_t n


cdef struct conn_t:
    l4_chunk c               # the chunk being filled (key and ids included)
    seq_ranges seen[2]       # per direction (0 tx, 1 rx): what was on the wire already
    l7_exchange x            # the HTTP exchange in progress (x.req_ts 0: none)
    uint64_t last_ts
    uint64_t syn_ts, synack_ts, fin_ts
    uint64_t rtt_sent_ts
    uint32_t rtt_expect
    uint32_t next_seq[2]     # per direction (0 tx, 1 rx): highest seq + len seen
    uint8_t next_set[2]
    uint8_t syn_seen[2]      # SYN (0), SYN|ACK (1): bit per direction it was seen in
    uint8_t fin_dir          # bit per direction a FIN went
    uint8_t rtt_armed
    uint8_t handshake_done
    uint8_t rst
    # request headers split over segments: what came so far (malloc'ed
    # HEADERS_MAX bytes while a request's headers are incomplete, else NULL)
    # and the seq the next in-order segment starts at
    uint8_t *hdr
    uint32_t hdr_len, hdr_next
    # for the per-connection netlog_blacklist verdict and Kubernetes tag
    # id that h12k8s caches on the connection (0: not computed)
    uint32_t filter_slot
    # the chunk's message series (NULL until its first packet is kept)
    pkt_row *series
    uint16_t series_n, series_cap
    uint16_t unwritten       # packets of the chunk not in its series
    uint8_t nmacs
    uint8_t pos_set          # bit per direction: seq_pos set
    uint8_t macs[MACS_MAX * 6]
    uint32_t seq_pos[2]      # tx_seq_pos, rx_seq_pos: first seq seen (own or acknowledged) - 1
    uint32_t rst_count[2]    # RST segments of the chunk per direction
    # netflow of the interval: what the chunks counted since the last
    # collect() (flow), and what of the chunk being filled is in it (rep_*)
    l4_chunk flow
    uint64_t rep_tx_bytes, rep_rx_bytes, rep_rtt_sum_ns
    uint32_t rep_tx_packets, rep_rx_packets, rep_tx_retrans, rep_rx_retrans, rep_rtt_samples
    uint8_t established_counted
    # window scale shift + 1 per direction (0 tx, 1 rx) from its SYN, 0: no option seen; the
    # scale applies once both directions sent it (RFC 7323 2.2), never to the SYNs themselves
    uint8_t wscale[2]


cdef l4_chunk _c
CHUNK_DTYPE = _dtype("l4_chunk", [
    ("ts_ns", "<u8", offset_of(&_c, &_c.ts_ns)),
    ("inner_hi", "<u8", offset_of(&_c, &_c.inner_hi)),
    ("inner_lo", "<u8", offset_of(&_c, &_c.inner_lo)),
    ("hs_cost_ns", "<i8", offset_of(&_c, &_c.hs_cost_ns)),
    ("close_cost_ns", "<i8", offset_of(&_c, &_c.close_cost_ns)),
    ("rtt_sum_ns", "<u8", offset_of(&_c, &_c.rtt_sum_ns)),
    ("tx_bytes", "<u8", offset_of(&_c, &_c.tx_bytes)),
    ("rx_bytes", "<u8", offset_of(&_c, &_c.rx_bytes)),
    ("tx_packets", "<u4", offset_of(&_c, &_c.tx_packets)),
    ("rx_packets", "<u4", offset_of(&_c, &_c.rx_packets)),
    ("tx_retrans", "<u4", offset_of(&_c, &_c.tx_retrans)),
    ("rx_retrans", "<u4", offset_of(&_c, &_c.rx_retrans)),
    ("tx_seq_min", "<u4", offset_of(&_c, &_c.tx_seq_min)),
    ("tx_seq_max", "<u4", offset_of(&_c, &_c.tx_seq_max)),
    ("rx_seq_min", "<u4", offset_of(&_c, &_c.rx_seq_min)),
    ("rx_seq_max", "<u4", offset_of(&_c, &_c.rx_seq_max)),
    ("syn_retrans", "<u4", offset_of(&_c, &_c.syn_retrans)),
    ("syn_seq", "<u4", offset_of(&_c, &_c.syn_seq)),
    ("synack_seq", "<u4", offset_of(&_c, &_c.synack_seq)),
    ("chunk_id", "<u4", offset_of(&_c, &_c.chunk_id)),
    ("rtt_samples", "<u4", offset_of(&_c, &_c.rtt_samples)),
    ("vni", "<u4", offset_of(&_c, &_c.vni)),
    ("laddr", "V16", offset_of(&_c, &_c.laddr)),
    ("raddr", "V16", offset_of(&_c, &_c.raddr)),
    ("lport", "<u2", offset_of(&_c, &_c.lport)),
    ("rport", "<u2", offset_of(&_c, &_c.rport)),
    ("family", "u1", offset_of(&_c, &_c.family)),
    ("proto", "u1", offset_of(&_c, &_c.proto)),
    ("vxlan", "u1", offset_of(&_c, &_c.vxlan)),
    ("direction", "u1", offset_of(&_c, &_c.direction)),
    ("chunk_syn", "u1", offset_of(&_c, &_c.chunk_syn)),
    ("chunk_fin", "u1", offset_of(&_c, &_c.chunk_fin)),
    ("closed", "u1", offset_of(&_c, &_c.closed)),
    ("l7_http", "u1", offset_of(&_c, &_c.l7_http)),
    ("msg_off", "<u8", offset_of(&_c, &_c.msg_off)),
    ("msg_len", "<u4", offset_of(&_c, &_c.msg_len)),
], sizeof(l4_chunk))
DIRECTIONS = ("unknown", "incoming", "outgoing")
HTTP_PATH_MAX = PATH_MAX

cdef l7_exchange _x
L7_DTYPE = _dtype("l7_exchange", [
    ("req_ts", "<u8", offset_of(&_x, &_x.req_ts)),
    ("req_last_ts", "<u8", offset_of(&_x, &_x.req_last_ts)),
    ("resp_ts", "<u8", offset_of(&_x, &_x.resp_ts)),
    ("resp_last_ts", "<u8", offset_of(&_x, &_x.resp_last_ts)),
    ("inner_hi", "<u8", offset_of(&_x, &_x.inner_hi)),
    ("inner_lo", "<u8", offset_of(&_x, &_x.inner_lo)),
    ("tx_bytes", "<u8", offset_of(&_x, &_x.tx_bytes)),
    ("rx_bytes", "<u8", offset_of(&_x, &_x.rx_bytes)),
    ("tx_packets", "<u4", offset_of(&_x, &_x.tx_packets)),
    ("rx_packets", "<u4", offset_of(&_x, &_x.rx_packets)),
    ("tx_retrans", "<u4", offset_of(&_x, &_x.tx_retrans)),
    ("rx_retrans", "<u4", offset_of(&_x, &_x.rx_retrans)),
    ("req_seq", "<u4", offset_of(&_x, &_x.req_seq)),
    ("resp_seq", "<u4", offset_of(&_x, &_x.resp_seq)),
    ("syn_seq", "<u4", offset_of(&_x, &_x.syn_seq)),
    ("synack_seq", "<u4", offset_of(&_x, &_x.synack_seq)),
    ("vni", "<u4", offset_of(&_x, &_x.vni)),
    ("first_chunk", "<u4", offset_of(&_x, &_x.first_chunk)),
    ("last_chunk", "<u4", offset_of(&_x, &_x.last_chunk)),
    ("laddr", "V16", offset_of(&_x, &_x.laddr)),
    ("raddr", "V16", offset_of(&_x, &_x.raddr)),
    ("lport", "<u2", offset_of(&_x, &_x.lport)),
    ("rport", "<u2", offset_of(&_x, &_x.rport)),
    ("status", "<u2", offset_of(&_x, &_x.status)),
    ("path_len", "<u2", offset_of(&_x, &_x.path_len)),
    ("family", "u1", offset_of(&_x, &_x.family)),
    ("vxlan", "u1", offset_of(&_x, &_x.vxlan)),
    ("method", "u1", offset_of(&_x, &_x.method)),
    ("version", "u1", offset_of(&_x, &_x.version)),
    ("incoming", "u1", offset_of(&_x, &_x.incoming)),
    ("has_resp", "u1", offset_of(&_x, &_x.has_resp)),
    ("has_traceparent", "u1", offset_of(&_x, &_x.has_traceparent)),
    ("path", f"S{PATH_MAX}", offset_of(&_x, &_x.path)),
    ("traceparent", f"S{TRACEPARENT_LEN}", offset_of(&_x, &_x.traceparent)),
], sizeof(l7_exchange))


cdef int find_traceparent(const uint8_t *p, uint32_t n, uint8_t *out) noexcept nogil:
    """The value of a traceparent header within the captured headers at
    p[0:n] (name case-insensitive, RFC 9110 5.1), copied to out; 1 if found
    whole."""
    cdef const char *name = b"traceparent:"
    cdef uint32_t i, j, k
    if n < 14:
        return 0
    for i in range(1, n - 12):
        if p[i - 1] != 0x0A:
            continue
        for j in range(12):
            if (p[i + j] | 0x20) != <uint8_t>name[j]:   # ASCII lower case; ':' is unchanged
                break
        else:
            k = i + 12
            while k < n and (p[k] == 0x20 or p[k] == 0x09):
                k += 1
            if k + TRACEPARENT_LEN > n:
                return 0
            memcpy(out, p + k, TRACEPARENT_LEN)
            return 1
        if p[i] == 0x0D or p[i] == 0x0A:
            return 0   # the empty line: end of the headers
    return 0


cdef bint headers_end(const uint8_t *p, uint32_t n) noexcept nogil:
    """The empty line ending HTTP/1 headers (RFC 9112 2.1) is in p[0:n]."""
    cdef uint32_t i
    for i in range(3, n):
        if p[i] == 0x0A and p[i - 1] == 0x0D and p[i - 2] == 0x0A and p[i - 3] == 0x0D:
            return True
    return False


# ---- the message JSON, written in C (every value a number or a fixed
# token: nothing needs escaping). The caller reserves room first.

cdef const char *FLAG_NAMES[8]
FLAG_NAMES[:] = [b"FIN", b"SYN", b"RST", b"PSH", b"ACK", b"URG", b"ECE", b"CWR"]   # bits 0..7, the original's order
cdef const char *HEX = b"0123456789abcdef"


cdef inline char *put(char *o, const char *s) noexcept nogil:
    while s[0]:
        o[0] = s[0]
        o += 1
        s += 1
    return o


cdef inline char *put_u(char *o, uint64_t v) noexcept nogil:
    cdef char tmp[20]
    cdef int n = 0
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    while n:
        n -= 1
        o[0] = tmp[n]
        o += 1
    return o


cdef inline char *put_i(char *o, int64_t v) noexcept nogil:
    if v < 0:
        o[0] = b'-'
        return put_u(o + 1, <uint64_t>(-v))
    return put_u(o, <uint64_t>v)


cdef inline char *put_mac(char *o, const uint8_t *m) noexcept nogil:
    cdef int i
    o[0] = b'"'
    o += 1
    for i in range(6):
        if i:
            o[0] = b':'
            o += 1
        o[0] = HEX[m[i] >> 4]
        o[1] = HEX[m[i] & 15]
        o += 2
    o[0] = b'"'
    return o + 1


cdef inline char *put_flags(char *o, uint8_t f) noexcept nogil:
    cdef int b
    cdef bint first = True
    o[0] = b'"'
    o += 1
    for b in range(8):
        if f & (1 << b):
            if not first:
                o[0] = b'|'
                o += 1
            o = put(o, FLAG_NAMES[b])
            first = False
    o[0] = b'"'
    return o + 1


cdef inline bint seq_lt(uint32_t a, uint32_t b) noexcept nogil:
    """a before b in sequence space (RFC 1982 serial arithmetic)."""
    return <int32_t>(a - b) < 0


cdef inline void seq_widen(uint32_t *lo, uint32_t *hi, uint32_t s, bint first) noexcept nogil:
    if first:
        lo[0] = s
        hi[0] = s
    elif seq_lt(s, lo[0]):
        lo[0] = s
    elif seq_lt(hi[0], s):
        hi[0] = s


cdef bint seq_cover(seq_ranges *r, uint32_t s, uint32_t e) noexcept nogil:
    """Add [s, e) to r; True when some of it was in r already. Ranges stay
    disjoint, non-adjacent and ordered; past SEQ_RANGES the two oldest
    merge (the hole between them counts as seen); what lies more than
    SEQ_SPAN_MAX below the highest end is forgotten."""
    cdef int i, j, first = -1, last = -1
    cdef bint seen = False
    cdef uint32_t ns = s, ne = e, top
    for i in range(r.n):
        if seq_lt(s, r.end[i]) and seq_lt(r.start[i], e):
            seen = True
        if not seq_lt(e, r.start[i]) and not seq_lt(r.end[i], s):   # overlapping or adjacent
            if first < 0:
                first = i
            last = i
            if seq_lt(r.start[i], ns):
                ns = r.start[i]
            if seq_lt(ne, r.end[i]):
                ne = r.end[i]
    if first >= 0:   # ranges first..last and the new one become one
        r.start[first] = ns
        r.end[first] = ne
        j = first + 1
        for i in range(last + 1, r.n):
            r.start[j] = r.start[i]
            r.end[j] = r.end[i]
            j += 1
        r.n = j
    else:
        i = r.n
        while i > 0 and seq_lt(s, r.start[i - 1]):
            r.start[i] = r.start[i - 1]
            r.end[i] = r.end[i - 1]
            i -= 1
        r.start[i] = s
        r.end[i] = e
        r.n += 1
        if r.n > SEQ_RANGES:   # the two oldest become one
            r.end[0] = r.end[1]
            for i in range(1, r.n - 1):
                r.start[i] = r.start[i + 1]
                r.end[i] = r.end[i + 1]
            r.n -= 1
    top = r.end[r.n - 1]
    while r.n > 1 and <uint32_t>(top - r.end[0]) > SEQ_SPAN_MAX:
        for i in range(r.n - 1):
            r.start[i] = r.start[i + 1]
            r.end[i] = r.end[i + 1]
        r.n -= 1
    if <uint32_t>(top - r.start[0]) > SEQ_SPAN_MAX:
        r.start[0] = top - SEQ_SPAN_MAX
    return seen


Collected = namedtuple("Collected", "chunks exchanges flows messages")
Collected.__doc__ = """What ConnTable.collect() returns: chunks (CHUNK_DTYPE), the
finished chunks; exchanges (L7_DTYPE); flows (CHUNK_DTYPE), per
connection what it counted since the last collect (for netflow); messages,
the chunks' message JSON (pyarrow string array aligned with chunks, None
when the table keeps no series)."""


cdef class ConnTable:
    """Connections seen on one interface. add() folds a batch of packets
    in; collect() returns the finished chunks (CHUNK_DTYPE) and forgets
    connections that closed or stayed idle idle_ns; at most max_conns
    connections are tracked (a packet of a new connection beyond that is
    counted in ``table_full``, not tracked). chunk_age_ns: an open chunk
    goes out at a collect() once that old (0: at every collect()); series:
    keep each chunk's packets and write its message (bpf_net_l4_log on),
    at most series_budget rows for the whole table."""
    cdef conn_t *conns
    cdef int32_t *slots
    cdef uint32_t n, cap, nslots
    cdef l4_chunk *done
    cdef uint32_t ndone, done_cap
    cdef l4_chunk *fdone
    cdef uint32_t nfdone, fdone_cap
    cdef l7_exchange *xdone
    cdef uint32_t nxdone, xdone_cap
    cdef char *msg
    cdef uint64_t msg_len, msg_cap
    cdef uint64_t idle_ns, rng, chunk_age_ns
    cdef bint series
    cdef uint64_t series_rows, series_budget
    cdef readonly uint64_t packets, table_full, not_tcp_udp, new_conns, l7_lost
    cdef readonly uint64_t series_unwritten, messages_lost, flows_lost
    cdef _Filtered _filtered   # the netlog_blacklist's verdicts in add() and fold_ring() (_filter())

    def __cinit__(self, uint32_t max_conns=65536, uint64_t idle_ns=120_000_000_000, uint64_t seed=0,
                  uint64_t chunk_age_ns=CHUNK_AGE_NS, bint series=True, uint64_t series_budget=SERIES_BUDGET):
        if max_conns == 0:
            raise ValueError("max_conns must be positive")
        self.chunk_age_ns = chunk_age_ns
        self.series = series
        self.series_budget = series_budget
        self.cap = max_conns
        self.nslots = 1
        while self.nslots < 2 * max_conns:
            self.nslots <<= 1
        self.conns = <conn_t *>calloc(max_conns, sizeof(conn_t))
        self.slots = <int32_t *>malloc(self.nslots * sizeof(int32_t))
        self.done_cap = 1024
        self.done = <l4_chunk *>malloc(self.done_cap * sizeof(l4_chunk))
        self.xdone_cap = 256
        self.xdone = <l7_exchange *>malloc(self.xdone_cap * sizeof(l7_exchange))
        self.fdone_cap = 1024
        self.fdone = <l4_chunk *>malloc(self.fdone_cap * sizeof(l4_chunk))
        if self.conns == NULL or self.slots == NULL or self.done == NULL or self.xdone == NULL \
                or self.fdone == NULL:
            raise MemoryError()
        memset(self.slots, 0xFF, self.nslots * sizeof(int32_t))
        self.idle_ns = idle_ns
        self.rng = seed or <uint64_t>id(self) * 6364136223846793005ULL + 1442695040888963407ULL

    def __dealloc__(self):
        cdef uint32_t i
        if self.conns != NULL:
            for i in range(self.n):
                free(self.conns[i].hdr)
                free(self.conns[i].series)
        free(self.conns)
        free(self.slots)
        free(self.done)
        free(self.fdone)
        free(self.xdone)
        free(self.msg)

    def __len__(self):
        return self.n

    cdef uint64_t _rand(self) noexcept nogil:
        # xorshift64*: ids need to be unique, not secret
        self.rng ^= self.rng >> 12
        self.rng ^= self.rng << 25
        self.rng ^= self.rng >> 27
        return self.rng * 2685821657736338717ULL

    cdef conn_t *_lookup(self, const dk_pkt *p, bint tx) noexcept nogil:
        cdef const uint8_t *la = &p.saddr[0] if tx else &p.daddr[0]
        cdef const uint8_t *ra = &p.daddr[0] if tx else &p.saddr[0]
        cdef uint16_t lp = p.sport if tx else p.dport
        cdef uint16_t rp = p.dport if tx else p.sport
        cdef uint32_t vni = p.vni if p.vxlan else 0
        cdef uint32_t s = key_hash(la, ra, lp, rp, p.proto, vni) & (self.nslots - 1)
        cdef conn_t *c
        while self.slots[s] >= 0:
            c = &self.conns[self.slots[s]]
            if c.c.lport == lp and c.c.rport == rp and c.c.proto == p.proto and c.c.vni == vni \
                    and c.c.vxlan == p.vxlan and memcmp(c.c.laddr, la, 16) == 0 \
                    and memcmp(c.c.raddr, ra, 16) == 0:
                return c
            s = (s + 1) & (self.nslots - 1)
        if self.n == self.cap:
            self.table_full += 1
            return NULL
        self.slots[s] = self.n
        c = &self.conns[self.n]
        self.n += 1
        self.new_conns += 1
        memset(c, 0, sizeof(conn_t))
        memcpy(c.c.laddr, la, 16)
        memcpy(c.c.raddr, ra, 16)
        c.c.lport = lp
        c.c.rport = rp
        c.c.proto = p.proto
        c.c.family = p.family
        c.c.vxlan = p.vxlan
        c.c.vni = vni
        c.c.inner_hi = (p.ts_ns // 1000000) << 16 | (self._rand() & 0xFFFF)
        c.c.inner_lo = self._rand()
        return c

    cdef void _fold(self, conn_t *c) noexcept nogil:
        """Add what the chunk being filled counted since the last fold to
        the connection's flow of the interval."""
        cdef l4_chunk *f = &c.flow
        f.tx_bytes += c.c.tx_bytes - c.rep_tx_bytes
        f.rx_bytes += c.c.rx_bytes - c.rep_rx_bytes
        f.rtt_sum_ns += c.c.rtt_sum_ns - c.rep_rtt_sum_ns
        f.tx_packets += c.c.tx_packets - c.rep_tx_packets
        f.rx_packets += c.c.rx_packets - c.rep_rx_packets
        f.tx_retrans += c.c.tx_retrans - c.rep_tx_retrans
        f.rx_retrans += c.c.rx_retrans - c.rep_rx_retrans
        f.rtt_samples += c.c.rtt_samples - c.rep_rtt_samples
        c.rep_tx_bytes, c.rep_rx_bytes, c.rep_rtt_sum_ns = c.c.tx_bytes, c.c.rx_bytes, c.c.rtt_sum_ns
        c.rep_tx_packets, c.rep_rx_packets = c.c.tx_packets, c.c.rx_packets
        c.rep_tx_retrans, c.rep_rx_retrans, c.rep_rtt_samples = c.c.tx_retrans, c.c.rx_retrans, c.c.rtt_samples
        if c.c.chunk_syn and c.c.hs_cost_ns >= 0 and not c.established_counted:
            c.established_counted = 1   # tcp_established once per connection record
            f.chunk_syn = 1
            f.hs_cost_ns = c.c.hs_cost_ns

    cdef void _emit_flow(self, conn_t *c, bint ending) noexcept nogil:
        """The connection's flow of the interval to the flow list (when it
        counted something, was established or closed), then zeroed. A
        connection that ends silently (idle, or dropped by a filter verdict
        after a Kubernetes change) with nothing new gives no empty flow."""
        cdef l4_chunk *grown
        cdef l4_chunk *f = &c.flow
        self._fold(c)
        if f.tx_packets + f.rx_packets == 0 and not f.chunk_syn and not (ending and (c.rst or c.fin_dir == 3)):
            return
        if self.nfdone == self.fdone_cap:
            grown = <l4_chunk *>realloc(self.fdone, 2 * self.fdone_cap * sizeof(l4_chunk))
            if grown == NULL:
                self.flows_lost += 1
                return   # kept for the next collect
            self.fdone = grown
            self.fdone_cap *= 2
        memcpy(f.laddr, c.c.laddr, 16)
        memcpy(f.raddr, c.c.raddr, 16)
        f.lport, f.rport, f.proto, f.family = c.c.lport, c.c.rport, c.c.proto, c.c.family
        f.vxlan, f.vni, f.direction = c.c.vxlan, c.c.vni, c.c.direction
        f.inner_hi, f.inner_lo, f.chunk_id = c.c.inner_hi, c.c.inner_lo, c.c.chunk_id
        f.ts_ns = c.last_ts
        if not f.chunk_syn:
            f.hs_cost_ns = -1
        f.closed = ending and (c.rst or c.fin_dir == 3)
        memcpy(&self.fdone[self.nfdone], f, sizeof(l4_chunk))
        self.nfdone += 1
        memset(f, 0, sizeof(l4_chunk))

    cdef uint8_t _mac_id(self, conn_t *c, const uint8_t *mac) noexcept nogil:
        """mac's 1-based id in the chunk's mac_map (added if new); 0 when
        the map is full."""
        cdef uint8_t i
        for i in range(c.nmacs):
            if memcmp(&c.macs[6 * i], mac, 6) == 0:
                return i + 1
        if c.nmacs == MACS_MAX:
            return 0
        memcpy(&c.macs[6 * c.nmacs], mac, 6)
        c.nmacs += 1
        return c.nmacs

    cdef void _record(self, conn_t *c, const dk_pkt *p, bint tx) noexcept nogil:
        """The packet into the chunk's series (after _track counted it)."""
        cdef int d = 0 if tx else 1
        cdef uint16_t cap
        cdef pkt_row *grown
        cdef pkt_row *r
        cdef uint8_t sm, dm
        if p.tcp_flags & TH_RST:
            c.rst_count[d] += 1
        if p.proto == 6 and p.tcp_flags & TH_SYN:
            c.wscale[d] = 0 if p.wscale == DK_NO_WSCALE else p.wscale + 1
        if p.proto == 6:   # the original's calSeqOffset: each direction's first seq - 1, own or acknowledged
            if not (c.pos_set & (1 << d)):
                c.seq_pos[d] = p.seq - 1
                c.pos_set |= 1 << d
            if (p.tcp_flags & TH_ACK) and not (c.pos_set & (2 >> d)):
                c.seq_pos[1 - d] = p.ack - 1
                c.pos_set |= 2 >> d
        if c.series_n == c.series_cap:
            cap = SERIES_FIRST if c.series_cap == 0 else 2 * c.series_cap
            if cap > SERIES_MAX:
                cap = SERIES_MAX
            grown = NULL
            if cap > c.series_cap and self.series_rows + cap - c.series_cap <= self.series_budget:
                grown = <pkt_row *>realloc(c.series, cap * sizeof(pkt_row))
            if grown == NULL:
                c.unwritten += 1
                self.series_unwritten += 1
                return
            self.series_rows += cap - c.series_cap
            c.series = grown
            c.series_cap = cap
        sm = self._mac_id(c, p.smac)
        dm = self._mac_id(c, p.dmac)
        if sm == 0 or dm == 0:
            c.unwritten += 1
            self.series_unwritten += 1
            return
        r = &c.series[c.series_n]
        c.series_n += 1
        r.ts_ns = p.ts_ns
        r.seq = p.seq
        r.ack = p.ack
        r.payload = p.payload_wire
        if not (p.tcp_flags & TH_SYN) and c.wscale[0] and c.wscale[1]:
            r.win = <uint32_t>p.window << (c.wscale[d] - 1)
        else:
            r.win = p.window   # a SYN, mid-stream, or a side without the option: no scale
        r.flags = p.tcp_flags
        r.tx = tx
        r.smac = sm
        r.dmac = dm

    cdef void _free_series(self, conn_t *c) noexcept nogil:
        free(c.series)
        c.series = NULL
        self.series_rows -= c.series_cap
        c.series_cap = c.series_n = 0

    cdef void _write_message(self, conn_t *c, l4_chunk *out) noexcept nogil:
        """The original's message JSON of the chunk being closed, appended
        to the message buffer; out.msg_off/msg_len say where."""
        cdef uint64_t need = CHUNK_JSON_MAX + <uint64_t>c.series_n * ROW_JSON_MAX, cap
        cdef char *grown
        cdef char *o
        cdef pkt_row *r
        cdef uint32_t i
        cdef bint tcp = c.c.proto == 6
        out.msg_off = self.msg_len
        out.msg_len = 0
        if self.msg_cap - self.msg_len < need:
            cap = self.msg_cap * 2 if self.msg_cap else 1 << 16
            while cap - self.msg_len < need:
                cap *= 2
            grown = <char *>realloc(self.msg, cap)
            if grown == NULL:
                self.messages_lost += 1
                return
            self.msg = grown
            self.msg_cap = cap
        o = self.msg + self.msg_len
        if tcp:
            o = put(o, b'{"l4_proto":"tcp","tcp":{"chunk_id":')
        else:
            o = put(o, b'{"l4_proto":"udp","udp":{"chunk_id":')
        o = put_u(o, c.c.chunk_id)
        if tcp:
            o = put(o, b',"tx_seq_pos":')
            o = put_u(o, c.seq_pos[0] if c.pos_set & 1 else 0)
            o = put(o, b',"rx_seq_pos":')
            o = put_u(o, c.seq_pos[1] if c.pos_set & 2 else 0)
        o = put(o, b',"time_pos":')
        o = put_u(o, c.c.ts_ns)
        o = put(o, b',"mac_map":')
        if c.nmacs == 0:
            o = put(o, b'null')
        else:
            o[0] = b'{'
            o += 1
            for i in range(c.nmacs):
                if i:
                    o[0] = b','
                    o += 1
                o = put_mac(o, &c.macs[6 * i])
                o[0] = b':'
                o[1] = b'"'
                o = put_u(o + 2, i + 1)
                o[0] = b'"'
                o += 1
            o[0] = b'}'
            o += 1
        if tcp:
            o = put(o, b',"tcp_series_col_name":["txrx","src_mac","dst_mac","flags","seq","ack_seq",'
                       b'"payload_size","win","ts"],"tcp_series":[')
        else:
            o = put(o, b',"udp_series_col_name":["txrx","src_mac","dst_mac","payload_size","ts"],"udp_series":[')
        for i in range(c.series_n):
            r = &c.series[i]
            if i:
                o[0] = b','
                o += 1
            if r.tx:
                o = put(o, b'["tx","')
            else:
                o = put(o, b'["rx","')
            o = put_u(o, r.smac)
            o = put(o, b'","')
            o = put_u(o, r.dmac)
            o = put(o, b'",')
            if tcp:
                o = put_flags(o, r.flags)
                o[0] = b','
                o = put_u(o + 1, <uint32_t>(r.seq - c.seq_pos[1 - r.tx]))
                o[0] = b','
                o = put_u(o + 1, <uint32_t>(r.ack - c.seq_pos[r.tx]) if r.flags & TH_ACK else 0)
                o[0] = b','
                o += 1
            o = put_u(o, r.payload)
            o[0] = b','
            o += 1
            if tcp:
                o = put_u(o, r.win)
                o[0] = b','
                o += 1
            o = put_i(o, <int64_t>(r.ts_ns - c.c.ts_ns))
            o[0] = b']'
            o += 1
        o = put(o, b'],"rx_bytes":')
        o = put_u(o, c.c.rx_bytes)
        o = put(o, b',"tx_bytes":')
        o = put_u(o, c.c.tx_bytes)
        o = put(o, b',"rx_packets":')
        o = put_u(o, c.c.rx_packets)
        o = put(o, b',"tx_packets":')
        o = put_u(o, c.c.tx_packets)
        if tcp:
            o = put(o, b',"tx_retrans":')
            o = put_u(o, c.c.tx_retrans)
            o = put(o, b',"rx_retrans":')
            o = put_u(o, c.c.rx_retrans)
            o = put(o, b',"tx_rst":')
            o = put_u(o, c.rst_count[0])
            o = put(o, b',"rx_rst":')
            o = put_u(o, c.rst_count[1])
        o = put(o, b',"series_unwritten":')
        o = put_u(o, c.unwritten)
        o = put(o, b'}}')
        out.msg_len = <uint32_t>(o - (self.msg + self.msg_len))
        self.msg_len += out.msg_len

    cdef void _close_chunk(self, conn_t *c) noexcept nogil:
        """Move the chunk being filled to the finished list (its message
        written); the next packet starts chunk_id + 1."""
        cdef l4_chunk *grown
        if c.c.tx_packets + c.c.rx_packets == 0:
            return
        if self.ndone == self.done_cap:
            grown = <l4_chunk *>realloc(self.done, 2 * self.done_cap * sizeof(l4_chunk))
            if grown == NULL:
                return   # keep filling this chunk: nothing is lost, it is only longer
            self.done = grown
            self.done_cap *= 2
        self._fold(c)
        c.rep_tx_bytes = c.rep_rx_bytes = c.rep_rtt_sum_ns = 0
        c.rep_tx_packets = c.rep_rx_packets = c.rep_tx_retrans = c.rep_rx_retrans = c.rep_rtt_samples = 0
        c.c.closed = c.rst or c.fin_dir == 3
        memcpy(&self.done[self.ndone], &c.c, sizeof(l4_chunk))
        if self.series:
            self._write_message(c, &self.done[self.ndone])
        self.ndone += 1
        c.series_n = c.unwritten = 0
        c.nmacs = c.pos_set = 0
        c.rst_count[0] = c.rst_count[1] = 0
        c.c.tx_packets = c.c.rx_packets = c.c.tx_retrans = c.c.rx_retrans = 0
        c.c.tx_bytes = c.c.rx_bytes = c.c.rtt_sum_ns = 0
        c.c.rtt_samples = 0
        c.c.chunk_syn = c.c.chunk_fin = 0
        c.c.seq_seen = 0
        c.c.tx_seq_min = c.c.tx_seq_max = c.c.rx_seq_min = c.c.rx_seq_max = 0

    cdef void _emit_exchange(self, conn_t *c) noexcept nogil:
        cdef l7_exchange *grown
        self._headers_done(c)
        if self.nxdone == self.xdone_cap:
            grown = <l7_exchange *>realloc(self.xdone, 2 * self.xdone_cap * sizeof(l7_exchange))
            if grown == NULL:
                self.l7_lost += 1
                c.x.req_ts = 0
                return
            self.xdone = grown
            self.xdone_cap *= 2
        memcpy(&self.xdone[self.nxdone], &c.x, sizeof(l7_exchange))
        self.nxdone += 1
        c.x.req_ts = 0

    cdef void _headers_done(self, conn_t *c) noexcept nogil:
        """The request headers gathered over segments are complete (or can
        grow no more): look for traceparent in them, free the buffer."""
        if c.hdr == NULL:
            return
        if not c.x.has_traceparent:
            c.x.has_traceparent = find_traceparent(c.hdr, c.hdr_len, c.x.traceparent)
        free(c.hdr)
        c.hdr = NULL

    cdef void _headers_more(self, conn_t *c, const dk_pkt *p, const uint8_t *data, uint32_t n) noexcept nogil:
        """A segment of the request's direction while its headers are
        incomplete: appended when it is the next in order, whole; the
        headers are done at their empty line, at HEADERS_MAX, or at a gap
        (a segment lost or cut by the socket program's snap length)."""
        cdef uint32_t k
        if p.seq != c.hdr_next:
            if seq_lt(p.seq, c.hdr_next):
                return   # bytes already gathered, sent again
            self._headers_done(c)
            return
        k = n if n < HEADERS_MAX - c.hdr_len else HEADERS_MAX - c.hdr_len
        memcpy(c.hdr + c.hdr_len, data, k)
        c.hdr_len += k
        c.hdr_next = p.seq + p.payload_wire
        if n < p.payload_wire or c.hdr_len == HEADERS_MAX or headers_end(c.hdr, c.hdr_len):
            self._headers_done(c)

    cdef void _l7(self, conn_t *c, const dk_pkt *p, const uint8_t *data, bint tx) noexcept nogil:
        """HTTP/1.x: a segment starting a request line opens an exchange
        (closing the previous one), the first status line going the other
        way is its response; other segments move the last-seen times, and
        while the request's headers are incomplete, add to them."""
        cdef http_msg m
        cdef int n = p.payload_len if p.payload_len < 65535 else 65535
        cdef bint resp_dir = c.x.req_ts != 0 and tx == c.x.incoming
        if parse_first_line(data, n, &m):
            if m.kind == K_REQUEST:
                self._headers_done(c)
                if c.x.req_ts:
                    self._emit_exchange(c)
                memset(&c.x, 0, sizeof(l7_exchange))
                memcpy(c.x.laddr, c.c.laddr, 16)
                memcpy(c.x.raddr, c.c.raddr, 16)
                c.x.lport = c.c.lport
                c.x.rport = c.c.rport
                c.x.family = c.c.family
                c.x.vxlan = c.c.vxlan
                c.x.vni = c.c.vni
                c.x.inner_hi = c.c.inner_hi
                c.x.inner_lo = c.c.inner_lo
                c.x.req_ts = c.x.req_last_ts = p.ts_ns
                c.c.l7_http = 1
                c.x.req_seq = p.seq
                c.x.syn_seq = c.c.syn_seq
                c.x.synack_seq = c.c.synack_seq
                if c.c.direction == DIR_UNKNOWN:   # seen mid-stream: the first request tells
                    c.c.direction = DIR_OUTGOING if tx else DIR_INCOMING
                c.x.method = m.method
                c.x.version = m.version
                c.x.incoming = not tx
                c.x.first_chunk = c.c.chunk_id
                c.x.path_len = m.path_len if m.path_len < PATH_MAX else PATH_MAX
                memcpy(c.x.path, data + m.path_off, c.x.path_len)
                c.x.has_traceparent = find_traceparent(data, n, c.x.traceparent)
                if not c.x.has_traceparent and <uint32_t>n == p.payload_wire and not headers_end(data, n):
                    c.hdr = <uint8_t *>malloc(HEADERS_MAX)   # NULL: looked for in this segment only
                    if c.hdr != NULL:
                        c.hdr_len = n if n < HEADERS_MAX else HEADERS_MAX
                        memcpy(c.hdr, data, c.hdr_len)
                        c.hdr_next = p.seq + p.payload_wire
                return
            if m.kind == K_RESPONSE and resp_dir and not c.x.has_resp:
                self._headers_done(c)
                c.x.has_resp = 1
                c.x.resp_seq = p.seq
                c.x.status = m.status
                c.x.resp_ts = c.x.resp_last_ts = p.ts_ns
                return
        if c.x.req_ts == 0:
            return
        if c.hdr != NULL and not resp_dir:
            self._headers_more(c, p, data, n)
        if resp_dir:
            if c.x.has_resp:
                c.x.resp_last_ts = p.ts_ns
        elif not c.x.has_resp:
            c.x.req_last_ts = p.ts_ns

    cdef bint _track(self, conn_t *c, const dk_pkt *p, bint tx) noexcept nogil:
        cdef int d = 0 if tx else 1
        cdef uint8_t f = p.tcp_flags
        cdef uint32_t span, end, seq = p.seq
        cdef bint retrans = False, keepalive
        if c.c.tx_packets + c.c.rx_packets == 0:
            c.c.chunk_id += 1
            c.c.ts_ns = p.ts_ns
            c.c.hs_cost_ns = -1
            c.c.close_cost_ns = -1
        c.last_ts = p.ts_ns
        if tx:
            c.c.tx_packets += 1
            c.c.tx_bytes += p.payload_wire
        else:
            c.c.rx_packets += 1
            c.c.rx_bytes += p.payload_wire
        if p.proto != 6:
            return False
        # seq ranges: a packet's own seq in its direction, its ack in the other
        seq_widen(&c.c.tx_seq_min if tx else &c.c.rx_seq_min, &c.c.tx_seq_max if tx else &c.c.rx_seq_max,
                  seq, not (c.c.seq_seen & (1 << d)))
        c.c.seq_seen |= 1 << d
        if f & TH_ACK:
            seq_widen(&c.c.rx_seq_min if tx else &c.c.tx_seq_min, &c.c.rx_seq_max if tx else &c.c.tx_seq_max,
                      p.ack, not (c.c.seq_seen & (1 << (1 - d))))
            c.c.seq_seen |= 1 << (1 - d)
        # handshake
        if f & TH_SYN:
            c.c.chunk_syn = 1
            if not (f & TH_ACK):
                if c.syn_ts == 0:
                    c.syn_ts = p.ts_ns
                    c.c.syn_seq = seq
                    c.c.direction = DIR_OUTGOING if tx else DIR_INCOMING
                elif c.syn_seen[0] & (1 << d):
                    c.c.syn_retrans += 1
                c.syn_seen[0] |= 1 << d
            else:
                if c.synack_ts == 0:
                    c.synack_ts = p.ts_ns
                    c.c.synack_seq = seq
                    if c.c.direction == DIR_UNKNOWN:   # its SYN was not seen: who answered it tells
                        c.c.direction = DIR_INCOMING if tx else DIR_OUTGOING
                elif c.syn_seen[1] & (1 << d):
                    c.c.syn_retrans += 1
                c.syn_seen[1] |= 1 << d
                if c.syn_ts:
                    c.c.hs_cost_ns = p.ts_ns - c.syn_ts
        elif (f & TH_ACK) and c.synack_ts and not c.handshake_done:
            c.handshake_done = 1
            if c.syn_ts:
                c.c.hs_cost_ns = p.ts_ns - c.syn_ts
        # close: first FIN or RST to the last packet of the closing exchange
        if f & (TH_FIN | TH_RST):
            c.c.chunk_fin = 1
            if c.fin_ts == 0:
                c.fin_ts = p.ts_ns
            if f & TH_FIN:
                c.fin_dir |= 1 << d
            if f & TH_RST:
                c.rst = 1
        if c.fin_ts and c.c.chunk_fin:
            c.c.close_cost_ns = p.ts_ns - c.fin_ts
        # retransmits: segments that occupy sequence space already seen
        span = p.payload_wire + (1 if f & TH_SYN else 0) + (1 if f & TH_FIN else 0)
        if span:
            end = seq + span
            keepalive = c.next_set[d] and span <= 1 and seq == c.next_seq[d] - 1 and not (f & TH_FIN)
            if seq_cover(&c.seen[d], seq, end) and not (f & TH_SYN) and not keepalive:
                retrans = True
                if tx:
                    c.c.tx_retrans += 1
                else:
                    c.c.rx_retrans += 1
            if not c.next_set[d] or seq_lt(c.next_seq[d], end):
                c.next_seq[d] = end
                c.next_set[d] = 1
        # rtt: a sent segment that occupies sequence space (never a pure ACK)
        # to the first acknowledgement covering it
        if tx and span and not retrans and not c.rtt_armed:
            c.rtt_armed = 1
            c.rtt_expect = seq + span
            c.rtt_sent_ts = p.ts_ns
        elif not tx and c.rtt_armed and (f & TH_ACK) and not seq_lt(p.ack, c.rtt_expect):
            c.rtt_armed = 0
            c.c.rtt_sum_ns += p.ts_ns - c.rtt_sent_ts
            c.c.rtt_samples += 1
        return retrans

    def add(self, pkts, payload=None, conn_filter=None):
        """Fold PKT_DTYPE rows (in capture order) into the table; with their
        payload bytes (as PacketRing.read returns them), HTTP/1.x exchanges
        are followed too. conn_filter: a dkebpf.netlog.conn_filter.ConnFilter
        whose verdicts drop packets first (see _Filtered)."""
        pkts = np.ascontiguousarray(pkts, dtype=PKT_DTYPE)
        cdef const dk_pkt *p = <const dk_pkt *>cnp.PyArray_DATA(pkts)
        cdef Py_ssize_t n = len(pkts)
        cdef const uint8_t *pay = NULL
        cdef Py_ssize_t pay_len = 0
        cdef _Filtered f
        if payload is not None:
            payload = np.ascontiguousarray(payload, dtype=np.uint8)
            pay = <const uint8_t *>cnp.PyArray_DATA(payload)
            pay_len = len(payload)
        if conn_filter is None:
            with nogil:
                self._add(p, n, pay, pay_len, NULL)
            return
        f = self._filter(conn_filter, True)
        with nogil:
            f.fold(p, n, pay, pay_len)
        f.raise_error()

    def fold_ring(self, ring, uint32_t max_blocks, bint http=True, uint32_t linger_ms=0, conn_filter=None):
        """What a spilling PacketRing holds (at most max_blocks blocks)
        decoded and folded into the table in one call without the GIL
        (dkebpf._packets.ring_fold): add() of each read() batch, its
        payload only with http, conn_filter's verdicts applied as add()
        does; the spill emptied, what it gets within linger_ms too. Returns
        (blocks taken, more left)."""
        cdef _Filtered f
        if conn_filter is None:
            return ring_fold(ring, _fold_http if http else _fold_headers, <void *>self, max_blocks, linger_ms)
        f = self._filter(conn_filter, http)
        got = ring_fold(ring, _fold_filtered, <void *>f, max_blocks, linger_ms)
        f.raise_error()
        return got

    cdef _Filtered _filter(self, conn_filter, bint http):
        """The _Filtered applying conn_filter to this table, made once
        (its scratch arrays reused), at the filter's current generation."""
        if self._filtered is None or self._filtered.owner is not conn_filter:
            self._filtered = _Filtered(conn_filter)
        self._filtered.table = <void *>self   # borrowed for the call: no reference cycle
        self._filtered.generation = conn_filter.generation
        self._filtered.http = http
        return self._filtered

    cdef void _add(self, const dk_pkt *p, Py_ssize_t n, const uint8_t *pay, Py_ssize_t pay_len,
                   const uint8_t *keep) noexcept nogil:
        """add() without the GIL (pay NULL: no HTTP); keep: per packet, 0
        when a filter dropped it (NULL: all kept)."""
        cdef Py_ssize_t i
        cdef conn_t *c
        cdef bint tx, retrans
        cdef uint32_t limit
        for i in range(n):
            if keep != NULL and not keep[i]:
                continue
            self.packets += 1
            if p[i].proto != 6 and p[i].proto != 17:
                self.not_tcp_udp += 1
                continue
            tx = p[i].pkttype == PACKET_OUTGOING
            c = self._lookup(&p[i], tx)
            if c == NULL:
                continue
            if (c.rst or c.fin_dir == 3) and (p[i].tcp_flags & (TH_SYN | TH_ACK)) == TH_SYN:
                # the closed port pair is reused by a new connection: a new record
                self._close_chunk(c)
                self._emit_flow(c, True)
                if c.x.req_ts:
                    self._emit_exchange(c)
                self._restart(c, &p[i])
            retrans = self._track(c, &p[i], tx)
            if self.series:
                self._record(c, &p[i], tx)
            if pay != NULL and p[i].proto == 6 and p[i].payload_len and not retrans \
                    and <Py_ssize_t>p[i].payload_off + p[i].payload_len <= pay_len:
                self._l7(c, &p[i], pay + p[i].payload_off, tx)
            if c.x.req_ts:
                c.x.last_chunk = c.c.chunk_id
                if tx:
                    c.x.tx_packets += 1
                    c.x.tx_bytes += p[i].payload_wire
                    c.x.tx_retrans += retrans
                else:
                    c.x.rx_packets += 1
                    c.x.rx_bytes += p[i].payload_wire
                    c.x.rx_retrans += retrans
            limit = CHUNK_PACKETS_CLOSING if c.c.chunk_fin else CHUNK_PACKETS
            if c.c.tx_packets + c.c.rx_packets >= limit:
                self._close_chunk(c)

    cdef void _restart(self, conn_t *c, const dk_pkt *p) noexcept nogil:
        cdef l4_chunk key
        memcpy(&key, &c.c, sizeof(l4_chunk))
        free(c.hdr)
        self._free_series(c)
        memset(c, 0, sizeof(conn_t))
        memcpy(c.c.laddr, key.laddr, 16)
        memcpy(c.c.raddr, key.raddr, 16)
        c.c.lport = key.lport
        c.c.rport = key.rport
        c.c.proto = key.proto
        c.c.family = key.family
        c.c.vxlan = key.vxlan
        c.c.vni = key.vni
        c.c.inner_hi = (p.ts_ns // 1000000) << 16 | (self._rand() & 0xFFFF)
        c.c.inner_lo = self._rand()
        self.new_conns += 1

    def collect(self, uint64_t now_ns, bint flush_all=False):
        """A Collected: the chunks finished since the last call and those
        being filled that are due (their connection ends, or chunk_age_ns
        old), with their messages; the HTTP exchanges that got their
        response or whose connection ends (L7_DTYPE); every connection's
        flow of the interval. Connections closed, idle for idle_ns, or all
        of them with flush_all (the interface went away) are forgotten."""
        cdef uint32_t i, kept = 0, s
        cdef conn_t *c
        cdef bint gone
        with nogil:
            for i in range(self.n):
                c = &self.conns[i]
                gone = flush_all or c.rst or c.fin_dir == 3 or c.last_ts + self.idle_ns <= now_ns
                # the original's rule: its last packet, or its span, chunk_age_ns old
                if gone or c.last_ts + self.chunk_age_ns <= now_ns or c.last_ts - c.c.ts_ns >= self.chunk_age_ns:
                    self._close_chunk(c)
                self._emit_flow(c, gone)
                if c.x.req_ts and (gone or c.x.has_resp):
                    self._emit_exchange(c)
                if gone:
                    free(c.hdr)
                    self._free_series(c)
                    continue
                if kept != i:
                    memcpy(&self.conns[kept], c, sizeof(conn_t))
                kept += 1
            self.n = kept
            memset(self.slots, 0xFF, self.nslots * sizeof(int32_t))
            for i in range(kept):
                c = &self.conns[i]
                s = key_hash(c.c.laddr, c.c.raddr, c.c.lport, c.c.rport, c.c.proto, c.c.vni) & (self.nslots - 1)
                while self.slots[s] >= 0:
                    s = (s + 1) & (self.nslots - 1)
                self.slots[s] = i
        out = np.empty(self.ndone, CHUNK_DTYPE)
        if self.ndone:
            memcpy(cnp.PyArray_DATA(out), self.done, self.ndone * sizeof(l4_chunk))
        self.ndone = 0
        flows = np.empty(self.nfdone, CHUNK_DTYPE)
        if self.nfdone:
            memcpy(cnp.PyArray_DATA(flows), self.fdone, self.nfdone * sizeof(l4_chunk))
        self.nfdone = 0
        xs = np.empty(self.nxdone, L7_DTYPE)
        if self.nxdone:
            memcpy(cnp.PyArray_DATA(xs), self.xdone, self.nxdone * sizeof(l7_exchange))
        self.nxdone = 0
        messages = None
        if self.series:
            # written in chunk order, back to back: offsets are each chunk's start, then the end
            offsets = np.empty(len(out) + 1, np.int32)
            offsets[:len(out)] = out["msg_off"]
            offsets[len(out)] = self.msg_len
            if self.msg_len:
                # the buffer itself, no copy (up to ~100 MB an interval at 600k packets/s), freed once the
                # points are sent: a table kept the largest interval's buffer resident for good (an idle
                # collector's RSS after a bulk load); the next chunk starts a new one, grown by realloc
                # (mremap past the agent's mmap threshold: no copy either)
                data = _owned_array(self.msg, self.msg_len)
                self.msg = NULL
                self.msg_cap = 0
            else:
                data = np.empty(0, np.uint8)
            self.msg_len = 0
            messages = pa.StringArray.from_buffers(len(out), pa.py_buffer(offsets), pa.py_buffer(data))
        return Collected(out, xs, flows, messages)

    def memory(self):
        """{holder: bytes} the table keeps allocated."""
        return {"connections": <uint64_t>self.cap * sizeof(conn_t) + <uint64_t>self.nslots * sizeof(int32_t),
                "chunks": <uint64_t>(self.done_cap + self.fdone_cap) * sizeof(l4_chunk)
                + <uint64_t>self.xdone_cap * sizeof(l7_exchange),
                "series": self.series_rows * sizeof(pkt_row), "messages": self.msg_cap}

    def counters(self):
        return {"packets": self.packets, "connections": self.n, "new_connections": self.new_conns,
                "table_full": self.table_full, "l7_lost": self.l7_lost,
                "series_unwritten": self.series_unwritten, "messages_lost": self.messages_lost,
                "flows_lost": self.flows_lost}


cdef void _free_capsule(object capsule) noexcept:
    free(PyCapsule_GetPointer(capsule, NULL))


cdef object _owned_array(char *p, uint64_t n):
    """The n malloc'ed bytes at p as a numpy uint8 array (no copy) that
    frees them with its last reference."""
    cdef cnp.npy_intp dims = <cnp.npy_intp>n
    arr = cnp.PyArray_SimpleNewFromData(1, &dims, cnp.NPY_UINT8, p)
    cnp.set_array_base(arr, PyCapsule_New(p, NULL, _free_capsule))
    return arr


cdef void _fold_http(void *table, const dk_pkt *pkts, Py_ssize_t n, const uint8_t *payload,
                     Py_ssize_t payload_len) noexcept nogil:
    (<ConnTable>table)._add(pkts, n, payload, payload_len, NULL)


cdef void _fold_headers(void *table, const dk_pkt *pkts, Py_ssize_t n, const uint8_t *payload,
                        Py_ssize_t payload_len) noexcept nogil:
    (<ConnTable>table)._add(pkts, n, NULL, 0, NULL)


cdef void _fold_filtered(void *filtered, const dk_pkt *pkts, Py_ssize_t n, const uint8_t *payload,
                         Py_ssize_t payload_len) noexcept nogil:
    (<_Filtered>filtered).fold(pkts, n, payload if (<_Filtered>filtered).http else NULL, payload_len)


cdef enum:
    # packets judged and folded per step (the scratch arrays' rows): 72 KiB of them per
    # filtered interface, whatever the batch
    FILTER_STEP = 8192


cdef class _Filtered:
    """A netlog_blacklist evaluated in user space (ConnFilter, dkebpf/
    netlog/conn_filter.py) applied to a ConnTable's input without the GIL:
    each step of packets is looked up in the filter's VerdictCache (one
    hash lookup per packet of a judged connection) and folded but for the
    dropped ones. Only when connections are new, or judged before the pods
    last changed, is the GIL taken, once per step, for the filter to judge
    them (their pod names are Python's); the fold then goes on. An error
    there stops the folding (the rest of the call's packets are not
    folded) and is raised once the call is back (raise_error)."""
    cdef void *table                  # the ConnTable calling (set by ConnTable._filter for each call)
    cdef VerdictCache cache
    cdef readonly object owner        # the ConnFilter
    cdef object settle                # owner.settle(entries, generation)
    cdef uint32_t generation          # the pods' generation the call judges at
    cdef bint http                    # fold_ring: payload to the table
    cdef object _slots, _todo, _keep  # scratch, FILTER_STEP rows (held: the pointers below stay valid)
    cdef int32_t *slots
    cdef int32_t *todo
    cdef uint8_t *keep
    cdef Py_ssize_t step
    cdef object error
    cdef bint failed

    def __cinit__(self, conn_filter):
        self.owner = conn_filter
        self.cache = conn_filter.cache
        self.settle = conn_filter.settle
        self.step = min(<Py_ssize_t>self.cache.max_cap, FILTER_STEP)
        self._slots = np.empty(self.step, np.int32)
        self._todo = np.empty(self.step, np.int32)
        self._keep = np.empty(self.step, np.uint8)
        self.slots = <int32_t *>cnp.PyArray_DATA(self._slots)
        self.todo = <int32_t *>cnp.PyArray_DATA(self._todo)
        self.keep = <uint8_t *>cnp.PyArray_DATA(self._keep)

    cdef void fold(self, const dk_pkt *p, Py_ssize_t n, const uint8_t *pay, Py_ssize_t pay_len) noexcept nogil:
        cdef Py_ssize_t i = 0, m, ntodo
        while i < n and not self.failed:
            m = n - i if n - i < self.step else self.step
            ntodo = self.cache.judge(p + i, m, self.generation, self.slots, self.todo)
            if ntodo:
                with gil:
                    self._settle(ntodo)
                if self.failed:
                    return
            self.cache.mark(self.slots, m, self.keep)
            (<ConnTable>self.table)._add(p + i, m, pay, pay_len, self.keep)
            i += m

    cdef void _settle(self, Py_ssize_t ntodo) noexcept:
        try:
            if ntodo < 0:
                raise MemoryError("netlog_blacklist: the verdict cache cannot grow")
            self.settle(self._todo[:ntodo].copy(), self.generation)
        except BaseException as exc:
            self.error = exc
            self.failed = True

    def raise_error(self):
        """What stopped the last call, raised (once)."""
        exc, self.error, self.failed = self.error, None, False
        if exc is not None:
            raise exc


cdef extern from "<sched.h>" nogil:
    enum:
        CLONE_NEWNET
    int setns(int fd, int nstype)


def enter_netns(int fd, what="network namespace"):
    """Move the calling thread into the network namespace open at fd
    (setns(2) changes only this thread: sockets created now belong to that
    namespace and stay there). Errors through errors.kernel_error."""
    if setns(fd, CLONE_NEWNET) != 0:
        raise kernel_error(f"setns into {what}", errno)
