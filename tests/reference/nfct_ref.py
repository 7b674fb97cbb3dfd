"""Pure-Python reference of dkebpf._nfct.parse, for tests only.

Same rules, stated plainly (see ext/nfct.pyx): messages walk by nlmsg_len
(>= 16, <= what is left, next at the 4-aligned end); attributes walk by
nla_len (>= 4, <= what is left, next at the 4-aligned end, 1..3 bytes left
over are malformed); a ctnetlink NEW/DELETE message of family AF_INET or
AF_INET6 gives a row when both tuples carry source, destination and protocol
number with exactly the sizes the kernel puts there. Returns (rows as a list
of dicts with EVENT_DTYPE's field names, stats dict)."""
import socket
import struct

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_MIN_TYPE = 1, 2, 3, 0x10
NLM_F_MULTI, NLM_F_CREATE = 0x2, 0x400
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE = 0, 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_ID = 1, 2, 3, 12
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
EV_NEW, EV_UPDATE, EV_DESTROY, EV_DUMP = 1, 2, 3, 4


class Malformed(Exception):
    pass


def align4(n):
    return (n + 3) & ~3


def attrs(buf):
    """(type, payload) for each attribute; raises Malformed."""
    off, n = 0, len(buf)
    while off < n:
        if n - off < 4:
            raise Malformed
        length, typ = struct.unpack_from("=HH", buf, off)
        if length < 4 or length > n - off:
            raise Malformed
        yield typ & 0x3FFF, buf[off + 4:off + length]
        off = min(off + align4(length), n)


def parse_tuple(buf, fam):
    t = {"sport": 0, "dport": 0}
    src_t, dst_t, alen = ((CTA_IP_V4_SRC, CTA_IP_V4_DST, 4) if fam == 4
                          else (CTA_IP_V6_SRC, CTA_IP_V6_DST, 16))
    for typ, pl in attrs(buf):
        if typ == CTA_TUPLE_IP:
            for t2, p2 in attrs(pl):
                if t2 in (src_t, dst_t):
                    if len(p2) != alen:
                        raise Malformed
                    t["src" if t2 == src_t else "dst"] = bytes(p2).ljust(16, b"\0")
        elif typ == CTA_TUPLE_PROTO:
            for t2, p2 in attrs(pl):
                if t2 == CTA_PROTO_NUM:
                    if len(p2) != 1:
                        raise Malformed
                    t["proto"] = p2[0]
                elif t2 in (CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT):
                    if len(p2) != 2:
                        raise Malformed
                    t["sport" if t2 == CTA_PROTO_SRC_PORT else "dport"] = struct.unpack("!H", p2)[0]
    return t


def parse_ct(buf, fam):
    orig = reply = None
    status = ct_id = 0
    for typ, pl in attrs(buf):
        if typ == CTA_TUPLE_ORIG:
            orig = parse_tuple(pl, fam)
        elif typ == CTA_TUPLE_REPLY:
            reply = parse_tuple(pl, fam)
        elif typ in (CTA_STATUS, CTA_ID):
            if len(pl) != 4:
                raise Malformed
            v = struct.unpack("!I", pl)[0]
            if typ == CTA_STATUS:
                status = v
            else:
                ct_id = v
    for t in (orig, reply):
        if t is None or not {"src", "dst", "proto"} <= set(t):
            raise Malformed
    return {"orig_src": orig["src"], "orig_dst": orig["dst"],
            "reply_src": reply["src"], "reply_dst": reply["dst"],
            "status": status, "ct_id": ct_id,
            "orig_sport": orig["sport"], "orig_dport": orig["dport"],
            "reply_sport": reply["sport"], "reply_dport": reply["dport"],
            "proto": orig["proto"]}


def parse(buf):
    buf = bytes(buf)
    st = dict(messages=0, events=0, malformed=0, ignored=0, done=0, errors=0, last_errno=0, last_end_seq=0)
    rows = []
    off, n = 0, len(buf)
    while n - off >= 16:
        mlen, mtype, mflags, seq = struct.unpack_from("=IHHI", buf, off)
        if mlen < 16 or mlen > n - off:
            st["malformed"] += 1
            return rows, st
        st["messages"] += 1
        body = buf[off + 16:off + mlen]
        if mtype < NLMSG_MIN_TYPE:
            if mtype == NLMSG_DONE:
                st["done"] += 1
                st["last_end_seq"] = seq
            elif mtype == NLMSG_ERROR:
                if len(body) < 4:
                    st["malformed"] += 1
                else:
                    err = struct.unpack_from("=i", body)[0]
                    if err != 0:
                        st["errors"] += 1
                        st["last_errno"] = -err
                        st["last_end_seq"] = seq
            else:
                st["ignored"] += 1
        elif mtype >> 8 != NFNL_SUBSYS_CTNETLINK or (mtype & 0xFF) not in (IPCTNL_MSG_CT_NEW,
                                                                          IPCTNL_MSG_CT_DELETE):
            st["ignored"] += 1
        elif len(body) < 4:
            st["malformed"] += 1
        else:
            fam = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(body[0])
            if fam is None:
                st["ignored"] += 1
            else:
                try:
                    row = parse_ct(body[4:], fam)
                except Malformed:
                    st["malformed"] += 1
                else:
                    if mtype & 0xFF == IPCTNL_MSG_CT_DELETE:
                        row["type"] = EV_DESTROY
                    elif mflags & NLM_F_MULTI:
                        row["type"] = EV_DUMP
                    elif mflags & NLM_F_CREATE:
                        row["type"] = EV_NEW
                    else:
                        row["type"] = EV_UPDATE
                    row["family"] = fam
                    rows.append(row)
                    st["events"] += 1
        off = min(off + align4(mlen), n)
    if off < n:
        st["malformed"] += 1
    return rows, st
