# C-level interface of dkebpf._hpack (ext/hpack.pyx), for the HTTP/2 stream
# tracker (ext/h2trace.pyx), which keeps one table per connection and
# direction in C memory and decodes each header block as its frames come:
#     from dkebpf._hpack cimport hstate_t, hdr_t, hpack_new, hpack_free, hpack_fields
# The functions are reached through the module's C-API capsules, so the
# cimporting module needs dkebpf._hpack importable at run time.
from libc.stdint cimport int16_t, int8_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from bytebuf cimport bytebuf

cdef enum:
    HPACK_STR_FIELDS = 5  # hdr_t.str_*: :method, :path, :authority, content-type, grpc-message

cdef struct entry_t:
    uint8_t *blob  # name then value
    int nlen, vlen
    uint8_t field

# The HPACK state of one connection and direction.
cdef struct hstate_t:
    entry_t *ring
    int cap, head, count  # head: slot of the newest entry
    int64_t size, max_size, limit
    int error             # the error that broke the table; 0 while it is known
    int64_t err_a, err_b  # details for the message
    bint pending          # a HEADERS block waits for its CONTINUATIONs in frag
    bint partial          # started mid-connection: a reference past the entries it saw is
                          # a header it cannot know (no field), not an error
    bytebuf frag
    bytebuf hname, hvalue   # Huffman-decoded strings of the current header

# What a span needs of one header block (hpack.HEADERS_DTYPE).
cdef struct hdr_t:
    uint64_t trace_hi, trace_lo, parent
    uint32_t str_off[5]   # STRING_FIELDS in the arena
    uint32_t str_len[5]   # 0xFFFFFFFF: header absent
    uint16_t status       # :status, 0 absent or not 3 digits
    int16_t grpc_status   # -1 absent or not a number
    int8_t sampled
    uint8_t source
    uint8_t state         # 0 no block ends at this row, 1 decoded, 2 error
    uint8_t error         # E_* (ERRORS[error])
    uint16_t nheaders

# A table (max_table_size: the largest size update accepted; partial: see
# hstate_t); NULL when out of memory.
cdef hstate_t *hpack_new(int64_t max_table_size, bint partial) noexcept nogil
# What the block b[0:n] is, from its first pseudo-header known through the
# static table or a plain literal name (without its table: those of the
# dynamic table are skipped): 1 a request (:method, :path, :scheme,
# :authority), 2 a response (:status), 0 it does not tell.
cdef int hpack_block_kind(const uint8_t *b, int64_t n) noexcept nogil
cdef void hpack_free(hstate_t *s) noexcept nogil
# One whole header block on s -> rec (strings appended to arena; the app
# trace context only with `ctx`, else its fields stay 0); 0 or the error
# (then s is broken and refuses later blocks).
cdef int hpack_fields(hstate_t *s, const uint8_t *b, int64_t n, hdr_t *rec, bytebuf *arena, bint ctx) noexcept nogil
