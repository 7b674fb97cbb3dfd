"""Tags that describe a connection, shared by netflow and httpflow (and any
later per-connection measurement): src/dst and client/server addresses and
ports, family, transport, direction, process, plus what other plugins know
about the peer -- its domain from DNS answers (ctx.domains, dnsflow) and its
DNAT destination from conntrack (ctx.nat, ebpf-conntrack).

Input is one row per connection (numpy / arrow columns as the kernel records
give them); output is a dict of pyarrow columns, one row per input row, to
be grouped by the caller. IP types are added after grouping
(add_ip_types), when distinct addresses are few."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .addr import format_addrs, ip_types

DIR_INCOMING = 2  # NF_DIR_INCOMING in bpf/include/netflow.h

# the tag columns connection_tags() returns, in point order
CONNECTION_TAGS = ["pid", "process_name", "src_ip", "src_port", "dst_ip", "dst_port",
                   "client_ip", "client_port", "server_ip", "server_port",
                   "family", "transport", "direction",
                   "dst_domain", "server_domain", "dst_nat_ip", "dst_nat_port"]
IP_TYPE_TAGS = ["src_ip_type", "dst_ip_type", "client_ip_type", "server_ip_type"]


def _arrow(a, typ=None):
    if isinstance(a, (pa.Array, pa.ChunkedArray)):
        return a
    return pa.array(np.ascontiguousarray(a), typ)


def _v16(a):
    """16-byte addresses as a numpy 'V16' array, from numpy or an arrow
    fixed_size_binary(16) column."""
    if isinstance(a, np.ndarray):
        return a
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    off = a.offset
    return np.frombuffer(a.buffers()[1], dtype="V16", count=len(a) + off)[off:]


def connection_tags(*, pid, comm, family, proto, laddr, lport, raddr, rport, direction,
                    ephemeral_port, resolver, domains=None, nat=None):
    """pid/lport/rport/family/proto/direction: integer columns; comm: string
    column; laddr/raddr: 16-byte addresses (IPv4 in the first 4 bytes);
    resolver: LocalAddressResolver (wildcard local address -> routed one);
    domains: object with lookup(family, raddr) -> string column (null when
    unknown); nat: object with lookup(family, proto, laddr, lport, raddr,
    rport) -> (ip column, port column), null where not translated.
    Ports at or above ephemeral_port on the client side become '*'."""
    fam_np = np.asarray(_arrow(family).to_numpy(zero_copy_only=False), dtype=np.uint8)
    laddr, raddr = _v16(laddr), _v16(raddr)
    lport, rport = _arrow(lport, pa.uint16()), _arrow(rport, pa.uint16())
    proto = _arrow(proto, pa.uint8())
    dst_ip = format_addrs(raddr, fam_np)
    src_ip = resolver.fill_unspecified(format_addrs(laddr, fam_np), dst_ip, fam_np)
    outgoing = pc.not_equal(_arrow(direction, pa.uint8()), pa.scalar(DIR_INCOMING, pa.uint8()))
    # the client's port is ephemeral noise: it becomes '*'
    client_port_num = pc.if_else(outgoing, lport, rport)
    eph = pc.greater_equal(client_port_num, pa.scalar(ephemeral_port, pa.uint16()))
    star = pa.scalar("*")
    src_port = pc.if_else(pc.and_(outgoing, eph), star, pc.cast(lport, pa.string()))
    dst_port = pc.if_else(pc.and_(pc.invert(outgoing), eph), star, pc.cast(rport, pa.string()))
    n = len(fam_np)
    null_str = pa.nulls(n, pa.string())
    dst_domain = null_str
    if domains is not None and n:
        dst_domain = domains.lookup(fam_np, raddr)
    nat_ip = nat_port = null_str
    if nat is not None and n:
        nat_ip, nat_port = nat.lookup(fam_np, proto.to_numpy(zero_copy_only=False), laddr,
                                      lport.to_numpy(zero_copy_only=False), raddr,
                                      rport.to_numpy(zero_copy_only=False))
        # DNAT changes where an outgoing connection goes; an incoming one was
        # translated before it reached us, so it carries none
        nat_ip = pc.if_else(outgoing, nat_ip, null_str)
        nat_port = pc.if_else(outgoing, nat_port, null_str)
    return {
        "pid": pc.cast(_arrow(pid), pa.string()),
        "process_name": _arrow(comm),
        "src_ip": src_ip,
        "src_port": src_port,
        "dst_ip": dst_ip,
        "dst_port": dst_port,
        "client_ip": pc.if_else(outgoing, src_ip, dst_ip),
        "client_port": pc.if_else(outgoing, src_port, dst_port),
        "server_ip": pc.if_else(outgoing, dst_ip, src_ip),
        "server_port": pc.if_else(outgoing, dst_port, src_port),
        "family": pc.if_else(pc.equal(pa.array(fam_np), pa.scalar(6, pa.uint8())),
                             pa.scalar("IPv6"), pa.scalar("IPv4")),
        "transport": pc.if_else(pc.equal(proto, pa.scalar(6, pa.uint8())),
                                pa.scalar("tcp"), pa.scalar("udp")),
        "direction": pc.if_else(outgoing, pa.scalar("outgoing"), pa.scalar("incoming")),
        "dst_domain": dst_domain,
        # the server is the remote end of an outgoing connection
        "server_domain": pc.if_else(outgoing, dst_domain, null_str),
        "dst_nat_ip": nat_ip,
        "dst_nat_port": nat_port,
    }


def add_ip_types(cols):
    """src/dst/client/server _ip_type columns from the (grouped) ip columns."""
    for side in ("src", "dst", "client", "server"):
        col = cols[f"{side}_ip"]
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        cols[f"{side}_ip_type"] = ip_types(col)
    return cols
