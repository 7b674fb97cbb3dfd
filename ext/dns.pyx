"""DNS in Cython: message parser (RFC 1035), batch parse of captured
packets (UDP, and TCP with its 2-byte length prefix), and the query/answer
pairing table. All loops run without the GIL over numpy rows
(ext/includes/dk_packet.h); no Python object per packet or message.

Names are kept in wire format (uncompressed, ASCII lower-cased: DNS names
compare case-insensitively, RFC 4343, and resolvers that randomise case,
"0x20", must not split one name into many) and turned into text once per
row when building arrow columns (names_to_arrow)."""
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memcmp, memset
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t

import numpy as np
import pyarrow as pa
cimport numpy as cnp

from dk_packet cimport *
from dk_common cimport offset_of, be16, be32
from dkebpf._records import _dtype
from dkebpf._packets import PKT_DTYPE

cnp.import_array()

cdef dk_dns_msg _m
cdef dk_dns_addr _a
cdef dk_dns_pair _r

MSG_DTYPE = _dtype("dk_dns_msg", [
    ("ts_ns", "<u8", offset_of(&_m, &_m.ts_ns)),
    ("saddr", "V16", offset_of(&_m, &_m.saddr)),
    ("daddr", "V16", offset_of(&_m, &_m.daddr)),
    ("ifindex", "<i4", offset_of(&_m, &_m.ifindex)),
    ("answers_off", "<u4", offset_of(&_m, &_m.answers_off)),
    ("answers_n", "<u2", offset_of(&_m, &_m.answers_n)),
    ("hatype", "<u2", offset_of(&_m, &_m.hatype)),
    ("sport", "<u2", offset_of(&_m, &_m.sport)),
    ("dport", "<u2", offset_of(&_m, &_m.dport)),
    ("id", "<u2", offset_of(&_m, &_m.id)),
    ("qtype", "<u2", offset_of(&_m, &_m.qtype)),
    ("qname_len", "<u2", offset_of(&_m, &_m.qname_len)),
    ("family", "u1", offset_of(&_m, &_m.family)),
    ("proto", "u1", offset_of(&_m, &_m.proto)),
    ("pkttype", "u1", offset_of(&_m, &_m.pkttype)),
    ("qr", "u1", offset_of(&_m, &_m.qr)),
    ("opcode", "u1", offset_of(&_m, &_m.opcode)),
    ("rcode", "u1", offset_of(&_m, &_m.rcode)),
    ("qname", "V256", offset_of(&_m, &_m.qname)),
], sizeof(dk_dns_msg))

ADDR_DTYPE = _dtype("dk_dns_addr", [
    ("msg", "<u4", offset_of(&_a, &_a.msg)),
    ("ttl", "<u4", offset_of(&_a, &_a.ttl)),
    ("family", "u1", offset_of(&_a, &_a.family)),
    ("addr", "V16", offset_of(&_a, &_a.addr)),
], sizeof(dk_dns_addr))

PAIR_DTYPE = _dtype("dk_dns_pair", [
    ("ts_ns", "<u8", offset_of(&_r, &_r.ts_ns)),
    ("latency_ns", "<u8", offset_of(&_r, &_r.latency_ns)),
    ("caddr", "V16", offset_of(&_r, &_r.caddr)),
    ("saddr", "V16", offset_of(&_r, &_r.saddr)),
    ("cport", "<u2", offset_of(&_r, &_r.cport)),
    ("sport", "<u2", offset_of(&_r, &_r.sport)),
    ("qtype", "<u2", offset_of(&_r, &_r.qtype)),
    ("qname_len", "<u2", offset_of(&_r, &_r.qname_len)),
    ("id", "<u2", offset_of(&_r, &_r.id)),
    ("rcode", "<i2", offset_of(&_r, &_r.rcode)),
    ("family", "u1", offset_of(&_r, &_r.family)),
    ("proto", "u1", offset_of(&_r, &_r.proto)),
    ("qname", "V256", offset_of(&_r, &_r.qname)),
], sizeof(dk_dns_pair))

cdef enum:
    TYPE_A = 1
    TYPE_CNAME = 5
    TYPE_AAAA = 28
    CHAIN_MAX = 8        # CNAME hops followed from the question name
    MAX_JUMPS = 127      # a 255-byte name has at most 127 labels, so at most 127 pointers
    RCODE_TIMEOUT = -1
    IPPROTO_TCP_T = 6
DNS_PORT = 53
TIMEOUT_RCODE = RCODE_TIMEOUT


cdef int read_name(const uint8_t *m, uint32_t n, uint32_t pos, uint8_t *out, uint16_t *out_len,
                   uint32_t *after) noexcept nogil:
    """The name at m[pos] into out (wire format, lower-cased, at most 255
    bytes). *after is where the record continues. Compression pointers
    (RFC 1035 4.1.4) must point strictly before where the current run of
    labels began: every jump goes lower, so no loop is possible; the jump
    count is bounded as well. Returns 0, or -1 on a malformed name."""
    cdef uint32_t p = pos, limit = pos, o = 0, jumps = 0, target, i
    cdef uint8_t c, ch
    cdef bint jumped = False
    while True:
        if p >= n:
            return -1
        c = m[p]
        if (c & 0xC0) == 0xC0:
            if p + 1 >= n:
                return -1
            target = ((c & 0x3F) << 8) | m[p + 1]
            if target >= limit:
                return -1
            if not jumped:
                after[0] = p + 2
                jumped = True
            jumps += 1
            if jumps > MAX_JUMPS:
                return -1
            limit = target
            p = target
            continue
        if c & 0xC0:        # 0x40 / 0x80: extended and reserved label types
            return -1
        if c == 0:
            out[o] = 0
            out_len[0] = o + 1
            if not jumped:
                after[0] = p + 1
            return 0
        if o + 1 + c + 1 > 255 or p + 1 + c > n:
            return -1
        out[o] = c
        for i in range(c):
            ch = m[p + 1 + i]
            out[o + 1 + i] = ch + 32 if 65 <= ch <= 90 else ch
        o += 1 + c
        p += 1 + c


cdef int parse_message(const uint8_t *m, uint32_t n, dk_dns_msg *msg, dk_dns_addr *ans,
                       uint32_t max_ans, uint32_t *n_ans) noexcept nogil:
    """Header, first question, and the A/AAAA answers whose owner is the
    question name or a name it is a CNAME of (followed up to CHAIN_MAX
    names). msg's header/question members are set; A/AAAA rows go to ans
    (at most max_ans; *n_ans of them). Returns 0, or -1 when malformed:
    any part of the header, the questions or the answer section that does
    not fit or does not parse."""
    cdef uint16_t flags, qd, an, typ, cls, rdlen, tmp_len, i, k
    cdef uint32_t pos, after = 0, ttl
    cdef uint8_t tmp[256]
    cdef uint8_t chain[CHAIN_MAX][256]
    cdef uint16_t chain_len[CHAIN_MAX]
    cdef int n_chain = 1
    cdef bint on_chain
    n_ans[0] = 0
    if n < 12:
        return -1
    msg.id = be16(m)
    flags = be16(m + 2)
    msg.qr = flags >> 15
    msg.opcode = (flags >> 11) & 0x0F
    msg.rcode = flags & 0x0F
    qd = be16(m + 4)
    an = be16(m + 6)
    if qd == 0:
        return -1
    if read_name(m, n, 12, msg.qname, &msg.qname_len, &after) < 0:
        return -1
    pos = after
    if pos + 4 > n:
        return -1
    msg.qtype = be16(m + pos)
    pos += 4
    for i in range(1, qd):
        if read_name(m, n, pos, tmp, &tmp_len, &after) < 0 or after + 4 > n:
            return -1
        pos = after + 4
    memcpy(chain[0], msg.qname, msg.qname_len)
    chain_len[0] = msg.qname_len
    for i in range(an):
        if read_name(m, n, pos, tmp, &tmp_len, &after) < 0:
            return -1
        pos = after
        if pos + 10 > n:
            return -1
        typ = be16(m + pos)
        cls = be16(m + pos + 2)
        ttl = be32(m + pos + 4)
        rdlen = be16(m + pos + 8)
        pos += 10
        if pos + rdlen > n:
            return -1
        on_chain = False
        for k in range(n_chain):
            if chain_len[k] == tmp_len and memcmp(chain[k], tmp, tmp_len) == 0:
                on_chain = True
                break
        if typ == TYPE_CNAME:
            if read_name(m, n, pos, tmp, &tmp_len, &after) < 0 or after > pos + rdlen:
                return -1
            if on_chain and n_chain < CHAIN_MAX:
                memcpy(chain[n_chain], tmp, tmp_len)
                chain_len[n_chain] = tmp_len
                n_chain += 1
        elif (typ == TYPE_A or typ == TYPE_AAAA) and cls == 1:
            if rdlen != (4 if typ == TYPE_A else 16):
                return -1
            if on_chain and n_ans[0] < max_ans:
                ans[n_ans[0]].ttl = ttl
                ans[n_ans[0]].family = 4 if typ == TYPE_A else 6
                memset(ans[n_ans[0]].addr, 0, 16)
                memcpy(ans[n_ans[0]].addr, m + pos, rdlen)
                n_ans[0] += 1
        pos += rdlen
    return 0


def parse(bytes data):
    """One message (tests, benchmarks): None when malformed, else a dict
    with id, qr, opcode, rcode, qname (wire bytes), qtype and answers
    [(family, address bytes (4 or 16), ttl)]."""
    cdef dk_dns_msg msg
    cdef dk_dns_addr ans[512]
    cdef uint32_t n_ans = 0, i
    cdef int rc
    cdef const uint8_t *p = <const uint8_t *>data
    cdef uint32_t n = len(data)
    with nogil:
        rc = parse_message(p, n, &msg, ans, 512, &n_ans)
    if rc < 0:
        return None
    return {"id": msg.id, "qr": msg.qr, "opcode": msg.opcode, "rcode": msg.rcode,
            "qname": bytes(msg.qname[:msg.qname_len]), "qtype": msg.qtype,
            "answers": [(ans[i].family, bytes(ans[i].addr[:4 if ans[i].family == 4 else 16]), ans[i].ttl)
                        for i in range(n_ans)]}


def parse_many(list messages):
    """Parse each message of a list; returns the number that parsed (for
    the benchmark: the per-message cost without Python objects out)."""
    cdef dk_dns_msg msg
    cdef dk_dns_addr ans[512]
    cdef uint32_t n_ans
    cdef Py_ssize_t ok = 0
    cdef bytes b
    for b in messages:
        if parse_message(<const uint8_t *>b, len(b), &msg, ans, 512, &n_ans) == 0:
            ok += 1
    return ok


def parse_packets(pkts, payload):
    """Captured packets (PKT_DTYPE rows + payload bytes, from
    dkebpf._packets) -> (msgs MSG_DTYPE, addrs ADDR_DTYPE, counts dict).

    UDP: one message per datagram. TCP (RFC 1035 4.2.2, RFC 7766): each
    message is preceded by its 2-byte length; every message that lies
    whole in one segment is parsed (several per segment are fine). A
    message split over segments is counted in tcp_partial and not
    parsed: DNS clients write query and length together and answers of
    usual size fit one segment (loopback segments are up to 64 KiB)."""
    pkts = np.ascontiguousarray(pkts, dtype=PKT_DTYPE)
    payload = np.ascontiguousarray(payload, dtype=np.uint8)
    cdef Py_ssize_t npk = len(pkts), i
    cdef Py_ssize_t plen = len(payload)
    # a message takes at least 2 + 17 bytes on TCP, an A record at least 16
    cdef Py_ssize_t cap_msgs = npk + plen // 19 + 1
    cdef Py_ssize_t cap_addrs = plen // 16 + 1
    msgs = np.empty(cap_msgs, MSG_DTYPE)
    addrs = np.empty(cap_addrs, ADDR_DTYPE)
    cdef dk_pkt *pk = <dk_pkt *>cnp.PyArray_DATA(pkts)
    cdef const uint8_t *pay = <const uint8_t *>cnp.PyArray_DATA(payload)
    cdef dk_dns_msg *out = <dk_dns_msg *>cnp.PyArray_DATA(msgs)
    cdef dk_dns_addr *ad = <dk_dns_addr *>cnp.PyArray_DATA(addrs)
    cdef Py_ssize_t nm = 0, na = 0
    cdef uint32_t n_ans, pos, mlen, seglen, k
    cdef const uint8_t *seg
    cdef uint64_t malformed = 0, tcp_partial = 0, truncated = 0, empty = 0
    for i in range(npk):
        if <Py_ssize_t>pk[i].payload_off + pk[i].payload_len > plen:
            raise ValueError(f"packet {i}: payload outside the buffer")
    with nogil:
        for i in range(npk):
            seg = pay + pk[i].payload_off
            seglen = pk[i].payload_len
            if seglen == 0:
                empty += 1    # TCP handshake, ACKs: no DNS bytes
                continue
            if seglen < pk[i].payload_wire:
                truncated += 1
                continue
            pos = 0
            while pos < seglen:
                if pk[i].proto == IPPROTO_TCP_T:
                    if pos + 2 > seglen:
                        tcp_partial += 1
                        break
                    mlen = be16(seg + pos)
                    pos += 2
                    if pos + mlen > seglen:
                        tcp_partial += 1
                        break
                else:
                    mlen = seglen
                if parse_message(seg + pos, mlen, &out[nm], ad + na, <uint32_t>(cap_addrs - na),
                                 &n_ans) == 0:
                    out[nm].ts_ns = pk[i].ts_ns
                    memcpy(out[nm].saddr, pk[i].saddr, 16)
                    memcpy(out[nm].daddr, pk[i].daddr, 16)
                    out[nm].ifindex = pk[i].ifindex
                    out[nm].hatype = pk[i].hatype
                    out[nm].sport = pk[i].sport
                    out[nm].dport = pk[i].dport
                    out[nm].family = pk[i].family
                    out[nm].proto = pk[i].proto
                    out[nm].pkttype = pk[i].pkttype
                    out[nm].answers_off = na
                    out[nm].answers_n = n_ans
                    for k in range(n_ans):
                        ad[na + k].msg = nm
                    na += n_ans
                    nm += 1
                else:
                    malformed += 1
                pos += mlen
    return msgs[:nm], addrs[:na], {"malformed": malformed, "tcp_partial": tcp_partial,
                                   "truncated": truncated, "empty": empty}


def name_text(bytes wire):
    """Presentation form of a wire-format name (see names_to_arrow)."""
    arr = np.zeros(1, [("qname", "V256"), ("qname_len", "<u2")])
    arr["qname"][0] = wire + bytes(256 - len(wire))
    arr["qname_len"][0] = len(wire)
    return names_to_arrow(arr["qname"], arr["qname_len"])[0].as_py()


cdef Py_ssize_t _name_text(const uint8_t *w, uint32_t L, uint8_t *d) noexcept nogil:
    """Text of one wire name into d (when not NULL); returns its length."""
    cdef Py_ssize_t total = 0
    cdef uint32_t p = 0, j, c
    cdef uint8_t ch
    if L > 256:
        L = 256
    if L <= 1:
        if d != NULL:
            d[0] = 46   # '.'
        return 1
    while p < L and w[p] != 0:
        c = w[p]
        if p > 0:
            if d != NULL:
                d[total] = 46
            total += 1
        for j in range(c):
            if p + 1 + j >= L:
                break
            ch = w[p + 1 + j]
            if 0x21 <= ch <= 0x7E and ch != 46 and ch != 92:
                if d != NULL:
                    d[total] = ch
                total += 1
            else:
                if d != NULL:
                    d[total] = 92
                    d[total + 1] = 48 + ch // 100
                    d[total + 2] = 48 + (ch // 10) % 10
                    d[total + 3] = 48 + ch % 10
                total += 4
        p += 1 + c
    return total


def names_to_arrow(names, lens):
    """Wire-format names ('V256' rows + lengths) -> pa.StringArray, built
    from one offsets and one data buffer. Labels are joined with '.', no
    trailing dot ('.' for the root); bytes outside printable ASCII and the
    characters '.' and '\\' inside a label are written \\DDD, as in zone
    files (RFC 1035 5.1), so a label can never forge a dot."""
    names = np.ascontiguousarray(names)
    lens = np.ascontiguousarray(lens, dtype=np.uint16)
    cdef Py_ssize_t n = len(names), i, total = 0
    cdef const uint8_t *src = <const uint8_t *>cnp.PyArray_DATA(names)
    cdef const uint16_t *ln = <const uint16_t *>cnp.PyArray_DATA(lens)
    cdef Py_ssize_t stride = names.dtype.itemsize
    if stride != 256 or len(lens) != n:
        raise ValueError("names must be 'V256' rows with one length each")
    offsets = np.empty(n + 1, np.int32)
    cdef cnp.int32_t *off = <cnp.int32_t *>cnp.PyArray_DATA(offsets)
    cdef Py_ssize_t size = 0
    with nogil:   # first pass: the exact size of the text
        for i in range(n):
            size += _name_text(src + i * stride, ln[i], NULL)
    data = np.empty(size + 1, np.uint8)
    cdef uint8_t *d = <uint8_t *>cnp.PyArray_DATA(data)
    with nogil:
        for i in range(n):
            off[i] = total
            total += _name_text(src + i * stride, ln[i], d + total)
        off[n] = total
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


# ---------------------------------------------------------------- pairing

cdef struct pkey:          # 40 bytes, no padding: hashed and compared whole
    uint8_t caddr[16]
    uint8_t saddr[16]
    uint16_t cport
    uint16_t sport
    uint16_t id
    uint8_t family
    uint8_t proto

cdef struct slot:
    pkey key
    uint64_t ts_ns
    uint16_t qtype
    uint16_t qname_len
    uint8_t state          # 0 empty, 1 used, 2 deleted
    uint8_t qname[256]

cdef enum:
    EMPTY = 0
    USED = 1
    DELETED = 2


cdef inline uint64_t _hash(const pkey *k) noexcept nogil:
    # FNV-1a over the 40 key bytes
    cdef const uint8_t *b = <const uint8_t *>k
    cdef uint64_t h = 14695981039346656037ULL
    cdef size_t i
    for i in range(sizeof(pkey)):
        h = (h ^ b[i]) * 1099511628211ULL
    return h ^ (h >> 29)


cdef class PairTable:
    """Pending queries keyed on (transaction id, transport, client address
    and port, server address and port), as the original collector does.
    A query whose key is already pending (a retransmission) keeps the
    first one's time; an answer with no pending query is counted and
    dropped; a query still unanswered `timeout_ns` after it was sent
    leaves as rcode -1 with latency 0 -- at expire(), or when its answer
    comes that late (the answer may still fill the domain cache). At most `capacity` queries wait; beyond that
    new ones are counted in dropped_full. Open addressing with linear
    probing over 2 x capacity slots, rebuilt when deletions pile up."""
    cdef slot *slots
    cdef uint32_t nslots, mask, capacity, used, deleted
    cdef uint64_t timeout_ns
    cdef object out
    cdef Py_ssize_t n_out
    cdef readonly uint64_t queries, answers, paired, duplicates, unmatched, dropped_full, timeouts, other_opcode

    def __cinit__(self, uint32_t capacity=16384, uint64_t timeout_ns=6_000_000_000):
        if capacity < 1 or capacity > (1 << 24):
            raise ValueError("capacity must be 1..16M")
        if timeout_ns == 0:
            raise ValueError("timeout_ns must be positive")
        self.capacity = capacity
        self.timeout_ns = timeout_ns
        self.nslots = 4
        while self.nslots < 2 * capacity:
            self.nslots <<= 1
        self.mask = self.nslots - 1
        self.slots = <slot *>calloc(self.nslots, sizeof(slot))
        if self.slots == NULL:
            raise MemoryError()
        self.out = np.empty(256, PAIR_DTYPE)
        self.n_out = 0

    def __dealloc__(self):
        free(self.slots)

    @property
    def pending(self):
        return self.used

    @property
    def finished(self):
        """Finished exchanges waiting for take()."""
        return self.n_out

    cdef void _reserve(self, Py_ssize_t more):
        if self.n_out + more > len(self.out):
            grown = np.empty(max(2 * len(self.out), self.n_out + more), PAIR_DTYPE)
            grown[:self.n_out] = self.out[:self.n_out]
            self.out = grown

    cdef slot *_find(self, const pkey *k) noexcept nogil:
        cdef uint32_t i = _hash(k) & self.mask
        while self.slots[i].state != EMPTY:
            if self.slots[i].state == USED and memcmp(&self.slots[i].key, k, sizeof(pkey)) == 0:
                return &self.slots[i]
            i = (i + 1) & self.mask
        return NULL

    cdef slot *_free_slot(self, const pkey *k) noexcept nogil:
        cdef uint32_t i = _hash(k) & self.mask
        while self.slots[i].state == USED:
            i = (i + 1) & self.mask
        return &self.slots[i]

    cdef int _rebuild(self) noexcept nogil:
        """Re-insert the pending queries into clean slots (drops the
        deleted markers that make probes long)."""
        cdef slot *old = self.slots
        cdef slot *s
        cdef uint32_t i
        cdef slot *fresh = <slot *>calloc(self.nslots, sizeof(slot))
        if fresh == NULL:
            return -1
        self.slots = fresh
        for i in range(self.nslots):
            if old[i].state == USED:
                s = self._free_slot(&old[i].key)
                s[0] = old[i]
        free(old)
        self.deleted = 0
        return 0

    cdef void _emit(self, dk_dns_pair *r, const slot *s, uint64_t latency, int16_t rcode) noexcept nogil:
        r.ts_ns = s.ts_ns
        r.latency_ns = latency
        memcpy(r.caddr, s.key.caddr, 16)
        memcpy(r.saddr, s.key.saddr, 16)
        r.cport = s.key.cport
        r.sport = s.key.sport
        r.id = s.key.id
        r.family = s.key.family
        r.proto = s.key.proto
        r.qtype = s.qtype
        r.rcode = rcode
        r.qname_len = s.qname_len
        memcpy(r.qname, s.qname, s.qname_len)
        memset(r.qname + s.qname_len, 0, 256 - s.qname_len)

    def add(self, msgs):
        """Feed parsed messages in capture order. Returns a uint8 array,
        1 where the message is an answer that completed a pair (its A/AAAA
        rows may be trusted: it answers a query this host saw)."""
        msgs = np.ascontiguousarray(msgs, dtype=MSG_DTYPE)
        cdef Py_ssize_t n = len(msgs), i
        self._reserve(n)
        completed = np.zeros(n, np.uint8)
        cdef uint8_t *done = <uint8_t *>cnp.PyArray_DATA(completed)
        cdef const dk_dns_msg *m = <const dk_dns_msg *>cnp.PyArray_DATA(msgs)
        cdef dk_dns_pair *out = <dk_dns_pair *>cnp.PyArray_DATA(self.out)
        cdef pkey k
        cdef slot *s
        cdef uint64_t latency
        with nogil:
            for i in range(n):
                if m[i].opcode != 0:      # NOTIFY, UPDATE...: not a lookup
                    self.other_opcode += 1
                    continue
                memset(&k, 0, sizeof(k))
                k.id = m[i].id
                k.family = m[i].family
                k.proto = m[i].proto
                if m[i].qr == 0:
                    self.queries += 1
                    memcpy(k.caddr, m[i].saddr, 16)
                    memcpy(k.saddr, m[i].daddr, 16)
                    k.cport = m[i].sport
                    k.sport = m[i].dport
                    if self._find(&k) != NULL:
                        self.duplicates += 1
                        continue
                    if self.used >= self.capacity:
                        self.dropped_full += 1
                        continue
                    if self.used + self.deleted + 1 > self.nslots * 3 // 4:
                        self._rebuild()
                    s = self._free_slot(&k)
                    if s.state == DELETED:
                        self.deleted -= 1
                    s.key = k
                    s.state = USED
                    s.ts_ns = m[i].ts_ns
                    s.qtype = m[i].qtype
                    s.qname_len = m[i].qname_len
                    memcpy(s.qname, m[i].qname, m[i].qname_len)
                    self.used += 1
                else:
                    self.answers += 1
                    memcpy(k.caddr, m[i].daddr, 16)
                    memcpy(k.saddr, m[i].saddr, 16)
                    k.cport = m[i].dport
                    k.sport = m[i].sport
                    s = self._find(&k)
                    if s == NULL:
                        self.unmatched += 1
                        continue
                    latency = m[i].ts_ns - s.ts_ns if m[i].ts_ns > s.ts_ns else 0
                    if latency >= self.timeout_ns:
                        self._emit(&out[self.n_out], s, 0, RCODE_TIMEOUT)
                        self.timeouts += 1
                    else:
                        self._emit(&out[self.n_out], s, latency, m[i].rcode)
                        self.paired += 1
                    self.n_out += 1
                    s.state = DELETED
                    self.used -= 1
                    self.deleted += 1
                    done[i] = 1
        return completed

    def expire(self, uint64_t now_ns):
        """Queries sent at or before now - timeout_ns leave with rcode -1."""
        cdef uint64_t timeout_ns = self.timeout_ns
        self._reserve(self.used)
        cdef dk_dns_pair *out = <dk_dns_pair *>cnp.PyArray_DATA(self.out)
        cdef uint32_t i
        cdef uint64_t gone = 0
        with nogil:
            for i in range(self.nslots):
                if self.slots[i].state == USED and self.slots[i].ts_ns + timeout_ns <= now_ns:
                    self._emit(&out[self.n_out], &self.slots[i], 0, RCODE_TIMEOUT)
                    self.n_out += 1
                    self.slots[i].state = DELETED
                    self.used -= 1
                    self.deleted += 1
                    gone += 1
            if self.deleted > self.nslots // 4:
                self._rebuild()
        self.timeouts += gone
        return gone

    def take(self):
        """Finished exchanges since the last take(), as PAIR_DTYPE rows."""
        res = self.out[:self.n_out].copy()
        self.n_out = 0
        return res

    def counters(self):
        return {"queries": self.queries, "answers": self.answers, "paired": self.paired,
                "duplicate_queries": self.duplicates, "unmatched_answers": self.unmatched,
                "pending_full": self.dropped_full, "timeouts": self.timeouts,
                "other_opcode": self.other_opcode, "pending": self.used}
