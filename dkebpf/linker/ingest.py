"""Spans posted to ``/v1/bpftracing`` -> a pyarrow Table: InfluxDB line
protocol, as collectors post them to DataKit's ebpftrace input (read by
the project's line-protocol reader, dkebpf._lineproto.read_points: C, no
Python object per span, over 1 M spans/s), or an Arrow IPC stream
(``Content-Type: application/vnd.apache.arrow.stream``), the same columns
without a parse.

Every point must carry what DataKit's ebpftrace input requires (string
``ebpf_span_type`` and ``direction``, integer ``req_seq``, ``resp_seq``,
``thread_trace_id``); a point without them, or a line that is not line
protocol, or whose field has another type than on earlier lines of the
body, is rejected with the line number and the reason, and the good points
of the same body are kept (a collector retrying the whole body forever
because of one bad span would lose everything after it).
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._lineproto import read_points

__all__ = ["parse_spans", "read_arrow", "REQUIRED", "ARROW_STREAM"]

ARROW_STREAM = "application/vnd.apache.arrow.stream"

REQUIRED = {"ebpf_span_type": str, "direction": str, "req_seq": int, "resp_seq": int, "thread_trace_id": int}
_READ_KIND = {str: "string", int: "int"}


def _with_start(table):
    """Event time: a span's ``start`` (µs), its timestamp where it has none."""
    if "start" in table.column_names and table.column("start").null_count == 0:
        if table.schema.field("start").type == pa.int64():
            return table  # every span has its start: nothing to do
    from_time = pc.divide(table.column("time"), 1000)
    if "start" not in table.column_names:
        return table.append_column("start", from_time)
    start = pc.coalesce(table.column("start").cast(pa.int64()), from_time)
    return table.set_column(table.column_names.index("start"), "start", start)


def parse_spans(body, now_ns):
    """(pyarrow Table of the accepted spans, rejected count, messages of
    the first few rejected lines). Columns: every tag and field seen, plus
    ``time`` (ns; the point's timestamp, else now_ns) and ``start``."""
    if isinstance(body, str):
        body = body.encode()
    table, rejected, errors = read_points(body, {k: _READ_KIND[t] for k, t in REQUIRED.items()}, now_ns)
    return _with_start(table), rejected, errors


def read_arrow(body, now_ns):
    """(Table, rejected, error messages) of an Arrow IPC stream of spans;
    rows missing a REQUIRED value are rejected."""
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
    good = good.set_column(good.column_names.index("time"), "time", good.column("time").cast(pa.int64()))
    return _with_start(good), rejected, ([f"{rejected} rows without a required value"] if rejected else [])
