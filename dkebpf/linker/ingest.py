"""Spans posted to ``/v1/bpftracing`` -> a pyarrow Table: InfluxDB line
protocol, as collectors post them to DataKit's ebpftrace input, or an
Arrow IPC stream (``Content-Type: application/vnd.apache.arrow.stream``),
the same columns without a parse: line protocol is read in Python, about
40k spans/s, an Arrow stream at memory speed.

Every point must carry what DataKit's ebpftrace input requires (string
``ebpf_span_type`` and ``direction``, integer ``req_seq``, ``resp_seq``,
``thread_trace_id``); a point without them, or a line that is not line
protocol, is rejected with the line number and the reason, and the good
points of the same body are kept (a collector retrying the whole body
forever because of one bad span would lose everything after it).
"""
import numpy as np
import pyarrow as pa

__all__ = ["parse_spans", "read_arrow", "REQUIRED", "ARROW_STREAM"]

ARROW_STREAM = "application/vnd.apache.arrow.stream"

REQUIRED = {"ebpf_span_type": str, "direction": str, "req_seq": int, "resp_seq": int, "thread_trace_id": int}


def _split(s, seps, start=0):
    """Index of the first unescaped char of `seps` in s from start (outside
    double quotes when '"' handling is asked by seps containing '='), or
    len(s)."""
    i, n = start, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c in seps:
            return i
        i += 1
    return n


def _unescape(s):
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in ",= \"\\":
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _value(v):
    if v.startswith('"'):
        if len(v) < 2 or not v.endswith('"'):
            raise ValueError(f"unterminated string {v[:20]!r}")
        return v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if v[-1:] in ("i", "u"):
        return int(v[:-1])
    if v in ("t", "T", "true", "True", "TRUE"):
        return True
    if v in ("f", "F", "false", "False", "FALSE"):
        return False
    return float(v)


def _fields(s):
    """The field set (k=v,...) of a line, honouring quoted strings."""
    fields, i, n = {}, 0, len(s)
    while i < n:
        eq = _split(s, "=", i)
        if eq >= n:
            raise ValueError(f"field without '=' at {s[i:i + 20]!r}")
        key = _unescape(s[i:eq])
        j = eq + 1
        if j < n and s[j] == '"':
            j += 1
            while j < n and s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            j += 1
        else:
            j = _split(s, ",", j)
        fields[key] = _value(s[eq + 1:j])
        if j < n and s[j] != ",":
            raise ValueError(f"unexpected {s[j]!r} after field {key}")
        i = j + 1
    return fields


def _line_plain(line):
    """_line for a line without backslashes (nearly all of them): str.find
    and split instead of a loop per character. None when it needs _line."""
    head_end = line.find(" ")
    if head_end < 0:
        raise ValueError("no field set")
    head = line[:head_end].split(",")
    tags = {}
    for t in head[1:]:
        k, eq, v = t.partition("=")
        if not eq:
            raise ValueError(f"tag without '=': {t!r}")
        tags[k] = v
    fields, i, n = {}, head_end + 1, len(line)
    while True:
        eq = line.find("=", i)
        if eq < 0:
            raise ValueError(f"field without '=' at {line[i:i + 20]!r}")
        key = line[i:eq]
        if eq + 1 < n and line[eq + 1] == '"':
            close = line.find('"', eq + 2)
            if close < 0:
                raise ValueError(f"unterminated string in field {key}")
            fields[key] = line[eq + 2:close]
            j = close + 1
        else:
            j = n
            for sep in (",", " "):
                k = line.find(sep, eq + 1)
                if 0 <= k < j:
                    j = k
            fields[key] = _value(line[eq + 1:j])
        if j >= n or line[j] == " ":
            ts = line[j + 1:].strip()
            return tags, fields, int(ts) if ts else None
        if line[j] != ",":
            raise ValueError(f"unexpected {line[j]!r} after field {key}")
        i = j + 1


def _line(line):
    """(tags, fields, timestamp or None) of one line."""
    if "\\" not in line:
        return _line_plain(line)
    head_end = _split(line, " ")
    head = line[:head_end]
    parts, i = [], 0
    while i <= len(head):
        j = _split(head, ",", i)
        parts.append(head[i:j])
        i = j + 1
    tags = {}
    for t in parts[1:]:
        eq = _split(t, "=")
        if eq >= len(t):
            raise ValueError(f"tag without '=': {t!r}")
        tags[_unescape(t[:eq])] = _unescape(t[eq + 1:])
    rest = line[head_end + 1:]
    # the field set ends at the first space outside a quoted string
    j, n, quoted = 0, len(rest), False
    while j < n:
        c = rest[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == " " and not quoted:
            break
        j += 1
    fields = _fields(rest[:j])
    ts = rest[j + 1:].strip()
    return tags, fields, int(ts) if ts else None


def parse_spans(body, now_ns):
    """(pyarrow Table of the accepted spans, rejected count, first error
    message or None). Columns: every tag and field seen, plus ``time``
    (ns; the point's timestamp, else now_ns)."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body).decode("utf-8", "replace")
    rows, rejected, first_error = [], 0, None
    for lineno, line in enumerate(body.split("\n"), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            tags, fields, ts = _line(line)
            row = {**tags, **fields}
            for name, kind in REQUIRED.items():
                if not isinstance(row.get(name), kind) or isinstance(row.get(name), bool):
                    raise ValueError(f"field {name} ({kind.__name__}) missing or of another type")
        except (ValueError, IndexError) as exc:
            rejected += 1
            if first_error is None:
                first_error = f"line {lineno}: {exc}"
            continue
        row["time"] = ts if ts is not None else now_ns
        rows.append(row)
    if not rows:
        return pa.table({"time": pa.array([], pa.int64())}), rejected, first_error
    table = pa.Table.from_pylist(rows)
    if "start" not in table.column_names:  # event time: the span's start, µs
        table = table.append_column("start", pa.array(np.asarray(table.column("time")) // 1000))
    return table, rejected, first_error


def read_arrow(body, now_ns):
    """(Table, rejected, first error or None) of an Arrow IPC stream of
    spans; rows missing a REQUIRED value are rejected."""
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc

    try:
        table = ipc.open_stream(pa.py_buffer(bytes(body))).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"not an Arrow IPC stream: {exc}") from None
    for name, kind in REQUIRED.items():
        if name not in table.column_names:
            raise ValueError(f"column {name} missing")
        t = table.schema.field(name).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)) if kind is str else not pa.types.is_integer(t):
            raise ValueError(f"column {name} is {t}, not {'string' if kind is str else 'integer'}")
    valid = np.ones(table.num_rows, bool)
    for name in REQUIRED:
        valid &= pc.is_valid(table.column(name)).to_numpy(zero_copy_only=False)
    good = table.filter(pa.array(valid))
    rejected = table.num_rows - good.num_rows
    if "time" not in good.column_names:
        good = good.append_column("time", pa.array(np.full(good.num_rows, now_ns, np.int64)))
    if "start" not in good.column_names:
        good = good.append_column("start", pc.divide(good.column("time").cast(pa.int64()), 1000))
    return good, rejected, (f"{rejected} rows without a required value" if rejected else None)
