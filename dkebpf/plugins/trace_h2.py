"""ebpf-trace's HTTP/2 and gRPC spans: one per stream, from the calls of
HTTP/2 connections, plaintext and inside OpenSSL's TLS (ext/h2trace.pyx
follows frames, HPACK and streams in C across steps); SpanBuilder
(plugins/trace.py) feeds it each step's records and adds its span rows to
the table.

Columns: ``http_method``, ``http_route`` (``:path``), ``http_version`` "2",
``http_status_code``; gRPC (``content-type: application/grpc...``):
``operation`` "gRPC", ``resource`` the method's path, ``grpc_status_code``
and ``grpc_message`` from the trailers, ``status`` ok for grpc-status 0;
other HTTP/2: ``operation`` "HTTP2", ``resource`` "<method> <path>",
``status`` by :status as HTTP/1. A stream reset (RST_STREAM) is an error.
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import _h2trace, _trace

# the request record's fields inside a span row (SpanBuilder's common columns read them)
HEAD_VIEW = np.dtype({
    "names": list(_h2trace.HEAD_NAMES),
    "formats": [_trace.MSG_DTYPE.fields[n][0] for n in _h2trace.HEAD_NAMES],
    "offsets": [_h2trace.HEAD_OFFSET + _trace.MSG_DTYPE.fields[n][1] for n in _h2trace.HEAD_NAMES],
    "itemsize": _h2trace.SPAN_DTYPE.itemsize})
NAMES = ("http2", "grpc")  # trace_protos names that choose these spans: plain HTTP/2's, gRPC's
# a connection without a record this long is ended (its close may have been
# lost: a full ring, the kernel's LRU); long, as gRPC channels idle for
# minutes, and its HPACK tables cannot be known again without the preface
CONN_IDLE_NS = 3600_000_000_000


class H2Spans:
    def __init__(self):
        self.tracker = _h2trace.H2Tracker()
        self.done = np.zeros(0, _h2trace.SPAN_DTYPE)

    def feed(self, msgs, order, role, until):
        """Before link_threads: the step's HTTP/2 records (pair() gave them
        ROLE_H2); those that carried a request become ROLE_REQUEST."""
        idx = order[role[order] == _trace.ROLE_H2]
        if len(idx):
            self.tracker.feed(msgs, idx, role, until, _trace.ROLE_REQUEST)

    def collect(self, msgs, expire_before_ns, now_ns):
        """After link_threads: the streams finished, kept until take() (a
        view of the tracker's buffer while it is all: copied before the
        tracker writes it again)."""
        self.tracker.expire(expire_before_ns, max(0, now_ns - CONN_IDLE_NS))
        if len(self.done) and self.done.base is not None:
            self.done = self.done.copy()
        new = self.tracker.spans(msgs)
        if len(new) and len(self.done):
            # (not np.concatenate: it packs the fields, and heads() views the rows by offset)
            both = np.empty(len(self.done) + len(new), _h2trace.SPAN_DTYPE)
            both[:len(self.done)] = self.done
            both[len(self.done):] = new
            self.done = both
        elif len(new):
            self.done = new

    def take(self):
        """The finished streams' rows, to be used before the next collect()."""
        done, self.done = self.done, np.zeros(0, _h2trace.SPAN_DTYPE)
        return done

    @property
    def nbytes(self):
        return self.tracker.nbytes + self.done.nbytes


def chosen(spans, protos):
    """Span rows of the kinds protos (trace_protos names, None: all) choose."""
    if protos is None or set(NAMES) <= protos:
        return spans
    if not protos & set(NAMES):
        return spans[:0]
    return spans[is_grpc(spans) == ("grpc" in protos)]


def is_grpc(spans):
    """Per span row: its content-type is gRPC's (application/grpc, +proto...)."""
    prefix = b"application/grpc"
    n = len(prefix)
    lens = spans["ctype_len"]
    width = spans.dtype.fields["ctype"][0].itemsize
    start = np.ascontiguousarray(spans["ctype"]).view(np.uint8).reshape(len(spans), width)[:, :n]
    return (lens != 0xFF) & (lens >= n) & (start == np.frombuffer(prefix, np.uint8)).all(axis=1)


def heads(spans):
    """The request records' fields of span rows (a view)."""
    return spans.view(HEAD_VIEW)


def _strings(spans, field, lens):
    """Column `field` (fixed-width bytes with lengths; 0xFF absent) as valid UTF-8 strings."""
    n = len(spans)
    width = spans.dtype.fields[field][0].itemsize
    raw = np.ascontiguousarray(spans[field]).view(np.uint8)
    data = pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(np.arange(n + 1, dtype=np.int32) * width),
                                                      pa.py_buffer(raw)])
    absent = lens == 0xFF
    return _trace.slices(data, np.zeros(n, np.int32), np.where(absent, 0, lens).astype(np.int32), ~absent)


def columns(spans):
    """The protocol columns of HTTP/2 span rows (the app trace context's:
    plugins/trace.py, as for HTTP/1)."""
    from .trace import _choose  # (imported here: plugins/trace.py imports this module)

    n = len(spans)
    method = _strings(spans, "method", spans["method_len"])
    path = _strings(spans, "path", spans["path_len"])
    ctype = _strings(spans, "ctype", spans["ctype_len"])
    grpc = is_grpc(spans)
    status = spans["status"].astype(np.int64)
    gstat = spans["grpc_status"].astype(np.int64)
    reset = spans["reset"].astype(bool)
    has_status = spans["have_resp"].astype(bool) & (status != 0)
    http_level = np.where(~has_status, 3, (status >= 400).astype(np.int8) + (status >= 500))
    grpc_level = np.where(gstat < 0, 3, np.where(gstat == 0, 0, 2))
    level = np.where(reset, 2, np.where(grpc, grpc_level, http_level))
    none = pa.nulls(n, pa.string())
    has_g = grpc & (gstat >= 0)
    cols = {
        "http_method": method, "http_route": path,
        "http_version": _choose(np.zeros(n, np.int8), "2"),
        "http_status_code": pc.if_else(pa.array(has_status), pc.cast(pa.array(status), pa.string()), none),
        "status": _choose(level, "ok", "warning", "error", "unknown"),
        "operation": _choose(grpc, "HTTP2", "gRPC"),
        "resource": pc.if_else(pa.array(grpc), path,
                               pc.binary_join_element_wise(method, pc.fill_null(path, ""), " ")),
        "grpc_status_code": pc.if_else(pa.array(has_g), pc.cast(pa.array(gstat), pa.string()), none),
        "grpc_message": pc.if_else(pa.array(has_g & (spans["gmsg_len"] != 0xFF)),
                                   _strings(spans, "gmsg", spans["gmsg_len"]), none),
    }
    return cols
