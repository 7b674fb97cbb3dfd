# Small inline helpers shared by the extensions (compiled into each module
# that cimports them; no runtime module).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef inline Py_ssize_t offset_of(const void *base, const void *member) noexcept nogil:
    """offsetof(), from a struct variable and a pointer to one of its
    members: the numpy dtypes are built from these (records._dtype)."""
    return <const char *>member - <const char *>base


cdef inline uint16_t be16(const uint8_t *p) noexcept nogil:
    """A big-endian (network order) 16-bit field at any alignment."""
    return (p[0] << 8) | p[1]


cdef inline uint32_t be32(const uint8_t *p) noexcept nogil:
    """A big-endian (network order) 32-bit field at any alignment."""
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t conn_key_hash(const uint8_t *la, const uint8_t *ra, uint16_t lp, uint16_t rp,
                                   uint8_t proto, uint32_t vni) noexcept nogil:
    """FNV-1a over a connection key (16-byte local and remote addresses,
    ports, transport, VNI), folded: the open-addressing tables of bpf-netlog
    (connections, filter verdicts) index by it."""
    cdef uint64_t h = 1469598103934665603ULL
    cdef int i
    for i in range(16):
        h = (h ^ la[i]) * 1099511628211ULL
        h = (h ^ ra[i]) * 1099511628211ULL
    h = (h ^ (<uint64_t>lp << 16 | rp)) * 1099511628211ULL
    h = (h ^ (<uint64_t>vni << 8 | proto)) * 1099511628211ULL
    return h ^ (h >> 29)


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    """splitmix64's finalizer: well-spread ids and hash keys from record
    fields (ext/trace.pyx, ext/goroutines.pyx)."""
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    x ^= x >> 31
    return x
