"""Pure-Python reference of dkebpf._dns (message parser, TCP framing,
names as text, pairing) and of dkebpf._packets.decode_network, for tests
only. Slow and obvious; same rules, written independently of the Cython."""
import struct

TYPE_A, TYPE_CNAME, TYPE_AAAA = 1, 5, 28
CHAIN_MAX = 8
MAX_JUMPS = 127


class Malformed(Exception):
    pass


def read_name(m, pos):
    """(wire name lower-cased, position after the name in the record)."""
    labels = []
    after = None
    limit = pos
    jumps = 0
    size = 0
    while True:
        if pos >= len(m):
            raise Malformed("name runs past the end")
        c = m[pos]
        if c >= 0xC0:
            if pos + 1 >= len(m):
                raise Malformed("pointer cut")
            target = ((c & 0x3F) << 8) | m[pos + 1]
            # only backwards from where this run of labels began: no loops
            if target >= limit:
                raise Malformed("forward pointer")
            if after is None:
                after = pos + 2
            jumps += 1
            if jumps > MAX_JUMPS:
                raise Malformed("too many pointers")
            limit = pos = target
            continue
        if c >= 0x40:
            raise Malformed("label type")
        if c == 0:
            wire = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
            return wire, (pos + 1 if after is None else after)
        size += 1 + c
        if size + 1 > 255 or pos + 1 + c > len(m):
            raise Malformed("name too long or cut")
        labels.append(bytes(m[pos + 1:pos + 1 + c]).lower())
        pos += 1 + c


def parse(m):
    """Same result as dkebpf._dns.parse: None when malformed."""
    try:
        return _parse(bytes(m))
    except Malformed:
        return None


def _parse(m):
    if len(m) < 12:
        raise Malformed("header")
    mid, flags, qd, an = struct.unpack_from("!HHHH", m)
    if qd == 0:
        raise Malformed("no question")
    qname, pos = read_name(m, 12)
    if pos + 4 > len(m):
        raise Malformed("question cut")
    qtype = struct.unpack_from("!H", m, pos)[0]
    pos += 4
    for _ in range(qd - 1):
        _n, pos = read_name(m, pos)
        if pos + 4 > len(m):
            raise Malformed("question cut")
        pos += 4
    chain = [qname]
    answers = []
    for _ in range(an):
        owner, pos = read_name(m, pos)
        if pos + 10 > len(m):
            raise Malformed("record header cut")
        typ, cls, ttl, rdlen = struct.unpack_from("!HHIH", m, pos)
        pos += 10
        if pos + rdlen > len(m):
            raise Malformed("rdata cut")
        if typ == TYPE_CNAME:
            target, after = read_name(m, pos)
            if after > pos + rdlen:
                raise Malformed("cname past rdata")
            if owner in chain and len(chain) < CHAIN_MAX:
                chain.append(target)
        elif typ in (TYPE_A, TYPE_AAAA) and cls == 1:
            size = 4 if typ == TYPE_A else 16
            if rdlen != size:
                raise Malformed("address size")
            if owner in chain:
                answers.append((4 if typ == TYPE_A else 6, m[pos:pos + size], ttl))
        pos += rdlen
    return {"id": mid, "qr": flags >> 15, "opcode": (flags >> 11) & 0xF, "rcode": flags & 0xF,
            "qname": qname, "qtype": qtype, "answers": answers}


def split_tcp(payload):
    """Messages of one TCP segment (2-byte length prefix each) and whether
    the last one was cut."""
    out, pos = [], 0
    while pos < len(payload):
        if pos + 2 > len(payload):
            return out, True
        n = struct.unpack_from("!H", payload, pos)[0]
        pos += 2
        if pos + n > len(payload):
            return out, True
        out.append(payload[pos:pos + n])
        pos += n
    return out, False


def name_text(wire):
    """Presentation form: labels joined by '.', no trailing dot, '.' for
    the root; non-printable bytes, '.' and '\\' as \\DDD."""
    labels, pos = [], 0
    while pos < len(wire) and wire[pos]:
        n = wire[pos]
        labels.append("".join(chr(b) if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) else f"\\{b:03d}"
                              for b in wire[pos + 1:pos + 1 + n]))
        pos += 1 + n
    return ".".join(labels) if labels else "."


def decode_network(p, ethertype):
    """(fields dict, payload bytes) or the failure name, like
    dkebpf._packets.decode_network."""
    p = bytes(p)
    if ethertype == 0x0800:
        if len(p) < 20 or p[0] >> 4 != 4 or (p[0] & 0xF) * 4 < 20:
            return "not_ip"
        ihl = (p[0] & 0xF) * 4
        if len(p) < ihl:
            return "truncated"
        if struct.unpack_from("!H", p, 6)[0] & 0x1FFF:
            return "fragment"
        tot = struct.unpack_from("!H", p, 2)[0]
        if tot < ihl:
            return "not_ip"
        plen, proto, fam = tot - ihl, p[9], 4
        saddr, daddr = p[12:16] + bytes(12), p[16:20] + bytes(12)
        off = ihl
    elif ethertype == 0x86DD:
        if len(p) < 40 or p[0] >> 4 != 6:
            return "not_ip"
        plen, proto, fam = struct.unpack_from("!H", p, 4)[0], p[6], 6
        saddr, daddr = p[8:24], p[24:40]
        off = 40
        for _ in range(8):   # extension headers, RFC 8200 4.1-4.6 and AH (RFC 4302)
            if proto not in (0, 43, 60, 135, 139, 140, 44, 51):
                break
            if len(p) < off + (8 if proto == 44 else 2):
                return "truncated"
            if proto == 44:
                if struct.unpack_from("!H", p, off + 2)[0] >> 3:
                    return "fragment"
                hlen = 8
            elif proto == 51:
                hlen = (p[off + 1] + 2) * 4
            else:
                hlen = (p[off + 1] + 1) * 8
            if len(p) < off + hlen or plen < hlen:
                return "truncated"
            proto, off, plen = p[off], off + hlen, plen - hlen
        else:
            if proto in (0, 43, 60, 135, 139, 140, 44, 51):
                return "not_tcp_udp"
    else:
        return "not_ip"
    if proto == 17:
        if len(p) < off + 8:
            return "truncated"
        sport, dport, ulen = struct.unpack_from("!HHH", p, off)
        if ulen < 8:
            return "truncated"
        seq = ack = window = 0
        wire = min(ulen - 8, max(plen - 8, 0))
        off += 8
    elif proto == 6:
        if len(p) < off + 20:
            return "truncated"
        sport, dport, seq, ack = struct.unpack_from("!HHII", p, off)
        window = struct.unpack_from("!H", p, off + 14)[0]
        doff = (p[off + 12] >> 4) * 4
        if doff < 20 or len(p) < off + doff or plen < doff:
            return "truncated"
        wire = plen - doff
        off += doff
    else:
        return "not_tcp_udp"
    payload = p[off:off + wire]
    return {"family": fam, "proto": proto, "saddr": saddr, "daddr": daddr, "sport": sport,
            "dport": dport, "payload_wire": wire, "seq": seq, "ack": ack, "window": window,
            "vni": 0, "vlan": 0, "vxlan": 0}, payload


class PairRef:
    """Same rules as dkebpf._dns.PairTable, with a dict."""

    def __init__(self, capacity, timeout_ns=6_000_000_000):
        self.capacity = capacity
        self.timeout_ns = timeout_ns
        self.pending = {}
        self.out = []
        self.counts = dict(queries=0, answers=0, paired=0, duplicate_queries=0, unmatched_answers=0,
                           pending_full=0, timeouts=0, other_opcode=0)

    def add(self, msgs):
        """msgs: dicts with ts_ns id qr opcode rcode family proto saddr daddr
        sport dport qname qtype. Returns completed flags."""
        done = []
        for m in msgs:
            done.append(0)
            if m["opcode"] != 0:
                self.counts["other_opcode"] += 1
                continue
            if m["qr"] == 0:
                self.counts["queries"] += 1
                key = (m["id"], m["family"], m["proto"], m["saddr"], m["sport"], m["daddr"], m["dport"])
                if key in self.pending:
                    self.counts["duplicate_queries"] += 1
                elif len(self.pending) >= self.capacity:
                    self.counts["pending_full"] += 1
                else:
                    self.pending[key] = m
            else:
                self.counts["answers"] += 1
                key = (m["id"], m["family"], m["proto"], m["daddr"], m["dport"], m["saddr"], m["sport"])
                q = self.pending.pop(key, None)
                if q is None:
                    self.counts["unmatched_answers"] += 1
                    continue
                latency = max(m["ts_ns"] - q["ts_ns"], 0)
                if latency >= self.timeout_ns:   # answered too late: a timeout
                    self.out.append(self._pair(q, 0, -1))
                    self.counts["timeouts"] += 1
                else:
                    self.out.append(self._pair(q, latency, m["rcode"]))
                    self.counts["paired"] += 1
                done[-1] = 1
        return done

    @staticmethod
    def _pair(q, latency, rcode):
        return dict(ts_ns=q["ts_ns"], latency_ns=latency, id=q["id"], caddr=q["saddr"], saddr=q["daddr"],
                    cport=q["sport"], sport=q["dport"], family=q["family"], proto=q["proto"],
                    qtype=q["qtype"], rcode=rcode, qname=q["qname"])

    def expire(self, now_ns):
        gone = [k for k, q in self.pending.items() if q["ts_ns"] + self.timeout_ns <= now_ns]
        for k in gone:
            self.out.append(self._pair(self.pending.pop(k), 0, -1))
        self.counts["timeouts"] += len(gone)
        return len(gone)

    def take(self):
        out, self.out = self.out, []
        return out


def classify(pairs, local):
    """Who asked and who answered, from this namespace's addresses `local`
    ({(family, 16-byte addr)}): PairRef pairs -> (pair, direction,
    forwarded) for each exchange reported. This host asked: outgoing; it
    answered: incoming; neither end is here: forwarded, seen from the client
    (outgoing), and reported once -- a DNATed query's copies before and
    after DNAT share DNS id, transport and client ip:port; the first seen
    (earliest query time) stays."""
    out, seen = [], set()
    for p in sorted(pairs, key=lambda p: p["ts_ns"]):
        client_local = (p["family"], p["caddr"]) in local
        server_local = (p["family"], p["saddr"]) in local
        forwarded = not client_local and not server_local
        if forwarded:
            ident = (p["id"], p["family"], p["proto"], p["caddr"], p["cport"])
            if ident in seen:
                continue
            seen.add(ident)
        out.append((p, "outgoing" if client_local or forwarded else "incoming", forwarded))
    return out
