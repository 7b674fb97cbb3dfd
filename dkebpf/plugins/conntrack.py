"""ebpf-conntrack: dst_nat_ip / dst_nat_port on outgoing connections whose
destination was translated (DNAT), from the kernel's connection tracking.

The original collector hooks nf_ct_delete / __nf_conntrack_hash_insert with
kprobes; kernels without kprobes (ours) still have ctnetlink, the netlink
interface of conntrack (CONFIG_NF_CT_NETLINK). Two NETLINK_NETFILTER sockets:
- events: joined to NFNLGRP_CONNTRACK_NEW and _DESTROY, the kernel
  multicasts a message per conntrack event (see EVENT_GROUPS for why not
  _UPDATE);
- dump: an IPCTNL_MSG_CT_GET dump (NLM_F_DUMP) at start for the connections
  that already exist, and again whenever the event socket overflowed
  (ENOBUFS: events were lost), after which entries the dump did not confirm
  are retired (NatTable.sweep).
Both are drained by dkebpf._nfct.NetlinkReader (C, GIL released) into
numpy rows that dkebpf.enrich.nat.NatTable applies vectorised. The table is
ctx.nat: netflow and httpflow look their connections up in it. This plugin
emits no points of its own."""
import errno
import os
import socket
import struct
import time

from ..enrich.nat import DEFAULT_MAX_ENTRIES, NatTable
from ..errors import BuildError, KernelError, UnsupportedError, kernel_error
from .base import Plugin

try:
    from .. import _nfct
except ImportError as exc:  # pragma: no cover - a broken install
    raise BuildError(f"dkebpf's compiled extensions are missing ({exc}); reinstall with pip") from exc

NETLINK_NETFILTER = 12                 # include/uapi/linux/netlink.h
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
# include/uapi/linux/netfilter/nfnetlink.h: enum nfnetlink_groups
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_GET_STATS = 5
CTA_STATS_GLOBAL_ENTRIES = 1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
# NEW and DESTROY only. A conntrack's tuples are final when the NEW event is
# sent (NAT is set up in the hooks before nf_conntrack_confirm, which emits
# it), so UPDATE events (TCP state changes, ~4 per connection) say nothing
# new about NAT; with them the collector received 3x the events and used
# 0.034 instead of 0.010-0.013 CPU cores per 1000 new connections/s
# (perf/conntrack_load.py). Lost events are recovered by a dump.
EVENT_GROUPS = (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY)
# the kernel's queue for our event socket: bursts of new connections must fit
# between two drains (SO_RCVBUFFORCE needs CAP_NET_ADMIN, which ctnetlink
# group membership needs anyway)
EVENT_RCVBUF = 16 << 20
CONNTRACK_PROC = "/proc/sys/net/netfilter"


def dump_request(seq, family=0):
    """nlmsghdr + nfgenmsg of IPCTNL_MSG_CT_GET with NLM_F_DUMP; family 0
    (AF_UNSPEC) dumps IPv4 and IPv6 entries."""
    return (struct.pack("=IHHII", 20, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
                        NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            + struct.pack("=BBH", family, 0, 0))


def query_entry_count():
    """Ask ctnetlink for the number of tracked connections
    (IPCTNL_MSG_CT_GET_STATS -> CTA_STATS_GLOBAL_ENTRIES): proves the
    netlink side answers. Control plane, once: plain Python."""
    with open_dump_socket() as s:
        s.setblocking(True)
        s.settimeout(5)
        s.send(struct.pack("=IHHII", 20, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS,
                           NLM_F_REQUEST, 1, 0) + struct.pack("=BBH", 0, 0, 0))
        try:
            msg = s.recv(65536)
        except OSError as exc:
            # a timeout has no errno of its own
            raise kernel_error("ebpf-conntrack: no answer from ctnetlink", exc.errno or errno.ETIMEDOUT) from exc
    if len(msg) < 20:
        raise KernelError("ebpf-conntrack: short answer from ctnetlink")
    mlen, mtype = struct.unpack_from("=IH", msg)
    if mtype == 2:  # NLMSG_ERROR
        err = -struct.unpack_from("=i", msg, 16)[0]
        raise kernel_error("ebpf-conntrack: ctnetlink refused the stats request", err)
    off = 20
    while off + 4 <= min(mlen, len(msg)):
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4:
            break
        if atype & 0x3FFF == CTA_STATS_GLOBAL_ENTRIES and alen == 8:
            return struct.unpack_from("!I", msg, off + 4)[0]
        off += (alen + 3) & ~3
    raise KernelError("ebpf-conntrack: ctnetlink's stats answer has no entry count")


def conntrack_status(proc_sys=CONNTRACK_PROC):
    """(present, events_enabled): nf_conntrack loaded (its sysctls exist) and
    net.netfilter.nf_conntrack_events not 0 (0 = the kernel sends no
    events; 1 = always; 2 = when someone listens, the default since 6.0)."""
    if not os.path.exists(os.path.join(proc_sys, "nf_conntrack_max")):
        return False, False
    try:
        with open(os.path.join(proc_sys, "nf_conntrack_events")) as f:
            events = int(f.read().strip() or 0) != 0
    except (OSError, ValueError):
        events = True  # kernels before the sysctl always sent events
    return True, events


def open_event_socket():
    """A non-blocking netlink socket joined to the conntrack event groups."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                      NETLINK_NETFILTER)
    try:
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, EVENT_RCVBUF)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, EVENT_RCVBUF)
        s.bind((0, 0))
        for group in EVENT_GROUPS:
            s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except OSError as exc:
        s.close()
        raise kernel_error("ebpf-conntrack: cannot subscribe to conntrack events", exc.errno) from exc
    return s


def open_dump_socket():
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                      NETLINK_NETFILTER)
    s.bind((0, 0))
    return s


class ConntrackPlugin(Plugin):
    name = "ebpf-conntrack"

    def __init__(self, ctx, max_entries=DEFAULT_MAX_ENTRIES):
        self.ctx = ctx
        self.log = ctx.logger
        interval_ns = int(ctx.cfg.interval * 1e9)
        # netflow reports a closed connection in the interval after it closed
        self.table = NatTable(max_entries=max_entries, grace_ns=2 * interval_ns)
        ctx.nat = self.table
        self.events = self.dump = None
        self.ev_reader = self.dump_reader = None
        self.seq = 0
        self.dump_started = None   # monotonic ns of the dump in flight
        self.dump_again = False    # events were lost during the dump in flight
        self.totals = {"dumps": 0, "dumps_failed": 0, "resyncs": 0}

    def start(self):
        present, events = conntrack_status()
        if not present:
            raise UnsupportedError("ebpf-conntrack: nf_conntrack is not loaded (no "
                                   f"{CONNTRACK_PROC}/nf_conntrack_max); modprobe nf_conntrack")
        if not events:
            raise UnsupportedError("ebpf-conntrack: the kernel sends no conntrack events "
                                   "(net.netfilter.nf_conntrack_events = 0); set it to 2")
        self.events = open_event_socket()
        try:
            self.dump = open_dump_socket()
            self.ev_reader = _nfct.NetlinkReader(self.events.fileno())
            self.dump_reader = _nfct.NetlinkReader(self.dump.fileno())
            self._request_dump()
        except BaseException:
            self.stop()
            raise
        self.log.info("conntrack: subscribed to conntrack events, dumping existing connections")

    def _request_dump(self):
        if self.dump_started is not None:
            self.dump_again = True  # one more after the one in flight
            return
        now = time.monotonic_ns()
        # apply what came before, so "seen since the dump started" means it
        self.table.apply(now)
        self.seq += 1
        try:
            self.dump.send(dump_request(self.seq))
        except OSError as exc:
            raise kernel_error("ebpf-conntrack: conntrack dump request failed", exc.errno) from exc
        self.dump_started = now
        self.totals["dumps"] += 1

    def fileobjs(self):
        return [s for s in (self.events, self.dump) if s is not None]

    def on_readable(self, fileobj):
        if fileobj is self.events:
            self.table.add(self.ev_reader.drain())
            if self.ev_reader.take_overrun():
                self.totals["resyncs"] += 1
                if self.dump_started is None:  # once per dump, not per overflow
                    self.log.warning("conntrack: event socket overflowed (ENOBUFS), "
                                     "resynchronising with a dump")
                self._request_dump()
        elif fileobj is self.dump:
            # a batch of its own: a dump row must meet the table as the events
            # before it left it (a row of an entry destroyed meanwhile, under
            # the same conntrack id, does not revive it)
            self.table.apply()
            self.table.add(self.dump_reader.drain())
            self.table.apply()
            done, errors, err, seq = self.dump_reader.take_done()
            # the end of the dump in flight (the kernel runs one dump per
            # socket at a time and ends it with NLMSG_DONE, or NLMSG_ERROR,
            # under the request's sequence number)
            if (done or errors) and self.dump_started is not None and seq == self.seq:
                started, self.dump_started = self.dump_started, None
                if errors:
                    self.totals["dumps_failed"] += 1
                    self.log.warning("conntrack: dump failed: %s", os.strerror(err))
                else:
                    self.table.sweep(started)
                if self.dump_again:  # not after a failure: it would fail again at once
                    self.dump_again = False
                    self._request_dump()

    def collect(self, now_ns):
        # everything the kernel has sent so far, before netflow and httpflow look up
        if self.events is not None:
            self.on_readable(self.events)
            self.on_readable(self.dump)
        self.table.expire()
        return []

    def counters(self):
        c = dict(self.totals)
        c.update({f"nat_{k}": v for k, v in self.table.counters().items()})
        if self.ev_reader is not None:
            c.update({f"events_{k}": v for k, v in self.ev_reader.counters().items()})
            c.update({f"dump_{k}": v for k, v in self.dump_reader.counters().items()})
        return c

    def stop(self):
        for s in (self.events, self.dump):
            if s is not None:
                s.close()
        self.events = self.dump = None
