# The one UTF-8 policy of the extensions: bytes from the kernel or from a
# process (comm names, bash lines) become valid UTF-8 the way Python's
# bytes.decode("utf-8", "replace") does it: each maximal ill-formed subpart
# (Unicode 15, section 3.9, "U+FFFD Substitution of Maximal Subparts")
# becomes one U+FFFD. So a process has one process_name whichever plugin
# reports it, and one that Python code decoding the same bytes agrees with.
from libc.stdint cimport uint8_t


cdef inline int utf8_seq_len(uint8_t lead) noexcept nogil:
    """Bytes a well-formed sequence starting with lead has; 0 when lead can
    start none (a continuation byte, 0xC0, 0xC1, 0xF5..0xFF)."""
    if lead < 0x80:
        return 1
    if lead < 0xC2:
        return 0
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    if lead < 0xF5:
        return 4
    return 0


cdef inline bint utf8_cont_ok(uint8_t lead, Py_ssize_t pos, uint8_t b) noexcept nogil:
    """May b stand at position pos (1..3) of a sequence led by lead? The
    second byte's range is narrower after E0, ED, F0 and F4 (no overlong
    forms, no surrogates, nothing above U+10FFFF: Unicode Table 3-7)."""
    if pos == 1:
        if lead == 0xE0:
            return 0xA0 <= b <= 0xBF
        if lead == 0xED:
            return 0x80 <= b <= 0x9F
        if lead == 0xF0:
            return 0x90 <= b <= 0xBF
        if lead == 0xF4:
            return 0x80 <= b <= 0x8F
    return 0x80 <= b <= 0xBF


cdef inline Py_ssize_t utf8_replace_invalid(const uint8_t *p, Py_ssize_t n, uint8_t *out) noexcept nogil:
    """Write p[:n] as valid UTF-8 to out (room for 3 * n); returns the length."""
    cdef Py_ssize_t i = 0, o = 0, need, j
    cdef uint8_t lead
    while i < n:
        lead = p[i]
        if lead < 0x80:
            out[o] = lead
            o += 1
            i += 1
            continue
        need = utf8_seq_len(lead)
        j = 1
        while j < need and i + j < n and utf8_cont_ok(lead, j, p[i + j]):
            j += 1
        if need and j == need:
            while j > 0:
                out[o] = p[i]
                o += 1
                i += 1
                j -= 1
        else:
            # the maximal subpart p[i:i+j] (at least the lead) -> U+FFFD
            out[o] = 0xEF
            out[o + 1] = 0xBF
            out[o + 2] = 0xBD
            o += 3
            i += j
    return o
