"""Hand-made span_msg records (bpf/include/trace.h) for the span builder's
unit tests, and a SpanBuilder step over them."""
import numpy as np

from dkebpf import _trace
from dkebpf.plugins.trace import SpanBuilder

SEND, RECV, CLOSE = _trace.OP_SEND, _trace.OP_RECV, _trace.OP_CLOSE
S = 10**9


def msg(sk, op, ts, payload=b"", sent=0, recv=0, last_send=0, last_recv=0, pid=100, tid=100, seq=0, nbytes=0,
        more=0):
    m = np.zeros(1, _trace.MSG_DTYPE)
    m["more"] = more
    m["sk"], m["op"], m["ts"], m["pid"], m["tid"], m["seq"] = sk, op, ts, pid, tid, seq
    m["sk_sent"], m["sk_recv"], m["ts_last_send"], m["ts_last_recv"] = sent, recv, last_send, last_recv
    m["bytes"] = nbytes or len(payload)
    m["cap_len"] = min(len(payload), _trace.PAYLOAD_MAX)
    m["payload"] = payload[:_trace.PAYLOAD_MAX].ljust(_trace.PAYLOAD_MAX, b"\0")
    m["family"], m["lport"], m["rport"] = 4, 8080, 40000
    m["laddr"] = b"\x7f\0\0\x01" + b"\0" * 12
    m["raddr"] = b"\x7f\0\0\x01" + b"\0" * 12
    m["comm"] = b"worker"
    m["pcomm"] = b"srv"
    return m


def redis_cmd(*words):
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


class Names:
    """A selector stand-in: a fixed service per pid (the real one reads /proc)."""

    def services(self, pids):
        import pyarrow as pa
        return pa.array(["svc" if p == 100 else "" for p in pids.tolist()])


def build(records, now=100 * S):
    b = SpanBuilder(Names())
    msgs, spans = b.step(np.concatenate(records), now)
    return b, msgs, spans, b.table(msgs, spans, 0).to_pylist()
