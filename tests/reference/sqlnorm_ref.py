"""Pure-Python reference of dkebpf._sqlnorm.normalize, for tests only: the
rules of ext/sqlnorm.pyx's docstring, as regular expressions."""
import re

TOKEN = re.compile(rb"""
    (?P<space>[ \t\n\r\x0b\x0c]+)
  | (?P<comment>--[^\n]*|\#[^\n]*|/\*(?:.|\n)*?(?:\*/|\Z))
  | (?P<string>(?:(?<![0-9A-Za-z_$\x80-\xff])[EeNnXxBb])?'(?:\\(?:.|\n)|''|[^'\\])*(?:'|\\?\Z))
  | (?P<dollar>(?<![0-9A-Za-z_$\x80-\xff])(?P<tag>\$[A-Za-z_]*\$)(?:.|\n)*?(?:(?P=tag)|\Z))
  | (?P<number>(?<![0-9A-Za-z_$\x80-\xff.])(?:0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?))
  | (?P<ident>"[^"]*(?:"|\Z)|`[^`]*(?:`|\Z))
  | (?P<other>(?:.|\n))
""", re.X)


def normalize_one(sql):
    out, pending = [], False
    for m in TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind in ("space", "comment"):
            pending = True
            continue
        if pending and out:
            out.append(b" ")
        pending = False
        out.append(b"?" if kind in ("string", "dollar", "number") else m.group())
    return b"".join(out).decode("utf-8", "replace")


def normalize(payloads, ev, off, length):
    return [normalize_one(payloads[e][o:o + n]) for e, o, n in zip(ev, off, length)]
