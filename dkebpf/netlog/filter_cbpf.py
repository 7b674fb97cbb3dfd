"""bpf-netlog's packet-socket program: capture TCP and UDP (VXLAN
decapsulated) and drop, in the kernel, the packets that a header-field
statement of netlog_blacklist matches, so they are never copied to user
space.

The program first decodes the headers into scratch memory (classic BPF has
16 words of it), then tests each statement against those words:

- network header found through the kernel's SKF_NET_OFF loads and
  SKF_AD_PROTOCOL (any link type); VLAN tags: see the prologue;
- IPv4: a non-first fragment has no transport header: kept for user space,
  which counts it; IPv6 with extension headers: kept for user space, which
  walks them; anything but TCP and UDP: not captured;
- UDP from or to 4789 or 8472 with the VXLAN I flag (RFC 7348): the inner
  Ethernet/IP/TCP|UDP headers are used for every field, ``vni`` is set;
  other inner protocols are not captured (the original did the same);
- local/remote: the kernel's pkttype PACKET_OUTGOING means the packet was
  sent here, so local = source; on any received packet local = destination.

Statements that read Kubernetes data or the text of an address (has_prefix
on ip_saddr...) cannot run here: they are evaluated per connection in user
space, as are statements that would make the program longer than the
kernel allows (BPF_MAXINSNS). ``nic_name`` is a constant for a socket bound
to one interface, so it is folded in when the program is built."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .._packets import VXLAN_PORTS
from ..packetfilter import (ABS, ADD, ALU, AND, B, BPF_MAXINSNS, BPF_MEMWORDS, ETH_P_8021AD,
                            ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, H, IMM, IND, IPPROTO_TCP,
                            IPPROTO_UDP, JA, JEQ, JGE, JGT, JMP, JSET, K, LD, LDX, LSH, MEM, MISC,
                            PACKET_OUTGOING, RET, RSH, SKF_AD_OFF, SKF_AD_PKTTYPE,
                            SKF_AD_PROTOCOL, SKF_NET_OFF, SNAPLEN, ST, TAX, TXA, W, X, assemble, netlog_keep)
from .filter import (ADDRESS_FIELDS, BOOL, INT, Call, Field, FIELDS, Lit, Not, Rules,
                     Statement, canonical_address, network_contains, parse_network)

# IPv6 extension headers (RFC 8200 4.1, and ESP/AH): decoded in user space
IPV6_EXTENSION_HEADERS = (0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254)

# scratch memory words
(M_FAMILY, M_PROTO, M_VNI, M_L4, M_SRC, M_DST, M_SPORT, M_DPORT,
 M_LADDR, M_RADDR, M_LPORT, M_RPORT, M_TMP) = range(13)
assert M_TMP < BPF_MEMWORDS
INT_FIELD_WORD = {"src_port": M_LPORT, "dst_port": M_RPORT, "vni": M_VNI}
ADDR_FIELD_WORD = {"ip_saddr": M_LADDR, "ip_daddr": M_RADDR, "ip6_saddr": M_LADDR, "ip6_daddr": M_RADDR}
U32_MAX = 0xFFFFFFFF


class _Unfit(Exception):
    """The statement cannot be expressed in classic BPF."""


@dataclass(frozen=True)
class SocketFilter:
    program: bytes                       # packed struct sock_filter array
    in_kernel: Tuple[Statement, ...]     # dropped by the program
    per_connection: Tuple[Statement, ...]  # left for the connection evaluator

    @property
    def length(self) -> int:
        return len(self.program) // 8


def _decode(tag: str, net: int = SKF_NET_OFF) -> List[tuple]:
    """Header decode of one IP packet of type A whose header starts at X
    (relative to `net`): stores family, protocol, address offsets, L4
    offset and ports, or ends at `keep` (for user space) or `reject`."""
    return [
        # on entry A holds the ethertype
        (f"ip{tag}", JMP | JEQ | K, ETH_P_IP, f"v4{tag}", None),
        (None, JMP | JEQ | K, ETH_P_IPV6, f"v6{tag}", "reject"),
        (f"v4{tag}", LD | H | IND, net + 6, None, None),
        (None, JMP | JSET | K, 0x1FFF, "keep", None),            # JSET: fragment offset
        (None, LD | IMM, 4, None, None),
        (None, ST, M_FAMILY, None, None),
        (None, LD | B | IND, net + 9, None, None),
        (None, ST, M_PROTO, None, None),
        (None, MISC | TXA, 0, None, None),
        (None, ALU | ADD | K, 12, None, None),
        (None, ST, M_SRC, None, None),
        (None, ALU | ADD | K, 4, None, None),
        (None, ST, M_DST, None, None),
        (None, LD | B | IND, net, None, None),                   # version + IHL
        (None, ALU | AND | K, 0x0F, None, None),
        (None, ALU | LSH | K, 2, None, None),
        (None, ALU | ADD | X, 0, None, None),
        (None, ST, M_L4, None, None),
        (None, JMP | JA, f"proto{tag}", None, None),
        (f"v6{tag}", LD | IMM, 6, None, None),
        (None, ST, M_FAMILY, None, None),
        (None, LD | B | IND, net + 6, None, None),
        (None, ST, M_PROTO, None, None),
        *[(None, JMP | JEQ | K, h, "keep", None) for h in IPV6_EXTENSION_HEADERS],
        (None, MISC | TXA, 0, None, None),
        (None, ALU | ADD | K, 8, None, None),
        (None, ST, M_SRC, None, None),
        (None, ALU | ADD | K, 16, None, None),
        (None, ST, M_DST, None, None),
        (None, ALU | ADD | K, 16, None, None),
        (None, ST, M_L4, None, None),
        (f"proto{tag}", LD | MEM, M_PROTO, None, None),
        (None, JMP | JEQ | K, IPPROTO_TCP, f"ports{tag}", None),
        (None, JMP | JEQ | K, IPPROTO_UDP, f"ports{tag}", "reject"),
        (f"ports{tag}", LDX | MEM, M_L4, None, None),
        (None, LD | H | IND, net, None, None),
        (None, ST, M_SPORT, None, None),
        (None, LD | H | IND, net + 2, None, None),
        (None, ST, M_DPORT, None, None),
    ]


def _prologue() -> List[tuple]:
    net = SKF_NET_OFF
    vx = [(None, JMP | JEQ | K, p, "vxlan", None) for p in VXLAN_PORTS]
    return [
        (None, LD | IMM, 0, None, None),
        (None, ST, M_VNI, None, None),
        (None, LDX | IMM, 0, None, None),
        (None, LD | W | ABS, SKF_AD_OFF + SKF_AD_PROTOCOL, None, None),
        # VLAN tags left in the frame. Sent: the network header is already
        # past them (packet_parse_headers, vlan_insert_tag), the protocol
        # still says VLAN: the IP version tells. Received: the kernel took
        # the first tag off and left the network header at the second
        # (skb_vlan_untag): skip it.
        (None, JMP | JEQ | K, ETH_P_8021Q, "tagged", None),
        (None, JMP | JEQ | K, ETH_P_8021AD, "tagged", "ipo"),
        ("tagged", LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE, None, None),
        (None, JMP | JEQ | K, PACKET_OUTGOING, None, "inner_tag"),
        (None, LD | B | ABS, net, None, None),
        (None, ALU | RSH | K, 4, None, None),
        (None, JMP | JEQ | K, 4, "sent4", None),
        (None, JMP | JEQ | K, 6, "sent6", "reject"),
        ("sent4", LD | IMM, ETH_P_IP, None, None),
        (None, JMP | JA, "ipo", None, None),
        ("sent6", LD | IMM, ETH_P_IPV6, None, None),
        (None, JMP | JA, "ipo", None, None),
        ("inner_tag", LD | H | ABS, net + 2, None, None),
        (None, LDX | IMM, 4, None, None),
        *_decode("o"),
        (None, LD | MEM, M_PROTO, None, None),
        (None, JMP | JEQ | K, IPPROTO_UDP, None, "orient"),
        (None, LD | MEM, M_SPORT, None, None),
        *vx,
        (None, LD | MEM, M_DPORT, None, None),
        *vx[:-1], (None, JMP | JEQ | K, VXLAN_PORTS[-1], "vxlan", "orient"),
        # X still holds the outer L4 offset; the VXLAN header follows UDP's 8 bytes
        ("vxlan", LD | B | IND, net + 8, None, None),
        (None, JMP | JSET | K, 0x08, None, "orient"),            # JSET: I flag, a VNI is present
        (None, LD | W | IND, net + 12, None, None),
        (None, ALU | RSH | K, 8, None, None),
        (None, ST, M_VNI, None, None),
        *_inner_ethernet(net),
        *_decode("i"),
        ("orient", LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE, None, None),
        (None, JMP | JEQ | K, PACKET_OUTGOING, None, "received"),
        *_copy([(M_SPORT, M_LPORT), (M_DPORT, M_RPORT), (M_SRC, M_LADDR), (M_DST, M_RADDR)]),
        (None, JMP | JA, "rules", None, None),
        ("received", LD | MEM, M_DPORT, None, None),
        (None, ST, M_LPORT, None, None),
        *_copy([(M_SPORT, M_RPORT), (M_DST, M_LADDR), (M_SRC, M_RADDR)]),
    ]


def _inner_ethernet(net: int) -> List[tuple]:
    """The Ethernet header VXLAN carries (at UDP + 16, X = UDP's offset)
    with up to two VLAN tags, as user space reads it: leaves A = its type
    and X = where the inner IP header starts."""
    rows = []
    for tags in range(3):
        at = 16 + 12 + 4 * tags   # the type field after `tags` tags
        rows.append((f"tags{tags}", LD | H | IND, net + at, None, None))
        if tags < 2:
            rows += [(None, JMP | JEQ | K, ETH_P_8021Q, f"tags{tags + 1}", None),
                     (None, JMP | JEQ | K, ETH_P_8021AD, f"tags{tags + 1}", None)]
        rows += [(None, ST, M_TMP, None, None),
                 (None, MISC | TXA, 0, None, None),
                 (None, ALU | ADD | K, at + 2, None, None),
                 (None, MISC | TAX, 0, None, None),
                 (None, LD | MEM, M_TMP, None, None)]
        if tags < 2:
            rows.append((None, JMP | JA, "ipi", None, None))
    return rows


def _copy(pairs) -> List[tuple]:
    rows = []
    for src, dst in pairs:
        rows += [(None, LD | MEM, src, None, None), (None, ST, dst, None, None)]
    return rows


_JUMPS = {"==": (JEQ, False), "!=": (JEQ, True), ">": (JGT, False), "<=": (JGT, True),
          ">=": (JGE, False), "<": (JGE, True)}
_SWAPPED = {"==": "==", "!=": "!=", "<": ">", ">": "<", "<=": ">=", ">=": "<="}


class _Codegen:
    """Short-circuit code for one statement: jumps to `t` when true, `f`
    when false. Leaves that are constants for this socket are folded."""

    def __init__(self, nic_name: bytes, labels):
        self.nic, self.labels, self.rows, self.pending = nic_name, labels, [], []

    def label(self):
        return f".s{next(self.labels)}"

    def emit(self, code, k=0, jt=None, jf=None):
        lab = tuple(self.pending) or None
        self.pending = []
        self.rows.append((lab, code, k, jt, jf))

    def place(self, lab):
        self.pending.append(lab)

    def jump(self, target):
        self.emit(JMP | JA, target)

    def const(self, node):
        """The value of a leaf known when the program is built, else None."""
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, Field) and node.name == "nic_name":
            return self.nic
        return None

    def cond(self, node, t, f):
        if isinstance(node, Lit):
            return self.jump(t if node.value else f)
        if isinstance(node, Field):
            word, value = {"tcp": (M_PROTO, IPPROTO_TCP), "udp": (M_PROTO, IPPROTO_UDP),
                           "ipv4": (M_FAMILY, 4), "ipv6": (M_FAMILY, 6)}[node.name]
            self.emit(LD | MEM, word)
            return self.emit(JMP | JEQ | K, value, t, f)
        if isinstance(node, Not):
            return self.cond(node.operand, f, t)
        if isinstance(node, Call):
            return self.call(node, t, f)
        if node.op in ("&&", "||"):
            mid = self.label()
            if node.op == "&&":
                self.cond(node.left, mid, f)
            else:
                self.cond(node.left, t, mid)
            self.place(mid)
            return self.cond(node.right, t, f)
        kind = _kind(node.left)
        if kind == BOOL:   # a == b is (a && b) || (!a && !b): b's code twice
            yes, no = self.label(), self.label()
            same, differ = (t, f) if node.op == "==" else (f, t)
            self.cond(node.left, yes, no)
            self.place(yes)
            self.cond(node.right, same, differ)
            self.place(no)
            return self.cond(node.right, differ, same)
        if kind == INT:
            return self.compare_ints(node.op, node.left, node.right, t, f)
        return self.compare_strings(node.op, node.left, node.right, t, f)

    def compare_ints(self, op, left, right, t, f):
        if isinstance(left, Lit) and not isinstance(right, Lit):
            left, right, op = right, left, _SWAPPED[op]
        if isinstance(left, Lit):
            return self.jump(t if _int_op(op, left.value, right.value) else f)
        code, negate = _JUMPS[op]
        if negate:
            t, f = f, t
        self.emit(LD | MEM, INT_FIELD_WORD[left.name])
        if isinstance(right, Lit):
            k = right.value
            if k < 0 or k > U32_MAX:   # fields are unsigned 32-bit at most
                below = k < 0
                result = {JEQ: False, JGT: below, JGE: below}[code]
                return self.jump(t if result else f)
            return self.emit(JMP | code | K, k, t, f)
        self.emit(LDX | MEM, INT_FIELD_WORD[right.name])
        return self.emit(JMP | code | X, 0, t, f)

    def compare_strings(self, op, left, right, t, f):
        if op == "!=":
            t, f = f, t
        lc, rc = self.const(left), self.const(right)
        if lc is not None and rc is not None:
            return self.jump(t if lc == rc else f)
        if lc is not None:
            left, right, lc, rc = right, left, rc, lc
        if left.name not in ADDRESS_FIELDS:
            raise _Unfit(left.name)
        fam = ADDRESS_FIELDS[left.name]
        if rc is not None:
            if rc == b"":
                return self.family(fam, f, t)
            packed = canonical_address(rc, fam)
            if packed is None:
                return self.jump(f)
            return self.address_words(left.name, packed, (32,) * (len(packed) // 4), t, f)
        if right.name not in ADDRESS_FIELDS:
            raise _Unfit(right.name)
        if right.name == left.name:
            return self.jump(t)
        if ADDRESS_FIELDS[right.name] != fam:   # one of the two is always ""
            return self.jump(f)
        other = self.label()
        self.family(fam, other, t)              # both "" on the other family
        self.place(other)
        for i in range(0, 16 if fam == 6 else 4, 4):
            self.emit(LDX | MEM, ADDR_FIELD_WORD[right.name])
            self.emit(LD | W | IND, SKF_NET_OFF + i)
            self.emit(ST, M_TMP)
            self.emit(LDX | MEM, ADDR_FIELD_WORD[left.name])
            self.emit(LD | W | IND, SKF_NET_OFF + i)
            self.emit(LDX | MEM, M_TMP)
            last = i == (12 if fam == 6 else 0)
            self.emit(JMP | JEQ | X, 0, t if last else None, f)

    def family(self, fam, t, f):
        self.emit(LD | MEM, M_FAMILY)
        self.emit(JMP | JEQ | K, fam, t, f)

    def address_words(self, field, packed, bits_per_word, t, f):
        """family matches and the first bits of each 32-bit word equal packed's."""
        fam = ADDRESS_FIELDS[field]
        words = [(i, b) for i, b in enumerate(bits_per_word) if b > 0]
        if not words:
            return self.family(fam, t, f)
        self.family(fam, None, f)
        self.emit(LDX | MEM, ADDR_FIELD_WORD[field])
        for n, (i, bits) in enumerate(words):
            value = int.from_bytes(packed[4 * i:4 * i + 4], "big")
            mask = (U32_MAX << (32 - bits)) & U32_MAX
            self.emit(LD | W | IND, SKF_NET_OFF + 4 * i)
            if bits < 32:
                self.emit(ALU | AND | K, mask)
            self.emit(JMP | JEQ | K, value & mask, t if n == len(words) - 1 else None, f)

    def call(self, node, t, f):
        a, b = node.args
        if node.name == "ipnet_contains":
            addr = self.const(b)
            if addr is not None:
                return self.jump(t if network_contains(a.value, addr) else f)
            fam, net, prefix = parse_network(a.value)
            if ADDRESS_FIELDS[b.name] != fam:
                return self.jump(f)
            bits = [max(0, min(32, prefix - 32 * i)) for i in range(len(net) // 4)]
            return self.address_words(b.name, net, bits, t, f)
        av, bv = self.const(a), self.const(b)
        if av is None or bv is None:
            raise _Unfit(node.name)
        result = av.startswith(bv) if node.name == "has_prefix" else av.endswith(bv)
        return self.jump(t if result else f)


def _kind(node) -> str:
    if isinstance(node, Lit):
        return node.type
    if isinstance(node, Field):
        return FIELDS[node.name].type
    return BOOL


def _int_op(op, a, b) -> bool:
    return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def socket_filter(rules: Optional[Rules], nic_name: str = "", snaplen: int = SNAPLEN) -> SocketFilter:
    """The program for a packet socket bound to interface `nic_name`: the
    header-field statements, in order, as many as fit in BPF_MAXINSNS."""
    labels = itertools.count()
    compiled, per_conn = [], []   # compiled: (statement, rows, labels left for the next row)
    for st in (rules.statements if rules else ()):
        if st.needs_connection:
            per_conn.append(st)
            continue
        gen = _Codegen(nic_name.encode(), labels)
        nxt = gen.label()
        try:
            gen.cond(st.expr, "drop", nxt)
        except _Unfit:
            per_conn.append(st)
            continue
        gen.place(nxt)
        compiled.append((st, gen.rows, gen.pending))

    def program(n):
        rows, pending = _prologue(), ["rules"]
        for _st, body, left in compiled[:n]:
            first = body[0]
            rows.append(((*pending, *(first[0] or ())), *first[1:]))
            rows += body[1:]
            pending = left
        return assemble(rows + [*netlog_keep((*pending, "keep"), snaplen),
                                (("reject", "drop"), RET | K, 0, None, None)])

    fits, code = len(compiled), program(len(compiled))
    if len(code) // 8 > BPF_MAXINSNS:   # the longest prefix that fits
        lo, hi = 0, len(compiled)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(program(mid)) // 8 <= BPF_MAXINSNS:
                lo = mid
            else:
                hi = mid - 1
        fits, code = lo, program(lo)
    per_conn += [st for st, _b, _l in compiled[fits:]]
    per_conn.sort(key=lambda s: s.index)
    return SocketFilter(code, tuple(st for st, _b, _l in compiled[:fits]), tuple(per_conn))
