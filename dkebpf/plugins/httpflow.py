"""ebpf-net / httpflow: HTTP/1.x requests per connection, path, method and
status, from socket payload prefixes.

Kernel side: bpf/http.bpf.c sends one struct l7_event per HTTP message start
(and one per closed HTTP connection) and counts the bytes in between in its
`http_conns` map. Any other source of the same record (bpf/tls.bpf.c's
OpenSSL uprobes) feeds the same pipeline through HttpPipeline.add_ring.

Each interval (HttpPipeline.collect): take the records of every ring,
parse the first lines in Cython (dkebpf._http.parse_events), pair the k-th
response of a connection with its k-th request (dkebpf._http.pair; what is
not answered yet, and a last response that may still grow, is carried to
the next interval), then aggregate per connection tags, method, path,
status and version with pyarrow."""
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

# requests (or last responses) waiting for their other half across
# intervals, at most: one per open HTTP connection is the usual case
# (~10 MB of l7_event records); the oldest go first, counted
MAX_CARRIED = 16384

_METHODS = pa.array(_http.METHODS, pa.string())
_VERSIONS = pa.array([None] * 10 + ["1.0", "1.1"], pa.string())


def _empty_events():
    return np.empty(0, _records.L7_EVENT_DTYPE)


class HttpPipeline:
    """l7_event batches from any number of rings -> one row per answered
    request (pyarrow table). Sources register with add_ring(); a source
    that can tell a connection's current byte totals passes totals_fn
    (numpy array of sk -> _http.TOTALS_DTYPE rows), used for a last response
    that has been quiet for settle_ns."""

    def __init__(self, settle_ns=1_000_000_000, expire_ns=60_000_000_000, max_carried=MAX_CARRIED):
        self.rings = []
        self.totals_fns = []
        self.settle_ns = settle_ns
        self.expire_ns = expire_ns
        self.max_carried = max_carried
        self.carried_events = _empty_events()
        self.carried_msgs = np.empty(0, _http.MSG_DTYPE)
        self.stats = {"events": 0, "messages": 0, "events_without_message": 0, "pairs": 0,
                      "unmatched_responses": 0, "unanswered_closed": 0, "expired_requests": 0,
                      "carried_evicted": 0}

    def add_ring(self, ring, totals_fn=None):
        """ring: a RingReader of _records.L7_EVENT_DTYPE records."""
        if ring.dtype != _records.L7_EVENT_DTYPE:
            raise ValueError(f"ring {ring.name}: records are {ring.dtype}, not l7_event")
        self.rings.append(ring)
        if totals_fn is not None:
            self.totals_fns.append(totals_fn)

    def fileobjs(self):
        return list(self.rings)

    def held(self):
        """Records waiting in the readers' buffers."""
        return sum(r.held for r in self.rings)

    def memory(self):
        """Bytes of records carried to the next interval."""
        return {"carried_records": self.carried_events.nbytes + self.carried_msgs.nbytes}

    def drain(self, ring=None):
        for r in ([ring] if ring is not None else self.rings):
            r.poll(0)

    def take_events(self):
        batches = []
        for r in self.rings:
            r.consume()
            batches.append(r.take())
        batches = [b for b in batches if len(b)]
        if not batches:
            return _empty_events()
        return batches[0] if len(batches) == 1 else np.concatenate(batches)

    def _totals(self, msgs):
        """Current totals of connections whose last response was carried."""
        if not self.totals_fns or not len(msgs):
            return None
        sks = np.unique(msgs["sk"][msgs["kind"] == _http.KIND_RESPONSE])
        if not len(sks):
            return None
        parts = [fn(sks) for fn in self.totals_fns]
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return None
        tot = np.concatenate(parts)
        return tot[np.argsort(tot["sk"], kind="stable")]

    def process(self, new_events, now_mono_ns):
        """Pair what is carried plus new_events; returns (events, msgs,
        pairs) for the answered requests."""
        self.stats["events"] += len(new_events)
        new_msgs, unparsed = _http.parse_events(new_events)
        self.stats["events_without_message"] += unparsed
        self.stats["messages"] += len(new_msgs)
        totals = self._totals(self.carried_msgs)
        base = len(self.carried_events)
        if base:
            new_msgs["ev"] += base
            events = np.concatenate([self.carried_events, new_events])
            msgs = np.concatenate([self.carried_msgs, new_msgs])
        else:
            events, msgs = new_events, new_msgs
        self.drain()
        order = np.lexsort((msgs["off"], msgs["ev"], msgs["ts"], msgs["pid"], msgs["sk"]))
        msgs = msgs[order]
        self.drain()
        pairs, carry, st = _http.pair(events, msgs, max(0, now_mono_ns - self.settle_ns),
                                      max(0, now_mono_ns - self.expire_ns), totals)
        for k, v in st.items():
            self.stats[k] += v
        self.stats["pairs"] += len(pairs)
        self._carry(events, msgs[carry])
        return events, msgs, pairs

    def _carry(self, events, kept):
        if len(kept) > self.max_carried:  # bounded memory: the oldest go
            self.stats["carried_evicted"] += len(kept) - self.max_carried
            kept = kept[np.argsort(kept["ts"], kind="stable")[-self.max_carried:]]
        ev_idx = np.unique(kept["ev"])
        self.carried_events = events[ev_idx]
        kept = kept.copy()
        kept["ev"] = np.searchsorted(ev_idx, kept["ev"])
        self.carried_msgs = kept

    def collect(self, now_mono_ns=None):
        """One row per answered request since the last call (pyarrow table)."""
        now = time.monotonic_ns() if now_mono_ns is None else now_mono_ns
        events, msgs, pairs = self.process(self.take_events(), now)
        # the agent's loop is busy here: empty the kernel rings into the
        # readers' buffers between the steps, so they do not fill meanwhile
        self.drain()
        rows = self.rows(events, msgs, pairs)
        self.drain()
        return rows

    @staticmethod
    def rows(events, msgs, pairs):
        """Per-pair columns: the connection (from the request's record:
        integers and 16-byte addresses, no strings yet), method, path,
        version, status, bytes each way, latency. Only the needed columns
        of the records are gathered, not whole 600-byte records."""
        req = msgs[pairs["req"]]
        resp = msgs[pairs["resp"]]
        ri = req["ev"]
        version = np.where(req["version"] != 0, req["version"], resp["version"])
        sent_req = events["op"][ri] == _records.L7_SEND  # the client side sends the request
        cols = {k: pa.array(events[k][ri]) for k in CONN_INT_COLUMNS}
        for k in CONN_BYTES_COLUMNS:
            cols[k] = _fixed16(events[k][ri])
        cols.update({
            "method": _METHODS.take(pa.array(req["method"])),
            "path": _http.paths_to_arrow(events, msgs, pairs["req"]),
            "http_version": _VERSIONS.take(pa.array(version)),
            "status_code": pa.array(resp["status"].astype(np.int64)),
            "truncated": pa.array(req["truncated"].astype(bool)),
            "bytes_written": pa.array(np.where(sent_req, pairs["req_bytes"], pairs["resp_bytes"]).astype(np.int64)),
            "bytes_read": pa.array(np.where(sent_req, pairs["resp_bytes"], pairs["req_bytes"]).astype(np.int64)),
            "latency": pa.array(pairs["latency"]),
        })
        return pa.table(cols)


CONN_INT_COLUMNS = ["pid", "family", "proto", "lport", "rport", "direction"]
CONN_BYTES_COLUMNS = ["laddr", "raddr", "comm"]  # 16 bytes each
RAW_KEYS = CONN_INT_COLUMNS + CONN_BYTES_COLUMNS + REQUEST_KEYS
PARTIAL_SUMS = ["latency_count", "latency_sum", "bytes_read_sum", "bytes_written_sum"]
# records the ring readers hold before they are paired, ahead of the
# interval's end: half of a reader's fixed budget (~13k records, 8 MB)
STEP_RECORDS = READER_BUFFER_BYTES // 2 // _records.L7_EVENT_DTYPE.itemsize
# partial aggregates kept before they are summed into one (a long interval
# at full speed makes hundreds of steps)
MERGE_PARTIALS = 16


def merge_partials(partials):
    """Partial sums (HttpflowPlugin.partial) -> one table of them, one row
    per raw key."""
    g = pa.concat_tables(partials)
    if len(partials) > 1:
        g = g.group_by(RAW_KEYS, use_threads=False).aggregate([(k, "sum") for k in PARTIAL_SUMS])
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
        self.pipeline = HttpPipeline(expire_ns=int(max(2 * self.cfg.interval, 60) * 1e9))
        self.points = 0
        self.wakeups = 0
        self.early_steps = 0
        self.partials = []  # pre-aggregated parts of this interval (partial())

    def start(self):
        self.bpf = BpfSkeleton(HTTP).start(
            knobs={"ipv6_disabled": int(bool(self.cfg.ipv6_disabled)), "self_tgid": self.ctx.self_pid})
        self.conns = self.bpf.maps.http_conns
        self.pipeline.add_ring(self.bpf.rings.events, self.kernel_totals)
        self.log.info("httpflow: %d programs attached", len(self.bpf.links))

    def kernel_totals(self, sks):
        """Byte totals of still-open HTTP sockets from the http_conns map.
        One lookup per connection whose last response is pending, not per
        event."""
        out = np.zeros(len(sks), _http.TOTALS_DTYPE)
        n = 0
        for sk in sks:
            v = self.conns.lookup(np.uint64(sk).tobytes())
            if v is None:
                continue
            hc = np.frombuffer(v, _records.HTTP_CONN_DTYPE, 1)[0]
            out[n] = (sk, hc["sent"], hc["recv"])
            n += 1
        return out[:n]

    def fileobjs(self):
        return self.pipeline.fileobjs()

    def on_readable(self, fileobj):
        # records are copied into the reader's C buffer; no Python per record
        self.pipeline.drain(fileobj)
        self.wakeups += 1
        self._step_if_full()

    def _step_if_full(self):
        """Pair and pre-aggregate what the readers hold once it is half of
        their fixed budget, instead of holding ~600-byte records for a whole
        interval: memory stays the same at any rate and interval, and the
        readers do not reach their cap under a steady load."""
        if self.pipeline.held() >= STEP_RECORDS:
            rows = self.pipeline.collect()
            if rows.num_rows:
                self.partials.append(self.partial(rows))
            if len(self.partials) >= MERGE_PARTIALS:  # nothing grows with the interval's length
                self.partials = [merge_partials(self.partials)]
            self.early_steps += 1

    def drain(self):
        self.pipeline.drain()

    def collect(self, now_ns):
        t0 = time.monotonic()
        rows = self.pipeline.collect()
        partials, self.partials = self.partials, []
        if rows.num_rows:
            partials.append(self.partial(rows))
        if not partials:
            return []
        batch = self.aggregate(partials)
        self.pipeline.drain()
        self.points += batch.num_rows
        self.log.debug("httpflow: %d points in %.3f s (%d ring wakeups, %d early steps so far)",
                       batch.num_rows, time.monotonic() - t0, self.wakeups, self.early_steps)
        return [PointBatch("httpflow", "network", "ebpf-net/httpflow", batch,
                           HTTPFLOW_TAGS + k8s_tag_names(self.ctx.k8s), HTTPFLOW_FIELDS,
                           const_tags={"source": "httpflow"})]

    @staticmethod
    def partial(rows):
        """One row per answered request -> one row per raw connection
        columns (integers, 16-byte addresses) and request keys, with
        count and sums: small, and summable again."""
        g = rows.group_by(RAW_KEYS, use_threads=False).aggregate([
            ("latency", "count"), ("latency", "sum"), ("bytes_read", "sum"), ("bytes_written", "sum")])
        return g.rename_columns(RAW_KEYS + PARTIAL_SUMS)

    def aggregate(self, partials):
        """Partial sums of an interval -> one point per connection tags,
        pid, method, path, status and version: count, mean latency, bytes.
        Grouped on the raw connection columns first, so that strings and
        tags are made for a few rows only; then on the tags (ephemeral
        client ports fold into '*')."""
        return aggregate_requests(merge_partials(partials), self.ephemeral_port, self.resolver, self.ctx.domains,
                                  self.ctx.nat, self.ctx.k8s)

    def memory(self):
        m = self.pipeline.memory()
        m["partial_aggregates"] = sum(t.nbytes for t in self.partials)
        for r in self.pipeline.rings:
            m[f"ring_{r.name}_buffer"] = r.buffer_bytes
        return m

    def counters(self):
        c = {f"http_{k}": v for k, v in self.pipeline.stats.items()}
        c["points"] = self.points
        c["early_steps"] = self.early_steps
        if self.bpf is not None:
            c.update(self.bpf.counters())
        return c

    def stop(self):
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
    agg = pa.table(cols).group_by(keys, use_threads=False).aggregate([
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
