"""Pure-Python reference of dkebpf._tracectx (extract, format_ids), for
tests only: the rules of ext/tracectx.pyx's docstring."""
import re

import numpy as np

from . import http_ref

SRC_W3C, SRC_B3, SRC_B3_64, SRC_DATADOG = 1, 2, 3, 4
HEX = re.compile(rb"[0-9a-fA-F]+\Z")
NAMES = (b"traceparent", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled", b"x-b3-flags",
         b"x-datadog-trace-id", b"x-datadog-parent-id", b"x-datadog-sampling-priority")
NONE = (0, 0, 0, 0, 0)


def hexn(b, n):
    return int(b, 16) if len(b) == n and HEX.match(b) else None


def dec(b):
    if not re.match(rb"-?[0-9]+\Z", b):
        return None
    v = int(b)
    if v >= 1 << 64 or v < -(1 << 63):
        return None
    return v & (1 << 64) - 1


def headers(p):
    h = {}
    lines = p.split(b"\n")[1:]
    for k, line in enumerate(lines):
        cut = k == len(lines) - 1  # no line end: cut by the capture
        line = line[:-1] if line.endswith(b"\r") else line
        if not line or b":" not in line:
            break
        name, value = line.split(b":", 1)
        name = name.lower()
        if not cut and name in NAMES and name not in h:
            h[name] = value.lstrip(b" \t").rstrip(b" \t")[:256]
    return h


def traceparent(v):
    if len(v) < 55 or (len(v) > 55 and v[55:56] != b"-"):
        return None
    ver = hexn(v[:2], 2)
    if ver is None or ver == 0xff or (ver == 0 and len(v) != 55):
        return None
    if v[2:3] != b"-" or v[35:36] != b"-" or v[52:53] != b"-":
        return None
    hi, lo, parent, flags = hexn(v[3:19], 16), hexn(v[19:35], 16), hexn(v[36:52], 16), hexn(v[53:55], 2)
    if None in (hi, lo, parent, flags) or (hi == 0 and lo == 0) or parent == 0:
        return None
    return hi, lo, parent, 1 if flags & 1 else -1, SRC_W3C


def b3_sampling(v):
    if v in (b"1", b"d") or v.lower() == b"true":
        return 1
    return -1 if v == b"0" or v.lower() == b"false" else 0


def b3_trace(v):
    if len(v) == 32:
        hi, lo = hexn(v[:16], 16), hexn(v[16:], 16)
        return (hi, lo, SRC_B3) if hi is not None and lo is not None and (hi or lo) else None
    lo = hexn(v, 16)
    return (0, lo, SRC_B3_64) if lo else None


def b3_single(v):
    parts = v.split(b"-", 3)
    if len(parts) < 2:
        return None
    t = b3_trace(parts[0])
    parent = hexn(parts[1], 16)
    if t is None or not parent:
        return None
    sampled = 0
    if len(parts) >= 3:
        if len(parts[2]) != 1 or (len(parts) == 4 and len(parts[3]) != 16):
            return None
        sampled = b3_sampling(parts[2])
        if sampled == 0:
            return None
    return t[0], t[1], parent, sampled, t[2]


def extract_one(p):
    line = http_ref.first_line(p)
    if line is None or line["kind"] != http_ref.REQUEST:
        return NONE
    return from_headers(headers(p))


def from_headers(h):
    """The context of trace-context header values {lowercase name: value}
    (values cut at 256 bytes, as the extension reads them)."""
    h = {k: v[:256] for k, v in h.items()}
    if b"traceparent" in h and (r := traceparent(h[b"traceparent"])):
        return r
    if b"b3" in h and (r := b3_single(h[b"b3"])):
        return r
    if b"x-b3-traceid" in h and b"x-b3-spanid" in h:
        t, parent = b3_trace(h[b"x-b3-traceid"]), hexn(h[b"x-b3-spanid"], 16)
        if t and parent:
            sampled = b3_sampling(h[b"x-b3-sampled"]) if b"x-b3-sampled" in h else 0
            if h.get(b"x-b3-flags") == b"1":
                sampled = 1
            return t[0], t[1], parent, sampled, t[2]
    if b"x-datadog-trace-id" in h and b"x-datadog-parent-id" in h:
        lo, parent = dec(h[b"x-datadog-trace-id"]), dec(h[b"x-datadog-parent-id"])
        if lo and parent:
            sampled = 0
            if b"x-datadog-sampling-priority" in h and (prio := dec(h[b"x-datadog-sampling-priority"])) is not None:
                sampled = 1 if 0 < prio < 1 << 63 else -1
            return 0, lo, parent, sampled, SRC_DATADOG
    return NONE


def extract(payloads):
    rows = [extract_one(p) for p in payloads] or [NONE][:0]
    cols = list(zip(*rows)) if rows else [(), (), (), (), ()]
    return {"trace_hi": np.array(cols[0], np.uint64), "trace_lo": np.array(cols[1], np.uint64),
            "parent": np.array(cols[2], np.uint64), "sampled": np.array(cols[3], np.int8),
            "source": np.array(cols[4], np.uint8)}


def format_ids(hi, lo, parent, source, conv_to_ddtrace=False):
    trace_ids, parent_ids = [], []
    for h, l, p, s in zip(hi.tolist(), lo.tolist(), parent.tolist(), source.tolist()):
        if not s:
            trace_ids.append(None)
            parent_ids.append(None)
        elif conv_to_ddtrace or s == SRC_DATADOG:
            trace_ids.append(str(l))
            parent_ids.append(str(p))
        else:
            trace_ids.append((f"{h:016x}" if s != SRC_B3_64 else "") + f"{l:016x}")
            parent_ids.append(f"{p:016x}")
    return trace_ids, parent_ids
