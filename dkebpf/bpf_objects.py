"""The BPF objects the collector loads, each declared once, and the one
runtime that starts and stops them (in the spirit of libbpf's generated
skeleton and cilium's loadBpfObjects).

An ObjectSpec names, for one ``bpf/<name>.bpf.c``: the ``const volatile``
knobs user space sets, the programs and maps it uses by name, the ring
buffers with the numpy dtype of their records, and the per-CPU drop counter
array with index -> name. tests/unit/test_bpf_objects.py opens every
compiled object (no privileges needed) and checks each declared name
against it, so a typo fails there and not at run time.

BpfSkeleton(spec).start(...) does open -> knobs -> ring sizes -> load ->
attach (tracepoints by section, cgroup programs to the root cgroup v2) ->
rings -> the caller's setup, and on any failure undoes what was
done before re-raising: a half start is rolled back here and only here.
close() detaches every link (also uprobes attached later through it),
closes the rings, then the object."""
import os
from dataclasses import dataclass, field
from types import MappingProxyType, SimpleNamespace
from typing import Optional, Tuple

from . import kernel
from .errors import BuildError

try:
    from . import _goroutines, _libbpf, _records, _trace
except ImportError as exc:  # pragma: no cover - a broken install
    raise BuildError(f"dkebpf's compiled extensions are missing ({exc}); reinstall with pip") from exc

BPF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf")
ATTACH_ALL = "all"  # ObjectSpec.attach: every autoloaded program, by its section


def bpf_object_path(name):
    """Path of the compiled bpf/<name>.bpf.c shipped in the package."""
    path = os.path.join(BPF_DIR, f"{name}.bpf.o")
    if not os.path.exists(path):
        raise BuildError(f"BPF object {path} is missing: the package was built without clang; "
                         "reinstall after apt-get install clang libbpf-dev")
    return path


# what a RingReader may hold between two takes (its C buffer, grown on
# demand): a fixed budget, never the event rate times the interval; beyond
# it records wait in the kernel ring, whose drops the BPF program counts.
# 4 MiB: a plugin that works in steps of half of it (httpflow) holds a few
# copies of a step at its peak; at 16 MiB the collector's peak under
# nginx+wrk was ~185 MiB, at 4 MiB ~142, the same CPU (perf/bench_memory.py)
READER_BUFFER_BYTES = 4 << 20


# Kernel ring sizes: a fixed budget per ring, never the event rate times the
# interval. A ring must hold what arrives from the moment its reader is due
# to be woken (wake_bytes waiting, plus up to a sixteenth of that per CPU
# that has not asked the ring yet: include/ring_wake.bpf.h) until the agent's
# one loop gets back to draining it. That wait is the longest step of the
# loop: a plugin's step or flush (one httpflow step took up to 0.34 s of wall
# time at load average 12 on the 2-core test VM) plus being scheduled back
# in. httpflow at ~6 MB/s of records (perf/bench_memory.py, README
# "Resources"): 3 MiB of headroom lost records within 60 s, 7 MiB none in
# 60 s at load average 8-12 but 0.1-0.3 % over 5 minutes at 11-14. Whatever
# still does not fit is counted by the BPF program (kernel_drop_*_ring_full).
DRAIN_STALL_S = 0.5
RING_MARGIN = 2
RINGBUF_RECORD_HEADER = 8   # the kernel's per-record header; records are 8-byte aligned
PAGE_BYTES = 4096


def ring_bytes(record_bytes, records_per_s, wake, ncpus=None, stall_s=DRAIN_STALL_S, margin=RING_MARGIN):
    """The smallest ring (a power of two of pages, the kernel's rule) that
    holds, beyond the point where its reader is woken, ``margin`` times
    what ``records_per_s`` records of ``record_bytes`` bring in
    ``stall_s``. ``wake(size)``: the bytes waiting when the BPF program
    wakes the reader of a ring of that size."""
    ncpus = ncpus or os.cpu_count() or 1
    burst = margin * records_per_s * stall_s * (-(-(record_bytes + RINGBUF_RECORD_HEADER) // 8) * 8)
    size = PAGE_BYTES
    while size < wake(size) * (1 + ncpus / 16) + burst:
        size *= 2
    return size


@dataclass(frozen=True)
class Ring:
    """A BPF_MAP_TYPE_RINGBUF map read by a RingReader."""

    map: str
    dtype: object                 # numpy dtype of one record
    min_size: int = 0             # records may end early (after their valid payload)
    max_bytes: Optional[int] = None  # resize before load; None: as the .bpf.c declares
    buffer_bytes: int = READER_BUFFER_BYTES  # the reader's budget in user space

    @property
    def max_records(self):
        return max(1, self.buffer_bytes // self.dtype.itemsize)


@dataclass(frozen=True)
class ObjectSpec:
    """What user space knows of one BPF object, by name."""

    name: str                                 # bpf/<name>.bpf.c
    knobs: Tuple[str, ...] = ()               # const volatile globals set before load
    attach: object = ATTACH_ALL               # ATTACH_ALL, or programs attached by section at start
    programs: Tuple[str, ...] = ()            # programs attached by hand (uprobes), as bpf.progs.<name>
    cgroup: Tuple[str, ...] = ()              # attached at start to the root cgroup v2 (kernel.cgroup2_root)
    maps: Tuple[str, ...] = ()                # maps read or written, as bpf.maps.<name>
    rings: Tuple[Ring, ...] = ()              # as bpf.rings.<map name>
    drops: Optional[str] = None               # per-CPU u64 array of drop counters
    drop_names: dict = field(default_factory=dict)  # its index -> counter name
    drop_prefix: str = "kernel_drop_"         # counter name = prefix + name
    # names in the drops map that count facts, not losses (dkebpf bench
    # sums kernel_drop_* as losses): reported as count_prefix + name
    not_losses: frozenset = frozenset()
    count_prefix: str = "kernel_"

    @property
    def path(self):
        return bpf_object_path(self.name)

    def program_names(self):
        """Every program name declared (attached at start or by hand)."""
        return ((() if self.attach == ATTACH_ALL else tuple(self.attach)) + tuple(self.programs)
                + tuple(self.cgroup))

    def map_names(self):
        """Every map name declared."""
        return tuple(self.maps) + tuple(r.map for r in self.rings) + ((self.drops,) if self.drops else ())


# closed connections' last counters: 120-byte records at up to 20k closes/s
# (a busy proxy); bpf/netflow.bpf.c wakes the reader once 256 KiB wait: 4 MiB
NETFLOW_CLOSED_RING_BYTES = ring_bytes(_records.EVENT_DTYPE.itemsize, 20_000, wake=lambda size: 1 << 18)
NETFLOW = ObjectSpec(
    "netflow", knobs=("ipv6_disabled", "self_tgid"), maps=("conns", "tcp_flows", "bound_ports"),
    cgroup=("peer_sendmsg4", "peer_sendmsg6", "peer_recvmsg4", "peer_recvmsg6"),
    rings=(Ring("closed", _records.EVENT_DTYPE, max_bytes=NETFLOW_CLOSED_RING_BYTES),),
    drops="drops", drop_names=MappingProxyType(_records.DROP_NAMES))

# httpflow and httpflow-tls: one record per finished exchange, 120 bytes +
# the request's first bytes (wrk's GET: 40); the highest rate this 2-core
# machine made is 26.4k requests/s under nginx + wrk, each seen at both ends.
HTTP_RECORD_BYTES = _records.HTTP_EXCHANGE_MIN + 40
HTTP_RECORDS_PER_S = 55_000
# 16 MiB: bpf/http.bpf.c wakes the reader once 1 MiB waits (EVENTS_WAKE_BYTES).
# At 8 MiB the 5-minute runs at load average 11-14 lost 0.14-0.3 % of records.
HTTP_RING_BYTES = ring_bytes(HTTP_RECORD_BYTES, HTTP_RECORDS_PER_S, wake=lambda size: 1 << 20)
HTTP = ObjectSpec(
    "http", knobs=("ipv6_disabled", "self_tgid", "settle_ns"), maps=("http_conns",),
    rings=(Ring("events", _records.HTTP_EXCHANGE_DTYPE, min_size=_records.HTTP_EXCHANGE_MIN,
                max_bytes=HTTP_RING_BYTES),),
    drops="http_drops", drop_names=MappingProxyType(_records.HTTP_DROP_NAMES),
    not_losses=_records.HTTP_NOT_LOSSES)

BASH = ObjectSpec(
    "bash", attach=(), programs=("bash_readline",),
    rings=(Ring("lines", _records.BASH_LINE_DTYPE),),
    drops="drops", drop_names=MappingProxyType(_records.BASH_DROP_NAMES))

# 4 MiB (was 16): HTTPS through OpenSSL reaches ~10k requests/s here (20k
# records/s); tls_probes.py wakes the reader once a 32nd of the ring waits
TLS_RING_BYTES = ring_bytes(HTTP_RECORD_BYTES, 20_000, wake=lambda size: size // 32)
TLS = ObjectSpec(
    "tls", knobs=("ipv6_disabled", "self_tgid", "wakeup_bytes", "settle_ns"),
    attach=("tls_sock_send", "tls_sock_recv", "tls_sock_destroy"),
    programs=("ssl_read_enter", "ssl_write_enter", "ssl_read_ex_enter", "ssl_write_ex_enter",
              "ssl_handshake_enter", "ssl_leave"),
    maps=("tls_conns",),
    rings=(Ring("events", _records.HTTP_EXCHANGE_DTYPE, min_size=_records.HTTP_EXCHANGE_MIN,
                max_bytes=TLS_RING_BYTES),),
    drops="drops", drop_names=MappingProxyType(_records.TLS_DROP_NAMES), drop_prefix="kernel_drop_tls_",
    not_losses=_records.HTTP_NOT_LOSSES, count_prefix="kernel_tls_")

# ebpf-trace (bpf/trace.bpf.c): one record per message start of a traced
# process, ending after its payload. The record's dtype and the drop names
# live with the span builder (ext/trace.pyx), the one module reading them.
# nginx + wrk traced at both ends: 4 message starts per request at 26.4k
# requests/s, each the header and ~40 bytes of payload; the reader is woken
# once a 32nd of the ring waits (the knob trace_wake_bytes, from the size
# here: include/trace_span.bpf.h): 32 MiB, not the 16 the .bpf.c declares
# (which lost records at wrk's full rate), woken per 1 MiB.
TRACE_RECORD_BYTES = _trace.MSG_MIN_SIZE + 40
TRACE_RECORDS_PER_S = 4 * 26_400
TRACE_WAKE_SHARE = 32
TRACE_RING_BYTES = ring_bytes(TRACE_RECORD_BYTES, TRACE_RECORDS_PER_S, wake=lambda size: size // TRACE_WAKE_SHARE)
TRACE_WAKE_BYTES = TRACE_RING_BYTES // TRACE_WAKE_SHARE
# Its records go from the ring straight into the span builder's own 16 MiB
# stage (RingReader.take_into, plugins/trace.py STAGE_BYTES), not into the
# reader's buffer.
TRACE = ObjectSpec(
    "trace", knobs=("ipv6_disabled", "self_tgid", "trace_all", "trace_wake_bytes"),
    maps=("trace_pids", "trace_conns", "trace_flags"),
    rings=(Ring("events", _trace.MSG_DTYPE, min_size=_trace.MSG_MIN_SIZE, max_bytes=TRACE_RING_BYTES),),
    drops="drops", drop_names=MappingProxyType(_trace.DROP_NAMES), drop_prefix="kernel_drop_trace_")

# ebpf-trace's Go goroutines (bpf/trace_go.bpf.c): uprobes attached per Go
# binary by dkebpf/plugins/trace_go.py; records and drop names with their
# reader, ext/goroutines.pyx
TRACE_GO = ObjectSpec(
    "trace_go", attach=(), maps=("go_procs",),
    programs=("go_execute", "go_newproc1", "go_runqput", "go_roundtrip", "go_writeloop"),
    rings=(Ring("go_events", _goroutines.GO_EVENT_DTYPE),),
    drops="go_drops", drop_names=MappingProxyType(_goroutines.DROP_NAMES), drop_prefix="kernel_drop_trace_go_")

# ebpf-trace's TLS spans: tls.bpf.c again, with trace_spans set: the
# plaintext of OpenSSL calls of traced processes as struct span_msg records
# into trace.bpf.o's ring, on its trace_pids, trace_conns and trace_flags (all four
# reused from TRACE's loaded object: start(reuse=...)), socket keys tagged
# TLS_SK_TAG. Its http `events` ring is left at its declared page.
TLS_TRACE = ObjectSpec(
    "tls", knobs=("ipv6_disabled", "self_tgid", "trace_spans", "trace_all", "trace_wake_bytes"),
    attach=TLS.attach, programs=TLS.programs,
    maps=("trace_pids", "trace_conns", "trace_flags", "trace_events"),
    drops="drops", drop_names=MappingProxyType(_records.TLS_DROP_NAMES), drop_prefix="kernel_drop_trace_tls_",
    not_losses=_records.HTTP_NOT_LOSSES, count_prefix="kernel_trace_tls_")



def tls_trace_start(trace_bpf, trace_all):
    """start() arguments of TLS_TRACE on a started TRACE skeleton: its
    knobs, and the maps it shares (tls.bpf.c's name -> trace.bpf.c's fd)."""
    m = trace_bpf.maps
    return {"knobs": {"trace_spans": 1, "trace_all": int(trace_all), "trace_wake_bytes": TRACE_WAKE_BYTES},
            "reuse": {"trace_events": m.events.fd, "trace_pids": m.trace_pids.fd, "trace_conns": m.trace_conns.fd,
                      "trace_flags": m.trace_flags.fd}}


OBJECTS = {spec.name: spec for spec in (NETFLOW, HTTP, BASH, TLS, TRACE, TRACE_GO)}


def ring_counters(rings):
    """Counters of RingReaders: records received, of a wrong size. (A
    full reader leaves records in the kernel ring: what is lost is counted
    by the BPF program, as kernel_drop_*ring_full.)"""
    c = {}
    for r in rings:
        rc = r.counters()
        c[f"ring_{r.name}_received"] = rc["received"]
        c[f"ring_{r.name}_bad_size"] = rc["bad_size"]
    return c


class BpfSkeleton:
    """One BPF object at run time, shaped by its ObjectSpec: ``maps``,
    ``progs`` and ``rings`` are namespaces of exactly the declared names
    (``bpf.maps.conns``, ``bpf.rings.closed``); ``links`` are the attached
    programs. Use start() then close(), or ``with BpfSkeleton(s).start():``."""

    def __init__(self, spec, path=None):
        self.spec = spec
        self.path = path or spec.path
        self.obj = None
        self.links = []
        self.maps = SimpleNamespace()
        self.progs = SimpleNamespace()
        self.rings = SimpleNamespace()

    def start(self, knobs=None, setup=None, reuse=None):
        """Open, set knobs, load, attach, open the rings, then setup(self)
        (e.g. seed a map, attach uprobes). reuse: {map name: fd} of maps
        another loaded object owns, shared instead of created (its ring, its
        hashes). Returns self. On any failure all of it is undone and the
        error raised."""
        spec = self.spec
        unknown = sorted(set(knobs or ()) - set(spec.knobs))
        if unknown:
            raise LookupError(f"{spec.name}.bpf.o: knobs {unknown} are not declared in its ObjectSpec")
        unknown = sorted(set(reuse or ()) - set(spec.map_names()))
        if unknown:
            raise LookupError(f"{spec.name}.bpf.o: maps {unknown} to reuse are not declared in its ObjectSpec")
        try:
            self.obj = obj = _libbpf.BpfObject(self.path)
            if knobs:
                obj.set_knobs(**knobs)
            # kept as found: libbpf renames a reused map after the one it
            # reuses (trace_events -> events), so it is not found by name later
            reused = {}
            for name, fd in (reuse or {}).items():
                reused[name] = obj.map(name)
                reused[name].reuse_fd(fd)
            for ring in spec.rings:
                if ring.max_bytes:
                    obj.map(ring.map).set_max_entries(ring.max_bytes)
            obj.load()
            for name in spec.map_names():
                setattr(self.maps, name, reused.get(name) or obj.map(name))
            for name in spec.programs:
                setattr(self.progs, name, obj.program(name))
            if spec.attach == ATTACH_ALL:
                self.links.extend(obj.attach_all(skip=spec.cgroup))
            else:
                for name in spec.attach:
                    self.links.append(obj.program(name).attach())
            if spec.cgroup:
                root = kernel.cgroup2_root()
                for name in spec.cgroup:
                    self.links.append(obj.program(name).attach_cgroup(root))
            for ring in spec.rings:
                setattr(self.rings, ring.map, _libbpf.RingReader(
                    getattr(self.maps, ring.map), ring.dtype, min_size=ring.min_size,
                    max_records=ring.max_records))
            if setup is not None:
                setup(self)
        except BaseException:
            self.close()
            raise
        return self

    def attach_uprobe(self, prog, binary, func_name, retprobe=False, offset=0):
        """Attach a declared program as a uprobe on binary:func_name (or at
        a file offset) in every process. The link is closed by close() (or
        earlier by the caller)."""
        link = getattr(self.progs, prog).attach_uprobe(binary, func_name, retprobe=retprobe, offset=offset)
        self.links.append(link)
        return link

    def ring_readers(self):
        return list(vars(self.rings).values())

    def counters(self):
        """Ring counters and the kernel's drop counters (summed over CPUs)."""
        c = ring_counters(self.ring_readers())
        if self.spec.drops and self.obj is not None:
            sums = getattr(self.maps, self.spec.drops).percpu_sums()
            for idx, name in self.spec.drop_names.items():
                prefix = self.spec.count_prefix if name in self.spec.not_losses else self.spec.drop_prefix
                c[f"{prefix}{name}"] = int(sums[idx])
        return c

    def memory(self):
        """Bytes of the ring readers' buffers (the kernel rings themselves
        are in /proc/self/smaps)."""
        return {f"ring_{r.name}_buffer": r.buffer_bytes for r in self.ring_readers()}

    def close(self):
        """Detach links, close rings, then the object (its maps and programs).
        Safe to call more than once and on a half-started skeleton."""
        for link in self.links:
            link.close()
        self.links = []
        for ring in self.ring_readers():
            ring.close()
        self.rings = SimpleNamespace()
        self.maps = SimpleNamespace()
        self.progs = SimpleNamespace()
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
