"""Plain-Python reference of ext/h2trace.pyx (dkebpf._h2trace.H2Tracker):
the calls of HTTP/2 connections -> one span per stream.

A record is a dict: ``sk``, ``op`` (1 send, 2 receive, 3 close), ``ts``,
``seq``, ``bytes`` (the call's length), ``payload`` (its captured first
bytes), ``more``, optionally ``seq_unknown`` (the kernel did not know
``seq``: a HEADERS frame starting in the call gets sequence number 0). ``Tracker.feed(records)`` takes them by socket then
time (their list positions are the record indexes); ``spans()`` the
finished streams as dicts; ``requests`` maps the index of a record that
carried a request's HEADERS to its ``until`` (link_threads)."""
from . import hpack_ref

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PAYLOAD_MAX = 1024
OP_SEND, OP_RECV, OP_CLOSE = 1, 2, 3
DATA, HEADERS, RST_STREAM, PUSH_PROMISE, CONTINUATION = 0, 1, 3, 5, 9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20
CAPS = {"method": 16, "path": 200, "ctype": 40, "gmsg": 100}
BLOCK_MAX = 65536
UINT64_MAX = (1 << 64) - 1


def frame_header(b):
    """(length, type, flags, stream) of a 9-byte header, None when it breaks
    the senders' rules (ext/includes/h2frame.pxd)."""
    length = int.from_bytes(b[0:3], "big")
    typ, flags = b[3], b[4]
    stream = int.from_bytes(b[5:9], "big") & 0x7FFFFFFF
    if b[5] & 0x80 or typ > 0x10:
        return None
    if stream == 0 and (typ <= RST_STREAM or typ in (PUSH_PROMISE, CONTINUATION)):
        return None
    if stream != 0 and typ in (4, 6, 7):
        return None
    return length, typ, flags, stream


class Dir:
    def __init__(self, sk, w):
        self.sk, self.w = sk, w  # its connection, 0 requests' direction, 1 responses'
        self.hp = hpack_ref.Decoder()
        self.broken = False
        self.skip = 0
        self.hdr = b""
        self.fseq = self.frec = self.ftype = self.fflags = self.fstream = self.flen = 0
        self.fseq_unknown = self.block_seq_unknown = 0
        self.collect = False
        self.lost = False
        self.body = b""
        self.block = b""
        self.block_open = False
        self.block_stream = self.block_flags = self.block_seq = self.block_rec = 0
        self.hstream = self.hflags = 0  # the HEADERS block under way
        self.fts = 0


class Tracker:
    def __init__(self):
        self.conns = {}    # sk -> (req_op, [Dir, Dir])
        self.streams = {}  # (sk, id) -> dict
        self.done = []
        self.requests = {}
        self.restarted = 0

    def feed(self, records):
        self.records = records
        for r, m in enumerate(records):
            self._record(r, m)
        for s in self.streams.values():
            if s["req_rec"] >= 0 and s["incoming"]:
                self.requests[s["req_rec"]] = UINT64_MAX
        for s in self.done:
            if s["req_rec"] >= 0 and s["incoming"]:
                self.requests[s["req_rec"]] = max(self.requests[s["req_rec"]], s["end_ns"])

    def spans(self):
        done, self.done = self.done, []
        for s in self.streams.values():
            s["req_rec"] = -1
        return done

    def _record(self, r, m):
        conn = self.conns.get(m["sk"])
        if m["op"] == OP_CLOSE:
            if conn:
                self._close(m["sk"])
            return
        if conn is not None and not m["more"] and m["payload"].startswith(PREFACE):
            self._close(m["sk"])  # a new connection on the socket of one whose close was lost
            self.restarted += 1
            conn = None
        if conn is None:
            if m["more"] or not m["payload"].startswith(PREFACE):
                return
            conn = self.conns[m["sk"]] = (m["op"], [Dir(m["sk"], 0), Dir(m["sk"], 1)])
            conn[1][0].skip = 24
            conn[1][0].ftype = 0xFF
        self._calls(m["sk"], conn, r, m)

    def _break(self, d):
        """The table is unknown from here; a response HEADERS block under
        way with END_STREAM still ends its stream."""
        d.broken = True
        if d.w == 1 and d.hstream and d.hflags & END_STREAM:
            s = self.streams.get((d.sk, d.hstream))
            if s is not None:
                self._finish(s, d.fts)
        d.hstream = 0

    def _lose(self, d):
        self._break(d)
        d.lost, d.skip, d.hdr, d.block_open, d.collect = True, 0, b"", False, False

    def _calls(self, sk, conn, r, m):
        req_op, dirs = conn
        w = 0 if m["op"] == req_op else 1
        d = dirs[w]
        L = m["bytes"]
        p = m["payload"][:PAYLOAD_MAX]
        cap = min(len(p), L)
        if d.lost:
            if cap < 9 or frame_header(p[:9]) is None:
                return
            d.lost = False
        off = 0
        while off < L:
            if d.skip:
                take = min(d.skip, L - off)
                if d.collect:
                    if max(cap - off, 0) < take:
                        d.collect = False
                        self._break(d)
                        d.block_open = False
                    else:
                        d.body += p[off:off + take]
                off += take
                d.skip -= take
                if d.skip == 0 and d.collect:
                    self._frame_body(sk, conn, w, r)
                continue
            if off >= cap:
                self._lose(d)
                return
            if not d.hdr:
                d.fseq = (m["seq"] + off) & 0xFFFFFFFF
                d.fseq_unknown = m.get("seq_unknown", 0)
                d.frec = r
            take = min(9 - len(d.hdr), cap - off)
            d.hdr += p[off:off + take]
            off += take
            if len(d.hdr) < 9:
                if off < L:
                    self._lose(d)
                return
            f = frame_header(d.hdr)
            d.hdr = b""
            if f is None:
                self._lose(d)
                return
            d.flen, d.ftype, d.fflags, d.fstream = f
            d.skip = d.flen
            d.frec = r
            d.fts = m["ts"]
            if d.ftype == HEADERS:
                d.hstream, d.hflags = d.fstream, d.fflags
            self._frame_start(sk, w, d, m)
            d.collect = d.ftype in (HEADERS, CONTINUATION, PUSH_PROMISE)
            if d.collect and (d.broken or d.flen > BLOCK_MAX):
                d.collect = False
                self._break(d)
            d.body = b""
            if d.flen == 0 and d.collect:
                self._frame_body(sk, conn, w, r)

    def _frame_start(self, sk, w, d, m):
        s = self.streams.get((sk, d.fstream)) if d.fstream else None
        if s is None:
            return
        s["req_bytes" if w == 0 else "resp_bytes"] += 9 + d.flen
        if d.ftype == RST_STREAM:
            s["reset"] = 1
            self._finish(s, m["ts"])
        elif d.ftype == DATA and w == 1 and d.fflags & END_STREAM:
            self._finish(s, m["ts"])

    def _finish(self, s, end):
        s["end_ns"] = end
        self.done.append(s)
        del self.streams[(s["sk"], s["id"])]

    def _frame_body(self, sk, conn, w, r):
        d = conn[1][w]
        p = d.body
        a, b = 0, len(p)
        if d.ftype != CONTINUATION:
            pad = 0
            if d.fflags & PADDED:
                if b < 1:
                    return
                pad, a = p[0], 1
            if d.ftype == HEADERS and d.fflags & PRIORITY:
                a += 5
            if d.ftype == PUSH_PROMISE:
                a += 4
            b -= pad
            if a > b:
                self._break(d)
                return
            d.block, d.block_open = b"", True
            d.block_stream = d.fstream if d.ftype == HEADERS else 0
            d.block_flags, d.block_seq, d.block_rec = d.fflags, 0 if d.fseq_unknown else d.fseq, d.frec
        elif not d.block_open:
            self._break(d)
            return
        if len(d.block) + max(b - a, 0) > BLOCK_MAX:
            self._break(d)
            d.block_open = False
            return
        d.block += p[a:b]
        if d.fflags & END_HEADERS:
            d.block_open = False
            self._block(sk, conn, w)

    def _block(self, sk, conn, w):
        req_op, dirs = conn
        d = dirs[w]
        if d.broken:
            self._break(d)
            return
        try:
            h = hpack_ref.span_fields(d.hp.decode(d.block))
        except (hpack_ref.Error, IndexError, ValueError):
            self._break(d)
            return
        d.hstream = 0
        if d.block_stream == 0:
            return
        s = self.streams.get((sk, d.block_stream))
        q = self.records[d.block_rec]
        if w == 0:
            if s is not None or not d.block_stream & 1:
                return
            cut = {k: (h[f][:c] if h[f] is not None else None) for k, f, c in (
                ("method", "method", CAPS["method"]), ("path", "path", CAPS["path"]),
                ("ctype", "content_type", CAPS["ctype"]))}
            self.streams[(sk, d.block_stream)] = dict(
                sk=sk, id=d.block_stream, req_rec=d.block_rec, start_ns=q["ts"], req_seq=d.block_seq,
                req_bytes=9 + d.flen, resp_bytes=0, incoming=int(req_op == OP_RECV), grpc_status=-1,
                resp_ns=0, resp_seq=0, status=0, have_resp=0, reset=0, end_ns=0, gmsg=None,
                trace_hi=h["trace_hi"], trace_lo=h["trace_lo"], parent=h["parent"], sampled=h["sampled"],
                source=h["source"], **cut)
            self.requests[d.block_rec] = 0
            return
        if s is None:
            return
        if not s["have_resp"]:
            s.update(have_resp=1, resp_ns=q["ts"], resp_seq=d.block_seq, status=h["status"])
        if h["grpc_status"] >= 0:
            s["grpc_status"] = h["grpc_status"]
            s["gmsg"] = h["grpc_message"][:CAPS["gmsg"]] if h["grpc_message"] is not None else None
        if d.block_flags & END_STREAM:
            self._finish(s, self.records[d.frec]["ts"])

    def _close(self, sk):
        for key in [k for k in self.streams if k[0] == sk]:
            s = self.streams[key]
            if s["have_resp"]:
                self._finish(s, s["resp_ns"])
            else:
                del self.streams[key]
        del self.conns[sk]
