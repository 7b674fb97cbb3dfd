"""Pure-Python reference of netlog_blacklist evaluation, for tests only:
walks the syntax tree of dkebpf.netlog.filter directly over field values,
and decodes an Ethernet frame the way the kernel program must (what is not
captured, what is left to user space, the fields otherwise).

Written plainly from the language description (filter.py's docstring) and
RFC 791 / 8200 / 768 / 793 / 7348, sharing no code with the compiled paths.
"""
import ipaddress
import struct

from dkebpf.netlog.filter import Call, Field, Lit, Not
from reference.packets_ref import VXLAN_PORTS

VLAN_TPIDS = (0x8100, 0x88A8)   # what skb_vlan_untag takes off (802.1Q, 802.1ad)
IPV6_EXTENSION_HEADERS = {0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254}


def address_text(family, packed):
    """The text the address fields hold (glibc inet_ntop's rules)."""
    if family == 4:
        return ".".join(str(b) for b in packed)
    words = struct.unpack("!8H", packed)
    # longest run of zero words (first on ties), at least two long
    best, run = (0, 0), None
    for i, w in enumerate(words + (1,)):
        if w == 0 and i < 8:
            run = i if run is None else run
        elif run is not None:
            if i - run > best[1]:
                best = (run, i - run)
            run = None
    start, length = best if best[1] >= 2 else (None, 0)
    if start == 0 and (length == 6 or (length == 5 and words[5] == 0xFFFF)):
        head = "::" if length == 6 else "::ffff:"
        return head + ".".join(str(b) for b in packed[12:])
    hexes = [f"{w:x}" for w in words]
    if start is None:
        return ":".join(hexes)
    return ":".join(hexes[:start]) + "::" + ":".join(hexes[start + length:])


def field_values(conn):
    """conn: dict with family, proto, laddr, raddr (packed), lport, rport,
    vni and the names (bytes) nic_name, k8s_src_pod, k8s_dst_pod,
    k8s_src_namespace, k8s_dst_namespace (missing names are b"")."""
    fam = conn["family"]
    v4, v6 = fam == 4, fam == 6
    text = lambda key: address_text(fam, conn[key]).encode()  # noqa: E731
    values = {
        "tcp": conn["proto"] == 6, "udp": conn["proto"] == 17, "ipv4": v4, "ipv6": v6,
        "src_port": conn["lport"], "dst_port": conn["rport"], "vni": conn.get("vni", 0),
        "ip_saddr": text("laddr") if v4 else b"", "ip_daddr": text("raddr") if v4 else b"",
        "ip6_saddr": text("laddr") if v6 else b"", "ip6_daddr": text("raddr") if v6 else b"",
    }
    for name in ("nic_name", "k8s_src_pod", "k8s_dst_pod", "k8s_src_namespace", "k8s_dst_namespace"):
        values[name] = conn.get(name, b"")
    return values


def evaluate(node, values):
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, Field):
        return values[node.name]
    if isinstance(node, Not):
        return not evaluate(node.operand, values)
    if isinstance(node, Call):
        a, b = (evaluate(x, values) for x in node.args)
        if node.name == "has_prefix":
            return a.startswith(b)
        if node.name == "has_suffix":
            return a.endswith(b)
        net = ipaddress.ip_network(a.decode(), strict=False)
        try:
            ip = ipaddress.ip_address(b.decode())
        except (ValueError, UnicodeDecodeError):
            return False
        return ip.version == net.version and ip in net
    if node.op == "&&":
        return evaluate(node.left, values) and evaluate(node.right, values)
    if node.op == "||":
        return evaluate(node.left, values) or evaluate(node.right, values)
    left, right = evaluate(node.left, values), evaluate(node.right, values)
    return {"==": left == right, "!=": left != right, "<": left < right,
            "<=": left <= right, ">": left > right, ">=": left >= right}[node.op]


def first_match(statements, conn):
    """Index (into statements) of the first true one, or -1."""
    values = field_values(conn)
    for i, st in enumerate(statements):
        if evaluate(st.expr, values):
            return i
    return -1


REJECT, KEEP = "reject", "keep"


def _ip(data, ethertype, outgoing):
    """REJECT, KEEP or the connection dict of the IP packet in data."""
    if ethertype == 0x0800:
        if len(data) < 20:
            return REJECT
        ihl = (data[0] & 15) * 4
        if struct.unpack("!H", data[6:8])[0] & 0x1FFF:
            return KEEP
        proto, src, dst, l4 = data[9], data[12:16], data[16:20], ihl
        fam = 4
    elif ethertype == 0x86DD:
        if len(data) < 40:
            return REJECT
        proto, src, dst, l4, fam = data[6], data[8:24], data[24:40], 40, 6
        if proto in IPV6_EXTENSION_HEADERS:
            return KEEP
    else:
        return REJECT
    if proto not in (6, 17) or len(data) < l4 + 4:
        return REJECT
    sport, dport = struct.unpack("!HH", data[l4:l4 + 4])
    conn = {"family": fam, "proto": proto, "vni": 0}
    if outgoing:
        conn.update(laddr=src, raddr=dst, lport=sport, rport=dport)
    else:
        conn.update(laddr=dst, raddr=src, lport=dport, rport=sport)
    return conn, data[l4:]


def decode_frame(frame, outgoing):
    """What the kernel program does with an Ethernet frame before any
    statement: REJECT (not captured), KEEP (captured for user space, no
    statement applies) or the connection dict the statements see. VLAN
    tags: on a sent frame the kernel puts the network header past all of
    them (the IP version then names the protocol); on a received one it
    takes the first off and the program skips one more."""
    ethertype, off = struct.unpack("!H", frame[12:14])[0], 14
    if outgoing and ethertype in VLAN_TPIDS:
        for _ in range(8):   # VLAN_MAX_DEPTH
            if ethertype not in VLAN_TPIDS:
                break
            ethertype, off = struct.unpack("!H", frame[off + 2:off + 4])[0], off + 4
        ethertype = {4: 0x0800, 6: 0x86DD}.get(frame[off] >> 4, 0)
    elif not outgoing:
        for _ in range(2):
            if ethertype in VLAN_TPIDS:
                ethertype, off = struct.unpack("!H", frame[off + 2:off + 4])[0], off + 4
    got = _ip(frame[off:], ethertype, outgoing)
    if got in (REJECT, KEEP):
        return got
    conn, l4 = got
    ports = {conn["lport"], conn["rport"]}
    if conn["proto"] == 17 and ports & set(VXLAN_PORTS):
        if len(l4) < 9:   # the kernel's load of the flags fails: not captured
            return REJECT
        if not l4[8] & 0x08:
            return conn
        inner, off = l4[16:], 14
        if len(inner) < 14:
            return REJECT
        ethertype = struct.unpack("!H", inner[12:14])[0]
        for _ in range(2):   # VLAN tags inside, as user space reads them
            if ethertype not in VLAN_TPIDS:
                break
            if len(inner) < off + 4:
                return REJECT
            ethertype, off = struct.unpack("!H", inner[off + 2:off + 4])[0], off + 4
        got = _ip(inner[off:], ethertype, outgoing)
        if got in (REJECT, KEEP):
            return got
        conn = got[0]
        conn["vni"] = int.from_bytes(l4[12:15], "big")
    return conn
