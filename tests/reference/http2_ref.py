"""Pure-Python reference of dkebpf._http2.parse, for tests only: the rules
of ext/http2.pyx's docstring."""
FIELDS = ("ev", "off", "length", "complete", "valid", "type", "flags", "stream", "block_off", "block_len")
MAGIC = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def payload(p):
    rows, k, n = [], 0, len(p)
    if p.startswith(MAGIC):
        rows.append({**dict.fromkeys(FIELDS, 0), "type": 0xFF, "length": 24, "complete": 1, "valid": 1})
        k = 24
    while k < n:
        r = dict.fromkeys(FIELDS, 0)
        r["off"] = k
        rows.append(r)
        if n - k < 9:
            r["valid"] = 1
            return rows
        flen = int.from_bytes(p[k:k + 3], "big")
        t, flags, stream = p[k + 3], p[k + 4], int.from_bytes(p[k + 5:k + 9], "big") & 0x7FFFFFFF
        r.update(type=t, flags=flags, stream=stream)
        if (p[k + 5] & 0x80 or t > 0x10 or (stream == 0 and t in (0, 1, 2, 3, 5, 9))
                or (stream != 0 and t in (4, 6, 7))):
            return rows
        r.update(valid=1, length=flen + 9)
        body = k + 9
        complete = body + flen <= n
        r["complete"] = int(complete)
        end = body + flen if complete else n
        if t in (1, 5, 9):
            a, b, pad = body, body + flen, 0
            if t != 9 and flags & 0x8:
                if a >= end:
                    r["valid"] = 0
                    return rows
                pad, a = p[a], a + 1
            a += 5 if t == 1 and flags & 0x20 else 0
            a += 4 if t == 5 else 0
            b -= pad
            if a > b:
                r["valid"] = 0
                return rows
            b, a = min(b, end), min(a, end)
            r["block_off"], r["block_len"] = a, max(b - a, 0)
        if not complete:
            return rows
        k = body + flen
    return rows


def parse(payloads):
    rows = []
    for ev, p in enumerate(payloads):
        for r in payload(p):
            r["ev"] = ev
            rows.append(r)
    return rows
