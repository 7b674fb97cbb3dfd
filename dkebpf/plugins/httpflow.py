"""ebpf-net / httpflow: HTTP/1.x requests per connection, path, method and
status, paired in the kernel.

Kernel side: bpf/http.bpf.c (tp_btf sock_send/recv_length and the task's
registers, include/http_msg.bpf.h) sends one struct http_exchange per
finished exchange: the request's first bytes, status, latency, bytes each
way. Any other source of the same record (bpf/tls.bpf.c's OpenSSL uprobes)
feeds the same pipeline through HttpPipeline.add_ring.

User space (no Python per record): the readers copy records into numpy in
batches; HttpPipeline.collect parses the request lines in Cython
(dkebpf._http.exchange_columns) and makes one arrow table of them;
HttpflowPlugin.partial sums them per connection and request key (pyarrow
group_by()), during the interval whenever the readers hold STEP_RECORDS.
Each interval the plugin first triggers the kernel's idle flush (a send of
HTTP_FLUSH_BYTES on its own AF_UNIX socket pair): exchanges whose response
has been quiet for SETTLE_S are reported from the kernel then, not only at
the next response or the connection's end."""
import socket
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import kernel
from ..enrich.addr import LocalAddressResolver
from ..bpf_objects import HTTP, READER_BUFFER_BYTES, BpfSkeleton
from ..enrich.conntags import CONNECTION_TAGS, IP_TYPE_TAGS, add_ip_types, connection_tags
from ..enrich.k8s import add_k8s_tags, k8s_tag_names
from ..errors import BuildError
from ..groupby import group_by
from .base import Plugin, PointBatch

try:
    from .. import _http, _records
except ImportError as exc:  # pragma: no cover - a broken install
    raise BuildError(f"dkebpf's compiled extensions are missing ({exc}); reinstall with pip") from exc

HTTPFLOW_TAGS = CONNECTION_TAGS + IP_TYPE_TAGS
HTTPFLOW_FIELDS = ["count", "latency", "method", "path", "http_version", "status_code",
                   "bytes_read", "bytes_written", "truncated"]
# what a point is keyed by beyond the connection tags (fields in DataKit's
# schema, but one point per distinct value)
REQUEST_KEYS = ["method", "path", "status_code", "http_version", "truncated"]
# a finished response quiet this long is reported by the kernel's idle flush
SETTLE_S = 1.0

_METHODS = pa.array(_http.METHODS, pa.string())
_VERSIONS = pa.array([None] * 10 + ["1.0", "1.1"], pa.string())


class HttpPipeline:
    """http_exchange batches from any number of rings -> one row per
    answered request (pyarrow table). Sources register with add_ring()."""

    def __init__(self):
        self.rings = []
        self.stats = {"exchanges": 0, "exchanges_not_request": 0}

    def add_ring(self, ring):
        """ring: a RingReader of _records.HTTP_EXCHANGE_DTYPE records."""
        if ring.dtype != _records.HTTP_EXCHANGE_DTYPE:
            raise ValueError(f"ring {ring.name}: records are {ring.dtype}, not http_exchange")
        self.rings.append(ring)

    def fileobjs(self):
        return list(self.rings)

    def held(self):
        """Records waiting in the readers' buffers."""
        return sum(r.held for r in self.rings)

    def drain(self, ring=None):
        for r in ([ring] if ring is not None else self.rings):
            r.poll(0)

    def take(self):
        batches = []
        for r in self.rings:
            r.consume()
            batches.append(r.take())
        batches = [b for b in batches if len(b)]
        if not batches:
            return np.empty(0, _records.HTTP_EXCHANGE_DTYPE)
        return batches[0] if len(batches) == 1 else np.concatenate(batches)

    def collect(self):
        """The exchanges reported since the last call, summed (partial())."""
        return self.partial(self.take())

    def partial(self, x):
        """http_exchange records -> one row per raw connection columns
        (integers, 16-byte addresses: no strings yet) and request key
        (method, path, status, version, truncated) with PARTIAL_SUMS:
        grouped in Cython in one pass (dkebpf._http.exchange_groups), so
        only the groups reach arrow. A record whose head is no request line
        (the kernel saw a request start the parser refuses) is counted, not
        reported."""
        self.stats["exchanges"] += len(x)
        g = _http.exchange_groups(x)
        self.stats["exchanges_not_request"] += g["not_request"]
        r = x[g["rep"]]
        client = r["direction"] == _records.DIR_OUTGOING  # the client side writes the request
        cols = {k: pa.array(r[k]) for k in CONN_INT_COLUMNS}
        for k in CONN_BYTES_COLUMNS:
            cols[k] = _fixed16(r[k])
        cols.update({
            "method": _METHODS.take(pa.array(g["method"])),
            "path": g["path"],
            "status_code": pa.array(r["status"].astype(np.int64)),
            "http_version": _VERSIONS.take(pa.array(g["version"])),
            "truncated": pa.array(g["truncated"].astype(bool)),
            "latency_count": pa.array(g["count"]),
            "latency_sum": pa.array(g["latency_sum"]),
            "bytes_read_sum": pa.array(np.where(client, g["resp_bytes_sum"], g["req_bytes_sum"])),
            "bytes_written_sum": pa.array(np.where(client, g["req_bytes_sum"], g["resp_bytes_sum"])),
        })
        return pa.table({k: cols[k] for k in RAW_KEYS + PARTIAL_SUMS})


CONN_INT_COLUMNS = ["pid", "family", "proto", "lport", "rport", "direction"]
CONN_BYTES_COLUMNS = ["laddr", "raddr", "comm"]  # 16 bytes each
RAW_KEYS = CONN_INT_COLUMNS + CONN_BYTES_COLUMNS + REQUEST_KEYS
PARTIAL_SUMS = ["latency_count", "latency_sum", "bytes_read_sum", "bytes_written_sum"]
# records the ring readers hold before they are summed, ahead of the
# interval's end: half of a reader's fixed budget (~22k records, 8 MB)
STEP_RECORDS = READER_BUFFER_BYTES // 2 // _records.HTTP_EXCHANGE_DTYPE.itemsize
# partial aggregates kept before they are summed into one (a long interval
# at full speed makes hundreds of steps)
MERGE_PARTIALS = 16


def merge_partials(partials):
    """Partial sums (HttpflowPlugin.partial) -> one table of them, one row
    per raw key."""
    g = pa.concat_tables(partials)
    if len(partials) > 1:
        g = group_by(g, RAW_KEYS, [(k, "sum") for k in PARTIAL_SUMS])
        g = g.rename_columns(RAW_KEYS + PARTIAL_SUMS)
    return g


def _fixed16(a):
    """A numpy V16/S16 column as arrow fixed_size_binary(16), no copy per row."""
    a = np.ascontiguousarray(a)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(a), [None, pa.py_buffer(a.view(np.uint8))])


class HttpflowPlugin(Plugin):
    name = "ebpf-net/httpflow"

    def __init__(self, ctx):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.log = ctx.logger
        self.bpf = None  # the capture object: http.bpf.o here, tls.bpf.o for httpflow-tls
        self.resolver = LocalAddressResolver()
        self.ephemeral_port = self.cfg.ephemeral_port or kernel.local_port_range(self.cfg.host_proc)[0]
        self.pipeline = HttpPipeline()
        self.points = 0
        self.wakeups = 0
        self.early_steps = 0
        self.flushes = 0
        self.partials = []  # pre-aggregated parts of this interval (partial())
        self.flush_pair = None

    def start(self):
        self.bpf = BpfSkeleton(HTTP).start(knobs=self.knobs())
        self.pipeline.add_ring(self.bpf.rings.events)
        self.open_flush()
        self.log.info("httpflow: %d programs attached", len(self.bpf.links))

    def knobs(self):
        return {"ipv6_disabled": int(bool(self.cfg.ipv6_disabled)), "self_tgid": self.ctx.self_pid,
                "settle_ns": int(SETTLE_S * 1e9)}

    def open_flush(self):
        """The socket pair whose sends trigger the kernel's idle flush
        (include/http.h HTTP_FLUSH_BYTES): datagrams, read back at once."""
        self.flush_pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in self.flush_pair:
            s.setblocking(False)

    def flush_idle(self):
        """Have the kernel report the exchanges quiet for SETTLE_S (the
        programs run during this send, the records are in the ring after)."""
        if self.flush_pair is None:
            return
        a, b = self.flush_pair
        a.send(b"\0" * _records.HTTP_FLUSH_LEN)
        try:
            b.recv(64)
        except BlockingIOError:
            pass
        self.flushes += 1

    def fileobjs(self):
        return self.pipeline.fileobjs()

    def on_readable(self, fileobj):
        # records are copied into the reader's C buffer; no Python per record
        self.pipeline.drain(fileobj)
        self.wakeups += 1
        self._step_if_full()

    def _step_if_full(self):
        """Sum what the readers hold once it is half of their fixed budget,
        instead of holding the records for a whole interval: memory stays the same at any rate and interval, and the
        readers do not reach their cap under a steady load."""
        if self.pipeline.held() >= STEP_RECORDS:
            part = self.pipeline.collect()
            if part.num_rows:
                self.partials.append(part)
            if len(self.partials) >= MERGE_PARTIALS:  # nothing grows with the interval's length
                self.partials = [merge_partials(self.partials)]
            self.early_steps += 1

    def drain(self):
        self.pipeline.drain()

    def collect(self, now_ns):
        t0 = time.monotonic()
        self.flush_idle()
        self.pipeline.drain()
        part = self.pipeline.collect()
        partials, self.partials = self.partials, []
        if part.num_rows:
            partials.append(part)
        if not partials:
            return []
        batch = self.aggregate(partials)
        self.points += batch.num_rows
        self.log.debug("httpflow: %d points in %.3f s (%d ring wakeups, %d early steps so far)",
                       batch.num_rows, time.monotonic() - t0, self.wakeups, self.early_steps)
        return [PointBatch("httpflow", "network", "ebpf-net/httpflow", batch,
                           HTTPFLOW_TAGS + k8s_tag_names(self.ctx.k8s), HTTPFLOW_FIELDS,
                           const_tags={"source": "httpflow"})]

    def aggregate(self, partials):
        """Partial sums of an interval -> one point per connection tags,
        pid, method, path, status and version: count, mean latency, bytes.
        Grouped on the raw connection columns first, so that strings and
        tags are made for a few rows only; then on the tags (ephemeral
        client ports fold into '*')."""
        return aggregate_requests(merge_partials(partials), self.ephemeral_port, self.resolver, self.ctx.domains,
                                  self.ctx.nat, self.ctx.k8s)

    def memory(self):
        m = {}
        m["partial_aggregates"] = sum(t.nbytes for t in self.partials)
        for r in self.pipeline.rings:
            m[f"ring_{r.name}_buffer"] = r.buffer_bytes
        return m

    def counters(self):
        c = {f"http_{k}": v for k, v in self.pipeline.stats.items()}
        c["points"] = self.points
        c["early_steps"] = self.early_steps
        c["idle_flushes"] = self.flushes
        if self.bpf is not None:
            c.update(self.bpf.counters())
        return c

    def stop(self):
        if self.flush_pair is not None:
            for s in self.flush_pair:
                s.close()
            self.flush_pair = None
        if self.bpf is not None:
            self.bpf.close()
            self.bpf = None


def aggregate_requests(g, ephemeral_port, resolver, domains, nat, k8s):
    """One row per connection and request key (RAW_KEYS, comm as 16 bytes)
    with PARTIAL_SUMS -> httpflow points: count, mean latency, bytes, tags.
    k8s: the Kubernetes enrichment or None. Also bpf-netlog's httpflow from
    packets."""
    comm = np.frombuffer(g.column("comm").combine_chunks().buffers()[1], "S16", g.num_rows)
    cols = connection_tags(
        pid=g.column("pid"), comm=_records.comm_to_arrow(comm),
        family=g.column("family"), proto=g.column("proto"), laddr=g.column("laddr"),
        lport=g.column("lport"), raddr=g.column("raddr"), rport=g.column("rport"),
        direction=g.column("direction"), ephemeral_port=ephemeral_port, resolver=resolver,
        domains=domains, nat=nat)
    for k in REQUEST_KEYS + PARTIAL_SUMS:
        cols[k] = g.column(k)
    keys = CONNECTION_TAGS + REQUEST_KEYS
    agg = group_by(pa.table(cols), keys, [
        ("latency_count", "sum"), ("latency_sum", "sum"), ("bytes_read_sum", "sum"),
        ("bytes_written_sum", "sum")])
    out = {k: agg.column(k) for k in keys}
    count = pc.cast(agg.column("latency_count_sum"), pa.int64())
    out["count"] = count
    out["latency"] = pc.cast(pc.round(pc.divide(pc.cast(agg.column("latency_sum_sum"), pa.float64()), count)),
                             pa.int64())
    out["bytes_read"] = pc.cast(agg.column("bytes_read_sum_sum"), pa.int64())
    out["bytes_written"] = pc.cast(agg.column("bytes_written_sum_sum"), pa.int64())
    add_ip_types(out)
    add_k8s_tags(k8s, out)
    table = pa.table(out).combine_chunks()
    return table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
