"""Pure-Python reference of dkebpf._netlog.ConnTable's L4 rules, for
property tests only: per connection (local end = source of outgoing
packets), packets and payload bytes per direction, retransmits (a segment
occupying sequence space of which some was seen before that way, keep-alive
probes excepted; at most SEQ_RANGES ranges remembered, the two oldest
merged past that), SYN retransmits, chunk cuts."""
TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10
CHUNK_PACKETS, CHUNK_PACKETS_CLOSING = 256, 320
SEQ_RANGES, SEQ_SPAN_MAX = 8, 1 << 30


def _before(a, b):
    return ((a - b) & 0xFFFFFFFF) >= 0x80000000


def _cover(ranges, s, e):
    """Add [s, e) to ranges (ordered, disjoint [start, end) pairs, serial
    arithmetic); True when some of it was there already."""
    def off(x):   # position relative to the new range's start, -2^31..2^31
        return ((x - s + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    n = off(e)
    seen = any(off(a) < n and off(b) > 0 for a, b in ranges)
    touching = [i for i, (a, b) in enumerate(ranges) if off(a) <= n and off(b) >= 0]
    if touching:
        lo = min([0] + [off(ranges[i][0]) for i in touching])
        hi = max([n] + [off(ranges[i][1]) for i in touching])
        ranges[touching[0]:touching[-1] + 1] = [[(s + lo) & 0xFFFFFFFF, (s + hi) & 0xFFFFFFFF]]
    else:
        at = sum(1 for a, _b in ranges if off(a) < 0)
        ranges.insert(at, [s, e])
        if len(ranges) > SEQ_RANGES:
            ranges[0:2] = [[ranges[0][0], ranges[1][1]]]
    top = ranges[-1][1]
    while len(ranges) > 1 and (top - ranges[0][1]) & 0xFFFFFFFF > SEQ_SPAN_MAX:
        del ranges[0]
    if (top - ranges[0][0]) & 0xFFFFFFFF > SEQ_SPAN_MAX:
        ranges[0][0] = (top - SEQ_SPAN_MAX) & 0xFFFFFFFF
    return seen


def chunks(packets):
    """packets: dicts with tx, sport, dport, proto, flags, seq, ack, length.
    Returns [(key, chunk dict)] in emission order, the last chunks of every
    connection at the end (as collect() with flush_all)."""
    conns, out = {}, []
    for p in packets:
        key = (p["sport"], p["dport"], p["proto"]) if p["tx"] else (p["dport"], p["sport"], p["proto"])
        c = conns.get(key)
        if c is not None and (c["rst"] or c["fin_dirs"] == {"tx", "rx"}) and \
                p["proto"] == 6 and p["flags"] & (TH_SYN | TH_ACK) == TH_SYN:
            # a closed port pair reused by a new connection: a new record
            if c["cur"] is not None:
                out.append((key, c["cur"]))
            c = None
        if c is None:
            c = conns[key] = {"chunk_id": 0, "cur": None, "next": {}, "seen": {"tx": [], "rx": []},
                              "syn_seen": set(), "syn_retrans": 0,
                              "rst": False, "fin_dirs": set()}
        if c["cur"] is None:
            c["chunk_id"] += 1
            c["cur"] = {"chunk_id": c["chunk_id"], "tx_packets": 0, "rx_packets": 0, "tx_bytes": 0,
                        "rx_bytes": 0, "tx_retrans": 0, "rx_retrans": 0, "fin": False}
        ch = c["cur"]
        d = "tx" if p["tx"] else "rx"
        ch[f"{d}_packets"] += 1
        ch[f"{d}_bytes"] += p["length"]
        if p["proto"] == 6:
            f = p["flags"]
            if f & TH_SYN:
                kind = (f & TH_ACK, d)
                if kind in c["syn_seen"]:
                    c["syn_retrans"] += 1
                c["syn_seen"].add(kind)
            if f & (TH_FIN | TH_RST):
                ch["fin"] = True
            if f & TH_FIN:
                c["fin_dirs"].add(d)
            if f & TH_RST:
                c["rst"] = True
            span = p["length"] + bool(f & TH_SYN) + bool(f & TH_FIN)
            if span:
                end = (p["seq"] + span) & 0xFFFFFFFF
                nxt = c["next"].get(d)
                keepalive = nxt is not None and span <= 1 and not f & TH_FIN and \
                    p["seq"] == (nxt - 1) & 0xFFFFFFFF
                if _cover(c["seen"][d], p["seq"], end) and not f & TH_SYN and not keepalive:
                    ch[f"{d}_retrans"] += 1
                if nxt is None or _before(nxt, end):
                    c["next"][d] = end
        ch["syn_retrans"] = c["syn_retrans"]
        limit = CHUNK_PACKETS_CLOSING if ch["fin"] else CHUNK_PACKETS
        if ch["tx_packets"] + ch["rx_packets"] >= limit:
            out.append((key, ch))
            c["cur"] = None
    for key, c in conns.items():
        if c["cur"] is not None:
            c["cur"]["syn_retrans"] = c["syn_retrans"]
            out.append((key, c["cur"]))
    return out
