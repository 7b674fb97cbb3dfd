"""The C-level parsers are reachable from other Cython modules: a test-only
module (cimport/cimport_probe.pyx) cimports parse_first_line, message_end
and decode_network through ext/includes/dkebpf/_{http,packets}.pxd, is
built with Cython and the C compiler (support/cimport_probe.py), and its
calls go into the installed dkebpf._http / dkebpf._packets (their C-API
capsules, whose signatures Cython checks at import against the .pxd)."""
import struct

import pytest

from dkebpf import _http, _packets
from support import cimport_probe


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return cimport_probe.build(tmp_path_factory.mktemp("cimport"))


def test_http_first_line_and_message_end(probe):
    req = b"GET /api/v1?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
    pipelined = req + b"GET / HTTP/1.1\r\n"
    assert probe.first_line(pipelined) == (1, "request", _http.METHODS.index("GET"), b"/api/v1", 0, 11, len(req))
    resp = b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert probe.first_line(resp) == (1, "response", 0, b"", 404, 10, len(resp))
    assert probe.first_line(b"\x16\x03\x01 not http")[0] == 0


def test_packet_decode(probe):
    payload = b"dns?"
    udp = struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + len(payload), 1, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    pkt = ip + udp + payload + b"\0" * 6  # ethernet padding is not payload
    assert probe.decode(pkt, 0x0800) == (True, 4, 17, 5353, 53, len(payload), 28)
    assert probe.decode(pkt[:24], 0x0800)[0] is False    # UDP header cut: truncated
    assert probe.decode(pkt, 0x86DD)[0] is False         # not an IPv6 header
    assert _packets.DECODE_STATUS[0] == "decoded"
