"""Pure-Python reference of dkebpf._mysql.parse, for tests only: the rules
of ext/mysql.pyx's docstring, with struct and slices."""
import struct

FIELDS = ("ev", "off", "length", "complete", "valid", "seq", "kind", "sql_off", "sql_len", "stmt_id",
          "err_code", "msg_off", "msg_len", "affected_rows", "columns")
RESP_OK, RESP_ERR, RESP_EOF, RESP_INFILE, RESP_RESULTSET = 1, 2, 3, 4, 5


def lenenc(b):
    if not b or b[0] == 0xFF or b[0] == 0xFB:
        return None
    if b[0] < 0xFB:
        return b[0]
    w = {0xFC: 2, 0xFD: 3, 0xFE: 8}[b[0]]
    return int.from_bytes(b[1:1 + w], "little") if len(b) >= 1 + w else None


def payload(p, request):
    rows, k, want = [], 0, 0 if request else 1
    while k < len(p):
        r = dict.fromkeys(FIELDS, 0)
        r["off"] = k
        rows.append(r)
        if len(p) - k < 5:
            r["valid"] = int(len(p) - k < 4 or p[k + 3] == want)
            return rows
        plen = int.from_bytes(p[k:k + 3], "little")
        r["seq"], r["length"] = p[k + 3], plen + 4
        body = p[k + 4:k + 4 + plen]
        r["complete"] = int(k + 4 + plen <= len(p))
        if plen == 0 or r["seq"] != want:
            return rows
        r["valid"] = 1
        at = k + 4
        first = body[0]
        if request:
            if first > 0x1f:
                r["valid"] = 0
                return rows
            r["kind"] = first
            if first in (0x03, 0x16):
                r["sql_off"], r["sql_len"] = at + 1, len(body) - 1
            elif 0x17 <= first <= 0x1a and len(body) >= 5:
                r["stmt_id"] = struct.unpack_from("<I", body, 1)[0]
        elif first == 0 and plen >= 7:
            r["kind"] = RESP_OK
            r["affected_rows"] = lenenc(body[1:]) or 0
            if len(body) >= 5:
                r["stmt_id"] = struct.unpack_from("<I", body, 1)[0]
        elif first == 0xFF:
            r["kind"] = RESP_ERR
            if len(body) >= 3:
                r["err_code"] = struct.unpack_from("<H", body, 1)[0]
            i = 3 + (6 if body[3:4] == b"#" else 0)
            if i < len(body):
                r["msg_off"], r["msg_len"] = at + i, len(body) - i
        elif first == 0xFE and plen < 9:
            r["kind"] = RESP_EOF
        elif first == 0xFB:
            r["kind"] = RESP_INFILE
        elif lenenc(body):
            r["kind"], r["columns"] = RESP_RESULTSET, lenenc(body)
            return rows
        else:
            r["valid"] = 0
            return rows
        if not r["complete"]:
            return rows
        k += 4 + plen
    return rows


def parse(payloads, requests):
    rows = []
    for ev, (p, request) in enumerate(zip(payloads, requests)):
        for r in payload(p, request):
            r["ev"] = ev
            rows.append(r)
    return rows
