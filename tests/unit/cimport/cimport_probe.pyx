# Test-only module (tests/support/cimport_probe.py builds it): reaches the
# C-level functions of dkebpf._http and dkebpf._packets the way a new Cython
# module (bpf-netlog, ebpf-trace) would, through their .pxd files, and the
# user-space build of a rule shared with the BPF programs (h2frame.pxd).
from libc.stdint cimport uint8_t, uint32_t

from dk_packet cimport dk_pkt
from h2frame cimport h2_frames_exact
from dkebpf._http cimport K_REQUEST, K_RESPONSE, http_msg, message_end, parse_first_line
from dkebpf._packets cimport DECODED, decode_network


def first_line(bytes b):
    """(is a message start, kind, method code, path, status, version, end)"""
    cdef http_msg m
    cdef int ok = parse_first_line(<const uint8_t *>b, len(b), &m)
    kind = "request" if m.kind == K_REQUEST else "response" if m.kind == K_RESPONSE else m.kind
    path = b[m.path_off:m.path_off + m.path_len]
    return ok, kind, m.method, path, m.status, m.version, message_end(<const uint8_t *>b, len(b), &m)


def decode(bytes b, int ethertype):
    """(decoded, family, proto, sport, dport, payload_len, l4 offset)"""
    cdef dk_pkt p
    cdef uint32_t l4 = 0
    cdef int r = decode_network(<const uint8_t *>b, len(b), ethertype, &p, &l4)
    return r == DECODED, p.family, p.proto, p.sport, p.dport, p.payload_len, l4


def frames_exact(bytes b):
    """h2_frames_exact, the user-space build of bpf/include/h2frame.h
    (tests/kernel/test_h2frame_rule.py sets it against the kernel's)."""
    return h2_frames_exact(<const uint8_t *>b, len(b))
