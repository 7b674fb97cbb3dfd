"""netlog_blacklist per connection: the statements classic BPF cannot run
(Kubernetes fields, text functions on addresses) and, for packets the
kernel program leaves to user space, all of them.

A statement is encoded once into a small stack program (four int32 per
instruction); ``ConnFilter.verdicts`` runs it over a numpy array of
connections with the GIL released and returns, per connection, the index of
the first statement that is true, or -1. Strings never sit on the stack:
the checker only lets fields and literals be strings, so string operations
name their operands directly. Names (interface, pods, namespaces) are ids
into a ``StringTable``, interned once per distinct name, not per packet.

``VerdictCache`` keeps the verdict per connection of one interface: a
packet of a connection whose verdict was computed at the current
Kubernetes generation costs one hash lookup; only new connections, and
those whose verdict predates a change of the pods, are evaluated again."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcmp, memcpy, memset, strlen

import numpy as np
cimport numpy as cnp

from sysio cimport AF_INET, AF_INET6, INET6_ADDRSTRLEN, inet_ntop
from dk_common cimport conn_key_hash, offset_of
from dk_packet cimport dk_pkt
from dkebpf._packets import PKT_DTYPE
from dkebpf._records import _dtype
from dkebpf.netlog.filter import Call, Field, Lit, Not, network_contains, parse_network

cnp.import_array()

cdef extern from "<linux/if_packet.h>":
    enum:
        PACKET_OUTGOING

cdef nf_conn _c
CONN_DTYPE = _dtype("nf_conn", [
    ("laddr", "V16", offset_of(&_c, &_c.laddr)),
    ("raddr", "V16", offset_of(&_c, &_c.raddr)),
    ("vni", "<u4", offset_of(&_c, &_c.vni)),
    ("nic", "<u4", offset_of(&_c, &_c.nic)),
    ("src_pod", "<u4", offset_of(&_c, &_c.src_pod)),
    ("dst_pod", "<u4", offset_of(&_c, &_c.dst_pod)),
    ("src_ns", "<u4", offset_of(&_c, &_c.src_ns)),
    ("dst_ns", "<u4", offset_of(&_c, &_c.dst_ns)),
    ("lport", "<u2", offset_of(&_c, &_c.lport)),
    ("rport", "<u2", offset_of(&_c, &_c.rport)),
    ("family", "u1", offset_of(&_c, &_c.family)),
    ("proto", "u1", offset_of(&_c, &_c.proto)),
], sizeof(nf_conn))

# the CONN_DTYPE column holding each name field's StringTable id
NAME_COLUMNS = {"nic_name": "nic", "k8s_src_pod": "src_pod", "k8s_dst_pod": "dst_pod",
                "k8s_src_namespace": "src_ns", "k8s_dst_namespace": "dst_ns"}

cdef enum Op:
    OP_PUSH = 1       # a: index of an int64 constant
    OP_INT_FIELD      # a: F_* code
    OP_NOT
    OP_CMP            # a: C_* code; pops right then left
    OP_AND            # a: target; top false: jump keeping it, else pop
    OP_OR             # a: target; top true: jump keeping it, else pop
    OP_STR_EQ         # a, b: string operands
    OP_PREFIX
    OP_SUFFIX
    OP_IPNET          # a: network index, b: address field (S_* code)
    OP_END            # a: statement index; pops, true ends the run

cdef enum IntField:
    F_LPORT = 0
    F_RPORT
    F_VNI
    F_TCP
    F_UDP
    F_IPV4
    F_IPV6

cdef enum StrField:
    S_IP_SADDR = 0
    S_IP_DADDR
    S_IP6_SADDR
    S_IP6_DADDR
    S_NIC
    S_SRC_POD
    S_DST_POD
    S_SRC_NS
    S_DST_NS

cdef enum Cmp:
    C_EQ = 0
    C_NE
    C_LT
    C_LE
    C_GT
    C_GE

_INT_FIELDS = {"src_port": F_LPORT, "dst_port": F_RPORT, "vni": F_VNI, "tcp": F_TCP,
               "udp": F_UDP, "ipv4": F_IPV4, "ipv6": F_IPV6}
_STR_FIELDS = {"ip_saddr": S_IP_SADDR, "ip_daddr": S_IP_DADDR, "ip6_saddr": S_IP6_SADDR,
               "ip6_daddr": S_IP6_DADDR, "nic_name": S_NIC, "k8s_src_pod": S_SRC_POD,
               "k8s_dst_pod": S_DST_POD, "k8s_src_namespace": S_SRC_NS,
               "k8s_dst_namespace": S_DST_NS}
_CMPS = {"==": C_EQ, "!=": C_NE, "<": C_LT, "<=": C_LE, ">": C_GT, ">=": C_GE}


cdef class StringTable:
    """Interned names: id 0 is "", others are handed out in order. The
    bytes live in one C buffer read without the GIL."""
    cdef char *data
    cdef uint32_t *offs      # offs[i], offs[i + 1]: where name i starts and ends
    cdef Py_ssize_t used, cap, n, ncap
    cdef dict ids

    def __cinit__(self):
        self.data = NULL
        self.offs = <uint32_t *>malloc(2 * sizeof(uint32_t))
        if self.offs == NULL:
            raise MemoryError()
        self.offs[0] = self.offs[1] = 0
        self.used = self.cap = 0
        self.n, self.ncap = 1, 1
        self.ids = {b"": 0}

    def __dealloc__(self):
        free(self.data)
        free(self.offs)

    def __len__(self):
        return self.n

    def intern(self, name):
        """The id of name (str or bytes), added on first use."""
        cdef bytes b = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
        got = self.ids.get(b)
        if got is not None:
            return got
        cdef Py_ssize_t ln = len(b)
        cdef void *p
        if self.used + ln > 0xFFFFFFFF:
            raise OverflowError("string table is full (4 GiB)")
        if self.used + ln > self.cap:
            self.cap = max(2 * self.cap, self.used + ln, 4096)
            p = realloc(self.data, self.cap)
            if p == NULL:
                raise MemoryError()
            self.data = <char *>p
        if self.n + 1 > self.ncap:
            self.ncap = 2 * self.ncap + 16
            p = realloc(self.offs, (self.ncap + 1) * sizeof(uint32_t))
            if p == NULL:
                raise MemoryError()
            self.offs = <uint32_t *>p
        memcpy(self.data + self.used, <const char *>b, ln)
        self.used += ln
        self.offs[self.n + 1] = <uint32_t>self.used
        self.ids[b] = self.n
        self.n += 1
        return self.n - 1

    def get(self, Py_ssize_t i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.data[self.offs[i]:self.offs[i + 1]] if self.offs[i + 1] > self.offs[i] else b""


cdef inline int64_t int_field(const nf_conn *c, int32_t f) noexcept nogil:
    if f == F_LPORT:
        return c.lport
    if f == F_RPORT:
        return c.rport
    if f == F_VNI:
        return c.vni
    if f == F_TCP:
        return c.proto == 6
    if f == F_UDP:
        return c.proto == 17
    if f == F_IPV4:
        return c.family == 4
    return c.family == 6


cdef inline int64_t compare(int32_t op, int64_t l, int64_t r) noexcept nogil:
    if op == C_EQ:
        return l == r
    if op == C_NE:
        return l != r
    if op == C_LT:
        return l < r
    if op == C_LE:
        return l <= r
    if op == C_GT:
        return l > r
    return l >= r


cdef struct Text:
    const char *p
    Py_ssize_t n


cdef class ConnFilter:
    """The given statements (``filter.Statement``s, each checked), run in
    order. ``statements`` keeps them, ``verdicts`` returns indexes into it."""
    cdef int32_t *code
    cdef Py_ssize_t ncode, depth
    cdef int64_t *ints
    cdef char *lits
    cdef uint32_t *lit_offs
    cdef uint8_t *nets         # 18 bytes each: family, prefix, address
    cdef readonly tuple statements
    cdef list _ints, _lits, _nets, _code
    cdef Py_ssize_t _depth, _max

    def __cinit__(self):
        self.code = NULL
        self.ints = NULL
        self.lits = NULL
        self.lit_offs = NULL
        self.nets = NULL

    def __init__(self, statements):
        self.statements = tuple(statements)
        self._ints, self._lits, self._nets, self._code = [], [], [], []
        self._depth = self._max = 0
        for i, st in enumerate(self.statements):
            self._encode(st.expr)
            self._emit(OP_END, i, 0, -1)
        self.ncode = len(self._code)
        self.depth = self._max + 1
        self.code = <int32_t *>malloc(max(1, self.ncode) * 4 * sizeof(int32_t))
        self.ints = <int64_t *>malloc(max(1, len(self._ints)) * sizeof(int64_t))
        lit_bytes = b"".join(self._lits)
        self.lits = <char *>malloc(max(1, len(lit_bytes)))
        self.lit_offs = <uint32_t *>malloc((len(self._lits) + 1) * sizeof(uint32_t))
        self.nets = <uint8_t *>malloc(max(1, len(self._nets)) * 18)
        if not (self.code and self.ints and self.lits and self.lit_offs and self.nets):
            raise MemoryError()
        for k, ins in enumerate(self._code):
            for j in range(4):
                self.code[4 * k + j] = ins[j]
        for k, v in enumerate(self._ints):
            self.ints[k] = v
        memcpy(self.lits, <const char *>lit_bytes, len(lit_bytes))
        pos = 0
        self.lit_offs[0] = 0
        for k, s in enumerate(self._lits):
            pos += len(s)
            self.lit_offs[k + 1] = pos
        for k, (fam, packed, prefix) in enumerate(self._nets):
            self.nets[18 * k] = fam
            self.nets[18 * k + 1] = prefix
            for j in range(16):
                self.nets[18 * k + 2 + j] = packed[j] if j < len(packed) else 0
        self._ints = self._lits = self._nets = self._code = None

    def __dealloc__(self):
        free(self.code)
        free(self.ints)
        free(self.lits)
        free(self.lit_offs)
        free(self.nets)

    # ---- encoding (Python, once per rule set) ----

    def _emit(self, op, a=0, b=0, push=1):
        self._code.append((op, a, b, 0))
        self._depth += push
        self._max = max(self._max, self._depth)
        return len(self._code) - 1

    def _const(self, value):
        self._ints.append(int(value))
        return self._emit(OP_PUSH, len(self._ints) - 1)

    def _operand(self, node):
        """A string operand: a field code (>= 0) or -(literal index + 1)."""
        if isinstance(node, Field):
            return _STR_FIELDS[node.name]
        self._lits.append(node.value)
        return -len(self._lits)

    def _encode(self, node):
        if isinstance(node, Lit):
            if isinstance(node.value, bytes):
                raise TypeError("a string literal is not a statement operand")
            self._const(node.value)
        elif isinstance(node, Field):
            self._emit(OP_INT_FIELD, _INT_FIELDS[node.name])
        elif isinstance(node, Not):
            self._encode(node.operand)
            self._emit(OP_NOT, 0, 0, 0)
        elif isinstance(node, Call):
            a, b = node.args
            if node.name == "ipnet_contains":
                if isinstance(b, Lit):   # a constant: decided now
                    self._const(network_contains(a.value, b.value))
                else:
                    self._nets.append(parse_network(a.value))
                    self._emit(OP_IPNET, len(self._nets) - 1, _STR_FIELDS[b.name])
            else:
                op = OP_PREFIX if node.name == "has_prefix" else OP_SUFFIX
                self._emit(op, self._operand(a), self._operand(b))
        elif node.op in ("&&", "||"):
            self._encode(node.left)
            at = self._emit(OP_AND if node.op == "&&" else OP_OR, 0, 0, -1)
            self._encode(node.right)
            self._code[at] = (self._code[at][0], len(self._code), 0, 0)
        elif isinstance(node.left, Lit) and isinstance(node.left.value, bytes) or \
                isinstance(node.left, Field) and node.left.name in _STR_FIELDS:
            self._emit(OP_STR_EQ, self._operand(node.left), self._operand(node.right))
            if node.op == "!=":
                self._emit(OP_NOT, 0, 0, 0)
        else:
            self._encode(node.left)
            self._encode(node.right)
            self._emit(OP_CMP, _CMPS[node.op], 0, -1)

    # ---- evaluation ----

    cdef Text text(self, int32_t operand, const nf_conn *c, StringTable names,
                   char *buf) noexcept nogil:
        cdef Text t
        cdef uint32_t i
        cdef const uint8_t *addr
        t.p, t.n = "", 0
        if operand < 0:
            i = <uint32_t>(-operand - 1)
            t.p = self.lits + self.lit_offs[i]
            t.n = self.lit_offs[i + 1] - self.lit_offs[i]
        elif operand <= S_IP6_DADDR:
            if (operand <= S_IP_DADDR and c.family == 4) or (operand >= S_IP6_SADDR and c.family == 6):
                addr = &c.laddr[0] if operand == S_IP_SADDR or operand == S_IP6_SADDR else &c.raddr[0]
                if inet_ntop(AF_INET if c.family == 4 else AF_INET6, addr, buf, INET6_ADDRSTRLEN) != NULL:
                    t.p, t.n = buf, strlen(buf)
        else:
            if operand == S_NIC:
                i = c.nic
            elif operand == S_SRC_POD:
                i = c.src_pod
            elif operand == S_DST_POD:
                i = c.dst_pod
            elif operand == S_SRC_NS:
                i = c.src_ns
            else:
                i = c.dst_ns
            if i < names.n:
                t.p = names.data + names.offs[i]
                t.n = names.offs[i + 1] - names.offs[i]
        return t

    cdef int run(self, const nf_conn *c, StringTable names, int64_t *st) noexcept nogil:
        cdef Py_ssize_t pc = 0, sp = 0
        cdef const int32_t *ins
        cdef int64_t l, r
        cdef Text x, y
        cdef char bx[64]
        cdef char by[64]
        cdef const uint8_t *net
        cdef const uint8_t *addr
        cdef int bits, j
        while pc < self.ncode:
            ins = self.code + 4 * pc
            pc += 1
            if ins[0] == OP_PUSH:
                st[sp] = self.ints[ins[1]]
                sp += 1
            elif ins[0] == OP_INT_FIELD:
                st[sp] = int_field(c, ins[1])
                sp += 1
            elif ins[0] == OP_NOT:
                st[sp - 1] = not st[sp - 1]
            elif ins[0] == OP_CMP:
                sp -= 1
                l, r = st[sp - 1], st[sp]
                st[sp - 1] = compare(ins[1], l, r)
            elif ins[0] == OP_AND or ins[0] == OP_OR:
                if (st[sp - 1] != 0) == (ins[0] == OP_OR):
                    pc = ins[1]
                else:
                    sp -= 1
            elif ins[0] == OP_STR_EQ or ins[0] == OP_PREFIX or ins[0] == OP_SUFFIX:
                x = self.text(ins[1], c, names, bx)
                y = self.text(ins[2], c, names, by)
                if ins[0] == OP_STR_EQ:
                    st[sp] = x.n == y.n and memcmp(x.p, y.p, x.n) == 0
                elif ins[0] == OP_PREFIX:
                    st[sp] = x.n >= y.n and memcmp(x.p, y.p, y.n) == 0
                else:
                    st[sp] = x.n >= y.n and memcmp(x.p + x.n - y.n, y.p, y.n) == 0
                sp += 1
            elif ins[0] == OP_IPNET:
                net = self.nets + 18 * ins[1]
                addr = &c.laddr[0] if ins[2] == S_IP_SADDR or ins[2] == S_IP6_SADDR else &c.raddr[0]
                st[sp] = c.family == net[0] and (c.family == 4) == (ins[2] <= S_IP_DADDR)
                bits = net[1]
                j = 0
                while st[sp] and bits > 0:
                    if bits >= 8:
                        st[sp] = addr[j] == net[2 + j]
                    else:
                        st[sp] = (addr[j] ^ net[2 + j]) >> (8 - bits) == 0
                    bits -= 8
                    j += 1
                sp += 1
            else:   # OP_END
                sp -= 1
                if st[sp]:
                    return ins[1]
        return -1

    def verdicts(self, conns, StringTable names):
        """Per connection the index of the first true statement, or -1."""
        if conns.dtype != CONN_DTYPE:
            raise TypeError("conns must be an array of CONN_DTYPE")
        conns = np.ascontiguousarray(conns)
        cdef Py_ssize_t n = len(conns), i
        out = np.empty(n, np.int32)
        cdef int32_t[::1] res = out
        cdef const nf_conn *cs = <const nf_conn *>cnp.PyArray_DATA(conns)
        cdef int64_t *stack = <int64_t *>malloc(self.depth * sizeof(int64_t))
        if stack == NULL:
            raise MemoryError()
        try:
            with nogil:
                for i in range(n):
                    res[i] = self.run(&cs[i], names, stack)
        finally:
            free(stack)
        return out


cdef enum:
    GEN_QUEUED = 0xFFFFFFFF  # cache_entry.gen while lookup() has listed it for evaluation
    GEN_MASK = 0x7FFFFFFF    # generations given are taken modulo 2**31 (never GEN_QUEUED)


cdef inline uint64_t conn_hash(const nf_conn *c) noexcept nogil:
    return conn_key_hash(c.laddr, c.raddr, c.lport, c.rport, c.proto, c.vni)


cdef inline bint same_conn(const nf_conn *a, const nf_conn *b) noexcept nogil:
    return a.lport == b.lport and a.rport == b.rport and a.proto == b.proto and a.family == b.family \
        and a.vni == b.vni and memcmp(a.laddr, b.laddr, 16) == 0 and memcmp(a.raddr, b.raddr, 16) == 0


cdef class VerdictCache:
    """Verdicts per connection of one interface, keyed as the connection
    table keys them (local/remote by the packet's direction, VNI).

    ``lookup(pkts, generation)`` gives each packet its entry and lists the
    entries to evaluate (new, or judged at another generation; each once
    however many packets it has in the batch); after ``settle`` gives
    their verdicts, ``keep`` says per packet whether it stays and counts
    what is dropped. ``expire`` forgets connections idle for idle_ns.
    Holds at most ``capacity`` connections, in tables that start small and
    double as connections come (an interface of a quiet pod costs a few
    KiB): a batch that might not fit (cached connections + its packets >
    ``capacity``) empties the cache first (counted in ``resets``; the
    connections are judged again) but for the dropped connections, which
    keep their verdict so that none counts twice in dropped_connections
    (all go only when they alone leave no room for the batch)."""
    # attributes: dkebpf/_netlog_filter.pxd

    def __cinit__(self, uint32_t capacity=65536, uint32_t initial=256):
        if capacity == 0:
            raise ValueError("capacity must be positive")
        self.max_cap = capacity
        self.entries = NULL
        self.slots = NULL
        self.n = 0
        if not self._grow(min(initial, capacity)):
            raise MemoryError()

    cdef bint _grow(self, uint32_t cap) noexcept nogil:
        """Tables for cap entries (2 slots or more each), entries kept;
        False when out of memory (the tables as they were)."""
        cdef uint32_t nslots = 1
        while nslots < 2 * cap:
            nslots <<= 1
        cdef void *e = realloc(self.entries, cap * sizeof(cache_entry))
        if e == NULL:
            return False
        self.entries = <cache_entry *>e
        cdef void *sl = realloc(self.slots, nslots * sizeof(int32_t))
        if sl == NULL:
            return False
        self.slots = <int32_t *>sl
        self.cap, self.nslots = cap, nslots
        self._reindex()
        return True

    def __dealloc__(self):
        free(self.entries)
        free(self.slots)

    def __len__(self):
        return self.n

    cdef void _clear(self) noexcept nogil:
        self.n = 0
        memset(self.slots, 0xFF, self.nslots * sizeof(int32_t))

    cdef void _forget_kept(self) noexcept nogil:
        """Only the dropped connections stay."""
        cdef uint32_t i, kept = 0
        for i in range(self.n):
            if self.entries[i].verdict >= 0:
                if kept != i:
                    memcpy(&self.entries[kept], &self.entries[i], sizeof(cache_entry))
                kept += 1
        self.n = kept
        self._reindex()

    cdef void _reindex(self) noexcept nogil:
        cdef uint32_t i, s
        memset(self.slots, 0xFF, self.nslots * sizeof(int32_t))
        for i in range(self.n):
            s = conn_hash(&self.entries[i].conn) & (self.nslots - 1)
            while self.slots[s] >= 0:
                s = (s + 1) & (self.nslots - 1)
            self.slots[s] = i

    def lookup(self, pkts, uint32_t generation):
        """(entry per packet, entries to evaluate), both int32 arrays."""
        pkts = np.ascontiguousarray(pkts, dtype=PKT_DTYPE)
        cdef Py_ssize_t n = len(pkts), ntodo
        if n > self.max_cap:
            raise ValueError(f"a batch of {n} packets is more than the cache holds ({self.max_cap})")
        slots_out = np.empty(n, np.int32)
        todo_out = np.empty(n, np.int32)
        cdef const dk_pkt *p = <const dk_pkt *>cnp.PyArray_DATA(pkts)
        cdef int32_t *slot_of = <int32_t *>cnp.PyArray_DATA(slots_out)
        cdef int32_t *todo = <int32_t *>cnp.PyArray_DATA(todo_out)
        with nogil:
            ntodo = self.judge(p, n, generation, slot_of, todo)
        if ntodo < 0:
            raise MemoryError()
        return slots_out, todo_out[:ntodo].copy()

    cdef Py_ssize_t judge(self, const dk_pkt *p, Py_ssize_t n, uint32_t generation, int32_t *slot_of,
                          int32_t *todo) noexcept nogil:
        cdef Py_ssize_t i, ntodo = 0
        cdef nf_conn key
        cdef cache_entry *e
        cdef bint tx
        cdef uint32_t s
        if n > self.max_cap:
            return -1
        if self.n + n > self.cap:
            if self.n + n <= self.max_cap:
                if not self._grow(min(self.max_cap, max(2 * self.cap, <uint32_t>(self.n + n)))):
                    return -1
            else:
                self.resets += 1
                self._forget_kept()
                if self.n + n > self.max_cap:
                    self._clear()
        generation &= GEN_MASK
        for i in range(n):
            tx = p[i].pkttype == PACKET_OUTGOING
            memset(&key, 0, sizeof(nf_conn))
            memcpy(key.laddr, &p[i].saddr[0] if tx else &p[i].daddr[0], 16)
            memcpy(key.raddr, &p[i].daddr[0] if tx else &p[i].saddr[0], 16)
            key.lport = p[i].sport if tx else p[i].dport
            key.rport = p[i].dport if tx else p[i].sport
            key.vni = p[i].vni if p[i].vxlan else 0
            key.family = p[i].family
            key.proto = p[i].proto
            s = conn_hash(&key) & (self.nslots - 1)
            while self.slots[s] >= 0 and not same_conn(&self.entries[self.slots[s]].conn, &key):
                s = (s + 1) & (self.nslots - 1)
            if self.slots[s] < 0:
                self.slots[s] = self.n
                e = &self.entries[self.n]
                self.n += 1
                memcpy(&e.conn, &key, sizeof(nf_conn))
                e.verdict = -1
                e.gen = GEN_QUEUED
                e.last_ns = 0
                todo[ntodo] = self.slots[s]
                ntodo += 1
            else:
                e = &self.entries[self.slots[s]]
            slot_of[i] = self.slots[s]
            if e.last_ns < p[i].ts_ns:
                e.last_ns = p[i].ts_ns
            if e.gen != generation and e.gen != GEN_QUEUED:
                # judged before the pods last changed: again (its verdict stays until settle())
                e.gen = GEN_QUEUED
                todo[ntodo] = self.slots[s]
                ntodo += 1
        return ntodo

    def connections(self, entries):
        """CONN_DTYPE rows of these entries, to fill names in and evaluate."""
        cdef int32_t[::1] idx = np.ascontiguousarray(entries, np.int32)
        out = np.empty(len(idx), CONN_DTYPE)
        cdef nf_conn *dst = <nf_conn *>cnp.PyArray_DATA(out)
        cdef Py_ssize_t i
        for i in range(len(idx)):
            if not 0 <= idx[i] < self.n:
                raise IndexError(idx[i])
            memcpy(&dst[i], &self.entries[idx[i]].conn, sizeof(nf_conn))
        return out

    def settle(self, entries, conns, verdicts, uint32_t generation):
        """Store the verdicts of the entries lookup() listed (conns: their
        rows with the names they were judged with); a connection that
        starts being dropped counts in dropped_connections."""
        cdef int32_t[::1] idx = np.ascontiguousarray(entries, np.int32)
        cdef int32_t[::1] v = np.ascontiguousarray(verdicts, np.int32)
        conns = np.ascontiguousarray(conns, CONN_DTYPE)
        cdef const nf_conn *cs = <const nf_conn *>cnp.PyArray_DATA(conns)
        cdef Py_ssize_t i
        cdef cache_entry *e
        if len(idx) != len(v) or len(idx) != len(conns):
            raise ValueError("entries, conns and verdicts differ in length")
        for i in range(len(idx)):
            if not 0 <= idx[i] < self.n:
                raise IndexError(idx[i])
            e = &self.entries[idx[i]]
            if v[i] >= 0 and e.verdict < 0:
                self.dropped_connections += 1
            memcpy(&e.conn, &cs[i], sizeof(nf_conn))
            e.verdict = v[i]
            e.gen = generation & GEN_MASK
        self.evaluations += len(idx)

    def keep(self, slots):
        """Per packet (its entry from lookup()), True unless its connection
        is dropped; counts the dropped packets."""
        slots = np.ascontiguousarray(slots, np.int32)
        cdef int32_t[::1] s = slots
        out = np.empty(len(s), np.bool_)
        cdef Py_ssize_t i
        for i in range(len(s)):
            if not 0 <= s[i] < self.n:
                raise IndexError(s[i])
        cdef const int32_t *sp = <const int32_t *>cnp.PyArray_DATA(slots)
        cdef uint8_t *k = <uint8_t *>cnp.PyArray_DATA(out)
        with nogil:
            self.mark(sp, len(s), k)
        return out

    cdef void mark(self, const int32_t *slots, Py_ssize_t n, uint8_t *keep) noexcept nogil:
        cdef Py_ssize_t i
        cdef uint64_t dropped = 0
        cdef int32_t verdict
        for i in range(n):
            verdict = self.entries[slots[i]].verdict
            keep[i] = verdict < 0
            dropped += verdict >= 0
        self.dropped_packets += dropped

    def expire(self, uint64_t now_ns, uint64_t idle_ns):
        """Forget the connections without a packet for idle_ns."""
        cdef uint32_t i, kept = 0
        with nogil:
            for i in range(self.n):
                if self.entries[i].last_ns + idle_ns > now_ns:
                    if kept != i:
                        memcpy(&self.entries[kept], &self.entries[i], sizeof(cache_entry))
                    kept += 1
            self.n = kept
            self._reindex()
