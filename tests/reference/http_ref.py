"""Pure-Python reference of dkebpf._http.parse_payload (first lines of the
HTTP/1.x messages at the start of a payload prefix), for tests only.

Written from RFC 9112 sections 3, 4 and 6.3 as the Cython parser reads
them, plainly: slices and bytes methods, no cursor arithmetic.
"""
METHODS = ["", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"]
PAYLOAD_MAX = 512
MAX_MSGS = 32
REQUEST, RESPONSE = 1, 2


def _version(p):
    """(version, rest) for b"HTTP/1.0"/b"HTTP/1.1" at the start of p;
    "cut" when p ends inside it; None when it is something else."""
    lit = b"HTTP/1."
    if not lit.startswith(p[:7]):
        return None
    if len(p) < 8:
        return "cut"
    if p[7:8] not in (b"0", b"1"):
        return None
    return (10 if p[7:8] == b"0" else 11), p[8:]


def first_line(p):
    """A dict for the request or status line at the start of p, or None."""
    if len(p) >= 5 and p[:2] == b"HT":
        v = _version(p)
        if v is None or v == "cut":
            return None
        ver, rest = v
        if len(rest) < 4 or rest[:1] != b" " or not all(48 <= c <= 57 for c in rest[1:4]):
            return None
        code = int(rest[1:4])
        if not 100 <= code <= 599:
            return None
        if len(rest) > 4 and rest[4:5] not in (b" ", b"\r"):
            return None
        return {"kind": RESPONSE, "method": 0, "version": ver, "status": code, "truncated": 0,
                "path": b"", "path_off": 0}
    method = next((k for k in range(1, len(METHODS))
                   if p.startswith(METHODS[k].encode() + b" ")), 0)
    if not method:
        return None
    start = len(METHODS[method]) + 1
    sp = p.find(b" ", start)
    target = p[start:] if sp < 0 else p[start:sp]
    if not target or any(not 0x21 <= c <= 0x7E for c in target):
        return None
    cut = min([i for i in (target.find(b"?"), target.find(b"#")) if i >= 0], default=-1)
    path = target if cut < 0 else target[:cut]
    out = {"kind": REQUEST, "method": method, "version": 0, "status": 0,
           "truncated": int(sp < 0 and cut < 0), "path": path, "path_off": start}
    if sp < 0:
        return out
    v = _version(p[sp + 1:])
    if v is None:
        return None
    if v != "cut":
        ver, rest = v
        if rest and not (rest[:2] == b"\r\n" or rest == b"\r"):
            return None
        out["version"] = ver
    return out


def chunked_end(p, i):
    """End of a chunked body starting at p[i] (last chunk and trailers)
    when inside p, else None."""
    while True:
        e = i
        while e < len(p) and p[e:e + 1] not in (b"\r", b";"):
            e += 1
        size = p[i:e]
        if not size or any(c not in b"0123456789abcdefABCDEF" for c in size) or int(size, 16) > 0x7FFFFFFF:
            return None
        e = p.find(b"\r\n", e)
        if e < 0:
            return None
        i = e + 2
        if int(size, 16) == 0:
            break
        i += int(size, 16)
        if i + 2 > len(p) or p[i:i + 2] != b"\r\n":
            return None
        i += 2
    while True:  # trailers, up to an empty line
        if i + 1 >= len(p):
            return None
        if p[i:i + 2] == b"\r\n":
            return i + 2
        e = p.find(b"\r\n", i)
        if e < 0:
            return None
        i = e + 2


def message_length(p, msg):
    """Bytes of the message at the start of p whose header block is inside
    p: the block plus its Content-Length body (which may run past p), or
    plus a chunked body ending inside p; None when not knowable."""
    eol = p.find(b"\r\n")
    if eol < 0:
        return None
    i = eol + 2
    clen, chunked = None, False
    while True:
        if i + 1 >= len(p):
            return None
        if p[i:i + 2] == b"\r\n":
            i += 2
            break
        e = p.find(b"\r\n", i)
        if e < 0:
            return None
        line = p[i:e]
        if b":" in line:
            name, value = line.split(b":", 1)
            name = name.lower()
            if name == b"content-length":
                v = value.strip(b" \t")
                if not v or not v.isdigit() or int(v) > 0x7FFFFFFF:
                    return None
                clen = int(v)
            elif name == b"transfer-encoding":
                chunked = True
        i = e + 2
    if msg["kind"] == RESPONSE and (msg["status"] < 200 or msg["status"] in (204, 304)):
        return i
    if chunked:
        return chunked_end(p, i)
    if clen is not None:
        return i + clen
    if msg["kind"] == REQUEST:
        return i
    return None


def message_end(p, msg):
    """Length of the message at the start of p when it ends inside p, else None."""
    n = message_length(p, msg)
    return n if n is not None and n <= len(p) else None


def message_bounds(p, request):
    """dkebpf._http.message_bounds of one payload: (off, length, complete,
    valid) per message delimited, the first that is not the last."""
    out, off = [], 0
    while off < len(p):
        m = first_line(p[off:])
        if m is None or m["kind"] != (REQUEST if request else RESPONSE):
            out.append((off, 0, 0, 0))
            break
        n = message_length(p[off:], m)
        if not n:
            out.append((off, 0, 0, 1))
            break
        out.append((off, n, int(off + n <= len(p)), 1))
        if off + n > len(p):
            break
        off += n
    return out


def parse_payload(payload, nbytes=0):
    """Messages starting in the first PAYLOAD_MAX bytes of payload; nbytes
    is how many bytes the call moved (default: len(payload))."""
    nbytes = nbytes or len(payload)
    p = payload[:PAYLOAD_MAX]
    out, off = [], 0
    while len(out) < MAX_MSGS and off < len(p):
        m = first_line(p[off:])
        if m is None:
            break
        m["off"] = off
        m["seg_len"] = max(nbytes - off, 0)
        m.pop("path_off")
        out.append(m)
        end = message_end(p[off:], m)
        if not end:
            break
        m["seg_len"] = end
        off += end
    return out
