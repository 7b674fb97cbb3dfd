"""Pure-Python reference of dkebpf._hpack.HpackDecoder, for tests only
(RFC 7541), with the tables read from ext/includes/hpack_tables.h, the one
copy. Also an encoder, to make test input."""
import os
import re

_H = open(os.path.join(os.path.dirname(__file__), "..", "..", "ext", "includes", "hpack_tables.h")).read()


def _array(name):
    body = re.search(name + r"\[\d+\] = \{(.*?)\};", _H, re.S).group(1)
    return [int(x, 0) for x in re.findall(r"0x[0-9a-f]+|\d+", body)]


def _strings(name):
    body = re.search(name + r"\[62\] = \{(.*?)\};", _H, re.S).group(1)
    return [s.encode() for s in re.findall(r'"([^"]*)"', body)]


CODES, BITS = _array("HPACK_HUFFMAN_CODE"), _array("HPACK_HUFFMAN_BITS")
STATIC = list(zip(_strings("HPACK_STATIC_NAME"), _strings("HPACK_STATIC_VALUE")))  # [0] unused
DECODE = {(BITS[s], CODES[s]): s for s in range(257)}


class Error(ValueError):
    pass


class Decoder:
    def __init__(self, max_table_size=65536):
        self.limit, self.max_size, self.dynamic = max_table_size, min(4096, max_table_size), []

    @property
    def table_size(self):
        return sum(len(n) + len(v) + 32 for n, v in self.dynamic)

    def _evict(self):
        while self.dynamic and self.table_size > self.max_size:
            self.dynamic.pop()

    def _get(self, i):
        if 1 <= i <= 61:
            return STATIC[i]
        if i < 1 or i - 62 >= len(self.dynamic):
            raise Error(f"index {i}")
        return self.dynamic[i - 62]

    def decode(self, b):
        out, i = [], 0
        while i < len(b):
            c = b[i]
            if c & 0x80:
                i, idx = integer(b, i, 7)
                out.append(self._get(idx))
            elif c & 0xE0 == 0x20:
                i, size = integer(b, i, 5)
                if size > self.limit:
                    raise Error("size update")
                self.max_size = size
                self._evict()
            else:
                prefix = 6 if c & 0xC0 == 0x40 else 4
                i, idx = integer(b, i, prefix)
                if idx:
                    name = self._get(idx)[0]
                else:
                    i, name = string(b, i)
                i, value = string(b, i)
                if prefix == 6:
                    self.dynamic.insert(0, (name, value))
                    if len(name) + len(value) + 32 > self.max_size:
                        self.dynamic = []
                    self._evict()
                out.append((name, value))
        return out


def integer(b, i, prefix):
    mask = (1 << prefix) - 1
    v, i, shift = b[i] & mask, i + 1, 0
    if v < mask:
        return i, v
    while True:
        if i >= len(b):
            raise Error("integer cut")
        if shift > 28:
            raise Error("integer too large")
        v += (b[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not b[i - 1] & 0x80:
            return i, v


def string(b, i):
    if i >= len(b):
        raise Error("string missing")
    huff = b[i] & 0x80
    i, n = integer(b, i, 7)
    if n > len(b) - i:
        raise Error("string cut")
    raw = bytes(b[i:i + n])
    return i + n, huffman_decode(raw) if huff else raw


def huffman_decode(raw):
    out, code, length = bytearray(), 0, 0
    for byte in raw:
        for bit in range(7, -1, -1):
            code, length = (code << 1) | (byte >> bit) & 1, length + 1
            if length > 30:
                raise Error("bad code")
            sym = DECODE.get((length, code))
            if sym is not None:
                if sym == 256:
                    raise Error("EOS")
                out.append(sym)
                code, length = 0, 0
    if length > 7 or code != (1 << length) - 1:
        raise Error("padding")
    return bytes(out)


def huffman_encode(data):
    bits, n = 0, 0
    for c in data:
        bits, n = (bits << BITS[c]) | CODES[c], n + BITS[c]
    pad = -n % 8
    bits, n = (bits << pad) | ((1 << pad) - 1), n + pad
    return bits.to_bytes(n // 8, "big")


def encode_int(v, prefix, flags):
    mask = (1 << prefix) - 1
    if v < mask:
        return bytes([flags | v])
    out, v = [flags | mask], v - mask
    while v >= 128:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    return bytes(out + [v])


def encode_str(s, huff):
    data = huffman_encode(s) if huff else s
    return encode_int(len(data), 7, 0x80 if huff else 0) + data


STRING_FIELDS = {b":method": "method", b":path": "path", b":authority": "authority", b"content-type": "content_type",
                 b"grpc-message": "grpc_message"}


def span_fields(headers):
    """What dkebpf._hpack.decode_headers keeps of a block's headers: the
    first of each; :status / grpc-status as numbers (0 / -1 when absent or
    not a number); the app trace context by tracectx's rules."""
    from . import tracectx_ref

    out = {f: None for f in STRING_FIELDS.values()}
    out.update(status=0, grpc_status=-1, nheaders=min(len(headers), 0xFFFF))
    ctx = {}
    for name, value in headers:
        if name in STRING_FIELDS and out[STRING_FIELDS[name]] is None:
            out[STRING_FIELDS[name]] = value
        elif name == b":status" and "status_seen" not in out:
            out["status_seen"] = True
            if len(value) == 3 and value.isdigit():
                out["status"] = int(value)
        elif name == b"grpc-status" and "grpc_seen" not in out:
            out["grpc_seen"] = True
            if 1 <= len(value) <= 4 and value.isdigit():
                out["grpc_status"] = int(value)
        elif name.lower() in tracectx_ref.NAMES and name.lower() not in ctx:
            ctx[name.lower()] = value
    out.pop("status_seen", None)
    out.pop("grpc_seen", None)
    out.update(zip(("trace_hi", "trace_lo", "parent", "sampled", "source"), tracectx_ref.from_headers(ctx)))
    return out
