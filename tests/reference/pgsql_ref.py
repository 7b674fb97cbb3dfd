"""Pure-Python reference of dkebpf._pgsql.parse, for tests only: the rules
of ext/pgsql.pyx's docstring."""
FIELDS = ("ev", "off", "length", "complete", "valid", "type", "text_off", "text_len", "name_off", "name_len",
          "code_off", "status")
FRONTEND, BACKEND = b"QPBESCDXHFdcf", b"CEZI12TDnNstASKRGHWdcfv3V"
ROWS = {True: b"QPBESCDX", False: b"CEZI12"}


def cstr(p, i, end):
    z = p.find(b"\0", i, end)
    return end if z < 0 else z


def payload(p, request):
    rows, k, n = [], 0, len(p)
    while k < n:
        t = p[k:k + 1]
        if t not in (FRONTEND if request else BACKEND):
            mlen = -1
        elif n - k >= 5:
            mlen = int.from_bytes(p[k + 1:k + 5], "big")
            if mlen < 4 or mlen > 0x3fffffff:
                mlen = -1
        else:
            mlen = 0
        is_row = t in ROWS[request]
        if mlen <= 0 or is_row:
            r = dict.fromkeys(FIELDS, 0)
            r.update(off=k, type=p[k], valid=int(mlen >= 0))
            rows.append(r)
            if mlen <= 0:
                return rows
            r["length"] = mlen + 1
        body = k + 5
        complete = body + mlen - 4 <= n
        end = body + mlen - 4 if complete else n
        if is_row:
            r["complete"] = int(complete)
            if t == b"Q" or (t == b"C" and not request):
                r["text_off"], r["text_len"] = body, cstr(p, body, end) - body
            elif t == b"P":
                i = cstr(p, body, end)
                r["name_off"], r["name_len"] = body, i - body
                if i < end:
                    r["text_off"], r["text_len"] = i + 1, cstr(p, i + 1, end) - i - 1
            elif t == b"B":
                i = cstr(p, body, end)
                if i < end:
                    r["name_off"], r["name_len"] = i + 1, cstr(p, i + 1, end) - i - 1
            elif t == b"E" and request:
                r["name_off"], r["name_len"] = body, cstr(p, body, end) - body
            elif t == b"E":
                i = body
                while i < end and p[i] != 0:
                    z = cstr(p, i + 1, end)
                    if p[i] == ord("C") and z - i - 1 == 5:
                        r["code_off"] = i + 1
                    elif p[i] == ord("M"):
                        r["text_off"], r["text_len"] = i + 1, z - i - 1
                    i = z + 1
            elif t == b"Z" and end > body:
                r["status"] = p[body]
        if not complete:
            return rows
        k = body + mlen - 4
    return rows


def parse(payloads, requests):
    rows = []
    for ev, (p, request) in enumerate(zip(payloads, requests)):
        for r in payload(p, bool(request)):
            r["ev"] = ev
            rows.append(r)
    return rows
