"""ebpf-net / netflow: TCP and UDP connection statistics.

Kernel side: bpf/netflow.bpf.c keeps cumulative counters per flow instance
in the `tcp_flows` map (TCP, keyed by socket cookie) and the `conns` map
(UDP, keyed by cookie and peer), and sends final totals of closed TCP
connections on the `closed` ring. Each interval: dump both maps
(flow_table), drain the ring, merge with the previous snapshot in Cython
(dkebpf._conntable.merge) to get per-interval deltas, then aggregate per
netflow key with pyarrow."""
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import kernel
from ..enrich.addr import LocalAddressResolver
from ..bpf_objects import NETFLOW, BpfSkeleton
from ..enrich.conntags import CONNECTION_TAGS, IP_TYPE_TAGS, add_ip_types, connection_tags
from ..enrich.k8s import add_k8s_tags, k8s_tag_names
from ..errors import BuildError
from ..groupby import group_by
from .base import Plugin, PointBatch

try:
    from .. import _conntable, _records
except ImportError as exc:  # pragma: no cover - a broken install
    raise BuildError(f"dkebpf's compiled extensions are missing ({exc}); reinstall with pip") from exc

NETFLOW_TAGS = CONNECTION_TAGS + IP_TYPE_TAGS
NETFLOW_FIELDS = ["bytes_read", "bytes_written", "retransmits", "rtt", "rtt_var",
                  "tcp_closed", "tcp_established"]
TCP_LISTEN_STATE = 0x0A
UDP_UNCONNECTED_STATE = 0x07
# closed-connection records the ring reader may hold before they are merged
# and aggregated, ahead of the interval's end (~1 MB of 120-byte records):
# memory does not grow with the interval or the rate of closes
STEP_RECORDS = 8192
# per-netflow-key sums an interval's steps add up; rtt and rtt_var are
# averaged over the connections that had one at the end
PARTIAL_SUMS = ["bytes_read", "bytes_written", "retransmits", "tcp_closed", "tcp_established",
                "rtt_sum", "rtt_count", "rtt_var_sum"]


def _rows(arr):
    """Whole records as bytes rows (padding included: the kernel compares
    map keys bytewise), for splitting and joining records."""
    return arr.view(np.uint8).reshape(len(arr), arr.dtype.itemsize)


def flow_table(bpf):
    """Every live flow instance of the kernel side, as (keys, stats)
    (KEY_DTYPE, STATS_DTYPE rows, _conntable.merge's `cur`): the UDP flows
    of `conns` and the TCP flows of `tcp_flows`, whose values carry their
    own key (nf_conn_event)."""
    keys, stats = bpf.maps.conns.dump(_records.KEY_DTYPE, _records.STATS_DTYPE)
    _, tcp = bpf.maps.tcp_flows.dump(np.uint64, _records.EVENT_DTYPE)
    if not len(tcp):
        return keys, stats
    ksz = _records.KEY_DTYPE.itemsize
    raw = _rows(tcp)
    keys = np.concatenate([_rows(keys), raw[:, :ksz]]).view(_records.KEY_DTYPE).ravel()
    stats = np.concatenate([_rows(stats), raw[:, ksz:]]).view(_records.STATS_DTYPE).ravel()
    return keys, stats


def listening_ports(proc, ephemeral_start):
    """Ports that make a flow incoming, from before the collector started:
    listening TCP sockets, and unconnected UDP sockets on ports the kernel
    does not hand out to clients (their flows under way at start may show
    a reply first)."""
    out = []
    for name in ("tcp", "tcp6"):
        for lport, _r, _rp, st in kernel.read_socket_table(os.path.join(proc, "net", name)):
            if st == TCP_LISTEN_STATE:
                out.append((lport, 6))
    for name in ("udp", "udp6"):
        for lport, rhex, rport, st in kernel.read_socket_table(os.path.join(proc, "net", name)):
            if st == UDP_UNCONNECTED_STATE and rport == 0 and lport < ephemeral_start:
                out.append((lport, 17))
    return sorted(set(out))


class NetflowPlugin(Plugin):
    name = "ebpf-net/netflow"

    def __init__(self, ctx):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.log = ctx.logger
        self.bpf = None
        self.ring = None  # bpf.rings.closed once started
        self.prev_keys = np.empty(0, _records.KEY_DTYPE)
        self.prev_stats = np.empty(0, _records.STATS_DTYPE)
        self.resolver = LocalAddressResolver()
        self.ephemeral_port = self.cfg.ephemeral_port or kernel.local_port_range(self.cfg.host_proc)[0]
        # a flow untouched this long leaves the kernel map (it comes back,
        # as a new instance, when it moves data again)
        self.idle_ns = int(max(2 * self.cfg.interval, 120) * 1e9)
        self.totals = {"connections_merged": 0, "idle_evicted": 0, "points": 0}
        self.udp_seeds = []  # bound_ports keys of UDP servers found at start
        # final records of idle flows taken out of the map: merged next
        # interval like closed ones (what moved after the dump is counted)
        self.evicted = np.empty(0, _records.EVENT_DTYPE)
        self.partials = []  # per-key sums of this interval's steps (partial())
        self.early_steps = 0

    def start(self):
        self.bpf = BpfSkeleton(NETFLOW).start(
            knobs={"ipv6_disabled": int(bool(self.cfg.ipv6_disabled)), "self_tgid": self.ctx.self_pid},
            setup=lambda bpf: self._seed_ports(bpf.maps.bound_ports))
        self.ring = self.bpf.rings.closed
        self.conns = self.bpf.maps.conns
        self.bound = self.bpf.maps.bound_ports
        self.log.info("netflow: %d programs attached, ephemeral ports from %d",
                      len(self.bpf.links), self.ephemeral_port)

    def _seed_ports(self, bound):
        ports = listening_ports(self.cfg.host_proc, self.ephemeral_port)
        if not ports:
            return
        keys = np.zeros(len(ports), _records.PORT_KEY_DTYPE)
        keys["port"] = [p for p, _ in ports]
        keys["proto"] = [pr for _, pr in ports]
        one = b"\x01"
        for k in keys:
            bound.update(k.tobytes(), one)
        self.udp_seeds = [k.tobytes() for k in keys if k["proto"] == 17]

    def _drop_udp_seeds(self):
        """After the first interval every UDP flow under way at start has
        shown its first datagram; from then on that datagram alone says who
        began a flow, and a seeded port may have gone to a client (a DNS
        forwarder's random upstream port)."""
        for k in self.udp_seeds:
            self.bound.delete(k)
        self.udp_seeds = []

    def _take_idle(self, idle):
        """Take idle flows out of the kernel map (the map stays bounded: UDP
        flows have no close); their final records, for the next merge. Only
        `conns` has idle flows: a TCP flow ends at its close (merge's
        idle keys of TCP connections that never were flows find nothing
        there; tcp_destroy_sock removes them)."""
        if not len(idle):
            return self.evicted[:0]
        keys, vals = self.conns.take_many(idle)
        self.totals["idle_evicted"] += len(keys)
        ev = np.zeros(len(keys), _records.EVENT_DTYPE)
        raw = _rows(ev)
        ksz = _records.KEY_DTYPE.itemsize
        raw[:, :ksz] = _rows(keys)
        raw[:, ksz:ksz + vals.dtype.itemsize] = _rows(vals)
        return ev

    def fileobjs(self):
        return [self.ring] if self.bpf else []

    def on_readable(self, fileobj):
        self.drain()

    def drain(self):
        # records are copied into the reader's C buffer; no Python per record
        self.ring.poll(0)
        if self.ring.held >= STEP_RECORDS:
            self._step()

    def _step(self):
        """Merge the closed records the reader holds against the snapshot
        and fold them into per-key sums now, instead of holding one record
        per closed connection for the whole interval. The snapshot stands
        in for the dump: instances in it that did not close stay as they
        are, closed ones leave it with their last delta."""
        closed = self.ring.take()
        delta, self.prev_keys, self.prev_stats, _ = _conntable.merge(
            self.prev_keys, self.prev_stats, self.prev_keys, self.prev_stats, closed, 0)
        self._add(delta)
        self.early_steps += 1

    def _add(self, delta):
        self.totals["connections_merged"] += len(delta)
        if len(delta):
            self.partials.append(self.partial(_conntable.delta_to_arrow(delta)))

    def collect(self, now_ns):
        keys, stats = flow_table(self.bpf)
        self.ring.consume()
        closed = self.ring.take()
        if len(self.evicted):  # whole rows, padding included
            raw = np.dtype((np.void, _records.EVENT_DTYPE.itemsize))
            closed = np.concatenate([closed.view(raw), self.evicted.view(raw)]).view(_records.EVENT_DTYPE)
        idle_before = time.monotonic_ns() - self.idle_ns
        delta, self.prev_keys, self.prev_stats, idle = _conntable.merge(
            self.prev_keys, self.prev_stats, keys, stats, closed, idle_before)
        self.evicted = self._take_idle(idle)
        self._drop_udp_seeds()
        self._add(delta)
        partials, self.partials = self.partials, []
        if not partials:
            return []
        batch = self.finish(partials)
        self.totals["points"] += batch.num_rows
        return [PointBatch("netflow", "network", "ebpf-net/netflow", batch,
                           NETFLOW_TAGS + k8s_tag_names(self.ctx.k8s), NETFLOW_FIELDS,
                           const_tags={"source": "netflow"})]

    def partial(self, rb):
        return netflow_partial(rb, self.ephemeral_port, self.resolver, self.ctx.domains, self.ctx.nat)

    def finish(self, partials):
        return netflow_finish(partials, self.ctx.k8s)

    def memory(self):
        m = {"previous_snapshot": self.prev_keys.nbytes + self.prev_stats.nbytes,
             "partial_aggregates": sum(t.nbytes for t in self.partials)}
        if self.bpf is not None:
            m.update(self.bpf.memory())
        return m

    def counters(self):
        c = dict(self.totals)
        c["early_steps"] = self.early_steps
        if self.bpf is not None:
            c.update(self.bpf.counters())
        return c

    def stop(self):
        if self.bpf is not None:
            self.bpf.close()
            self.bpf = None


def netflow_partial(rb, ephemeral_port, resolver, domains, nat):
    """Per-connection deltas (the columns of _conntable.delta_to_arrow) ->
    per netflow key sums (PARTIAL_SUMS): few rows, summable with the other
    steps of the interval. Shared with bpf-netlog, whose connections come
    from packets."""
    is_tcp = pc.equal(rb.column("proto"), pa.scalar(6, pa.uint8()))
    rtt = rb.column("rtt_us")
    has_rtt = pc.and_(is_tcp, pc.greater(rtt, pa.scalar(0, pa.uint32())))
    null_u32 = pa.scalar(None, pa.uint32())
    cols = connection_tags(
        pid=rb.column("pid"), comm=rb.column("comm"), family=rb.column("family"),
        proto=rb.column("proto"), laddr=rb.column("laddr"), lport=rb.column("lport"),
        raddr=rb.column("raddr"), rport=rb.column("rport"), direction=rb.column("direction"),
        ephemeral_port=ephemeral_port, resolver=resolver, domains=domains, nat=nat)
    cols.update({
        "bytes_read": rb.column("bytes_recv"),
        "bytes_written": rb.column("bytes_sent"),
        "retransmits": rb.column("retransmits"),
        "rtt": pc.if_else(has_rtt, rtt, null_u32),
        "rtt_var": pc.if_else(has_rtt, rb.column("rtt_var_us"), null_u32),
        "tcp_closed": pc.if_else(is_tcp, rb.column("closed"), pa.scalar(0, pa.uint8())),
        "tcp_established": pc.if_else(is_tcp, rb.column("established"), pa.scalar(0, pa.uint8())),
    })
    agg = group_by(pa.table(cols), CONNECTION_TAGS, [
        ("bytes_read", "sum"), ("bytes_written", "sum"), ("retransmits", "sum"),
        ("tcp_closed", "sum"), ("tcp_established", "sum"),
        ("rtt", "sum"), ("rtt", "count"), ("rtt_var", "sum"),
    ])
    return agg.rename_columns(CONNECTION_TAGS + PARTIAL_SUMS)


def netflow_finish(partials, k8s):
    """An interval's partial sums (netflow_partial) -> one point per netflow key."""
    g = pa.concat_tables(partials)
    if len(partials) > 1:
        g = group_by(g, CONNECTION_TAGS, [(k, "sum") for k in PARTIAL_SUMS])
        g = g.rename_columns(CONNECTION_TAGS + PARTIAL_SUMS)
    out = {k: g.column(k) for k in CONNECTION_TAGS}
    for f in ("bytes_read", "bytes_written", "retransmits", "tcp_closed", "tcp_established"):
        out[f] = pc.cast(g.column(f), pa.int64())
    # no rtt in any connection of the key: null (0 / 0), not a 0 rtt
    count = pc.if_else(pc.equal(g.column("rtt_count"), 0), pa.scalar(None, pa.int64()),
                       pc.cast(g.column("rtt_count"), pa.int64()))
    for f, col in (("rtt", "rtt_sum"), ("rtt_var", "rtt_var_sum")):
        mean = pc.divide(pc.cast(g.column(col), pa.float64()), pc.cast(count, pa.float64()))
        out[f] = pc.cast(pc.round(mean), pa.int64())
    add_ip_types(out)
    add_k8s_tags(k8s, out)
    table = pa.table(out).combine_chunks()
    return table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
