"""Conntrack netlink (ctnetlink) messages into numpy rows.

The kernel sends one netlink message per conntrack event on the
NFNLGRP_CONNTRACK_{NEW,UPDATE,DESTROY} multicast groups, and the same message
layout for every entry of an IPCTNL_MSG_CT_GET dump
(net/netfilter/nf_conntrack_netlink.c, ctnetlink_fill_info /
ctnetlink_conntrack_event):

    nlmsghdr | nfgenmsg | attributes (nlattr, 4-byte aligned):
        CTA_TUPLE_ORIG, CTA_TUPLE_REPLY (nested: CTA_TUPLE_IP {V4/V6 SRC, DST},
        CTA_TUPLE_PROTO {PROTO_NUM, SRC_PORT, DST_PORT}), CTA_STATUS, CTA_ID, ...

``parse`` walks a buffer of such messages in C with the GIL released and
writes one ``EVENT_DTYPE`` row per conntrack message; ``NetlinkReader``
receives datagrams into one reused buffer and parses them the same way. No
Python object is made per message. Every bound is checked: a message or
attribute that does not fit, or a required attribute with the wrong size, is
counted as malformed and produces no row (tests/reference/nfct_ref.py states
the same rules in plain Python).
"""

import numpy as np

cimport numpy as cnp
from libc.errno cimport EAGAIN, EINTR, ENOBUFS, errno
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

from netlink cimport *
from sysio cimport AF_INET, AF_INET6, MSG_DONTWAIT, MSG_TRUNC, ntohl, ntohs, recvfrom, sockaddr, socklen_t
from dk_common cimport offset_of

from dkebpf._records import _dtype
from dkebpf.errors import kernel_error

cnp.import_array()

cdef enum:
    # event types of a row (nfct_event.type, EV_* for Python)
    _EV_NEW = 1      # IPCTNL_MSG_CT_NEW with NLM_F_CREATE: a new (confirmed) connection
    _EV_UPDATE = 2   # IPCTNL_MSG_CT_NEW without NLM_F_CREATE: a state change
    _EV_DESTROY = 3  # IPCTNL_MSG_CT_DELETE: the entry left the table
    _EV_DUMP = 4     # IPCTNL_MSG_CT_NEW with NLM_F_MULTI: one entry of a dump
    # nlmsghdr (16) + nfgenmsg (4): no shorter message gives a row, so a
    # buffer of n bytes gives at most n / 20 rows
    MIN_ROW_MSG = 20
    HAVE_SRC = 1
    HAVE_DST = 2
    HAVE_PROTO = 4
    HAVE_ALL = 7

EV_NEW, EV_UPDATE, EV_DESTROY, EV_DUMP = _EV_NEW, _EV_UPDATE, _EV_DESTROY, _EV_DUMP


# One row. Packed, explicit padding: the numpy dtype below is these bytes.
cdef packed struct nfct_event:
    uint8_t orig_src[16]
    uint8_t orig_dst[16]
    uint8_t reply_src[16]
    uint8_t reply_dst[16]
    uint32_t status       # CTA_STATUS (IPS_* bits), host order
    uint32_t ct_id        # CTA_ID, host order
    uint16_t orig_sport   # ports in host order; 0 for protocols without ports
    uint16_t orig_dport
    uint16_t reply_sport
    uint16_t reply_dport
    uint8_t type          # EV_*
    uint8_t family        # 4 or 6
    uint8_t proto         # IPPROTO_*
    uint8_t _pad[5]

cdef nfct_event _e

EVENT_DTYPE = _dtype("nfct_event", [
    ("orig_src", "V16", offset_of(&_e, &_e.orig_src)),
    ("orig_dst", "V16", offset_of(&_e, &_e.orig_dst)),
    ("reply_src", "V16", offset_of(&_e, &_e.reply_src)),
    ("reply_dst", "V16", offset_of(&_e, &_e.reply_dst)),
    ("status", "<u4", offset_of(&_e, &_e.status)),
    ("ct_id", "<u4", offset_of(&_e, &_e.ct_id)),
    ("orig_sport", "<u2", offset_of(&_e, &_e.orig_sport)),
    ("orig_dport", "<u2", offset_of(&_e, &_e.orig_dport)),
    ("reply_sport", "<u2", offset_of(&_e, &_e.reply_sport)),
    ("reply_dport", "<u2", offset_of(&_e, &_e.reply_dport)),
    ("type", "u1", offset_of(&_e, &_e.type)),
    ("family", "u1", offset_of(&_e, &_e.family)),
    ("proto", "u1", offset_of(&_e, &_e.proto)),
], sizeof(nfct_event))

# counters of a parse, in this order in parse_stats
STAT_NAMES = ("messages", "events", "malformed", "ignored", "done", "errors")

cdef struct parse_stats:
    size_t messages    # netlink messages looked at
    size_t events      # rows written
    size_t malformed   # messages (or buffer tails) that break the format
    size_t ignored     # well-formed but not for us (other subsystem, family, type)
    size_t done        # NLMSG_DONE: a dump finished
    size_t errors      # NLMSG_ERROR with a non-zero error
    int last_errno     # the error of the last such NLMSG_ERROR
    uint32_t last_end_seq  # nlmsg_seq of the last NLMSG_DONE or NLMSG_ERROR: which request ended


cdef struct tuple_t:
    uint8_t src[16]
    uint8_t dst[16]
    uint16_t sport
    uint16_t dport
    uint8_t proto
    int have


cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline size_t align4(size_t n) noexcept nogil:
    return (n + 3) & ~(<size_t>3)


# Attribute walking, the same rules at every level (nla_ok in
# include/net/netlink.h, made strict): each attribute needs 4 <= nla_len <=
# what is left; the next one starts NLA_ALIGN(nla_len) further (the last one
# may lack its padding); 1..3 bytes left over are malformed.
cdef inline int nla_next(const uint8_t *p, size_t n, size_t *off, uint16_t *typ,
                         const uint8_t **payload, size_t *plen) noexcept nogil:
    """1: an attribute; 0: the end; -1: malformed."""
    cdef size_t left = n - off[0]
    cdef uint16_t l
    if left == 0:
        return 0
    if left < 4:
        return -1
    l = rd16(p + off[0])
    if l < 4 or l > left:
        return -1
    typ[0] = rd16(p + off[0] + 2) & NLA_TYPE_MASK
    payload[0] = p + off[0] + 4
    plen[0] = l - 4
    off[0] += align4(l)
    if off[0] > n:
        off[0] = n
    return 1


cdef int parse_ip(const uint8_t *p, size_t n, int fam, tuple_t *t) noexcept nogil:
    cdef size_t off = 0, plen
    cdef uint16_t typ
    cdef const uint8_t *pl
    cdef int r, alen = 4 if fam == 4 else 16
    cdef int tsrc = CTA_IP_V4_SRC if fam == 4 else CTA_IP_V6_SRC
    cdef int tdst = CTA_IP_V4_DST if fam == 4 else CTA_IP_V6_DST
    while True:
        r = nla_next(p, n, &off, &typ, &pl, &plen)
        if r <= 0:
            return r
        if typ == tsrc or typ == tdst:
            if plen != <size_t>alen:
                return -1
            if typ == tsrc:
                memset(t.src, 0, 16)
                memcpy(t.src, pl, alen)
                t.have |= HAVE_SRC
            else:
                memset(t.dst, 0, 16)
                memcpy(t.dst, pl, alen)
                t.have |= HAVE_DST


cdef int parse_proto(const uint8_t *p, size_t n, tuple_t *t) noexcept nogil:
    cdef size_t off = 0, plen
    cdef uint16_t typ
    cdef const uint8_t *pl
    cdef int r
    while True:
        r = nla_next(p, n, &off, &typ, &pl, &plen)
        if r <= 0:
            return r
        if typ == CTA_PROTO_NUM:
            if plen != 1:
                return -1
            t.proto = pl[0]
            t.have |= HAVE_PROTO
        elif typ == CTA_PROTO_SRC_PORT or typ == CTA_PROTO_DST_PORT:
            if plen != 2:
                return -1
            if typ == CTA_PROTO_SRC_PORT:
                t.sport = ntohs(rd16(pl))
            else:
                t.dport = ntohs(rd16(pl))


cdef int parse_tuple(const uint8_t *p, size_t n, int fam, tuple_t *t) noexcept nogil:
    """A CTA_TUPLE_* nest; each occurrence starts afresh (the last one wins)."""
    cdef size_t off = 0, plen
    cdef uint16_t typ
    cdef const uint8_t *pl
    cdef int r
    memset(t, 0, sizeof(tuple_t))
    while True:
        r = nla_next(p, n, &off, &typ, &pl, &plen)
        if r <= 0:
            return r
        if typ == CTA_TUPLE_IP:
            r = parse_ip(pl, plen, fam, t)
        elif typ == CTA_TUPLE_PROTO:
            r = parse_proto(pl, plen, t)
        if r < 0:
            return -1


cdef int parse_ct(const uint8_t *p, size_t n, int fam, nfct_event *ev) noexcept nogil:
    """The attributes of one ctnetlink message; 0 with ev filled, -1 malformed."""
    cdef size_t off = 0, plen
    cdef uint16_t typ
    cdef const uint8_t *pl
    cdef int r
    cdef tuple_t orig, reply
    orig.have = 0
    reply.have = 0
    while True:
        r = nla_next(p, n, &off, &typ, &pl, &plen)
        if r < 0:
            return -1
        if r == 0:
            break
        if typ == CTA_TUPLE_ORIG:
            if parse_tuple(pl, plen, fam, &orig) < 0:
                return -1
        elif typ == CTA_TUPLE_REPLY:
            if parse_tuple(pl, plen, fam, &reply) < 0:
                return -1
        elif typ == CTA_STATUS or typ == CTA_ID:
            if plen != 4:
                return -1
            if typ == CTA_STATUS:
                ev.status = ntohl(rd32(pl))
            else:
                ev.ct_id = ntohl(rd32(pl))
    if orig.have != HAVE_ALL or reply.have != HAVE_ALL:
        return -1  # every conntrack message carries both full tuples
    memcpy(ev.orig_src, orig.src, 16)
    memcpy(ev.orig_dst, orig.dst, 16)
    memcpy(ev.reply_src, reply.src, 16)
    memcpy(ev.reply_dst, reply.dst, 16)
    ev.orig_sport = orig.sport
    ev.orig_dport = orig.dport
    ev.reply_sport = reply.sport
    ev.reply_dport = reply.dport
    ev.proto = orig.proto
    return 0


cdef void parse_buffer(const uint8_t *p, size_t n, nfct_event *out, size_t *nout,
                       parse_stats *st) noexcept nogil:
    """All messages of one datagram. out must have room for n / MIN_ROW_MSG
    more rows."""
    cdef size_t off = 0, mlen
    cdef uint16_t mtype, mflags
    cdef int32_t err
    cdef int fam, msg
    cdef nfct_event *ev
    while n - off >= 16:
        mlen = rd32(p + off)
        if mlen < 16 or mlen > n - off:
            st.malformed += 1
            return  # no way to find the next message
        st.messages += 1
        mtype = rd16(p + off + 4)
        mflags = rd16(p + off + 6)
        if mtype < NLMSG_MIN_TYPE:
            if mtype == NLMSG_DONE:
                st.done += 1
                st.last_end_seq = rd32(p + off + 8)
            elif mtype == NLMSG_ERROR:
                if mlen < 20:
                    st.malformed += 1
                else:
                    memcpy(&err, p + off + 16, 4)
                    if err != 0:  # 0 is an acknowledgement
                        st.errors += 1
                        st.last_errno = -err
                        st.last_end_seq = rd32(p + off + 8)
            else:
                st.ignored += 1
        elif (mtype >> 8) != NFNL_SUBSYS_CTNETLINK:
            st.ignored += 1
        else:
            msg = mtype & 0xff
            if msg != IPCTNL_MSG_CT_NEW and msg != IPCTNL_MSG_CT_DELETE:
                st.ignored += 1
            elif mlen < MIN_ROW_MSG:
                st.malformed += 1
            else:
                fam = p[off + 16]  # nfgenmsg.nfgen_family
                if fam == AF_INET:
                    fam = 4
                elif fam == AF_INET6:
                    fam = 6
                else:
                    fam = 0
                if fam == 0:
                    st.ignored += 1
                else:
                    ev = out + nout[0]
                    memset(ev, 0, sizeof(nfct_event))
                    if parse_ct(p + off + MIN_ROW_MSG, mlen - MIN_ROW_MSG, fam, ev) < 0:
                        st.malformed += 1
                    else:
                        ev.family = fam
                        if msg == IPCTNL_MSG_CT_DELETE:
                            ev.type = _EV_DESTROY
                        elif mflags & NLM_F_MULTI:
                            ev.type = _EV_DUMP
                        elif mflags & NLM_F_CREATE:
                            ev.type = _EV_NEW
                        else:
                            ev.type = _EV_UPDATE
                        nout[0] += 1
                        st.events += 1
        off += align4(mlen)
        if off > n:
            off = n
    if off < n:
        st.malformed += 1  # a tail too short for a message header


cdef dict _stats_dict(parse_stats *st):
    return {"messages": st.messages, "events": st.events, "malformed": st.malformed,
            "ignored": st.ignored, "done": st.done, "errors": st.errors,
            "last_errno": st.last_errno, "last_end_seq": st.last_end_seq}


def parse(const unsigned char[::1] buf):
    """Parse one buffer of netlink messages (a datagram). Returns (rows as
    an EVENT_DTYPE array, stats dict with STAT_NAMES and last_errno)."""
    cdef size_t n = buf.shape[0]
    cdef size_t cap = n // MIN_ROW_MSG + 1
    cdef size_t nout = 0
    cdef parse_stats st
    memset(&st, 0, sizeof(st))
    out = np.empty(cap, EVENT_DTYPE)
    cdef nfct_event *o = <nfct_event *>cnp.PyArray_DATA(out)
    cdef const uint8_t *p = &buf[0] if n else NULL
    with nogil:
        if n:
            parse_buffer(p, n, o, &nout, &st)
    return out[:nout].copy(), _stats_dict(&st)


cdef class NetlinkReader:
    """Drains a netlink socket (non-blocking recvfrom into one reused buffer)
    and parses every datagram into a growing C array of rows, GIL released.

    ENOBUFS (the kernel dropped messages because the socket's receive queue
    was full, net/netlink/af_netlink.c netlink_overrun) is counted and
    remembered: the caller must resynchronise with a dump. Datagrams not sent
    by the kernel (nl_pid != 0) are dropped and counted; so are truncated
    ones (bigger than the buffer)."""

    cdef int fd
    cdef uint8_t *buf
    cdef size_t bufsize
    cdef nfct_event *rows
    cdef size_t nrows, caprows
    cdef parse_stats st
    cdef size_t datagrams, enobufs, foreign, truncated
    cdef bint overrun
    cdef size_t done_seen, errors_seen

    def __cinit__(self, int fd, size_t bufsize=262144):
        self.fd = fd
        self.bufsize = bufsize
        self.buf = <uint8_t *>malloc(bufsize)
        self.caprows = bufsize // MIN_ROW_MSG + 1
        self.rows = <nfct_event *>malloc(self.caprows * sizeof(nfct_event))
        if self.buf == NULL or self.rows == NULL:
            raise MemoryError()
        memset(&self.st, 0, sizeof(parse_stats))

    def __dealloc__(self):
        free(self.buf)
        free(self.rows)

    def drain(self, size_t max_datagrams=4096, size_t max_rows=65536):
        """Receive until the socket is empty, or max_datagrams were read, or
        max_rows rows were made (a dump of a big table arrives over several
        calls, memory stays bounded; the socket stays readable for the
        rest). Returns the rows of this call as an EVENT_DTYPE array."""
        cdef ssize_t got
        cdef size_t n, i = 0, need
        cdef int err = 0
        cdef sockaddr_nl addr
        cdef socklen_t alen
        cdef nfct_event *grown
        self.nrows = 0
        with nogil:
            while i < max_datagrams and self.nrows < max_rows:
                alen = sizeof(addr)
                got = recvfrom(self.fd, self.buf, self.bufsize, MSG_DONTWAIT | MSG_TRUNC,
                               <sockaddr *>&addr, &alen)
                if got < 0:
                    if errno == EINTR:
                        continue
                    if errno == ENOBUFS:
                        self.enobufs += 1
                        self.overrun = True
                        continue
                    if errno != EAGAIN:
                        err = errno
                    break
                i += 1
                self.datagrams += 1
                if addr.nl_pid != 0:
                    self.foreign += 1
                    continue
                n = <size_t>got
                if n > self.bufsize:
                    self.truncated += 1
                    continue
                need = self.nrows + n // MIN_ROW_MSG + 1
                if need > self.caprows:
                    grown = <nfct_event *>realloc(self.rows, 2 * need * sizeof(nfct_event))
                    if grown == NULL:
                        err = 12  # ENOMEM
                        break
                    self.rows = grown
                    self.caprows = 2 * need
                parse_buffer(self.buf, n, self.rows, &self.nrows, &self.st)
        if err:
            raise kernel_error("conntrack netlink socket: recv", err)
        out = np.empty(self.nrows, EVENT_DTYPE)
        if self.nrows:
            memcpy(cnp.PyArray_DATA(out), self.rows, self.nrows * sizeof(nfct_event))
        return out

    def take_overrun(self):
        """True once after ENOBUFS: messages were lost since the last call."""
        o = self.overrun
        self.overrun = False
        return o

    def take_done(self):
        """(NLMSG_DONE messages, NLMSG_ERROR errors) seen since the last
        call, the last error's errno, and the sequence number of the request
        the last of them ended."""
        d = self.st.done - self.done_seen
        e = self.st.errors - self.errors_seen
        self.done_seen = self.st.done
        self.errors_seen = self.st.errors
        return d, e, self.st.last_errno, self.st.last_end_seq

    def counters(self):
        c = _stats_dict(&self.st)
        del c["last_errno"], c["last_end_seq"]
        c.update(datagrams=self.datagrams, enobufs=self.enobufs, foreign=self.foreign,
                 truncated=self.truncated)
        return c
