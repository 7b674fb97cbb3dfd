"""ebpf-trace: one `dketrace` span per request/response exchange a traced
process makes or serves (HTTP/1.x, Redis; MySQL and PostgreSQL told apart
but not yet reported), posted to the linker's ``/v1/bpftracing``.

Kernel side: bpf/trace.bpf.c sends one struct span_msg per message start
on a TCP socket of a traced process, with the TCP sequence number of its
first byte (the linker joins the two ends of an exchange on it) and its
thread. Which processes: ProcessSelector below, written into the kernel's
``trace_pids`` map (children inherit at fork).

Each interval: take the ring's records, pair requests and responses per
connection and give each request its thread_trace_id (ext/trace.pyx),
then make the span columns with pyarrow (protocol fields from the shared
Cython parsers: httpflow's HTTP first-line parser, ext/redis.pyx,
ext/tracectx.pyx for the app's trace ids), and post them as line protocol
to ``<trace_server>/v1/bpftracing?input=ebpf-net%2Fbpftracing`` (the form
DataKit's own ebpftrace input takes) through the collector's HTTP sink
(bounded queue, retries, spool)."""
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..bpf_objects import TRACE, BpfSkeleton
from ..enrich.addr import format_addrs
from ..errors import BuildError, KernelError
from ..output.sink import HttpSink
from .base import Plugin, PointBatch
from .trace_go import GoTracing

try:
    from .. import _http, _mysql, _pgsql, _records, _redis, _sqlnorm, _trace, _tracectx
except ImportError as exc:  # pragma: no cover - a broken install
    raise BuildError(f"dkebpf's compiled extensions are missing ({exc}); reinstall with pip") from exc

MEASUREMENT = "dketrace"
REPORTED = ("http", "redis", "postgresql", "mysql")  # protocols spans are made of (of _trace.PROTO)
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
THREAD_MEMORY_NS = 600_000_000_000  # the original keeps thread entries 10 min
CONN_MEMORY_NS = 600_000_000_000
MAX_CARRIED = 16384                 # records waiting for their other half, at most
RESCAN_S = 1.0                      # /proc rescans for new processes, at most this often
GONE_KEEP_S = 60.0                  # what is known of exited processes is kept this long

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


class SpanBuilder:
    """Message starts -> span rows (pyarrow Table of dketrace columns),
    keeping what is unfinished between calls. No Python object per
    message; per process (names) and per batch only."""

    def __init__(self, selector, conv_to_ddtrace=False, protos=None, settle_ns=SETTLE_NS, expire_ns=EXPIRE_NS,
                 max_carried=MAX_CARRIED):
        self.selector = selector
        self.conv = conv_to_ddtrace
        self.protos = protos  # set of names to report, None: all
        self.settle_ns = settle_ns
        self.expire_ns = expire_ns
        self.max_carried = max_carried
        self.carried = np.zeros(0, _trace.MSG_DTYPE)
        self.conns = np.zeros(0, _trace.CONN_DTYPE)
        self.threads = np.zeros(0, _trace.THREAD_DTYPE)
        self.go = None  # trace_go.GoTracing: goroutines instead of threads in Go processes
        self.stats = {"messages": 0, "spans": 0, "carried_evicted": 0, "unanswered": 0, "orphan_responses": 0,
                      "expired_requests": 0, "undetected_connections": 0}

    def memory(self):
        return {"carried_records": self.carried.nbytes, "connections": self.conns.nbytes,
                "threads": self.threads.nbytes}

    def step(self, new_msgs, now_mono_ns):
        """Pair what is carried plus new_msgs; returns (msgs, spans)."""
        self.stats["messages"] += len(new_msgs)
        msgs = _records_of(self.carried, new_msgs)
        order = np.lexsort((msgs["ts"], msgs["sk"]))  # records stay in place (~1.2 kB each)
        role, spans, carry, seen, st = _trace.pair(msgs, order, self.conns, max(0, now_mono_ns - self.settle_ns),
                                                   max(0, now_mono_ns - self.expire_ns))
        for k, v in st.items():
            self.stats[k] += v
        new_requests = np.flatnonzero((role == _trace.ROLE_REQUEST) & (msgs["user"] == 0))
        self.threads = _trace.link_threads(msgs, role, self.threads, max(0, now_mono_ns - THREAD_MEMORY_NS))
        if self.go is not None:  # Go processes: by goroutine (dkebpf/plugins/trace_go.py)
            self.go.link(msgs, new_requests)
            self.go.forget(now_mono_ns)
        self._merge_conns(seen, now_mono_ns)
        kept = msgs[carry]
        if len(kept) > self.max_carried:  # bounded memory: the oldest go
            self.stats["carried_evicted"] += len(kept) - self.max_carried
            kept = kept[np.argsort(kept["ts"], kind="stable")[-self.max_carried:]]
        self.carried = kept
        self.stats["spans"] += len(spans)
        return msgs, spans

    def _merge_conns(self, seen, now):
        old = self.conns[~np.isin(self.conns["sk"], seen["sk"])]
        old = old[old["last_ts"] + CONN_MEMORY_NS >= now]
        c = np.concatenate([old, seen[seen["closed"] == 0]])
        self.conns = c[np.argsort(c["sk"], kind="stable")]

    def table(self, msgs, spans, mono_to_wall_ns):
        """dketrace columns of the spans (one row each)."""
        if self.protos is not None:
            spans = spans[np.isin(spans["proto"], [_trace.PROTO[p] for p in self.protos if p in _trace.PROTO])]
        spans = spans[np.isin(spans["proto"], [_trace.PROTO[p] for p in REPORTED])]
        n = len(spans)
        # the columns needed, gathered one by one (not whole ~1.2 kB records)
        req = _Gather(msgs, spans["req"])
        resp = _Gather(msgs, spans["resp"])
        incoming = spans["incoming"].astype(bool)
        kind = _choose(incoming, "exit", "entry")
        fam = req["family"]
        start_ns = (spans["start_ns"] + mono_to_wall_ns).astype(np.int64)
        # the process name from the record (right even for a process gone
        # or exec'd since); the service its environment names, else that name
        names = _records.comm_to_arrow(req["pcomm"])
        services = self.selector.services(req["pid"])
        services = pc.if_else(pc.equal(services, ""), names, services)
        cols = {
            "ebpf_span_type": kind, "span_type": kind,
            "direction": _choose(incoming, "outgoing", "incoming"),
            "req_seq": pa.array(req["seq"].astype(np.int64)),
            "resp_seq": pa.array(resp["seq"].astype(np.int64)),
            "thread_trace_id": pa.array(req["user"].astype(np.int64)),
            "tid": pa.array(req["tid"].astype(np.int64)),
            "tid_usr": self.go.tid_usr(msgs, spans["req"]) if self.go else pa.nulls(n, pa.int64()),
            "ktime": pa.array(spans["start_ns"].astype(np.int64)),
            "source_type": _choose(np.zeros(n, bool), "ebpf"),
            "process_name": names, "service": services,
            "thread_name": _records.comm_to_arrow(req["comm"]),
            "pid": pc.cast(pa.array(req["pid"]), pa.string()),
            "src_ip": format_addrs(req["laddr"], fam), "dst_ip": format_addrs(req["raddr"], fam),
            "src_port": pc.cast(pa.array(req["lport"]), pa.string()),
            "dst_port": pc.cast(pa.array(req["rport"]), pa.string()),
            "start": pa.array(start_ns // 1000),
            "duration": pa.array(((spans["end_ns"] - spans["start_ns"]) // 1000).astype(np.int64)),
            "bytes_read": pa.array(np.where(incoming, spans["req_bytes"], spans["resp_bytes"]).astype(np.int64)),
            "bytes_written": pa.array(np.where(incoming, spans["resp_bytes"], spans["req_bytes"]).astype(np.int64)),
            "time": pa.array(start_ns),
        }
        per = {}
        for proto, fn in ((_trace.PROTO["http"], self._http), (_trace.PROTO["redis"], self._redis),
                          (_trace.PROTO["postgresql"], self._pgsql), (_trace.PROTO["mysql"], self._mysql)):
            sel = np.flatnonzero(spans["proto"] == proto)
            if len(sel):
                per[proto] = (sel, fn(msgs, spans[sel]))
        for name in sorted({k for _, c in per.values() for k in c}):
            parts, where = [], []
            typ = next(c[name].type for _, c in per.values() if name in c)
            for sel, c in per.values():
                if name in c:
                    parts.append(c[name])
                    where.append(sel)
            pos = np.concatenate(where)
            full = pa.concat_arrays([a.cast(typ) for a in parts] + [pa.nulls(1, typ)])
            take = np.full(n, len(full) - 1, np.int64)
            take[pos] = np.arange(len(pos))
            cols[name] = full.take(pa.array(take))
        table = pa.table(cols)
        if KEEP in cols:  # exchanges that are no span (a PostgreSQL startup, a Sync alone)
            table = table.filter(pc.fill_null(cols[KEEP], True)).drop_columns([KEEP])
        return table

    def _http(self, msgs, spans):
        req_p = _trace.payloads(msgs, spans["req"])
        q = _trace.http_lines(msgs, spans["req"])
        r = _trace.http_lines(msgs, spans["resp"])
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
        ctx = _tracectx.extract(req_p)
        has = (ctx["source"] != 0) & (ctx["trace_lo"] | ctx["trace_hi"] != 0) & (ctx["parent"] != 0)
        if has.any():
            src = np.where(has, ctx["source"], 0)
            tid, par = _tracectx.format_ids(ctx["trace_hi"], ctx["trace_lo"], ctx["parent"], src, self.conv)
            cols["app_trace_id"] = tid
            cols["app_parent_id"] = par
            nul = pa.array(~has)
            for k, v in (("app_trace_id_l", ctx["trace_lo"]), ("app_trace_id_h", ctx["trace_hi"]),
                         ("app_parent_id_l", ctx["parent"])):
                cols[k] = pc.if_else(nul, pa.nulls(len(has), pa.int64()), pa.array(v.view(np.int64)))
            cols["app_span_sampled"] = pc.if_else(
                nul, pa.nulls(len(has), pa.int64()),
                pa.array(np.where(ctx["sampled"] < 0, -1, 1).astype(np.int64)))
        return cols

    def _redis(self, msgs, spans):
        n = len(spans)
        req_p = _trace.payloads(msgs, spans["req"])
        resp_p = _trace.payloads(msgs, spans["resp"])
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


    def _mysql(self, msgs, spans):
        """MySQL: COM_QUERY and COM_STMT_PREPARE text normalized; OK, ERR
        with code and message. The handshake and other commands (a
        prepared statement's execution too, for now) are no span."""
        n = len(spans)
        req_p = _trace.payloads(msgs, spans["req"])
        resp_p = _trace.payloads(msgs, spans["resp"])
        q = _pick_rows(_mysql.parse(req_p, np.ones(n, bool)), n,
                       lambda r: (r["seq"] == 0) & np.isin(r["kind"], [_mysql.COM_QUERY, _mysql.COM_STMT_PREPARE]))
        r = _first_rows(_mysql.parse(resp_p, np.zeros(n, bool)), n)
        has_q = q["valid"] == 1
        err = (r["valid"] == 1) & (r["kind"] == _mysql.RESP_ERR)
        sql, first = _sql_columns(req_p, has_q, q["sql_off"], q["sql_len"])
        none = pa.nulls(n, pa.string())
        return {
            KEEP: pa.array(has_q), "resource": sql, "resource_type": first,
            "operation": _choose(np.zeros(n, np.int8), "MySQL"),
            "status": _choose(err, "ok", "error"),
            "status_code": pa.array(np.where(err, r["err_code"], 0).astype(np.int64)),
            "err_code": pc.if_else(pa.array(err), pa.array(r["err_code"].astype(np.int64)), pa.nulls(n, pa.int64())),
            "err_msg": pc.if_else(pa.array(err), _trace.slices(resp_p, r["msg_off"], r["msg_len"], err), none),
        }

    def _pgsql(self, msgs, spans):
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


class _Gather:
    """msgs[field][idx] on demand: a span needs a few fields of its
    request and response records, not the whole records."""

    def __init__(self, msgs, idx):
        self.msgs, self.idx = msgs, idx

    def __getitem__(self, field):
        return self.msgs[field][self.idx]


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


def _first_rows(rows, n):
    """The first parser row of each payload 0..n-1 (zeroed where none)."""
    out = np.zeros(n, rows.dtype)
    if len(rows):
        ev = rows["ev"]
        first = np.ones(len(rows), bool)
        first[1:] = ev[1:] != ev[:-1]
        out[ev[first]] = rows[first]
    return out


class TracePlugin(Plugin):
    name = "ebpf-trace"

    def __init__(self, ctx):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.log = ctx.logger
        self.bpf = None
        self.sink = None
        self.selector = ProcessSelector(self.cfg, ctx.self_pid, self.cfg.host_proc or "/proc")
        protos = set(self.cfg.trace_protos or ()) or None
        if protos is not None or self.cfg.trace_protos_blacklist:
            protos = (protos or set(_trace.PROTO)) - set(self.cfg.trace_protos_blacklist or ())
        self.builder = SpanBuilder(self.selector, bool(self.cfg.conv_to_ddtrace), protos)
        self.last_scan = 0.0
        self.kernel_pids = {}  # pid -> value written to trace_pids
        self.points = 0
        self.early_steps = 0
        self.kept = []  # span batches of early steps, for the interval's output (no trace server)

    def start(self):
        self.bpf = BpfSkeleton(TRACE).start(knobs={
            "ipv6_disabled": int(bool(self.cfg.ipv6_disabled)), "self_tgid": self.ctx.self_pid,
            "trace_all": int(not self.selector.whitelist)})
        self.ring = self.bpf.rings.events
        go = GoTracing(self.log, self.cfg.host_proc or "/proc")
        try:
            go.start()
            self.builder.go = go
        except KernelError as exc:  # Go programs are then traced by thread
            go.stop()
            self.log.warning("ebpf-trace: no goroutine probes: %s", str(exc).splitlines()[0])
        self.step_records = max(1, TRACE.rings[0].max_records // 2)
        self.rescan(force=True)
        server = self.cfg.trace_server or self.cfg.datakit_apiserver
        if server:
            self.sink = TraceSink(trace_server_base(server), logger=self.log,
                                  spool_dir=(os.path.join(self.cfg.spool_dir, "bpftracing")
                                             if self.cfg.spool_dir else None))
        self.log.info("ebpf-trace: %d programs attached; %s processes traced; spans to %s",
                      len(self.bpf.links), "listed" if self.selector.whitelist else "all but excluded",
                      self.sink.base_url if self.sink else "the output")

    def rescan(self, force=False):
        """Bring the kernel's trace_pids up to date with /proc (new
        processes, exec'd names, gone ones)."""
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
        if self.builder.go is not None:
            self.builder.go.poll()
        self.drain()
        self.rescan()

    def drain(self):
        """Records into the reader's buffer; once it holds half its fixed
        budget, make spans of them now (posted at once, or kept for the
        interval's --output), instead of letting the kernel ring fill
        until the interval ends: memory stays the same at any rate."""
        self.ring.poll(0)
        if self.ring.held >= self.step_records:
            self.early_steps += 1
            self._step(time.time_ns())

    def take(self):
        self.ring.poll(0)
        self.ring.consume()
        return self.ring.take()

    def _step(self, now_ns):
        msgs, spans = self.builder.step(self.take(), time.monotonic_ns())
        if not len(spans):
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

    def collect(self, now_ns):
        self.rescan()
        self._step(now_ns)
        kept, self.kept = self.kept, []
        # --output: spans go where the other points go (one PointBatch per step's columns)
        return [PointBatch(MEASUREMENT, "bpftracing", INPUT, b, SPAN_TAGS, _fields(b), timestamp_column="time")
                for b in kept]

    def post(self, batch, now_ns):
        """Spans as line protocol to the trace server, one body per set of
        fields present: every line of a body has the same keys, so a
        reader that takes its first line's keys as the schema (as dkebpf
        linker's line-protocol reader does today) loses none. (The sink's
        batch key keeps the sets apart; its URL is the same for all.)"""
        from .._lineproto import encode_batch

        tags = {"host": self.cfg.hostname}  # the spec's tags; global tags would reach the linker's fields
        fields = _fields(batch)
        valid = np.stack([batch.column(f).is_valid().to_numpy(zero_copy_only=False) for f in fields], axis=1)
        shapes, which = np.unique(np.packbits(valid, axis=1), axis=0, return_inverse=True)
        which = which.ravel()
        for k, shape in enumerate(shapes):
            rows = batch.filter(pa.array(which == k))
            present = [f for f, ok in zip(fields, np.unpackbits(shape)[:len(fields)]) if ok]
            body, skipped = encode_batch(MEASUREMENT, rows, SPAN_TAGS, present, tags, now_ns, "time")
            self.sink.submit("bpftracing", f"{INPUT}#{shape.tobytes().hex()}", body, rows.num_rows - skipped)

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
        c["trace_pids_in_kernel"] = len(self.kernel_pids)
        if self.bpf is not None:
            c.update(self.bpf.counters())
        if self.builder.go is not None:
            c.update(self.builder.go.counters())
        if self.sink is not None:
            c.update({f"trace_sink_{k}": v for k, v in self.sink.stats().items()})
        return c

    def stop(self):
        if self.builder.go is not None:
            self.builder.go.stop()
            self.builder.go = None
        if self.bpf is not None:
            self.bpf.close()
            self.bpf = None
        if self.sink is not None:
            self.sink.close(5.0)
            self.sink = None
