# C-level interface of dkebpf._netlog_filter (ext/netlog_filter.pyx), for
# bpf-netlog's connection table (ext/netlog.pyx), which applies the
# netlog_blacklist verdicts while it folds packets without the GIL:
#     from dkebpf._netlog_filter cimport VerdictCache
# The type is reached through the module at run time: dkebpf._netlog_filter
# must be importable.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from dk_packet cimport dk_pkt

cdef struct nf_conn:
    uint8_t laddr[16]      # local address (first 4 bytes for IPv4)
    uint8_t raddr[16]      # remote address
    uint32_t vni           # 0 when not VXLAN
    uint32_t nic           # StringTable ids
    uint32_t src_pod
    uint32_t dst_pod
    uint32_t src_ns
    uint32_t dst_ns
    uint16_t lport
    uint16_t rport
    uint8_t family         # 4 or 6
    uint8_t proto          # 6 (TCP) or 17 (UDP)

cdef struct cache_entry:
    nf_conn conn             # the key (addresses, ports, proto, family, vni) and the names it was judged with
    uint64_t last_ns         # capture time of its last packet
    uint32_t gen             # the Kubernetes generation of the verdict (GEN_QUEUED: being evaluated)
    int32_t verdict          # first true statement, -1 keep (also before the first evaluation)


cdef class VerdictCache:
    cdef cache_entry *entries
    cdef int32_t *slots
    cdef uint32_t n, cap, nslots
    cdef readonly uint32_t max_cap
    cdef readonly uint64_t evaluations, resets, dropped_packets, dropped_connections

    cdef bint _grow(self, uint32_t cap) noexcept nogil
    cdef void _clear(self) noexcept nogil
    cdef void _forget_kept(self) noexcept nogil
    cdef void _reindex(self) noexcept nogil
    # lookup() without the GIL: n packets (at most max_cap) at p, each one's
    # entry into slot_of[i], the entries to evaluate into todo; returns how
    # many (settle() them, then mark()), -1 when the tables could not grow
    cdef Py_ssize_t judge(self, const dk_pkt *p, Py_ssize_t n, uint32_t generation, int32_t *slot_of,
                          int32_t *todo) noexcept nogil
    # keep() without the GIL: keep[i] = 1 unless entry slots[i] is dropped;
    # counts the dropped packets
    cdef void mark(self, const int32_t *slots, Py_ssize_t n, uint8_t *keep) noexcept nogil
