"""Build ctnetlink messages the way the kernel lays them out
(net/netfilter/nf_conntrack_netlink.c), for parser tests, and requests a
test sends to the kernel (delete one conntrack entry)."""
import socket
import struct

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL = 0x1, 0x2, 0x4, 0x400, 0x200
NLA_F_NESTED = 0x8000
CT_NEW, CT_GET, CT_DELETE = 0, 1, 2
AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def align4(n):
    return (n + 3) & ~3


def nla(typ, payload, pad=True):
    raw = struct.pack("=HH", 4 + len(payload), typ) + payload
    return raw + b"\0" * (align4(len(raw)) - len(raw)) if pad else raw


def nest(typ, *children):
    return nla(typ | NLA_F_NESTED, b"".join(children))


def addr_bytes(addr, family):
    """Text or 16-byte (IPv4 in the first 4) address -> wire bytes."""
    if isinstance(addr, str):
        return socket.inet_pton(AF[family], addr)
    return bytes(addr[:4] if family == 4 else addr[:16])


def tuple_attr(typ, family, src, dst, proto, sport=None, dport=None):
    s, d = (1, 2) if family == 4 else (3, 4)
    ip = nest(1, nla(s, addr_bytes(src, family)), nla(d, addr_bytes(dst, family)))
    parts = [nla(1, bytes([proto]))]
    if sport is not None:
        parts.append(nla(2, struct.pack("!H", sport)))
    if dport is not None:
        parts.append(nla(3, struct.pack("!H", dport)))
    return nest(typ, ip, nest(2, *parts))


def nlmsg(mtype, flags, body, seq=0, pid=0):
    raw = struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, pid) + body
    return raw + b"\0" * (align4(len(raw)) - len(raw))


def ct_message(kind, family, orig, reply, status=0, ct_id=0, extra=b"", seq=0):
    """kind: 'new', 'update', 'destroy', 'dump'; orig/reply: (src, dst,
    proto, sport, dport)."""
    mtype = (1 << 8) | (CT_DELETE if kind == "destroy" else CT_NEW)
    flags = {"new": NLM_F_CREATE | NLM_F_EXCL, "update": 0, "destroy": 0, "dump": NLM_F_MULTI}[kind]
    body = struct.pack("=BBH", AF[family], 0, 0)
    body += tuple_attr(1, family, *orig) + tuple_attr(2, family, *reply)
    body += nla(3, struct.pack("!I", status)) + nla(12, struct.pack("!I", ct_id)) + extra
    return nlmsg(mtype, flags, body, seq)


def delete_request(family, orig, seq=1):
    """IPCTNL_MSG_CT_DELETE of the entry whose original tuple is orig
    (src, dst, proto, sport, dport), acknowledged."""
    body = struct.pack("=BBH", AF[family], 0, 0) + tuple_attr(1, family, *orig)
    return nlmsg((1 << 8) | CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, body, seq)


def delete_entry(family, orig):
    """Delete one conntrack entry; returns the kernel's errno (0: deleted)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.bind((0, 0))
        s.send(delete_request(family, orig))
        reply = s.recv(65536)
        return -struct.unpack_from("=i", reply, 16)[0]
