"""Pure-Python reference of dkebpf._conntable.merge, for tests only.

Slow and obvious: every row becomes a dict, instances are matched in dicts
keyed by the instance id (sk, raddr, rport, ts_first). Same signature and
same return types as the Cython merge, except that the delta rows are a list
of dicts with the DELTA_DTYPE field names (in no particular order), and the
snapshot comes back in input order rather than sorted.
"""
import numpy as np

from dkebpf._records import F_CLOSED, F_ESTABLISHED

COUNTERS = ("bytes_sent", "bytes_recv", "retransmits")


def _rows(keys, stats):
    """(index, key dict, stats dict) per row."""
    kn, sn = keys.dtype.names, stats.dtype.names
    return [(i, dict(zip(kn, k)), dict(zip(sn, s)))
            for i, (k, s) in enumerate(zip(keys.tolist(), stats.tolist()))]


def _tcp_flow(st):
    """TCP, and established or moved bytes: the kernel reports its close."""
    return st["proto"] == 6 and bool(st["flags"] & F_ESTABLISHED or st["bytes_sent"] or st["bytes_recv"])


def _instance(key, stats):
    return (key["sk"], key["raddr"], key["rport"], stats["ts_first"])


def _latest(rows):
    """instance id -> row. Should an id appear twice, keep the row with the
    larger ts_last, or the later row when ts_last is equal."""
    out = {}
    for row in rows:
        iid = _instance(row[1], row[2])
        if iid not in out or row[2]["ts_last"] >= out[iid][2]["ts_last"]:
            out[iid] = row
    return out


def merge(prev_keys, prev_stats, cur_keys, cur_stats, closed, idle_before_ns):
    prev = _latest(_rows(prev_keys, prev_stats))
    cur = _latest(_rows(cur_keys, cur_stats))
    clo = _latest(_rows(closed["key"], closed["stats"]))

    deltas, next_idx, idle_idx = [], [], []
    for iid in set(cur) | set(clo):
        is_closed = iid in clo
        _, key, st = clo[iid] if is_closed else cur[iid]

        base = prev[iid][2] if iid in prev else None
        if base is not None and any(st[c] < base[c] for c in COUNTERS):
            base = None  # counters went backwards: a new instance
        d = {c: st[c] - (base[c] if base is not None else 0) for c in COUNTERS}
        established = bool(st["flags"] & F_ESTABLISHED) and not (
            base is not None and base["flags"] & F_ESTABLISHED)

        if not is_closed:
            idx = cur[iid][0]
            # idle: taken out of the map, its final record comes back as a
            # closed one; it stays the base until then. TCP flows end at close.
            if (base is not None and st["ts_last"] == base["ts_last"]
                    and st["ts_last"] < idle_before_ns and not _tcp_flow(st)):
                idle_idx.append(idx)
            next_idx.append(idx)

        # ring records (NF_F_CLOSED) of TCP flows count in tcp_closed;
        # final map records of evicted flows only add what moved
        tcp_closed = is_closed and bool(st["flags"] & F_CLOSED) and _tcp_flow(st)
        if any(d.values()) or established or tcp_closed:
            deltas.append({
                "d_bytes_sent": d["bytes_sent"], "d_bytes_recv": d["bytes_recv"],
                "d_retransmits": d["retransmits"],
                "laddr": st["laddr"], "raddr": key["raddr"],
                "pid": st["pid"], "rtt_us": st["rtt_us"], "rtt_var_us": st["rtt_var_us"],
                "lport": st["lport"], "rport": key["rport"],
                "family": st["family"], "proto": st["proto"], "direction": st["direction"],
                "established": int(established), "closed": int(tcp_closed),
                "comm": st["comm"],
            })

    return deltas, _take(cur_keys, next_idx), _take(cur_stats, next_idx), _take(cur_keys, idle_idx)


def _take(arr, idx):
    """Whole rows, padding bytes included (the kernel compares map keys
    bytewise; numpy's own fancy indexing copies only the named fields)."""
    raw = arr.view(np.dtype((np.void, arr.dtype.itemsize)))
    return raw[np.array(sorted(idx), dtype=np.intp)].view(arr.dtype)
