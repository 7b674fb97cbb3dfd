"""ebpf-net / netflow: TCP and UDP connection statistics.

Kernel side: bpf/netflow.bpf.c keeps cumulative counters per flow instance
in the `conns` map and sends final totals of closed TCP connections on the
`closed` ring. Each interval: dump the map, drain the ring, merge with the
previous snapshot in Cython (dkebpf._conntable.merge) to get per-interval
deltas, then aggregate per netflow key with pyarrow."""
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


def listening_ports(proc, ephemeral_start):
    """Ports that make a flow incoming, from before the collector started:
    listening TCP sockets, and unconnected UDP sockets on ports the kernel
    does not hand out to clients."""
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

    def start(self):
        self.bpf = BpfSkeleton(NETFLOW).start(
            knobs={"ipv6_disabled": int(bool(self.cfg.ipv6_disabled)), "self_tgid": self.ctx.self_pid},
            setup=lambda bpf: self._seed_ports(bpf.maps.bound_ports))
        self.ring = self.bpf.rings.closed
        self.conns = self.bpf.maps.conns
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

    def fileobjs(self):
        return [self.ring] if self.bpf else []

    def on_readable(self, fileobj):
        # records are copied into the reader's C buffer; no Python per record
        self.ring.poll(0)

    def collect(self, now_ns):
        keys, vals = self.conns.dump(_records.KEY_DTYPE)
        stats = vals.view(_records.STATS_DTYPE)
        self.ring.consume()
        closed = self.ring.take()
        idle_before = time.monotonic_ns() - self.idle_ns
        delta, self.prev_keys, self.prev_stats, idle = _conntable.merge(
            self.prev_keys, self.prev_stats, keys, stats, closed, idle_before)
        if len(idle):
            self.totals["idle_evicted"] += self.conns.delete_many(idle)
        self.totals["connections_merged"] += len(delta)
        if len(delta) == 0:
            return []
        batch = self.aggregate(_conntable.delta_to_arrow(delta))
        self.totals["points"] += batch.num_rows
        return [PointBatch("netflow", "network", "ebpf-net/netflow", batch,
                           NETFLOW_TAGS + k8s_tag_names(self.ctx.k8s), NETFLOW_FIELDS,
                           const_tags={"source": "netflow"})]

    def aggregate(self, rb):
        """Per-connection deltas -> one row per netflow key."""
        is_tcp = pc.equal(rb.column("proto"), pa.scalar(6, pa.uint8()))
        rtt = rb.column("rtt_us")
        has_rtt = pc.and_(is_tcp, pc.greater(rtt, pa.scalar(0, pa.uint32())))
        null_u32 = pa.scalar(None, pa.uint32())
        cols = connection_tags(
            pid=rb.column("pid"), comm=rb.column("comm"), family=rb.column("family"),
            proto=rb.column("proto"), laddr=rb.column("laddr"), lport=rb.column("lport"),
            raddr=rb.column("raddr"), rport=rb.column("rport"), direction=rb.column("direction"),
            ephemeral_port=self.ephemeral_port, resolver=self.resolver,
            domains=self.ctx.domains, nat=self.ctx.nat)
        cols.update({
            "bytes_read": rb.column("bytes_recv"),
            "bytes_written": rb.column("bytes_sent"),
            "retransmits": rb.column("retransmits"),
            "rtt": pc.if_else(has_rtt, rtt, null_u32),
            "rtt_var": pc.if_else(has_rtt, rb.column("rtt_var_us"), null_u32),
            "tcp_closed": pc.if_else(is_tcp, rb.column("closed"), pa.scalar(0, pa.uint8())),
            "tcp_established": pc.if_else(is_tcp, rb.column("established"), pa.scalar(0, pa.uint8())),
        })
        agg = pa.table(cols).group_by(CONNECTION_TAGS, use_threads=False).aggregate([
            ("bytes_read", "sum"), ("bytes_written", "sum"), ("retransmits", "sum"),
            ("rtt", "mean"), ("rtt_var", "mean"), ("tcp_closed", "sum"), ("tcp_established", "sum"),
        ])
        out = {k: agg.column(k) for k in CONNECTION_TAGS}
        for f in ("bytes_read", "bytes_written", "retransmits", "tcp_closed", "tcp_established"):
            out[f] = pc.cast(agg.column(f + "_sum"), pa.int64())
        for f in ("rtt", "rtt_var"):
            out[f] = pc.cast(pc.round(agg.column(f + "_mean")), pa.int64())
        add_ip_types(out)
        add_k8s_tags(self.ctx.k8s, out)
        table = pa.table(out).combine_chunks()
        return table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)

    def counters(self):
        c = dict(self.totals)
        if self.bpf is not None:
            c.update(self.bpf.counters())
        return c

    def stop(self):
        if self.bpf is not None:
            self.bpf.close()
            self.bpf = None
