"""Pure-Python reference of dkebpf._redis.parse, for tests only: the same
rules as ext/redis.pyx's docstring, one message at a time."""
import re

import numpy as np

ROW_FIELDS = ("ev", "off", "length", "complete", "valid", "error", "nargs", "word_off", "word_len")
MAX_OWED = 1 << 24
CUT, NOT_RESP = -1, -2
TYPES = b"$!=*~>%|+-:_,#("
INT = re.compile(rb"-?[0-9]{1,18}\Z")


def _int(b):
    return int(b) if INT.match(b) else None


def message(p, i, request):
    """(next index or CUT/NOT_RESP, error, nargs, word_off, word_len)."""
    n = len(p)
    error, nargs, word = 0, 0, (0, 0)
    if request and p[i] != ord("*"):
        end = p.find(b"\r\n", i)
        line = p[i:end if end >= 0 else n]
        first = line.split(b" ", 1)[0]
        if not first or any(c < 33 or c > 126 for c in first):
            return NOT_RESP, 0, 0, 0, 0
        if end < 0:
            return CUT, 0, 0, i, len(first)
        return end + 2, 0, len([w for w in line.split(b" ") if w]), i, len(first)
    owed, top = 1, True
    while owed:
        if i >= n:
            return CUT, error, nargs, *word
        t = p[i:i + 1]
        end = p.find(b"\r\n", i + 1)
        if end < 0:
            return (CUT if t and t in TYPES else NOT_RESP), error, nargs, *word
        owed -= 1
        v = _int(p[i + 1:end])
        if t in (b"$", b"!", b"="):
            if (request and t != b"$") or v is None or v < -1:
                return NOT_RESP, error, nargs, *word
            error |= t == b"!"
            if v == -1:
                i = end + 2
            else:
                if request and nargs == 0 and not top:
                    word = (end + 2, min(v, n - end - 2))
                if end + 2 + v + 2 > n:
                    return CUT, error, nargs, *word
                if p[end + 2 + v:end + 4 + v] != b"\r\n":
                    return NOT_RESP, error, nargs, *word
                i = end + 4 + v
        elif t in (b"*", b"~", b">", b"%", b"|"):
            if (request and not top) or v is None or v < -1 or v > MAX_OWED:
                return NOT_RESP, error, nargs, *word
            if v > 0:
                owed += 2 * v if t == b"%" else 2 * v + 1 if t == b"|" else v
                if owed > MAX_OWED:
                    return NOT_RESP, error, nargs, *word
            if top and request and t != b"*":
                return NOT_RESP, error, nargs, *word
            i = end + 2
        elif t in (b"+", b"-", b":", b"_", b",", b"#", b"("):
            if request:
                return NOT_RESP, error, nargs, *word
            error |= t == b"-"
            if top and t in (b"+", b"-"):
                word = (i + 1, end - i - 1)
            i = end + 2
        else:
            return NOT_RESP, error, nargs, *word
        if request and not top:
            nargs += 1
        top = False
    return i, error, nargs, *word


def parse(payloads, requests):
    rows = []
    for ev, (p, request) in enumerate(zip(payloads, requests)):
        k = 0
        while k < len(p):
            nxt, error, nargs, woff, wlen = message(p, k, bool(request))
            if nxt >= 0:
                rows.append((ev, k, nxt - k, 1, 1, int(error), nargs, woff, wlen))
                k = nxt
            else:
                rows.append((ev, k, 0, 0, int(nxt == CUT), int(error), nargs, woff, wlen))
                break
    return {name: np.array([r[i] for r in rows], dtype=np.uint32 if i in (0, 1, 2, 6, 7, 8) else np.uint8)
            for i, name in enumerate(ROW_FIELDS)}
