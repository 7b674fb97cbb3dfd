"""Plain-Python reference of ext/trace.pyx's span builder (pair,
link_threads), for property tests only. Messages are dicts with the
MSG_DTYPE field names; payload as bytes."""
from . import http_ref

SEND, RECV, CLOSE = 1, 2, 3
UNKNOWN, HTTP, REDIS, MYSQL, PGSQL, HTTP2, NONE = 0, 1, 2, 3, 4, 5, 255
DETECT_TRIES = 4
PAYLOAD_MAX = 1024
MASK63 = (1 << 63) - 1
M64 = (1 << 64) - 1


def other(op):
    return RECV if op == SEND else SEND


def detect(m):
    p = m["payload"][: m["cap_len"]]
    n = len(p)
    if p.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        return HTTP2, m["op"]
    if n >= 8:
        fl = http_ref.first_line(p)
        if fl is not None:
            return HTTP, (m["op"] if fl["kind"] == 1 else other(m["op"]))
    if n >= 5 and p[0:1] == b"*":
        i = 1
        while i < n and 48 <= p[i] <= 57:
            i += 1
        if i > 1 and i + 2 < n and p[i:i + 3] == b"\r\n$":
            return REDIS, m["op"]
    if n >= 8 and int.from_bytes(p[:4], "big") == n and int.from_bytes(p[4:8], "big") in (196608, 80877103):
        return PGSQL, m["op"]
    if n >= 5 and p[3] == 0 and p[4] == 10 and int.from_bytes(p[:3], "little") + 4 == m["bytes"]:
        return MYSQL, other(m["op"])
    return UNKNOWN, 0


def finish(M, q, r, x, req_op, proto, until):
    Q, R = M[q], M[r]
    sub = lambda a, b: a - b if a > b else 0  # noqa: E731
    s = {"req": q, "resp": r, "nxt": x, "proto": proto, "incoming": int(req_op == RECV), "start_ns": Q["ts"]}
    s["req_bytes"] = sub(R["sk_sent"], Q["sk_sent"]) if req_op == SEND else sub(R["sk_recv"], Q["sk_recv"])
    if s["req_bytes"] == 0:
        s["req_bytes"] = Q["bytes"]
    s["end_ns"], s["resp_bytes"] = R["ts"], R["bytes"]
    if x >= 0:
        X = M[x]
        end = X["ts_last_recv"] if req_op == SEND else X["ts_last_send"]
        s["end_ns"] = max(s["end_ns"], end)
        b = sub(X["sk_recv"], R["sk_recv"]) if req_op == SEND else sub(X["sk_sent"], R["sk_sent"])
        s["resp_bytes"] = max(s["resp_bytes"], b)
    until[q] = s["end_ns"]
    return s


def pair(M, conns, settle_before, expire_before):
    """M sorted by (sk, ts); conns: {sk: state dict}. Returns (role,
    spans, carry, seen, until)."""
    role, carry, spans, seen, until = [0] * len(M), [False] * len(M), [], {}, [0] * len(M)
    p, run = None, 0
    for m in M:  # a run's next calls join its start's payload while nothing is missing
        if m.get("more", 0) != 1:  # not TRACE_MORE_SHORT
            p, run = m, m["bytes"]
            continue
        if p is None or p["sk"] != m["sk"]:
            continue
        if p["cap_len"] == run and p["cap_len"] < PAYLOAD_MAX:
            add = m["payload"][: min(m["cap_len"], PAYLOAD_MAX - p["cap_len"])]
            p["payload"] = p["payload"][: p["cap_len"]] + add
            p["cap_len"] += len(add)
        run += m["bytes"]
    i = 0
    while i < len(M):
        sk = M[i]["sk"]
        st = dict(conns.get(sk) or {"req_op": 0, "proto": UNKNOWN, "tries": 0, "closed": 0})
        pq = pr = -1
        while i < len(M) and M[i]["sk"] == sk:
            m = M[i]
            if m.get("more"):
                i += 1
                continue
            if m["op"] == CLOSE:
                if pr >= 0:
                    spans.append(finish(M, pq, pr, i, st["req_op"], st["proto"], until))
                elif pq >= 0:
                    until[pq] = m["ts"]
                pq = pr = -1
                st.update(closed=1, req_op=0, proto=UNKNOWN, tries=0)  # the key may be reused at once
                i += 1
                continue
            st["closed"] = 0
            if st["proto"] == UNKNOWN:
                proto, rop = detect(m)
                if proto == UNKNOWN:
                    st["tries"] += 1
                    if st["tries"] >= DETECT_TRIES:
                        st["proto"] = NONE
                    i += 1
                    continue
                st["proto"], st["req_op"] = proto, rop
            if st["proto"] in (NONE, HTTP2):
                i += 1
                continue
            if m["op"] == st["req_op"]:
                role[i] = 1
                if pr >= 0:
                    spans.append(finish(M, pq, pr, i, st["req_op"], st["proto"], until))
                elif pq >= 0:
                    until[pq] = m["ts"]
                pq, pr = i, -1
                until[i] = M64
            else:
                role[i] = 2
                if pq >= 0 and pr < 0:
                    pr = i
            i += 1
        if pr >= 0:
            if M[pr]["ts"] < settle_before:
                spans.append(finish(M, pq, pr, -1, st["req_op"], st["proto"], until))
            else:
                carry[pq] = carry[pr] = True
        elif pq >= 0:
            if M[pq]["ts"] >= expire_before:
                carry[pq] = True
            else:
                until[pq] = M[pq]["ts"]
        seen[sk] = st
    return role, spans, carry, seen, until


def link_threads(M, role, until):
    """An exit gets the id of the one entry open on its thread at its
    start (entry start <= t < until); with none or several, one of its
    own (several: counted as ambiguous). Fills nothing: returns, per
    request index, ("msg", j) when it carries request j's id (an entry:
    itself), ("own", i) for a root of its own; and the counters."""
    reqs = [i for i, r in enumerate(role) if r == 1]
    # per thread, in time order, an entry before an exit at the same time
    reqs.sort(key=lambda i: ((M[i]["pid"] << 32) | M[i]["tid"], M[i]["ts"], M[i]["op"] != RECV))
    owner, stats = {}, {"exits_ambiguous_parent": 0, "exits_without_entry": 0}
    open_ = {}  # thread -> [(until, entry index)]
    for i in reqs:
        m = M[i]
        key, t = (m["pid"], m["tid"]), m["ts"]
        live = [e for e in open_.get(key, []) if e[0] > t]
        open_[key] = live
        if m["op"] == RECV:
            owner[i] = ("msg", i)
            if until[i] > t:
                live.append((until[i], i))
        elif len(live) == 1:
            owner[i] = ("msg", live[0][1])
        else:
            owner[i] = ("own", i)
            stats["exits_ambiguous_parent" if live else "exits_without_entry"] += 1
    return owner, stats


def split_pipelines(req_msgs, resp_msgs, req_total, resp_total, req_cap, resp_cap):
    """dkebpf._trace.split_pipelines of one exchange, in plain Python:
    req_msgs/resp_msgs are its runs' messages as (off, length, valid)
    tuples in order (a message-bounds parser's rows of its payload).
    Returns (rows: dicts of PIPE_DTYPE's fields but `span`, outcome: None,
    "split", "rest" or "mismatched")."""

    def side(msgs, total, cap):
        known, end, rest = [], 0, None
        for off, length, valid in msgs:
            if valid and length > 0 and off == end:
                known.append((off, length))
                end = off + length
            else:
                rest = off
                break
        total = max(total, cap, end)
        if rest is None and end < total:
            rest = end
        return known, rest, total

    qk, qrest, qtot = side(req_msgs, req_total, req_cap)
    rk, rrest, rtot = side(resp_msgs, resp_total, resp_cap)
    whole = [{"sub": 0, "req_off": 0, "resp_off": 0, "req_len": qtot, "resp_len": rtot, "many": False,
              "rest": False}]
    if len(qk) == len(rk) and qrest is None and rrest is None:
        if len(qk) <= 1:
            return whole, None
        return [{"sub": i, "req_off": q[0], "req_len": q[1], "resp_off": r[0], "resp_len": r[1], "many": True,
                 "rest": False} for i, (q, r) in enumerate(zip(qk, rk))], "split"
    m = min(len(qk), len(rk))
    if not ((m < len(qk) or qrest is not None) and (m < len(rk) or rrest is not None)):
        return whole, ("mismatched" if max(len(qk), len(rk)) > 1 else None)
    if m == 0:
        return whole, None
    rows = [{"sub": i, "req_off": q[0], "req_len": q[1], "resp_off": r[0], "resp_len": r[1], "many": True,
             "rest": False} for i, (q, r) in enumerate(zip(qk[:m], rk[:m]))]
    q_off = qk[m][0] if m < len(qk) else qrest
    r_off = rk[m][0] if m < len(rk) else rrest
    rows.append({"sub": m, "req_off": q_off, "req_len": qtot - q_off, "resp_off": r_off, "resp_len": rtot - r_off,
                 "many": True, "rest": True})
    return rows, "rest"
