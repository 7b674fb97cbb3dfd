"""Classic BPF socket filters for packet-socket capture (SO_ATTACH_FILTER).

Loads use the kernel's ancillary offsets (Documentation/networking/filter.rst,
include/uapi/linux/filter.h): SKF_AD_PROTOCOL gives skb->protocol and
SKF_NET_OFF-relative loads read from the network header, so one program
serves every link type (ethernet, loopback, tun, no link header at all)."""
import itertools
import struct

# opcodes (include/uapi/linux/bpf_common.h)
LD, LDX, ST, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, MSH = 0x00, 0x20, 0x40, 0x60, 0xA0
K, X = 0x00, 0x08                     # jump / ALU operand: the constant k or register X
JEQ, JGT, JGE, JSET = 0x10, 0x20, 0x30, 0x40
ADD, SUB, AND, LSH, RSH = 0x00, 0x10, 0x50, 0x60, 0x70
TAX, TXA = 0x00, 0x80                 # with MISC
RET_A = 0x10                          # with RET: return the accumulator

SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL, SKF_AD_PKTTYPE, SKF_AD_HATYPE = 0, 4, 28
SKF_NET_OFF = -0x100000
PACKET_OUTGOING = 4
ARPHRD_LOOPBACK = 772
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
IPPROTO_TCP, IPPROTO_UDP = 6, 17
SNAPLEN = 0x40000  # whole packets: TCP DNS answers on loopback come as one 64 KiB segment


BPF_MAXINSNS = 4096   # include/uapi/linux/bpf_common.h
BPF_MEMWORDS = 16     # scratch memory M[0..15]
JA = 0x00


def _labels(lab):
    return () if lab is None else (lab,) if isinstance(lab, str) else tuple(lab)


def _relax(program):
    """Conditional jumps reach at most 255 instructions ahead; a farther
    target is reached through an unconditional jump (32-bit offset) put
    right behind the conditional one. Each pass relays every jump that is
    too far; passes repeat until all fit (a relay pushes others apart)."""
    rows = [(_labels(lab), code, k, jt, jf) for lab, code, k, jt, jf in program]
    fresh = itertools.count()
    while True:
        where = {lab: i for i, row in enumerate(rows) for lab in row[0]}
        far_at = [i for i, (_l, code, _k, jt, jf) in enumerate(rows)
                  if code & 0x07 == JMP and code & 0xF0 != JA
                  and any(t is not None and where[t] - i - 1 > 255 for t in (jt, jf))]
        if not far_at:
            return rows
        for i in reversed(far_at):   # from the end: earlier indices stay valid
            labs, code, k, jt, jf = rows[i]
            far = next(t for t in (jt, jf) if t is not None and where[t] - i - 1 > 255)
            n = next(fresh)
            hop, after = f".hop{n}", f".after{n}"
            if jt is None or jf is None:   # the fall-through now has to skip the hop
                nxt = rows[i + 1]
                rows[i + 1] = (nxt[0] + (after,), *nxt[1:])
            jt, jf = [hop if t == far else (after if t is None else t) for t in (jt, jf)]
            rows[i] = (labs, code, k, jt, jf)
            rows.insert(i + 1, ((hop,), JMP | JA, far, None, None))


def assemble(program):
    """program: list of (label(s) or None, code, k, jt label, jf label);
    an unconditional jump (JMP|JA) takes its target label as k. Jumps are
    forward only, as classic BPF requires; far conditional jumps are
    relayed (see _relax). Returns the packed struct sock_filter array."""
    rows = _relax(program)
    where = {lab: i for i, row in enumerate(rows) for lab in row[0]}
    out = []
    for i, (_labs, code, k, jt, jf) in enumerate(rows):
        def rel(target):
            if target is None:
                return 0
            off = where[target] - i - 1
            if off < 0:
                raise ValueError(f"jump to {target} goes backwards")
            return off
        if code & 0x07 == JMP and code & 0xF0 == JA and isinstance(k, str):
            k = rel(k)
        out.append(struct.pack("=HBBI", code, rel(jt), rel(jf), k & 0xFFFFFFFF))
    return b"".join(out)


def port_filter(port, protos=(IPPROTO_UDP, IPPROTO_TCP), outgoing_only=False):
    """IPv4 and IPv6 packets of the given transports from or to `port`.

    A packet sent on the loopback device reaches packet sockets twice, once
    on transmit (PACKET_OUTGOING) and once on receive (PACKET_HOST); the
    transmit copy is dropped here so each message is seen once.
    outgoing_only: transmitted packets only (PACKET_OUTGOING; for a socket
    bound to one device that is not loopback). Not followed: IPv6
    extension headers and non-first IPv4 fragments (they carry no
    transport header)."""
    net = SKF_NET_OFF
    if outgoing_only:
        direction = [(None, LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE, None, None),
                     (None, JMP | JEQ | K, PACKET_OUTGOING, None, "drop")]
    else:
        direction = [(None, LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE, None, None),
                     (None, JMP | JEQ | K, PACKET_OUTGOING, None, "proto"),
                     (None, LD | W | ABS, SKF_AD_OFF + SKF_AD_HATYPE, None, None),
                     (None, JMP | JEQ | K, ARPHRD_LOOPBACK, "drop", None)]

    def proto_checks(label_ok):
        rows = []
        for n, pr in enumerate(protos):
            last = n == len(protos) - 1
            rows.append((None, JMP | JEQ | K, pr, label_ok, "drop" if last else None))
        return rows

    prog = [
        *direction,
        ("proto", LD | W | ABS, SKF_AD_OFF + SKF_AD_PROTOCOL, None, None),
        (None, JMP | JEQ | K, ETH_P_IP, "v4", None),
        (None, JMP | JEQ | K, ETH_P_IPV6, "v6", "drop"),
        ("v4", LD | B | ABS, net + 9, None, None),
        *proto_checks("v4frag"),
        ("v4frag", LD | H | ABS, net + 6, None, None),
        (None, JMP | JSET | K, 0x1FFF, "drop", None),
        (None, LDX | B | MSH, net, None, None),        # X = IPv4 header length
        (None, LD | H | IND, net, None, None),         # source port
        (None, JMP | JEQ | K, port, "accept", None),
        (None, LD | H | IND, net + 2, None, None),     # destination port
        (None, JMP | JEQ | K, port, "accept", "drop"),
        ("v6", LD | B | ABS, net + 6, None, None),
        *proto_checks("v6ports"),
        ("v6ports", LD | H | ABS, net + 40, None, None),
        (None, JMP | JEQ | K, port, "accept", None),
        (None, LD | H | ABS, net + 42, None, None),
        (None, JMP | JEQ | K, port, "accept", "drop"),
        ("accept", RET | K, SNAPLEN, None, None),
        ("drop", RET | K, 0, None, None),
    ]
    return assemble(prog)


NETLOG_SNAPLEN = 4096   # bpf-netlog: enough for HTTP/1 headers; counts come from the headers


# A TCP segment of at least BULK_PAYLOAD bytes whose payload does not start
# like an HTTP/1 request or status line is cut after its TCP header (+
# LINK_ROOM bytes: the Ethernet header, which the program does not see):
# bulk data costs ~150 bytes of ring instead of up to ~1.6 KiB, so a ring of
# the same size absorbs a TCP window's burst far longer (measured: a 4 MiB
# ring dropped bursts of a bulk transfer through a veth). 128, not a full
# segment: on a small MTU (300 in perf/bench_netlog_e2e.py) every bulk
# segment is still cut. The counts come from the headers; HTTP/1 header
# segments that start with a token stay whole, the rest of a header block
# split over segments is kept whole when shorter than BULK_PAYLOAD.
# LINK_ROOM is exact for Ethernet without a VLAN tag in the frame (the kept
# path is only taken when skb->protocol is IPv4/IPv6, i.e. the tag, if any,
# was taken off by the device); a device without a link header keeps up to
# LINK_ROOM payload bytes more, still counted as cut on purpose.
BULK_PAYLOAD = 128
LINK_ROOM = 14
HTTP_TOKENS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC", b"HTTP")
M_SNAP = BPF_MEMWORDS - 1   # scratch word: IP + TCP header length


def netlog_keep(labels, snaplen=NETLOG_SNAPLEN):
    """The rows ending bpf-netlog's programs where a packet is kept (first
    row labelled `labels`): RET snaplen, or the TCP cut above for plain
    IPv4 and IPv6 (no extension header) TCP; VLAN tags the device left in
    the frame and VXLAN keep snaplen."""
    net, sub = SKF_NET_OFF, ".snap"
    tokens = [(None, JMP | JEQ | K, int.from_bytes(t, "big"), f"{sub}whole", None) for t in HTTP_TOKENS]
    return [
        (labels, LD | W | ABS, SKF_AD_OFF + SKF_AD_PROTOCOL, None, None),
        (None, JMP | JEQ | K, ETH_P_IP, None, f"{sub}v6"),
        (None, LD | B | ABS, net + 9, None, None),
        (None, JMP | JEQ | K, IPPROTO_TCP, None, f"{sub}whole"),
        (None, LD | H | ABS, net + 6, None, None),
        (None, JMP | JSET | K, 0x1FFF, f"{sub}whole", None),     # a later fragment: no TCP header
        (None, LDX | B | MSH, net, None, None),                  # X = IPv4 header length
        (None, LD | B | IND, net + 12, None, None),              # TCP data offset (32-bit words << 4)
        (None, ALU | AND | K, 0xF0, None, None),
        (None, ALU | RSH | K, 2, None, None),
        (None, ALU | ADD | X, 0, None, None),                    # A = IP + TCP header length
        (None, ST, M_SNAP, None, None),
        (None, MISC | TAX, 0, None, None),
        (None, LD | H | ABS, net + 2, None, None),               # IPv4 total length
        (None, ALU | SUB | X, 0, None, None),
        (None, JMP | JA, f"{sub}payload", None, None),
        (f"{sub}v6", JMP | JEQ | K, ETH_P_IPV6, None, f"{sub}whole"),
        (None, LD | B | ABS, net + 6, None, None),
        (None, JMP | JEQ | K, IPPROTO_TCP, None, f"{sub}whole"),
        (None, LD | B | ABS, net + 40 + 12, None, None),
        (None, ALU | AND | K, 0xF0, None, None),
        (None, ALU | RSH | K, 2, None, None),
        (None, MISC | TAX, 0, None, None),                       # X = TCP header length
        (None, ALU | ADD | K, 40, None, None),
        (None, ST, M_SNAP, None, None),
        (None, LD | H | ABS, net + 4, None, None),               # IPv6 payload length
        (None, ALU | SUB | X, 0, None, None),
        (f"{sub}payload", JMP | JGE | K, BULK_PAYLOAD, None, f"{sub}whole"),   # A = TCP payload length
        (None, LDX | MEM, M_SNAP, None, None),
        (None, LD | W | IND, net, None, None),                   # its first 4 bytes
        *tokens,
        (None, LD | MEM, M_SNAP, None, None),
        (None, ALU | ADD | K, LINK_ROOM, None, None),
        (None, RET | RET_A, 0, None, None),
        (f"{sub}whole", RET | K, snaplen, None, None),
    ]


def netlog_filter(snaplen=NETLOG_SNAPLEN):
    """bpf-netlog's capture: every IPv4 and IPv6 packet, VLAN-tagged ones
    included (the decoder skips the tags), cut at snaplen bytes (enough for
    HTTP/1 headers; counts come from the headers, not from what was cut).
    Transports are chosen by the decoder, so fragments are counted too."""
    return assemble([
        (None, LD | W | ABS, SKF_AD_OFF + SKF_AD_PROTOCOL, None, None),
        (None, JMP | JEQ | K, ETH_P_IP, "accept", None),
        (None, JMP | JEQ | K, ETH_P_IPV6, "accept", None),
        (None, JMP | JEQ | K, ETH_P_8021Q, "accept", None),
        (None, JMP | JEQ | K, ETH_P_8021AD, "accept", "drop"),
        *netlog_keep("accept", snaplen),
        ("drop", RET | K, 0, None, None),
    ])
