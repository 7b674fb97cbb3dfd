"""Pure-Python reference for ``dkebpf._lineproto.encode_batch``.

Used only by tests (byte-for-byte comparison) and by the benchmark (the
baseline speed). Same signature and result: ``(body, skipped_rows)``. It follows the rules written in the Cython module's
docstring, spelled the obvious Python way: one ``to_pylist()`` per column,
``str.replace`` for escaping, ``repr`` for floats.
"""
import math
import threading

import pyarrow as pa
import pyarrow.types as pat

INT64_MAX = 2**63 - 1

_tls = threading.local()


def encode_batch_stats():
    """Counters of the last ``encode_batch`` call in this thread."""
    return dict(getattr(_tls, "stats", {}))


def escape_measurement(s):
    s = s.replace("\n", " ").replace("\r", " ")
    if s.endswith("\\"):
        s = s[:-1] + " "
    return s.replace(",", "\\,").replace(" ", "\\ ")


def escape_token(s):
    """Tag key, tag value or field key."""
    s = s.replace("\n", " ").replace("\r", " ")
    if s.endswith("\\"):
        s = s[:-1] + " "
    return s.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def escape_string_field(s):
    return (s.replace("\\", "\\\\").replace('"', '\\"')
             .replace("\n", "\\n").replace("\r", "\\r"))


def _values(batch, name):
    col = batch.column(batch.schema.get_field_index(name))
    if pat.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col.type, col.to_pylist()


def _field_text(typ, v):
    """The encoded field value, or None when the field is left out."""
    if v is None:
        return None, None
    if pat.is_boolean(typ):
        return ("true" if v else "false"), None
    if pat.is_integer(typ):
        if pat.is_unsigned_integer(typ) and v > INT64_MAX:
            return f"{INT64_MAX}i", "saturated_uints"
        return f"{v}i", None
    if pat.is_floating(typ):
        if not math.isfinite(v):
            return None, "nonfinite_floats"
        return repr(float(v)), None
    return '"' + escape_string_field(v) + '"', None


def encode_batch(measurement, batch, tags, fields, global_tags, timestamp_ns,
                 timestamp_column=None):
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else \
            pa.RecordBatch.from_pylist([], schema=batch.schema)
    stats = dict(rows=batch.num_rows, lines=0, skipped_rows=0, nonfinite_floats=0,
                 saturated_uints=0, bytes=0)
    head = escape_measurement(measurement)
    glob = "".join(f",{escape_token(k)}={escape_token(v)}"
                   for k, v in global_tags.items()
                   if v and k not in tags and k not in fields)
    tag_cols = [(f",{escape_token(name)}=", _values(batch, name)[1]) for name in tags]
    field_cols = [(f"{escape_token(name)}=",) + _values(batch, name) for name in fields]
    if timestamp_column is not None:
        col = batch.column(batch.schema.get_field_index(timestamp_column))
        if pat.is_timestamp(col.type):
            col = col.cast(pa.timestamp("ns")).cast(pa.int64())
        stamps = col.to_pylist()
    else:
        stamps = [None] * batch.num_rows
    lines = []
    for i in range(batch.num_rows):
        parts = [head]
        for key, vals in tag_cols:
            v = vals[i]
            if v is None or v == "":
                continue
            parts.append(key + escape_token(str(v)))
        parts.append(glob)
        fparts = []
        for key, typ, vals in field_cols:
            text, counter = _field_text(typ, vals[i])
            if counter:
                stats[counter] += 1
            if text is not None:
                fparts.append(key + text)
        if not fparts:
            stats["skipped_rows"] += 1
            continue
        ts = stamps[i] if stamps[i] is not None else timestamp_ns
        lines.append("".join(parts) + " " + ",".join(fparts) + f" {ts}\n")
    body = "".join(lines).encode("utf-8")
    stats["lines"] = len(lines)
    stats["bytes"] = len(body)
    _tls.stats = stats
    return body, stats["skipped_rows"]
