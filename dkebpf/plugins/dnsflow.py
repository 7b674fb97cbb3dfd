"""ebpf-net / dnsflow: DNS queries and answers of this host, from packet
sockets (no BPF object to load: AF_PACKET sockets with a classic BPF
filter for port 53, UDP and TCP, IPv4 and IPv6, in the collector's network
namespace), asked or answered by this host, or forwarded through it.

Capture: one socket gets every packet RECEIVED on any device
(PACKET_IGNORE_OUTGOING: the kernel does not clone each transmitted packet
of every device for it, which an unbound ETH_P_ALL socket costs all
traffic, loopback's included: a loopback packet is received once anyway);
one small socket per device other than loopback gets what that device
TRANSMITS (a query this host sends out, an answer it sends back, a packet
it forwards), devices followed as they come and go (rtnetlink). The
sockets' messages are merged by capture time before pairing (see drain()).
A kernel without PACKET_IGNORE_OUTGOING (< 4.20) gets the one unbound
socket of old.

Packets are read from the TPACKET_V3 ring and decoded in Cython
(dkebpf._packets), parsed and paired in Cython (dkebpf._dns): a query and
its answer share (transaction id, transport, client ip:port, server
ip:port); latency is the time between their capture timestamps; a query
unanswered for 6 s (at collect time, or by its answer's timestamp) counts
with rcode -1 and latency 0 (as the original).
A/AAAA answers to queries seen fill the IP -> domain cache (ctx.domains)
that netflow and httpflow read. Finished exchanges are folded into
per-point sums whenever STEP_PAIRS of them wait (partial()), and those
sums into the interval's points (finish()) with pyarrow: memory does not
depend on the interval length; at most MAX_KEYS distinct points are kept
per interval, and exchanges beyond them are counted, not reported."""
import errno
import select
import socket
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import kernel
from .. import links
from ..enrich.addr import format_addrs, ip_types
from ..enrich.dns_cache import DnsCache
from ..enrich.k8s import add_k8s_tags, k8s_tag_names
from ..enrich.local_addrs import address_keys, local_address_keys
from ..errors import BuildError, KernelError
from ..groupby import group_by
from ..packetfilter import port_filter
from .base import Plugin, PointBatch

try:
    from .. import _dns, _packets
except ImportError as exc:  # pragma: no cover - a broken install
    raise BuildError(f"dkebpf's compiled extensions are missing ({exc}); reinstall with pip") from exc

DNS_TIMEOUT_NS = 6_000_000_000
KEY_TAGS = ["src_ip", "src_port", "dst_ip", "dst_port", "family", "transport", "direction", "forwarded",
            "dst_domain"]
DNSFLOW_TAGS = KEY_TAGS + ["src_ip_type", "dst_ip_type"]
DNSFLOW_FIELDS = ["count", "latency", "latency_max", "rcode"]
GROUP_KEYS = KEY_TAGS + ["rcode"]
PARTIAL_SUMS = ["count", "latency_sum", "latency_max"]
# finished exchanges (~330 B each) held before they are folded into sums
STEP_PAIRS = 8192
# distinct points (tags + rcode) one interval may hold (~200 B each)
MAX_KEYS = 100_000
# a transmit socket's ring, per device: 4 x 16 KiB (64 KiB of kernel
# memory, mapped; a host with hundreds of veths pays that per veth). DNS
# messages are small; a TCP segment past 16 KiB is cut (counted truncated,
# its message tcp_partial)
TX_BLOCK_SIZE, TX_BLOCK_NR = 16 << 10, 4
# a packet's capture time may precede its entry into the ring by the
# kernel's way from timestamp to socket: messages merged from several
# rings that are this recent wait (see drain())
MERGE_MARGIN_NS = 2_000_000
TX_COUNTERS = ("packets", "kernel_packets", "kernel_drops", "truncated", "socket_errors")


def receive_ring(**kw):
    """(ring, split): the socket of every DNS packet received on any
    interface, split True; on a kernel without PACKET_IGNORE_OUTGOING, the
    socket of every DNS packet received or sent (loopback's sent copy
    dropped by its filter), split False. kw: PacketRing's ring size."""
    try:
        return _packets.PacketRing(port_filter(_dns.DNS_PORT), ignore_outgoing=True, **kw), True
    except KernelError as exc:
        if exc.errno != errno.ENOPROTOOPT:
            raise
    return _packets.PacketRing(port_filter(_dns.DNS_PORT), **kw), False


def transmit_ring(ifindex):
    """The socket of the DNS packets interface `ifindex` sends."""
    return _packets.PacketRing(port_filter(_dns.DNS_PORT, outgoing_only=True), block_size=TX_BLOCK_SIZE,
                               block_nr=TX_BLOCK_NR, ifindex=ifindex)


class DnsflowPlugin(Plugin):
    name = "ebpf-net/dnsflow"

    def __init__(self, ctx, pending_max=16384):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.log = ctx.logger
        self.ring = None
        # the receive-and-transmit split (start()): ifindex -> transmit
        # ring, their fds, the rtnetlink subscription, one epoll for all
        self.tx = {}
        self.tx_fds = {}
        self.links = None
        self.poller = None
        self.tx_totals = dict.fromkeys(TX_COUNTERS, 0)   # of transmit rings closed since
        self.tx_open_errors = 0
        self.held = None   # merged messages not yet old enough to be paired (drain())
        self.table = _dns.PairTable(pending_max, DNS_TIMEOUT_NS)
        # entries outlive short TTLs by two intervals: a connection to the
        # address is reported up to one interval after the lookup
        self.cache = DnsCache(min_ttl_s=max(300, 2 * self.cfg.interval))
        ctx.domains = self.cache
        self.ephemeral_port = self.cfg.ephemeral_port or kernel.local_port_range(self.cfg.host_proc)[0]
        self.totals = {"messages": 0, "malformed": 0, "tcp_partial": 0, "truncated": 0,
                       "cache_updates": 0, "points": 0, "early_steps": 0, "exchanges_lost_points_full": 0,
                       "merge_waits": 0}
        self.sums = None  # this interval's per-point sums (partial())

    def start(self):
        self.ring, split = receive_ring()
        if not split:
            self.log.warning("dnsflow: the kernel has no PACKET_IGNORE_OUTGOING (Linux < 4.20): one packet "
                             "socket on all interfaces, which costs every packet sent a clone")
            return
        self.poller = select.epoll()
        self.poller.register(self.ring.fileno(), select.EPOLLIN)
        self.links = links.LinkWatch()
        self.poller.register(self.links.fileno(), select.EPOLLIN)
        self._follow(links.dump(), full=True)
        self.log.info("dnsflow: packet sockets open (udp/tcp port 53): received on all interfaces, "
                      "transmitted on each of %d non-loopback interfaces", len(self.tx))

    def fileobjs(self):
        if self.poller is not None:
            return [self.poller]
        return [self.ring] if self.ring else []

    def on_readable(self, fileobj):
        if self.poller is not None:
            for fd, events in self.poller.poll(0):
                if fd == self.links.fileno():
                    changes = self.links.changes()
                    self._follow(links.dump() if changes is None else changes, full=changes is None)
                elif events & select.EPOLLERR and fd in self.tx_fds:
                    # ENETDOWN (the device went down; capture resumes when
                    # it is up): read, else epoll reports it forever
                    self.tx_fds[fd].take_error()
        self.drain()

    def _follow(self, devices, full):
        """Open a transmit ring for each new device that is not loopback,
        close those of devices gone. devices: {ifindex: flags, None when
        deleted}; full: it lists every device (others are gone)."""
        gone = [i for i in self.tx if (full and i not in devices) or (i in devices and devices[i] is None)]
        for ifindex in gone:
            self._close_tx(ifindex)
        for ifindex, flags in devices.items():
            if flags is None or flags & links.IFF_LOOPBACK or ifindex in self.tx:
                continue
            try:
                ring = transmit_ring(ifindex)
            except KernelError as exc:   # the device went away meanwhile (ENODEV)
                self.tx_open_errors += 1
                self.log.debug("dnsflow: no transmit socket on interface %d: %s", ifindex, exc)
                continue
            self.log.debug("dnsflow: transmit socket on interface %s (%d)", _ifname(ifindex), ifindex)
            self.tx[ifindex] = ring
            self.tx_fds[ring.fileno()] = ring
            self.poller.register(ring.fileno(), select.EPOLLIN)

    def _close_tx(self, ifindex):
        ring = self.tx.pop(ifindex)
        c = ring.counters()
        for k in TX_COUNTERS:
            self.tx_totals[k] += c[k]
        del self.tx_fds[ring.fileno()]
        self.poller.unregister(ring.fileno())
        ring.close()

    def drain(self):
        """Everything the rings hold: parse, pair (in capture order), fill
        the domain cache.

        With transmit rings, one exchange's messages come from several
        rings (a query sent on eth0, its answer received), and a ring hands
        a block over only when it is full or its timer (100 ms) retires
        it: a query may still sit in its ring when the answer is read from
        another. So the messages of every ring are merged by capture time,
        and only those older than every packet still unread are paired;
        the rest wait (`held`) for the block that keeps them back, whose
        handing over wakes this reader again. A ring's unread packets are
        no older than the time its open block was opened
        (PacketRing.unread_since_ns); with nothing unread, than now, less
        MERGE_MARGIN_NS (a packet's time is taken just before it is
        queued). Messages held only for that margin are let out after
        sleeping it once."""
        if self.poller is None:   # one ring: its order is capture order
            for msgs, addrs in self._batches(self.ring):
                self._feed(msgs, addrs)
            return
        for attempt in range(2):
            now = time.time_ns()
            parts = list(self._batches(self.ring))
            for r in self.tx.values():
                if r.unread_since_ns():
                    parts += self._batches(r)
            unread = [t for t in (r.unread_since_ns() for r in (self.ring, *self.tx.values())) if t]
            self._release(parts, min(unread, default=now) - MERGE_MARGIN_NS)
            if self.held is None or unread or attempt:
                return
            self.totals["merge_waits"] += 1
            time.sleep(MERGE_MARGIN_NS / 1e9)

    def _batches(self, ring):
        """(msgs, addrs) of each read of everything `ring` holds."""
        while True:
            # a transmit ring is read one block at a time: its read
            # buffers are sized to that (hundreds of transmit rings)
            pkts, payload, more = ring.read(max_blocks=8 if ring is self.ring else 1)
            if len(pkts):
                msgs, addrs, counts = _dns.parse_packets(pkts, payload)
                for k in ("malformed", "tcp_partial", "truncated"):
                    self.totals[k] += counts[k]
                self.totals["messages"] += len(msgs)
                yield msgs, addrs
            if not more:
                return

    def _release(self, parts, watermark):
        """Pair the messages of parts (and those held) older than
        watermark, in capture order; hold the rest."""
        if self.held is not None:
            parts = [self.held, *parts]
        msgs, addrs = _concat([p[0] for p in parts], [p[1] for p in parts])
        if not len(msgs):
            self.held = None
            return
        order = np.argsort(msgs["ts_ns"], kind="stable")
        msgs = msgs[order]
        if len(addrs):
            rank = np.empty(len(order), np.uint32)
            rank[order] = np.arange(len(order), dtype=np.uint32)
            addrs = addrs.copy()
            addrs["msg"] = rank[addrs["msg"]]
        ready = int(np.searchsorted(msgs["ts_ns"], watermark, "left"))
        later = addrs["msg"] >= ready
        self._feed(msgs[:ready], addrs[~later])
        if ready == len(msgs):
            self.held = None
            return
        rest = addrs[later].copy()
        rest["msg"] -= ready
        self.held = (msgs[ready:].copy(), rest)

    def _feed(self, msgs, addrs):
        """Pair messages (capture order), fill the domain cache."""
        if not len(msgs):
            return
        completed = self.table.add(msgs)
        if len(addrs):
            self._fill_cache(msgs, addrs, completed)
        if self.table.finished >= STEP_PAIRS:
            self._fold(self.table.take())
            self.totals["early_steps"] += 1

    def _fold(self, pairs):
        """Add finished exchanges to the interval's per-point sums, keeping
        at most MAX_KEYS points: a step that would pass it is dropped whole
        and counted."""
        if not len(pairs):
            return
        # this namespace's addresses decide who asked and who answered:
        # re-read at each fold (a few syscalls), so that an address added
        # during the interval counts
        part = partial(pairs, self.ephemeral_port, local_address_keys())
        merged = part if self.sums is None else combine([self.sums, part])
        if merged.num_rows > MAX_KEYS:
            self.totals["exchanges_lost_points_full"] += len(pairs)
            return
        self.sums = merged

    def _fill_cache(self, msgs, addrs, completed):
        # only answers to queries this host saw: an unsolicited answer
        # must not rename addresses
        trusted = completed[addrs["msg"]].astype(bool)
        if not trusted.any():
            return
        rows = addrs[trusted]
        mi, inverse = np.unique(rows["msg"], return_inverse=True)
        names = _dns.names_to_arrow(msgs["qname"][mi], msgs["qname_len"][mi])
        self.cache.update(rows["family"], rows["addr"], rows["ttl"],
                          names.take(pa.array(inverse.ravel().astype(np.int32))))
        self.totals["cache_updates"] += len(rows)

    def collect(self, now_ns):
        if self.ring is not None:
            self.drain()
        self.table.expire(now_ns)
        self.cache.purge()
        self._fold(self.table.take())
        sums, self.sums = self.sums, None
        if sums is None:
            return []
        batch = finish(sums, self.ctx.k8s)
        self.totals["points"] += batch.num_rows
        return [PointBatch("dnsflow", "network", "ebpf-net/dnsflow", batch,
                           DNSFLOW_TAGS + k8s_tag_names(self.ctx.k8s, client_server=False), DNSFLOW_FIELDS,
                           const_tags={"source": "dnsflow"})]

    def counters(self):
        c = dict(self.totals)
        c.update({f"pairs_{k}": v for k, v in self.table.counters().items()})
        c["domain_cache_entries"] = len(self.cache)
        c["domain_cache_evicted"] = self.cache.evicted
        if self.ring is not None:
            c.update({f"ring_{k}": v for k, v in self.ring.counters().items()})
        if self.poller is not None:
            tx = dict(self.tx_totals)
            for ring in self.tx.values():
                rc = ring.counters()
                for k in TX_COUNTERS:
                    tx[k] += rc[k]
            c.update({f"tx_ring_{k}": v for k, v in tx.items()})
            c["tx_interfaces"] = len(self.tx)
            c["tx_open_errors"] = self.tx_open_errors
            c["link_notifications_lost"] = self.links.overflows
            c["messages_held"] = 0 if self.held is None else len(self.held[0])
        return c

    def stop(self):
        for ifindex in list(self.tx):
            self._close_tx(ifindex)
        if self.links is not None:
            self.links.close()
            self.links = None
        if self.poller is not None:
            self.poller.close()
            self.poller = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self.held = None


def _ifname(ifindex):
    try:
        return socket.if_indextoname(ifindex)
    except OSError:   # gone already
        return "?"


def _concat(msgs, addrs):
    """Several (msgs, addrs) batches as one: each addrs row's msg index
    shifted to its message's place."""
    base = 0
    shifted = []
    for m, a in zip(msgs, addrs):
        if len(a):
            a = a.copy()
            a["msg"] += base
            shifted.append(a)
        base += len(m)
    return (np.concatenate(msgs) if msgs else np.empty(0, _dns.MSG_DTYPE),
            np.concatenate(shifted) if shifted else np.empty(0, _dns.ADDR_DTYPE))


def forwarded_once(pairs, local):
    """PAIR_DTYPE rows and this namespace's address keys -> (client_local,
    forwarded, keep) boolean arrays. An exchange whose client and server
    are both elsewhere was forwarded through this host (a pod's query to
    CoreDNS); a DNATed one was paired twice, before DNAT (to the service
    address) and after (to the real server): the same DNS id, transport
    and client ip:port; only the first seen is kept."""
    fam = pairs["family"]
    client_local = np.isin(address_keys(fam, pairs["caddr"]), local)
    forwarded = ~client_local & ~np.isin(address_keys(fam, pairs["saddr"]), local)
    keep = np.ones(len(pairs), bool)
    fwd = np.flatnonzero(forwarded)
    if len(fwd):
        fwd = fwd[np.argsort(pairs["ts_ns"][fwd], kind="stable")]
        ident = np.empty((len(fwd), 22), np.uint8)
        ident[:, 0] = fam[fwd]
        ident[:, 1] = pairs["proto"][fwd]
        ident[:, 2:4] = pairs["id"][fwd].astype("<u2").view(np.uint8).reshape(-1, 2)
        ident[:, 4:6] = pairs["cport"][fwd].astype("<u2").view(np.uint8).reshape(-1, 2)
        ident[:, 6:] = np.ascontiguousarray(pairs["caddr"][fwd]).view(np.uint8).reshape(-1, 16)
        _, first = np.unique(ident.view("S22").ravel(), return_index=True)
        keep[fwd] = False
        keep[fwd[first]] = True
    return client_local, forwarded, keep


def partial(pairs, ephemeral_port, local):
    """PAIR_DTYPE rows -> one row per (tags, rcode): count, latency sum and
    max (summable with other steps, combine()). local: this namespace's
    address keys (local_address_keys()). src is this host's end, as in
    netflow: the client when this host asked (outgoing), the server when it
    answered (incoming); for a forwarded exchange, the client (outgoing: the
    doc's direction is seen from src, and src initiated), tagged
    forwarded=true. The client's port becomes '*' when ephemeral."""
    client_local, forwarded, keep = forwarded_once(pairs, local)
    pairs, client_local, forwarded = pairs[keep], client_local[keep], forwarded[keep]
    fam = pairs["family"]
    outgoing = pa.array(client_local | forwarded)
    client_ip = format_addrs(pairs["caddr"], fam)
    server_ip = format_addrs(pairs["saddr"], fam)
    cport = pa.array(pairs["cport"])
    client_port = pc.if_else(pc.greater_equal(cport, pa.scalar(ephemeral_port, pa.uint16())),
                             pa.scalar("*"), pc.cast(cport, pa.string()))
    server_port = pc.cast(pa.array(pairs["sport"]), pa.string())
    cols = {
        "src_ip": pc.if_else(outgoing, client_ip, server_ip),
        "src_port": pc.if_else(outgoing, client_port, server_port),
        "dst_ip": pc.if_else(outgoing, server_ip, client_ip),
        "dst_port": pc.if_else(outgoing, server_port, client_port),
        "family": pc.if_else(pa.array(fam == 6), pa.scalar("IPv6"), pa.scalar("IPv4")),
        "transport": pc.if_else(pa.array(pairs["proto"] == 6), pa.scalar("tcp"), pa.scalar("udp")),
        "direction": pc.if_else(outgoing, pa.scalar("outgoing"), pa.scalar("incoming")),
        "forwarded": pc.if_else(pa.array(forwarded), pa.scalar("true"), pa.scalar("false")),
        "dst_domain": _dns.names_to_arrow(pairs["qname"], pairs["qname_len"]),
        "rcode": pa.array(pairs["rcode"].astype(np.int64)),
        "latency": pa.array(pairs["latency_ns"].astype(np.int64)),
    }
    agg = group_by(pa.table(cols), GROUP_KEYS, [
        ("latency", "count"), ("latency", "sum"), ("latency", "max")])
    return agg.rename_columns(GROUP_KEYS + PARTIAL_SUMS)


def combine(parts):
    """Per-point sums of several steps -> one row per point."""
    g = group_by(pa.concat_tables(parts), GROUP_KEYS, [
        ("count", "sum"), ("latency_sum", "sum"), ("latency_max", "max")])
    return g.rename_columns(GROUP_KEYS + PARTIAL_SUMS)


def finish(sums, k8s=None):
    """An interval's per-point sums -> the points: count, mean and max
    latency, address types, Kubernetes tags (k8s: the shared index, or
    None)."""
    out = {k: sums.column(k).combine_chunks() for k in KEY_TAGS}
    out["src_ip_type"] = ip_types(out["src_ip"])
    out["dst_ip_type"] = ip_types(out["dst_ip"])
    count = pc.cast(sums.column("count"), pa.int64())
    out["count"] = count
    out["latency"] = pc.cast(pc.round(pc.divide(pc.cast(sums.column("latency_sum"), pa.float64()),
                                                pc.cast(count, pa.float64()))), pa.int64())
    out["latency_max"] = pc.cast(sums.column("latency_max"), pa.int64())
    out["rcode"] = sums.column("rcode")
    # dnsflow has no pid (packets) and no client/server tags: the local side is found by IP
    add_k8s_tags(k8s, out, client_server=False)
    table = pa.table(out).combine_chunks()
    return table.to_batches()[0]
