"""ebpf-trace: one `dketrace` span per request/response exchange a traced
process makes or serves (HTTP/1.x, Redis, MySQL, PostgreSQL; HTTP/2 and
gRPC per stream: plugins/trace_h2.py), posted to
the linker's ``/v1/bpftracing``.

Kernel side: bpf/trace.bpf.c sends one struct span_msg per message start
on a TCP socket of a traced process, with the TCP sequence number of its
first byte (the linker joins the two ends of an exchange on it) and its
thread. TLS through OpenSSL: bpf/tls.bpf.c loaded a second time with
``trace_spans`` (bpf_objects.TLS_TRACE, uprobes on every libssl found, as
httpflow-tls's: tls_probes.TlsProbes) sends the same records for the
plaintext of SSL_read/SSL_write into the same ring, on the same maps
(reused), keyed by the socket with TLS_SK_TAG set (HTTP/2 inside: every
SSL call, followed by plugins/trace_h2.py as plaintext h2). Which processes:
ProcessSelector below, written into the kernel's ``trace_pids`` map
(children inherit at fork).

Each interval: take the ring's records, pair requests and responses per
connection and give each request its thread_trace_id (ext/trace.pyx),
then make the span columns with pyarrow (protocol fields from the shared
Cython parsers: httpflow's HTTP first-line parser, ext/redis.pyx,
ext/mysql.pyx, ext/pgsql.pyx, ext/tracectx.pyx for the app's trace ids),
and post them as line protocol to ``<trace_server>/v1/bpftracing?input=ebpf-net%2Fbpftracing`` (the form
DataKit's own ebpftrace input takes) through the collector's HTTP sink
(bounded queue, retries, spool)."""
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..bpf_objects import TLS_TRACE, TRACE, TRACE_WAKE_BYTES, BpfSkeleton, tls_trace_start
from ..enrich.addr import format_addrs
from ..errors import BuildError, KernelError
from ..output.sink import HttpSink
from .base import Plugin, PointBatch
from . import trace_h2
from .tls_probes import TlsProbes
from .trace_go import GoTracing

try:
    from .. import _http, _mysql, _pgsql, _records, _redis, _sqlnorm, _trace, _tracectx
except ImportError as exc:  # pragma: no cover - a broken install
    raise BuildError(f"dkebpf's compiled extensions are missing ({exc}); reinstall with pip") from exc

MEASUREMENT = "dketrace"
# protocols pair() makes spans of (of _trace.PROTO; HTTP/2's: trace_h2)
REPORTED = ("http", "redis", "postgresql", "mysql")
KEEP = "_keep"  # a per-protocol column: False for an exchange that is no span
INPUT = "ebpf-net/bpftracing"
# spans.json's tags; everything else is a field (the linker reads both)
SPAN_TAGS = ["src_ip", "dst_ip", "src_port", "dst_port", "service"]
# env vars naming a process's service, first non-empty wins (the original's order)
SERVICE_ENV = ("DKE_SERVICE", "DK_BPFTRACE_SERVICE", "DD_SERVICE", "OTEL_SERVICE_NAME")
# a response nothing followed is reported after this long quiet, ended at
# its first call (a keep-alive connection's last response)
SETTLE_NS = 1_000_000_000
EXPIRE_NS = 120_000_000_000        # a request unanswered this long is dropped (counted)
CONN_MEMORY_NS = 600_000_000_000
MAX_CARRIED = 16384                 # records waiting for their other half, at most
# the span builder's staging buffer (~13.9k records of ~1.2 kB): ring records
# are copied into it once and a step pairs all of it; half of it at most is
# what is carried
STAGE_BYTES = 16 << 20
RESCAN_S = 1.0                      # /proc rescans for new processes, at most this often
GONE_KEEP_S = 60.0                  # what is known of exited processes is kept this long
# spans kept for --output (no trace server) past this many: flushed now, not
# at the interval's end (memory bounded at any rate and interval)
KEEP_SPANS = 32768
# whole-stage steps one drain makes at most (a full 32 MiB ring is ~9): the
# agent's loop gets back to its flushes and other plugins in between
MAX_DRAIN_STEPS = 16

_METHODS = pa.array(_http.METHODS, pa.string())
_VERSIONS = pa.array([None] * 10 + ["1.0", "1.1"], pa.string())


def _read(path, limit=1 << 20):
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


class ProcessSelector:
    """Which processes ebpf-trace follows, from the config's lists, with
    one precedence: (1) the collector itself and processes named
    ``datakit*`` never; (2) ``trace_name_blacklist`` and
    ``trace_env_blacklist`` (any listed variable set) exclude; (3) when
    ``trace_name_list`` or ``trace_env_list`` is given, only processes
    named in it or having one of its variables; (4) else every process.
    A process's name is its comm (the group leader's); its service the
    first of SERVICE_ENV in its environment, else its name. Each process is read
    once (per pid and start time), not per span."""

    def __init__(self, cfg, self_pid, proc="/proc"):
        self.proc = proc
        self.self_pid = self_pid
        self.name_list = set(cfg.trace_name_list or ())
        self.env_list = tuple(cfg.trace_env_list or ())
        self.name_black = set(cfg.trace_name_blacklist or ())
        self.env_black = tuple(cfg.trace_env_blacklist or ())
        self.whitelist = bool(self.name_list or self.env_list)
        self.procs = {}  # pid -> (start, name, service, traced)
        self.gone = {}   # pid -> when a scan first missed it

    def _env(self, pid):
        raw = _read(f"{self.proc}/{pid}/environ")
        env = {}
        for item in (raw or b"").split(b"\0"):
            k, sep, v = item.partition(b"=")
            if sep:
                env[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
        return env

    def decide(self, pid, name, env):
        if pid == self.self_pid or name.startswith("datakit"):
            return False
        if name in self.name_black or any(k in env for k in self.env_black):
            return False
        if self.whitelist:
            return name in self.name_list or any(k in env for k in self.env_list)
        return True

    def _look(self, pid):
        stat = _read(f"{self.proc}/{pid}/stat", 4096)
        if not stat:
            return None
        close = stat.rfind(b")")
        name = stat[stat.find(b"(") + 1:close].decode("utf-8", "replace")  # comm
        start = stat[close + 2:].split(b" ")[19]  # starttime, field 22
        known = self.procs.get(pid)
        if known and known[0] == start and known[1] == name:  # same process, not exec'd since
            self.gone.pop(pid, None)
            return known
        env = self._env(pid)
        service = next((env[k] for k in SERVICE_ENV if env.get(k)), "")
        info = (start, name, service, self.decide(pid, name, env))
        self.procs[pid] = info
        self.gone.pop(pid, None)
        return info

    def scan(self):
        """Re-read /proc: {pid: traced} of every process now (new and
        exec'd ones read; gone ones kept for GONE_KEEP_S, for the spans
        still to come from them)."""
        out = {}
        for entry in os.listdir(self.proc):
            if entry.isdigit():
                info = self._look(int(entry))
                if info is not None:
                    out[int(entry)] = info[3]
        now = time.monotonic()
        for pid in set(self.procs) - set(out):
            if now - self.gone.setdefault(pid, now) > GONE_KEEP_S:
                del self.procs[pid], self.gone[pid]
        return out

    def services(self, pids):
        """The service its environment names ("" none) for a pid column
        (pyarrow strings), one /proc read per unseen process."""
        uniq, inv = np.unique(np.asarray(pids), return_inverse=True)
        services = []
        for pid in uniq.tolist():
            info = self.procs.get(pid) or self._look(pid)
            services.append(info[2] if info else "")
        return pa.array(services, pa.string()).take(pa.array(inv.ravel().astype(np.int32)))


class TraceSink(HttpSink):
    """The collector's HTTP sink, posting to the trace server's
    ``/v1/bpftracing`` (where DataKit's ebpftrace input and ``dkebpf
    linker`` take spans) instead of ``/v1/write/<category>``."""

    def _url(self, key):
        return f"{self.base_url}/v1/bpftracing?input=ebpf-net%2Fbpftracing"


def trace_server_base(url):
    """trace_server as a base URL: the original's default includes the
    path (http://0.0.0.0:9529/v1/bpftracing); both forms are accepted."""
    url = url.rstrip("/")
    return url[: -len("/v1/bpftracing")] if url.endswith("/v1/bpftracing") else url


class PreparedStatements:
    """MySQL statements prepared on each connection: (socket, statement
    id) -> normalized SQL text and its first word, for the spans of their
    executions. Columns (numpy keys sorted, pyarrow strings), no Python
    object per statement; a socket's statements go when it closes (its
    memory and the ids are reused), the oldest past MAX_STATEMENTS."""

    MAX_STATEMENTS = 65536
    ID_BITS = 20  # a connection's ids count from 1: past 2**20 statements on one, two may meet

    def __init__(self):
        self.keys = np.zeros(0, np.uint64)
        self.sql = pa.array([], pa.string())
        self.first = pa.array([], pa.string())

    @property
    def nbytes(self):
        return self.keys.nbytes + self.sql.nbytes + self.first.nbytes

    @classmethod
    def _key(cls, sk, stmt_id):
        """The socket's low 44 bits (kernel memory: the high ones are all
        ones) and the id's low 20, in one sortable u64."""
        b = np.uint64(cls.ID_BITS)
        return (np.asarray(sk, np.uint64) << b) | (np.asarray(stmt_id, np.uint64) & np.uint64((1 << cls.ID_BITS) - 1))

    def add(self, sk, stmt_id, sql, first):
        if not len(sk):
            return
        keys = np.concatenate([self.keys, self._key(sk, stmt_id)])
        sqls = pa.concat_arrays([self.sql, sql.cast(pa.string())])
        firsts = pa.concat_arrays([self.first, first.cast(pa.string())])
        # the latest of equal keys (a re-prepared id), the newest MAX_STATEMENTS
        order = np.lexsort((np.arange(len(keys)), keys))
        last = np.ones(len(order), bool)
        last[:-1] = keys[order][1:] != keys[order][:-1]
        keep = order[last]
        if len(keep) > self.MAX_STATEMENTS:
            keep = np.sort(np.sort(keep)[-self.MAX_STATEMENTS:])
            keep = keep[np.argsort(keys[keep], kind="stable")]
        self.keys = keys[keep]
        self.sql = sqls.take(pa.array(keep))
        self.first = firsts.take(pa.array(keep))

    def lookup(self, sk, stmt_id):
        """(sql, first) per row, null where not known."""
        k = self._key(sk, stmt_id)
        at = np.searchsorted(self.keys, k)
        found = at < len(self.keys)
        found[found] = self.keys[at[found]] == k[found]
        idx = pa.array(np.where(found, at, 0), mask=~found)
        if not len(self.keys):
            return pa.nulls(len(k), pa.string()), pa.nulls(len(k), pa.string())
        return self.sql.take(idx), self.first.take(idx)

    def forget(self, sks):
        if len(sks) and len(self.keys):
            b = np.uint64(self.ID_BITS)
            gone = np.isin(self.keys >> b, self._key(sks, 0) >> b)
            if gone.any():
                keep = np.flatnonzero(~gone)
                self.keys = self.keys[keep]
                self.sql = self.sql.take(pa.array(keep))
                self.first = self.first.take(pa.array(keep))


class SpanBuilder:
    """Message starts -> span rows (pyarrow Table of dketrace columns),
    keeping what is unfinished between calls. No Python object per
    message; per process (names) and per batch only."""

    def __init__(self, selector, conv_to_ddtrace=False, protos=None, settle_ns=SETTLE_NS, expire_ns=EXPIRE_NS,
                 max_carried=MAX_CARRIED, stage_bytes=STAGE_BYTES):
        self.selector = selector
        self.conv = conv_to_ddtrace
        self.protos = protos  # set of names to report, None: all
        self.settle_ns = settle_ns
        self.expire_ns = expire_ns
        self.max_carried = max_carried
        self.conns = np.zeros(0, _trace.CONN_DTYPE)
        self.statements = PreparedStatements()
        # the staging buffer: what is carried at its front, then the new
        # records (fill() copies them in straight from the ring); allocated
        # on first use, kept: a fresh array per step cost its page faults
        self.stage_rows = max(2, stage_bytes // _trace.MSG_DTYPE.itemsize)
        self.stage = None
        self.staged = 0      # rows of the stage filled
        self.ncarried = 0    # of which carried from the step before
        self._carry = None   # (array, indices): to carry, not yet moved to the stage's front
        self.given_up = np.zeros(0, np.uint64)
        self.pipelining = np.zeros(0, np.uint64)
        self.shapes = np.zeros(0, SHAPE_DTYPE)  # of the last step's records (_request_shapes)
        self.closed_before = np.zeros(0, np.uint64)
        self.go = None  # trace_go.GoTracing: goroutines instead of threads in Go processes
        self.h2 = trace_h2.H2Spans()  # HTTP/2 streams, followed across steps
        self.stats = {"messages": 0, "spans": 0, "carried_evicted": 0, "unanswered": 0, "orphan_responses": 0,
                      "expired_requests": 0, "undetected_connections": 0, "exits_ambiguous_parent": 0,
                      "exits_without_entry": 0, "pipelined_calls": 0, "pipelined_rest_spans": 0,
                      "pipelined_mismatched": 0}

    @property
    def carried(self):
        """The records carried to the next step (a copy)."""
        if self._carry is not None:
            return self._carry[0][self._carry[1]]
        if self.stage is None:
            return np.zeros(0, _trace.MSG_DTYPE)
        return self.stage[:self.ncarried].copy().view(_trace.MSG_DTYPE)

    @property
    def room(self):
        """Rows of the stage free for new records (once what is carried is
        at its front)."""
        return self.stage_rows - (len(self._carry[1]) if self._carry is not None else self.staged)

    def memory(self):
        carried = (len(self._carry[1]) if self._carry is not None else self.ncarried) * _RECORD.itemsize
        stage = self.stage.nbytes if self.stage is not None else 0
        if self._carry is None or (self.stage is not None and np.may_share_memory(self._carry[0], self.stage)):
            stage -= carried  # they are in the stage (its front, or where the drain put them): counted once
        return {"carried_records": carried, "connections": self.conns.nbytes,
                "prepared_statements": self.statements.nbytes, "http2_streams": self.h2.nbytes,
                "step_buffer": stage}

    def _compact(self):
        """The records to carry to the stage's front (moved only now: the
        step's spans were read from where they were)."""
        if self.stage is None:
            self.stage = np.empty(self.stage_rows, _RECORD)
        if self._carry is None:
            return
        src, idx = self._carry
        self._carry = None
        n = len(idx)
        if n > len(self.stage):
            self.stage = np.empty(n + n // 4, _RECORD)
        self.stage[:n] = src.view(_RECORD)[idx]  # a gather first: safe where they overlap
        self.staged = self.ncarried = n

    def fill(self, reader):
        """Records from a RingReader into the stage, after what is carried,
        up to its size; the rest stays in the ring. Returns how many came."""
        self._compact()
        before = self.staged
        self.staged = reader.take_into(self.stage, before)
        return self.staged - before

    def step(self, new_msgs, now_mono_ns):
        """Pair what is carried plus new_msgs; returns (msgs, spans)."""
        self._compact()
        if not self.staged:  # nothing carried: the records as they are
            out = self._pair(_records_of(new_msgs), len(new_msgs), now_mono_ns)
            self._compact()  # the carried ones copied now: the caller's array may change
            return out
        new = np.ascontiguousarray(new_msgs.astype(_trace.MSG_DTYPE, copy=False))
        n = self.staged + len(new)
        if n > len(self.stage):  # a caller's batch larger than the stage
            grown = np.empty(n + n // 4, _RECORD)
            grown[:self.staged] = self.stage[:self.staged]
            self.stage = grown
        self.stage[self.staged:n] = new.view(_RECORD)
        self.staged = n
        return self.step_staged(now_mono_ns)

    def step_staged(self, now_mono_ns):
        """Pair what the stage holds (carried, then what fill() brought);
        returns (msgs, spans): msgs is the stage itself, valid until the
        next fill() or step."""
        self._compact()
        msgs = self.stage[:self.staged].view(_trace.MSG_DTYPE)
        new = self.staged - self.ncarried
        self.staged = self.ncarried = 0
        return self._pair(msgs, new, now_mono_ns)

    def _pair(self, msgs, new, now_mono_ns):
        self.stats["messages"] += new
        order = np.lexsort((msgs["ts"], msgs["sk"]))  # records stay in place (~1.2 kB each)
        role, spans, carry, seen, st, until = _trace.pair(msgs, order, self.conns,
                                                          max(0, now_mono_ns - self.settle_ns),
                                                          max(0, now_mono_ns - self.expire_ns))
        self.h2.feed(msgs, order, role, until)
        new_requests = np.flatnonzero((role == _trace.ROLE_REQUEST) & (msgs["user"] == 0))
        # how many messages each request record holds (pipelining): for
        # the links here and the split of the spans (table())
        self.shapes = _request_shapes(msgs, np.flatnonzero(role == _trace.ROLE_REQUEST), spans, seen)
        pipes = self.shapes["count"] > 1
        st.update(_trace.link_threads(msgs, role, until, pipes))
        # connections seen pipelining: the kernel is told to keep their
        # responses whole (their lengths split the next pipelines)
        self.pipelining = np.unique(msgs["sk"][pipes])
        if self.go is not None:  # Go processes: by goroutine (dkebpf/plugins/trace_go.py)
            self.go.link(msgs, new_requests)
            self.go.forget(now_mono_ns)
        self.h2.collect(msgs, max(0, now_mono_ns - self.expire_ns), now_mono_ns)  # after the threads' ids
        for k, v in st.items():
            self.stats[k] += v
        self.stats.update(self.h2.tracker.stats)
        self._merge_conns(seen, now_mono_ns)
        # connections whose protocol was not told (TLS, ssh, ...): the kernel
        # is told to stop sending their message starts (TracePlugin)
        self.given_up = seen["sk"][(seen["proto"] == _trace.PROTO_GIVEN_UP) & (seen["closed"] == 0)]
        # the statements of sockets closed in the step before (this step's
        # spans, made after it, may still execute them)
        self.statements.forget(self.closed_before)
        self.closed_before = seen["sk"][seen["closed"] == 1]
        kept = np.flatnonzero(carry)
        # bounded memory, and half the stage left for new records: the oldest go
        limit = min(self.max_carried, self.stage_rows // 2)
        if len(kept) > limit:
            self.stats["carried_evicted"] += len(kept) - limit
            kept = np.sort(kept[np.argsort(msgs["ts"][kept], kind="stable")[-limit:]])
        self._carry = (msgs, kept) if len(kept) else None
        self.stats["spans"] += len(spans)
        return msgs, spans

    def _merge_conns(self, seen, now):
        old = self.conns[~np.isin(self.conns["sk"], seen["sk"])]
        # HTTP/2 connections stay while the tracker follows them: one idle
        # longer than this could not be told again without its preface
        # (given up, its close not given to the tracker)
        old = old[(old["last_ts"] + CONN_MEMORY_NS >= now)
                  | ((old["proto"] == _trace.PROTO["http2"]) & self.h2.tracker.following(old["sk"]))]
        c = np.concatenate([old, seen[seen["closed"] == 0]])
        self.conns = c[np.argsort(c["sk"], kind="stable")]

    def table(self, msgs, spans, mono_to_wall_ns):
        """dketrace columns of the spans (one row each), and of the HTTP/2
        streams finished since the last table (plugins/trace_h2.py)."""
        h2 = trace_h2.chosen(self.h2.take(), self.protos)
        table = self._table(msgs, spans, mono_to_wall_ns)
        if not len(h2):
            return table
        head = trace_h2.heads(h2)
        cols = self._common(head, h2["req_seq"], h2["resp_seq"], h2["start_ns"], h2["end_ns"],
                            h2["incoming"].astype(bool), h2["req_bytes"], h2["resp_bytes"], mono_to_wall_ns,
                            pa.nulls(len(h2), pa.int64()))
        cols.update(trace_h2.columns(h2))
        cols.update(self._app_ids(h2))
        h2_table = pa.table(cols)
        if not table.num_rows:
            return h2_table
        return pa.concat_tables([table, h2_table], promote_options="default")

    def _common(self, req, req_seq, resp_seq, start, end, incoming, req_bytes, resp_bytes,
                mono_to_wall_ns, tid_usr):
        """The columns every protocol's span has, from its request
        record's fields (req[field]), its times and byte counts."""
        n = len(start)
        kind = _choose(incoming, "exit", "entry")
        start_ns = (start + mono_to_wall_ns).astype(np.int64)
        # the process name from the record (right even for a process gone
        # or exec'd since); the service its environment names, else that name
        names = _records.comm_to_arrow(req["pcomm"])
        services = self.selector.services(req["pid"])
        services = pc.if_else(pc.equal(services, ""), names, services)
        return {
            "ebpf_span_type": kind, "span_type": kind,
            "direction": _choose(incoming, "outgoing", "incoming"),
            "req_seq": pa.array(np.asarray(req_seq).astype(np.int64) & 0xFFFFFFFF),
            "resp_seq": pa.array(np.asarray(resp_seq).astype(np.int64) & 0xFFFFFFFF),
            "thread_trace_id": pa.array(req["user"].astype(np.int64)),
            "tid": pa.array(req["tid"].astype(np.int64)),
            "tid_usr": tid_usr,
            "ktime": pa.array(start.astype(np.int64)),
            "source_type": _choose(np.zeros(n, bool), "ebpf"),
            "process_name": names, "service": services,
            "thread_name": _records.comm_to_arrow(req["comm"]),
            "pid": pc.cast(pa.array(req["pid"]), pa.string()),
            **_endpoints(req),
            "start": pa.array(start_ns // 1000),
            "duration": pa.array(((end - start) // 1000).astype(np.int64)),
            "bytes_read": pa.array(np.where(incoming, req_bytes, resp_bytes).astype(np.int64)),
            "bytes_written": pa.array(np.where(incoming, resp_bytes, req_bytes).astype(np.int64)),
            "time": pa.array(start_ns),
        }

    def _table(self, msgs, spans, mono_to_wall_ns):
        want = [_trace.PROTO[p] for p in REPORTED if self.protos is None or p in self.protos]
        keep = np.isin(spans["proto"], want)
        if not keep.all():  # (all of them, usually: no copy then)
            spans = _take(spans, np.flatnonzero(keep))
        shapes = self.shapes
        if len(shapes) != len(msgs):  # not the records of the last step
            shapes = _request_shapes(msgs, np.unique(spans["req"]), spans, self.conns[:0])
        spans, pipe, st = _split_pipelines(msgs, spans, shapes)
        for k, v in st.items():
            self.stats[k] += v
        n = len(spans)
        # the columns needed, gathered one by one (not whole ~1.2 kB records)
        req = _Gather(msgs, spans["req"])
        resp = _Gather(msgs, spans["resp"])
        # one of several pipelined messages: its own length, else the socket's counters
        req_bytes = np.where(pipe["many"], pipe["req_len"], spans["req_bytes"])
        resp_bytes = np.where(pipe["many"], pipe["resp_len"], spans["resp_bytes"])
        # a pipelined message's sequence number: its call's plus its offset in it
        cols = self._common(req, _seq(req, pipe["req_off"]), _seq(resp, pipe["resp_off"]),
                            spans["start_ns"], spans["end_ns"],
                            spans["incoming"].astype(bool), req_bytes, resp_bytes, mono_to_wall_ns,
                            self.go.tid_usr(msgs, spans["req"]) if self.go else pa.nulls(n, pa.int64()))
        # the requests of an incoming pipeline after its first: ids of their
        # own (served one after another, each its own entry; the exits made
        # meanwhile got none of them: link_threads' pipelines)
        later = (pipe["sub"] > 0) & spans["incoming"].astype(bool)
        if later.any():
            ids = req["user"].astype(np.uint64)
            ids[later] = _sub_ids(ids[later], pipe["sub"][later])
            cols["thread_trace_id"] = pa.array(ids.astype(np.int64))
        per = {}
        for proto, fn in ((_trace.PROTO["http"], self._http), (_trace.PROTO["redis"], self._redis),
                          (_trace.PROTO["postgresql"], self._pgsql), (_trace.PROTO["mysql"], self._mysql)):
            sel = np.flatnonzero(spans["proto"] == proto)
            if len(sel) == n:  # one protocol (the usual step): the rows as they are, not a copy
                per[proto] = (sel, fn(msgs, spans, pipe))
            elif len(sel):
                per[proto] = (sel, fn(msgs, _take(spans, sel), _take(pipe, sel)))
        for name in sorted({k for _, c in per.values() for k in c}):
            parts, where = [], []
            typ = next(c[name].type for _, c in per.values() if name in c)
            for sel, c in per.values():
                if name in c:
                    parts.append(c[name])
                    where.append(sel)
            if len(parts) == 1 and len(where[0]) == n:  # one protocol only (sel is sorted): as it is
                cols[name] = parts[0]
                continue
            pos = np.concatenate(where)
            full = pa.concat_arrays([a.cast(typ) for a in parts] + [pa.nulls(1, typ)])
            take = np.full(n, len(full) - 1, np.int64)
            take[pos] = np.arange(len(pos))
            cols[name] = full.take(pa.array(take))
        table = pa.table(cols)
        if KEEP in cols:  # exchanges that are no span (a PostgreSQL startup, a Sync alone)
            table = table.filter(pc.fill_null(cols[KEEP], True)).drop_columns([KEEP])
        return table

    def _http(self, msgs, spans, pipe):
        # each span's own message (of a pipelined call: pipe's offsets)
        req_p = _trace.payloads(msgs, spans["req"], pipe["req_off"], pipe["req_len"])
        q = _trace.http_lines(msgs, spans["req"], pipe["req_off"])
        r = _trace.http_lines(msgs, spans["resp"], pipe["resp_off"])
        ok = (q["kind"] == 1) & (r["kind"] == 2)
        method = _METHODS.take(pa.array(q["method"]))
        path = _trace.slices(req_p, q["path_off"], q["path_len"], q["kind"] == 1)
        status = r["status"].astype(np.int64)
        cols = {
            "http_method": method, "http_route": path,
            "http_version": _VERSIONS.take(pa.array(np.where(q["version"] != 0, q["version"], r["version"]))),
            "http_status_code": pc.if_else(pa.array(r["kind"] == 2), pc.cast(pa.array(status), pa.string()),
                                           pa.nulls(len(r), pa.string())),
            "status": _choose(np.where(~ok, 3, (status >= 400).astype(np.int8) + (status >= 500)),
                              "ok", "warning", "error", "unknown"),
            "operation": _choose(np.zeros(len(spans), np.int8), "HTTP"),
            "resource": pc.binary_join_element_wise(method, pc.fill_null(path, ""), " "),
        }
        cols.update(self._app_ids(_tracectx.extract(req_p)))
        return cols

    def _app_ids(self, ctx):
        """app_* columns of the app trace context (tracectx's fields:
        source, trace_hi, trace_lo, parent, sampled), none without one."""
        has = (ctx["source"] != 0) & (ctx["trace_lo"] | ctx["trace_hi"] != 0) & (ctx["parent"] != 0)
        if not has.any():
            return {}
        cols = {}
        src = np.where(has, ctx["source"], 0)
        tid, par = _tracectx.format_ids(ctx["trace_hi"], ctx["trace_lo"], ctx["parent"], src, self.conv)
        cols["app_trace_id"] = tid
        cols["app_parent_id"] = par
        nul = pa.array(~has)
        for k, v in (("app_trace_id_l", ctx["trace_lo"]), ("app_trace_id_h", ctx["trace_hi"]),
                     ("app_parent_id_l", ctx["parent"])):
            cols[k] = pc.if_else(nul, pa.nulls(len(has), pa.int64()), pa.array(np.ascontiguousarray(v).view(np.int64)))
        cols["app_span_sampled"] = pc.if_else(
            nul, pa.nulls(len(has), pa.int64()),
            # 1 keep, -1 drop, 0 the app did not decide (B3 without a flag,
            # Datadog without a priority): the linker's sampling decides then
            pa.array(ctx["sampled"].astype(np.int64)))
        return cols

    def _redis(self, msgs, spans, pipe):
        """One span per command; pipelined commands (several in one call)
        are split by _split_pipelines: each span's payloads are its own
        command and the reply of the same place."""
        n = len(spans)
        req_p = _trace.payloads(msgs, spans["req"], pipe["req_off"], pipe["req_len"])
        resp_p = _trace.payloads(msgs, spans["resp"], pipe["resp_off"], pipe["resp_len"])
        q = _first_rows(_redis.parse(req_p, np.ones(n, bool)), n)
        r = _first_rows(_redis.parse(resp_p, np.zeros(n, bool)), n)
        cmd = pc.utf8_upper(_trace.slices(req_p, q["word_off"], q["word_len"], q["valid"] == 1))
        err = (r["valid"] == 1) & (r["error"] == 1)
        text = _trace.slices(resp_p, r["word_off"], r["word_len"], r["valid"] == 1)
        none = pa.nulls(n, pa.string())
        return {
            "resource": cmd, "resource_type": cmd,
            # a request that is not RESP (a broken or hostile peer) has no
            # command: the operation is then "Redis" alone, never null
            "operation": pc.binary_join_element_wise(_choose(np.zeros(n, np.int8), "Redis"), cmd, " ",
                                                     null_handling="skip"),
            "status": _choose(err, "ok", "error"),
            "status_code": pa.array(np.where(err, 201, 200).astype(np.int64)),
            "err_msg": pc.if_else(pa.array(err), text, none),
            "status_msg": pc.if_else(pa.array(err), none, text),
        }


    def _mysql(self, msgs, spans, pipe):
        """MySQL: COM_QUERY and COM_STMT_PREPARE text normalized; a
        COM_STMT_EXECUTE gets the text of its statement (PreparedStatements
        below; "EXECUTE" when it was prepared before we watched); OK, ERR
        with code and message. The handshake and other commands are no
        span."""
        n = len(spans)
        req_p = _trace.payloads(msgs, spans["req"])
        resp_p = _trace.payloads(msgs, spans["resp"])
        q = _pick_rows(_mysql.parse(req_p, np.ones(n, bool)), n,
                       lambda r: (r["seq"] == 0) & np.isin(r["kind"], [_mysql.COM_QUERY, _mysql.COM_STMT_PREPARE,
                                                                       _mysql.COM_STMT_EXECUTE]))
        r = _first_rows(_mysql.parse(resp_p, np.zeros(n, bool)), n)
        has_q = q["valid"] == 1
        err = (r["valid"] == 1) & (r["kind"] == _mysql.RESP_ERR)
        execute = has_q & (q["kind"] == _mysql.COM_STMT_EXECUTE)
        text = has_q & ~execute
        sql, first = _sql_columns(req_p, text, q["sql_off"], q["sql_len"])
        sk = msgs["sk"][spans["req"]]
        prepared = text & (q["kind"] == _mysql.COM_STMT_PREPARE) & (r["valid"] == 1) & (r["kind"] == _mysql.RESP_OK)
        self.statements.add(sk[prepared], r["stmt_id"][prepared], sql.filter(pa.array(prepared)),
                            first.filter(pa.array(prepared)))
        if execute.any():
            e_sql, e_first = self.statements.lookup(sk, q["stmt_id"])
            unknown = _choose(np.zeros(n, np.int8), "EXECUTE")
            ex = pa.array(execute)
            sql = pc.if_else(ex, pc.coalesce(e_sql, unknown), sql)
            first = pc.if_else(ex, pc.coalesce(e_first, unknown), first)
        none = pa.nulls(n, pa.string())
        return {
            KEEP: pa.array(has_q), "resource": sql, "resource_type": first,
            "operation": _choose(np.zeros(n, np.int8), "MySQL"),
            "status": _choose(err, "ok", "error"),
            "status_code": pa.array(np.where(err, r["err_code"], 0).astype(np.int64)),
            "err_code": pc.if_else(pa.array(err), pa.array(r["err_code"].astype(np.int64)), pa.nulls(n, pa.int64())),
            "err_msg": pc.if_else(pa.array(err), _trace.slices(resp_p, r["msg_off"], r["msg_len"], err), none),
        }

    def _pgsql(self, msgs, spans, pipe):
        """PostgreSQL: the query of a simple (Q) or extended (P) request,
        normalized; CommandComplete's tag, ErrorResponse's message. Other
        exchanges (startup, authentication, Sync alone) are no span."""
        n = len(spans)
        req_p = _trace.payloads(msgs, spans["req"])
        resp_p = _trace.payloads(msgs, spans["resp"])
        q = _pick_rows(_pgsql.parse(req_p, np.ones(n, bool)), n, lambda r: np.isin(r["type"], [ord("Q"), ord("P")]))
        r = _pgsql.parse(resp_p, np.zeros(n, bool))
        err = _pick_rows(r, n, lambda x: x["type"] == ord("E"))
        done = _pick_rows(r, n, lambda x: x["type"] == ord("C"))
        has_q, has_err, has_done = q["type"] != 0, err["type"] != 0, done["type"] != 0
        sql, first = _sql_columns(req_p, has_q, q["text_off"], q["text_len"])
        tag = _trace.slices(resp_p, done["text_off"], done["text_len"], has_done)
        affected = pc.cast(pc.if_else(pc.match_substring_regex(tag, r" [0-9]+$"),
                                      pc.replace_substring_regex(tag, r"^.* ", ""),
                                      pa.scalar(None, pa.string())), pa.int64())
        none = pa.nulls(n, pa.string())
        return {
            KEEP: pa.array(has_q), "resource": sql, "resource_type": first,
            "operation": _choose(np.zeros(n, np.int8), "PostgreSQL"),
            "status": _choose(has_err, "ok", "error"),
            "pgsql_err_msg": pc.if_else(pa.array(has_err),
                                        _trace.slices(resp_p, err["text_off"], err["text_len"], has_err),
                                        none),
            "pgsql_msg": tag, "pgsql_affected_row": affected,
        }


_RECORD = np.dtype((np.void, _trace.MSG_DTYPE.itemsize))


def _records_of(*parts):
    """One writable MSG_DTYPE array of the parts (pair() merges payloads
    in it), concatenated as raw records: numpy's structured concatenate
    would repack the dtype and go field by field."""
    parts = [np.ascontiguousarray(p.astype(_trace.MSG_DTYPE, copy=False)) for p in parts if len(p)]
    if len(parts) == 1 and parts[0].flags.writeable:
        return parts[0]
    if not parts:
        return np.zeros(0, _trace.MSG_DTYPE)
    return np.concatenate([p.view(_RECORD) for p in parts]).view(_trace.MSG_DTYPE)


def _endpoints(req):
    """src_ip, dst_ip, src_port, dst_port of the request records' fields
    (req[field]): made once per connection (the records of one socket with
    the same addresses), then taken per span."""
    sk, laddr, raddr = req["sk"], req["laddr"], req["raddr"]
    lport, rport, fam = req["lport"], req["rport"], req["family"]
    _, first, inv = np.unique(sk, return_index=True, return_inverse=True)
    rep = first[inv.ravel()]
    # a socket's memory reused in the step by another connection: its own
    other = ((laddr != laddr[rep]) | (raddr != raddr[rep]) | (lport != lport[rep]) | (rport != rport[rep])
             | (fam != fam[rep]))
    rep[other] = np.flatnonzero(other)
    one, inv = np.unique(rep, return_inverse=True)
    take = pa.array(inv.ravel().astype(np.int32))
    return {"src_ip": format_addrs(laddr[one], fam[one]).take(take),
            "dst_ip": format_addrs(raddr[one], fam[one]).take(take),
            "src_port": pc.cast(pa.array(lport[one]), pa.string()).take(take),
            "dst_port": pc.cast(pa.array(rport[one]), pa.string()).take(take)}


def _seq(rec, off):
    """The sequence numbers of messages at offset off in their calls
    (rec: _Gather of the records); 0 where the kernel did not know the
    call's (span_msg.seq_unknown: TLS read mid-record on a connection
    older than the tracing): no join rather than a wrong one."""
    return np.where(rec["seq_unknown"] != 0, 0, rec["seq"].astype(np.int64) + off)


# a record's fields before its payload (146 of its ~1.2 kB): what a span
# takes of its request and response records
_HEAD_BYTES = _trace.MSG_DTYPE.fields["payload"][1]
_HEAD_NAMES = [k for k in _trace.MSG_DTYPE.names if _trace.MSG_DTYPE.fields[k][1] < _HEAD_BYTES]
_HEAD_DTYPE = np.dtype({"names": _HEAD_NAMES, "formats": [_trace.MSG_DTYPE.fields[k][0] for k in _HEAD_NAMES],
                        "offsets": [_trace.MSG_DTYPE.fields[k][1] for k in _HEAD_NAMES], "itemsize": _HEAD_BYTES})


def _take(rows, idx, head=None):
    """rows[idx] of a structured array (head: only the fields of that
    dtype, the front of each row), taken as raw bytes: numpy gathers a
    structured dtype field by field, 2.6-3.4 times slower (spans, pipe
    rows and record heads of a 13.6k-record step, ~1-6 ms each)."""
    rows = np.ascontiguousarray(rows)
    dt = rows.dtype if head is None else head
    raw = np.ndarray(len(rows), np.dtype((np.void, dt.itemsize)), rows, 0, (rows.dtype.itemsize,))
    return raw.take(np.asarray(idx, np.intp)).view(dt)


class _Gather:
    """msgs[field][idx]: the heads of the records (no payload) gathered
    once, in one pass; a field of ~1.2 kB strided records gathered one by
    one cost a pass over all of them each."""

    def __init__(self, msgs, idx):
        self.heads = _take(msgs, idx, _HEAD_DTYPE)

    def __getitem__(self, field):
        return self.heads[field]


def _choose(which, *strings):
    """pyarrow strings: strings[which[i]] per row (bool or small int)."""
    return pa.array(strings, pa.string()).take(pa.array(np.asarray(which).astype(np.int8)))


def _sql_columns(req_p, has_sql, sql_off, sql_len):
    """resource (normalized SQL) and resource_type (its first word)."""
    n = len(has_sql)
    sql = _sqlnorm.normalize(req_p, np.arange(n), sql_off, np.where(has_sql, sql_len, 0))
    first = pc.utf8_upper(pc.fill_null(pc.list_element(pc.split_pattern(sql, " ", max_splits=1), 0), ""))
    return sql, first


def _fields(batch):
    return [c for c in batch.schema.names if c not in SPAN_TAGS and c != "time"]


def _pick_rows(rows, n, want):
    """The first parser row of each payload 0..n-1 that `want` accepts
    (zeroed where none)."""
    return _first_rows(rows[want(rows)] if len(rows) else rows, n)


# protocols whose pipelined calls are split, and their message-bounds
# parsers (payloads, requests) -> rows with ev, off, length, valid
_BOUNDS = {_trace.PROTO["http"]: _http.message_bounds, _trace.PROTO["redis"]: _redis.parse}


def _sub_ids(ids, sub):
    """A positive int64 id per (id, place in its pipeline), never 0
    (splitmix64's finalizer)."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.asarray(sub, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = (z ^ (z >> np.uint64(31))) & np.uint64(0x7FFFFFFFFFFFFFFF)
    return np.where(z == 0, np.uint64(1), z)


def _delimited(rows, n):
    """Per payload 0..n-1 of a message-bounds parser's rows: how many
    messages are delimited, whether something that is not (cut, unknown)
    follows, and the first one's length."""
    good = (rows["valid"] == 1) & (rows["length"] > 0)
    ev = rows["ev"].astype(np.int64)
    count = np.bincount(ev[good], minlength=n)
    undelimited = np.bincount(ev[~good], minlength=n) > 0
    first = np.zeros(n, np.int64)
    _, at = np.unique(ev[good], return_index=True)  # rows come in payload order
    first[ev[good][at]] = rows["length"][good][at]
    return count, undelimited, first


# per record: the messages a request record's payload delimits
# (_request_shapes); zero for other records
SHAPE_DTYPE = np.dtype([("count", "<i4"), ("undelimited", "?"), ("first", "<i8")])


def _request_shapes(msgs, requests, spans, conns):
    """SHAPE_DTYPE per message: of each request record of a protocol that
    pipelines (_BOUNDS) how many messages its payload delimits, whether
    something undelimited follows them, the first one's length. The
    protocol: its span's, else (unanswered yet: its connection is open)
    its connection's."""
    out = np.zeros(len(msgs), SHAPE_DTYPE)
    idx = requests
    if not len(idx):
        return out
    proto = np.zeros(len(msgs), np.uint8)
    if len(conns):
        at = np.minimum(np.searchsorted(conns["sk"], msgs["sk"][idx]), len(conns) - 1)
        proto[idx] = np.where(conns["sk"][at] == msgs["sk"][idx], conns["proto"][at], 0)
    proto[spans["req"]] = spans["proto"]
    proto = proto[idx]
    for p, bounds in _BOUNDS.items():
        sel = idx[proto == p]
        if len(sel):
            count, undelimited, first = _delimited(bounds(_trace.payloads(msgs, sel), np.ones(len(sel), bool)),
                                                   len(sel))
            out["count"][sel], out["undelimited"][sel], out["first"][sel] = count, undelimited, first
    return out


def _split_pipelines(msgs, spans, shapes):
    """Spans whose calls carried several messages (HTTP/1.x or Redis
    pipelining) made one span per message: the rows repeated, with
    _trace.PIPE_DTYPE per row: the message's place (`sub`), its and its
    response's offsets in their calls (for req_seq/resp_seq: both ends of
    the connection count the same bytes) and lengths
    (_trace.split_pipelines). Other spans stay one row (sub 0, offsets 0,
    lengths of their whole runs): every span whose request run is one
    message and nothing more (`shapes`, per record: _request_shapes),
    without parsing its response (one message asked for is one span
    whatever comes back). Returns (spans, pipe, stats)."""
    n = len(spans)
    one = np.ones(n, bool)
    parts, stats = [], {}
    sh = _take(shapes, spans["req"])
    several = (sh["count"] > 1) | ((sh["count"] == 1) & (sh["undelimited"]
                                                        | (sh["first"] < spans["req_bytes"].astype(np.int64))))
    for proto, bounds in _BOUNDS.items():
        sel = np.flatnonzero(several & (spans["proto"] == proto))
        if not len(sel):
            continue
        s = _take(spans, sel)
        q = bounds(_trace.payloads(msgs, s["req"]), np.ones(len(sel), bool))
        r = bounds(_trace.payloads(msgs, s["resp"]), np.zeros(len(sel), bool))
        pipe, st = _trace.split_pipelines(q, r, s["req_bytes"], s["resp_bytes"], msgs["cap_len"][s["req"]],
                                          msgs["cap_len"][s["resp"]])
        pipe["span"] = sel[pipe["span"]]
        one[sel] = False
        parts.append(pipe)
        for k, v in st.items():
            stats[k] = stats.get(k, 0) + v
    whole = np.zeros(int(one.sum()), _trace.PIPE_DTYPE)
    whole["span"] = np.flatnonzero(one)
    # (the run's bytes, at least what was captured: its payload is whole)
    whole["req_len"] = np.maximum(spans["req_bytes"][one], msgs["cap_len"][spans["req"][one]])
    whole["resp_len"] = np.maximum(spans["resp_bytes"][one], msgs["cap_len"][spans["resp"][one]])
    if not parts:
        return spans, whole, stats
    pipe = np.concatenate([whole] + parts)
    pipe = _take(pipe, np.argsort(pipe["span"], kind="stable"))  # back in span order
    return _take(spans, pipe["span"]), pipe, stats


def _nth_rows(rows, sub):
    """For each span row i, the parser row number sub[i] of payload i,
    zeroed where there is none."""
    sub = np.asarray(sub, np.int64)
    ev = np.arange(len(sub))
    out = np.zeros(len(sub), rows.dtype)
    if not len(rows) or not len(sub):
        return out
    e = rows["ev"].astype(np.int64)
    start = np.searchsorted(e, ev)  # rows come in payload order
    count = np.bincount(e, minlength=len(sub))[:len(sub)]
    ok = sub < count
    out[ok] = rows[start[ok] + sub[ok]]
    return out


def _first_rows(rows, n):
    """The first parser row of each payload 0..n-1 (zeroed where none)."""
    return _nth_rows(rows, np.zeros(n, np.int64))


class TracePlugin(Plugin):
    name = "ebpf-trace"

    def __init__(self, ctx):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.log = ctx.logger
        self.bpf = None
        self.tls = None  # TlsProbes of TLS_TRACE: spans of OpenSSL connections
        self.sink = None
        self.selector = ProcessSelector(self.cfg, ctx.self_pid, self.cfg.host_proc or "/proc")
        protos = set(self.cfg.trace_protos or ()) or None
        if protos is not None or self.cfg.trace_protos_blacklist:
            protos = (protos or set(_trace.PROTO) | set(trace_h2.NAMES)) - set(self.cfg.trace_protos_blacklist or ())
        self.builder = SpanBuilder(self.selector, bool(self.cfg.conv_to_ddtrace), protos)
        self.last_scan = 0.0
        self.kernel_pids = {}  # pid -> value written to trace_pids
        self.points = 0
        self.early_steps = 0
        self.ignored = 0  # connections the kernel was told to stop sending
        self.whole = 0  # connections the kernel was told to send whole responses of (pipelining)
        self.kept = []  # span batches of early steps, for the interval's output (no trace server)
        self.kept_rows = 0
        self.ring_peak = 0
        self.wakeups = 0

    def start(self):
        self.bpf = BpfSkeleton(TRACE).start(knobs={
            "ipv6_disabled": int(bool(self.cfg.ipv6_disabled)), "self_tgid": self.ctx.self_pid,
            "trace_all": int(not self.selector.whitelist), "trace_wake_bytes": TRACE_WAKE_BYTES})
        self.ring = self.bpf.rings.events
        self._start_tls()
        go = GoTracing(self.log, self.cfg.host_proc or "/proc")
        try:
            go.start()
            self.builder.go = go
        except KernelError as exc:  # Go programs are then traced by thread
            go.stop()
            self.log.warning("ebpf-trace: no goroutine probes: %s", str(exc).splitlines()[0])
        self.rescan(force=True)
        server = self.cfg.trace_server or self.cfg.datakit_apiserver
        if server:
            self.sink = TraceSink(trace_server_base(server), logger=self.log,
                                  spool_dir=(os.path.join(self.cfg.spool_dir, "bpftracing")
                                             if self.cfg.spool_dir else None))
        self.log.info("ebpf-trace: %d programs attached; %s processes traced; spans to %s",
                      len(self.bpf.links), "listed" if self.selector.whitelist else "all but excluded",
                      self.sink.base_url if self.sink else "the output")

    def _start_tls(self):
        """TLS spans: tls.bpf.o with trace_spans on this object's ring,
        trace_pids and trace_conns. Without it (no libssl uprobes here)
        plaintext spans go on and TLS connections give none."""
        tls = TlsProbes(self.cfg, self.log, self.ctx.self_pid, spec=TLS_TRACE, label="ebpf-trace TLS")
        try:
            tls.start(**tls_trace_start(self.bpf, not self.selector.whitelist))
        except KernelError as exc:
            self.log.warning("ebpf-trace: no TLS spans: %s", str(exc).splitlines()[0])
            return
        self.tls = tls

    def rescan(self, force=False):
        """Bring the kernel's trace_pids up to date with /proc (new
        processes, exec'd names, gone ones), and the TLS uprobes with the
        libssl files processes map (at TlsProbes' own pace)."""
        if self.tls is not None:
            self.tls.rescan()
        now = time.monotonic()
        if not force and now - self.last_scan < RESCAN_S:
            return
        self.last_scan = now
        m = self.bpf.maps.trace_pids
        # the kernel's entries first, /proc then: a process forked in
        # between has an entry not in `keys`, which is left alone
        keys = m.dump(np.uint32)[0]
        want = {}
        alive = self.selector.scan()
        for pid, traced in alive.items():
            if self.selector.whitelist and traced:
                want[pid] = _trace.PID_TRACED
            elif not self.selector.whitelist and not traced:
                want[pid] = _trace.PID_EXCLUDED
        # with entries the kernel made at fork for processes gone since
        for pid in (set(self.kernel_pids) - set(want)) | set(keys[~np.isin(keys, list(alive))].tolist()):
            m.delete(np.uint32(pid).tobytes())
        for pid, v in want.items():
            if self.kernel_pids.get(pid) != v:
                m.update(np.uint32(pid).tobytes(), np.uint8(v).tobytes())
        self.kernel_pids = want
        if self.builder.go is not None:
            self.builder.go.update(pid for pid, traced in alive.items() if traced)

    def fileobjs(self):
        return [self.ring] + (self.builder.go.fileobjs() if self.builder.go else [])

    def on_readable(self, fileobj):
        """Drain; True (flush now) once KEEP_SPANS spans wait for --output."""
        self.wakeups += 1
        if self.builder.go is not None:
            self.builder.go.poll()
        self.drain()
        self.rescan()
        return self.kept_rows >= KEEP_SPANS

    def drain(self):
        """Records straight into the span builder's stage; each time it is
        full, make spans of all of it now (posted at once, or kept for the
        interval's --output), instead of letting the kernel ring fill until
        the interval ends: memory stays the same at any rate."""
        self._fill()
        for _ in range(MAX_DRAIN_STEPS):
            if self.builder.room:
                return
            self.early_steps += 1
            self._step_once(time.time_ns())
            self._fill()

    def _step(self, now_ns):
        """Spans of what the stage holds, then of what the ring still has
        beyond it (the stage filled up), until the ring is drained."""
        self._fill()
        while True:
            full = not self.builder.room
            self._step_once(now_ns)
            if not full:
                return
            self._fill()

    def _fill(self):
        # the most the kernel ring held when read: how close it came to full
        self.ring_peak = max(self.ring_peak, self.ring.pending_bytes)
        return self.builder.fill(self.ring)

    def _step_once(self, now_ns):
        msgs, spans = self.builder.step_staged(time.monotonic_ns())
        self.ignored += self._flag(self.builder.given_up, _trace.FLAG_IGNORED)
        self.whole += self._flag(self.builder.pipelining, _trace.FLAG_WHOLE)
        if not len(spans) and not len(self.builder.h2.done):
            return
        table = self.builder.table(msgs, spans, time.time_ns() - time.monotonic_ns())
        if not table.num_rows:
            return
        batch = table.combine_chunks().to_batches()[0]
        self.points += batch.num_rows
        if self.sink is not None:
            self.post(batch, now_ns)
        else:
            self.kept.append(batch)
            self.kept_rows += batch.num_rows

    def _flag(self, sks, bit):
        """Flag these connections in the kernel's trace_flags (their BPF
        program copies the bits at their next message start):
        _trace.FLAG_IGNORED (their calls are counted, their message starts,
        1 kB each, no longer sent) or FLAG_WHOLE (their HTTP/1.x responses
        sent whole: they pipeline). trace_conns is only read, once, for
        the entry's `born` (which socket at that address is meant), never
        written: a whole value written back overwrote the kernel's counters
        and flags of the socket updated meanwhile (and its h2 byte, which
        the value's dtype did not cover, with whatever the heap held: the
        pipelining test failed after the unknown-protocol one). A few
        syscalls per connection flagged (not per message); none for a
        connection closed (no entry). Returns how many were flagged."""
        if not len(sks) or self.bpf is None:
            return 0
        conns, flags = self.bpf.maps.trace_conns, self.bpf.maps.trace_flags
        done = 0
        for sk in sks.tolist():
            key = np.uint64(sk).tobytes()
            born = self._born(conns, key)
            if born is None:  # closed: nothing to flag
                continue
            v = np.zeros(1, _trace.TRACE_FLAGS_DTYPE)  # zeros: no stray byte in its padding
            cur = flags.lookup(key)
            if cur is not None:
                old = np.frombuffer(cur, _trace.TRACE_FLAGS_DTYPE)[0]
                if old["born"] == born:
                    if old["bits"] & bit:
                        continue
                    v["bits"] = old["bits"]
            v["born"] = born
            v["bits"] |= bit
            # not looked at again after the write: a socket closed between
            # the look and the write (tcp_destroy_sock's delete came first)
            # leaves a flag that no later socket at its address takes (its
            # `born` differs: span_flags_apply deletes it at that socket's
            # first message start)
            flags.update(key, v.tobytes())
            done += 1
        return done

    @staticmethod
    def _born(conns, key):
        cur = conns.lookup(key)
        return None if cur is None else int(np.frombuffer(cur, _trace.TRACE_CONN_DTYPE)["born"][0])

    def collect(self, now_ns):
        self.rescan()
        self._step(now_ns)
        kept, self.kept, self.kept_rows = self.kept, [], 0
        # --output: spans go where the other points go (one PointBatch per step's columns)
        return [PointBatch(MEASUREMENT, "bpftracing", INPUT, b, SPAN_TAGS, _fields(b), timestamp_column="time")
                for b in kept]

    def post(self, batch, now_ns):
        """Spans as line protocol to the trace server, one body per step: a
        span's null fields (another protocol's, an absent app trace id) are
        left out of its line, and the linker's reader
        (``lineproto.read_points``) takes lines with different field sets
        in one body."""
        from .._lineproto import encode_batch

        tags = {"host": self.cfg.hostname}  # the spec's tags; global tags would reach the linker's fields
        body, skipped = encode_batch(MEASUREMENT, batch, SPAN_TAGS, _fields(batch), tags, now_ns, "time")
        self.sink.submit("bpftracing", INPUT, body, batch.num_rows - skipped)

    def memory(self):
        m = self.builder.memory()
        if self.builder.go is not None:
            m.update(self.builder.go.memory())
        m["ring_events_buffer"] = self.ring.buffer_bytes if self.bpf else 0
        m["kept_spans"] = sum(b.nbytes for b in self.kept)
        return m

    def counters(self):
        c = {f"trace_{k}": v for k, v in self.builder.stats.items()}
        c["points"] = self.points
        c["early_steps"] = self.early_steps
        c["ring_events_peak_bytes"] = self.ring_peak
        c["wakeups"] = self.wakeups
        c["trace_connections_ignored"] = self.ignored
        c["trace_connections_pipelining"] = self.whole
        c["trace_pids_in_kernel"] = len(self.kernel_pids)
        if self.bpf is not None:
            c.update(self.bpf.counters())
        if self.builder.go is not None:
            c.update(self.builder.go.counters())
        if self.tls is not None:
            c.update({(k if k.startswith("kernel_") else f"trace_{k}"): v for k, v in self.tls.counters().items()})
        if self.sink is not None:
            c.update({f"trace_sink_{k}": v for k, v in self.sink.stats().items()})
        return c

    def stop(self):
        if self.tls is not None:
            self.tls.stop()
            self.tls = None
        if self.builder.go is not None:
            self.builder.go.stop()
            self.builder.go = None
        if self.bpf is not None:
            self.bpf.close()
            self.bpf = None
        if self.sink is not None:
            self.sink.close(5.0)
            self.sink = None
