"""ebpf-net / dnsflow: DNS queries and answers of this host, from a packet
socket (no BPF object to load: an AF_PACKET socket with a classic BPF
filter for port 53, UDP and TCP, IPv4 and IPv6, in the collector's network
namespace), asked or answered by this host, or forwarded through it.

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
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import kernel
from ..enrich.addr import format_addrs, ip_types
from ..enrich.dns_cache import DnsCache
from ..enrich.k8s import add_k8s_tags, k8s_tag_names
from ..enrich.local_addrs import address_keys, local_address_keys
from ..errors import BuildError
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


class DnsflowPlugin(Plugin):
    name = "ebpf-net/dnsflow"

    def __init__(self, ctx, pending_max=16384):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.log = ctx.logger
        self.ring = None
        self.table = _dns.PairTable(pending_max, DNS_TIMEOUT_NS)
        # entries outlive short TTLs by two intervals: a connection to the
        # address is reported up to one interval after the lookup
        self.cache = DnsCache(min_ttl_s=max(300, 2 * self.cfg.interval))
        ctx.domains = self.cache
        self.ephemeral_port = self.cfg.ephemeral_port or kernel.local_port_range(self.cfg.host_proc)[0]
        self.totals = {"messages": 0, "malformed": 0, "tcp_partial": 0, "truncated": 0,
                       "cache_updates": 0, "points": 0, "early_steps": 0, "exchanges_lost_points_full": 0}
        self.sums = None  # this interval's per-point sums (partial())

    def start(self):
        self.ring = _packets.PacketRing(port_filter(_dns.DNS_PORT))
        self.log.info("dnsflow: packet socket open (udp/tcp port 53, all interfaces)")

    def fileobjs(self):
        return [self.ring] if self.ring else []

    def on_readable(self, fileobj):
        self.drain()

    def drain(self):
        """Everything the ring holds: parse, pair, fill the domain cache."""
        while True:
            pkts, payload, more = self.ring.read()
            if len(pkts):
                msgs, addrs, counts = _dns.parse_packets(pkts, payload)
                for k in ("malformed", "tcp_partial", "truncated"):
                    self.totals[k] += counts[k]
                self.totals["messages"] += len(msgs)
                completed = self.table.add(msgs)
                if len(addrs):
                    self._fill_cache(msgs, addrs, completed)
                if self.table.finished >= STEP_PAIRS:
                    self._fold(self.table.take())
                    self.totals["early_steps"] += 1
            if not more:
                return

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
        return c

    def stop(self):
        if self.ring is not None:
            self.ring.close()
            self.ring = None


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
