"""An independent InfluxDB line-protocol parser for tests.

Written from the line-protocol specification and from the behaviour of the
parser DataKit actually runs (InfluxDB 1.x ``models``), not from our
encoder::

    measurement[,tag_key=tag_value...] field_key=field_value[,...] [timestamp]

* Lines are separated by ``\\n``; blank lines and lines starting with ``#``
  are skipped; leading spaces/tabs are skipped.
* Tag keys, tag values and field keys: a backslash before ``,``, ``=`` or
  a space makes that character literal; in the measurement only ``,`` and
  space are escapable (the spec's rule, and 1.x ``unescapeMeasurement``:
  ``\\=`` there stays two characters). Any other backslash is a literal
  backslash. Tag keys, tag values and field keys must not be empty; an
  unescaped ``=`` inside a tag value, or an unescaped ``,``/space inside a
  tag or field key, is an error. Tag and field keys must be unique within
  a line.
* Field values: ``"string"`` (escapes ``\\"`` and ``\\\\``; this parser
  also decodes ``\\n`` and ``\\r``, which is how dkebpf writes a line break
  inside a string -- DataKit itself keeps those two characters; a raw
  newline cannot appear since lines are split first), ``123i`` (int64),
  ``123u`` (uint64, returned as :class:`UInt`), floats (``-1.5``,
  ``1e+16``, ``.5``, ``3``), booleans ``t T true True TRUE f F false False
  FALSE``. NaN and infinity have no spelling.
* Timestamp: optional signed int64 (``None`` when absent).

Any malformed input raises ``ValueError`` naming the line, the column and
what was expected.
"""
import re
from typing import NamedTuple, Optional

__all__ = ["Point", "UInt", "parse", "parse_lines"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1

_TRUE = {"t", "T", "true", "True", "TRUE"}
_FALSE = {"f", "F", "false", "False", "FALSE"}
_INT_RE = re.compile(r"-?[0-9]+i\Z")
_UINT_RE = re.compile(r"[0-9]+u\Z")
_FLOAT_RE = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")
_TS_RE = re.compile(r"-?[0-9]+\Z")
_KEY_ESCAPES = {",", "=", " "}
_MEASUREMENT_ESCAPES = {",", " "}
_STRING_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r"}


class UInt(int):
    """An integer field written with the ``u`` (unsigned) suffix."""

    def __repr__(self):
        return f"UInt({int(self)})"


class Point(NamedTuple):
    measurement: str
    tags: dict
    fields: dict
    timestamp: Optional[int]


class _Line:
    def __init__(self, text, lineno):
        self.s = text
        self.n = len(text)
        self.lineno = lineno

    def fail(self, col, msg):
        snippet = self.s if len(self.s) <= 200 else self.s[:200] + "..."
        raise ValueError(f"line {self.lineno}, column {col + 1}: {msg}: {snippet!r}")

    def token(self, i, stops, forbidden, what, escapes=_KEY_ESCAPES):
        """Read an escaped token from i up to an unescaped char in stops."""
        out = []
        s, n = self.s, self.n
        while i < n:
            c = s[i]
            if c == "\\" and i + 1 < n and s[i + 1] in escapes:
                out.append(s[i + 1])
                i += 2
                continue
            if c in stops:
                break
            if c in forbidden:
                self.fail(i, f"unescaped {c!r} in {what}")
            out.append(c)
            i += 1
        return "".join(out), i

    def string_value(self, i, key):
        """Read a quoted string starting at the quote at i."""
        out = []
        s, n = self.s, self.n
        j = i + 1
        while j < n:
            c = s[j]
            if c == "\\" and j + 1 < n and s[j + 1] in _STRING_ESCAPES:
                out.append(_STRING_ESCAPES[s[j + 1]])
                j += 2
                continue
            if c == '"':
                return "".join(out), j + 1
            out.append(c)
            j += 1
        self.fail(i, f"unterminated string value of field {key!r} (a raw newline "
                     f"cannot appear in a string field: lines are split on \\n)")

    def scalar_value(self, i, key):
        j = i
        while j < self.n and self.s[j] not in ", ":
            j += 1
        tok = self.s[i:j]
        if not tok:
            self.fail(i, f"missing value of field {key!r}")
        if tok in _TRUE:
            return True, j
        if tok in _FALSE:
            return False, j
        if _INT_RE.match(tok):
            v = int(tok[:-1])
            if not INT64_MIN <= v <= INT64_MAX:
                self.fail(i, f"integer {tok!r} of field {key!r} is out of the int64 range")
            return v, j
        if _UINT_RE.match(tok):
            v = int(tok[:-1])
            if v > UINT64_MAX:
                self.fail(i, f"unsigned {tok!r} of field {key!r} is out of the uint64 range")
            return UInt(v), j
        if _FLOAT_RE.match(tok):
            v = float(tok)
            if v in (float("inf"), float("-inf")):
                self.fail(i, f"float {tok!r} of field {key!r} is out of range")
            return v, j
        self.fail(i, f"invalid value {tok!r} of field {key!r} (expected a quoted string, "
                     f"an integer with i or u, a float or a boolean)")

    def parse(self):
        s, n = self.s, self.n
        i = 0
        while i < n and s[i] in " \t":
            i += 1
        measurement, i = self.token(i, ", ", "", "measurement", _MEASUREMENT_ESCAPES)
        if not measurement:
            self.fail(i, "missing measurement")
        tags = {}
        while i < n and s[i] == ",":
            key, i = self.token(i + 1, "=", ", ", "tag key")
            if not key:
                self.fail(i, "empty tag key")
            if i >= n:
                self.fail(i, f"tag {key!r} has no '=' and value")
            value, i = self.token(i + 1, ", ", "=", f"value of tag {key!r}")
            if not value:
                self.fail(i, f"empty value of tag {key!r}")
            if key in tags:
                self.fail(i, f"duplicate tag {key!r}")
            tags[key] = value
        if i >= n or s[i] != " ":
            self.fail(i, "expected a space and the field set")
        while i < n and s[i] == " ":
            i += 1
        fields = {}
        while True:
            key, i = self.token(i, "=", ", ", "field key")
            if not key:
                self.fail(i, "empty field key")
            if i >= n:
                self.fail(i, f"field {key!r} has no '=' and value")
            i += 1
            if i < n and s[i] == '"':
                value, i = self.string_value(i, key)
            else:
                value, i = self.scalar_value(i, key)
            if key in fields:
                self.fail(i, f"duplicate field {key!r}")
            fields[key] = value
            if i < n and s[i] == ",":
                i += 1
                continue
            break
        timestamp = None
        if i < n:
            if s[i] != " ":
                self.fail(i, f"unexpected {s[i]!r} after the value of field {key!r}")
            rest = s[i:].strip(" \t")
            if rest:
                if not _TS_RE.match(rest):
                    self.fail(i + 1, f"invalid timestamp {rest!r}")
                timestamp = int(rest)
                if not INT64_MIN <= timestamp <= INT64_MAX:
                    self.fail(i + 1, f"timestamp {rest!r} is out of the int64 range")
        return Point(measurement, tags, fields, timestamp)


def parse(data):
    """Parse a line-protocol body (``bytes`` or ``str``) into Points."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"body is not valid UTF-8: {exc}") from None
    points = []
    for lineno, text in enumerate(data.split("\n"), 1):
        stripped = text.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        points.append(_Line(text, lineno).parse())
    return points


parse_lines = parse
