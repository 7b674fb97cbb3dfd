"""bpf-netlog: packet-level connection logs (``bpf_net_l4_log``) from
AF_PACKET sockets, one per (network namespace, interface), opened inside
each namespace. No BPF object to load: TPACKET_V3 rings with a classic BPF
filter: dkebpf.packetfilter.netlog_filter, or, when netlog_blacklist is
set, the program dkebpf.netlog.filter_cbpf compiles for each socket's own
interface (the header-field statements drop packets in the kernel).

netlog_blacklist is parsed when the plugin is built: a bad rule raises
FilterError (line, column, caret), which keeps bpf-netlog from starting
while the other plugins run. The statements classic BPF cannot run (pod
and namespace fields, text functions on addresses, what did not fit), and
the others for the packets the program passes untested, are evaluated in
user space once per connection (dkebpf/netlog/conn_filter.py, the verdict
cached and judged again when the pods change) before the packets reach the
connection table, so a dropped connection is in no log and no
netflow/httpflow point. Pods and containers (log tags, k8s_* fields):
dkebpf/netlog/k8s.py.

Namespaces are every distinct ``/proc/<pid>/ns/net`` under HOST_PROC
(whatever started the process: no container runtime is asked), rescanned
every RESCAN_S seconds; an interface or namespace that goes away has its
connections flushed and its socket closed. Default interfaces: in the
collector's own namespace the physical NICs (not listed under
/sys/devices/virtual/net, as the original), elsewhere every UP interface
but lo; ``netlog_interfaces`` (a regex on names) replaces both rules.

Each ring is emptied by a spiller thread of its own that never takes the
GIL (PacketRing.start_spill: every block the kernel retires copied into a
spill of SPILL_BYTES in C memory and handed back at once;
the spill full, its packets are counted in
``<netns>/<interface>_spill_drops``), SCHED_FIFO when permitted (see
READER_RT_PRIORITY): the agent's thread holding the GIL while it builds
and encodes the logs no longer leaves the ring full. A reader thread of
the plugin, at the same priority, decodes the spilled blocks and folds
them into the connection tables in one call without the GIL
(ConnTable.fold_ring; a netlog_blacklist evaluated in user space applied
in it, the GIL taken only to judge new connections), going on with what the
spill gets for up to FOLD_LINGER_MS, when a spill notifies it, under a
lock the agent's thread also takes, raised to the reader's priority
while it waits for it and holds it, to collect, open and close. The
reader takes at most a ring's worth of blocks per turn and, when the
agent's thread waits for the lock, lets it in before the next turn: a
spill that never empties (overload) does not hold collect() up. An error
on a socket (ENETDOWN when its interface goes down, capture resuming
when it is up again) is read by the spiller, which clears it, and
counted (``<netns>/<interface>_socket_errors``): left set, it keeps the
socket readable and the spiller spinning.

Packets are decoded in Cython (dkebpf._packets: Ethernet, VLAN, IPv4,
IPv6 extension headers, TCP, UDP, VXLAN) and folded into per-connection
chunks (dkebpf._netlog.ConnTable, which also writes each chunk's message
JSON with its per-packet series); each interval the finished chunks (an
open one once it is chunk_age_ns old) become bpf_net_l4_log points and
every connection's flow of the interval becomes netflow."""
import fcntl
import json
import os
import re
import select
import socket
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import kernel
from ..enrich.addr import LocalAddressResolver, format_addrs
from ..enrich.containers import ContainerRuntimes
from ..enrich.k8s import k8s_tag_names
from ..errors import BuildError
from ..netlog.conn_filter import ConnFilter
from ..netlog.filter import parse_rules
from ..netlog.filter_cbpf import socket_filter
from ..netlog.k8s import NetlogK8s
from ..packetfilter import LINK_ROOM as BULK_CUT_ROOM
from ..packetfilter import NETLOG_SNAPLEN, netlog_filter
from .base import Plugin, PointBatch
from .httpflow import (_METHODS, _VERSIONS, HTTPFLOW_FIELDS, HTTPFLOW_TAGS, PARTIAL_SUMS, RAW_KEYS, _fixed16,
                       aggregate_requests)
from .netflow import NETFLOW_FIELDS, NETFLOW_TAGS, netflow_finish, netflow_partial

try:
    from .. import _http, _netlog, _packets
except ImportError as exc:  # pragma: no cover - a broken install
    raise BuildError(f"dkebpf's compiled extensions are missing ({exc}); reinstall with pip") from exc

RESCAN_S = 10
VIRTUAL_NET = "/sys/devices/virtual/net"
SIOCGIFFLAGS, SIOCGIFHWADDR, IFF_UP = 0x8913, 0x8927, 0x1
# Ring sizes from a budget: the ring holds the packets of the reader's
# worst lag (reader_lag_max_ns: how long after the kernel closed a block it
# was read). Measured on the shared 2-core VM at load 10, the reader
# SCHED_FIFO, a bulk transfer through a veth (perf/bench_netlog_e2e.py):
# up to 120 ms at 375k frames/s, a frame of a cut segment or an ACK
# ~160 bytes in the ring (tpacket3_hdr + sockaddr_ll + 66 bytes captured):
# 7.2 MB. Container NICs: 16 blocks of 512 KiB (8 MiB, 52k frames, 140 ms
# at that rate; the original's 8 dropped at 300k packets/s); host NICs, the
# original's 64 (32 MiB).
BLOCK_SIZE = 1 << 19
HOST_BLOCKS, OTHER_BLOCKS = 64, 16
RETIRE_MS = 64   # a partly filled block is handed over after this long (the original's block timeout)
# the spill (PacketRing.start_spill: anonymous memory, touched only as far as a
# backlog reaches, a burst's slots released once drained, all of it after 5 s
# without a block): 64 MiB
# per socket, the packets of the reader's worst stall: measured at load 8-10
# on the shared 2-core VM, the reader waited up to 0.9 s for the GIL (held
# by the agent's thread while the scheduler kept it off the CPU), ~60 MB of
# frames at 600k packets/s; the twice-the-ring spill before (16 MiB on a
# container NIC) overflowed at 230k packets/s. The spiller notifies the
# reader once an eighth of the ring is spilled or SPILL_POLL_MS pass
# without a block; the reader's epoll wait is bounded so that stop() is
# seen. LINGER_MS: a ring read without a spiller (perf/bench_netlog_e2e.py's
# comparison) lingers that long while heavy.
SPILL_BYTES = 64 << 20
SPILL_POLL_MS = 10
LINGER_MS = 10
# the reader folds a spill and what comes into it for up to FOLD_LINGER_MS
# per turn without the GIL (ConnTable.fold_ring): each time it takes the
# GIL back it may wait behind the agent's thread, which the machine's other
# work keeps off the CPU while it holds the GIL (measured at load 9: turns
# of 100-200 ms, the spill full at ~600k packets/s); 50 ms: ~20 turns a
# second, the agent's thread waits for the lock at most that long
FOLD_LINGER_MS = 50
READER_POLL_S = 0.2
# the reader thread runs SCHED_FIFO at the lowest real-time priority: at
# nice -10 it was read up to 170 ms after a block was closed on the shared
# 2-core VM under a bulk transfer (500 ms at nice 0), longer than a 4 MiB
# ring lasts at 300k packets/s; SCHED_FIFO kept it under 55 ms
# (perf/bench_netlog_e2e.py, reader_lag_max_ms). It sleeps in poll when the
# rings are empty, and the kernel's RT throttling (sched_rt_runtime_us)
# leaves the others 5% even if it did not. Without CAP_SYS_NICE: nice
# READER_NICE if permitted, else the default.
READER_RT_PRIORITY = 1
READER_NICE = -10
READER_STOP_S = 2.0   # stop() waits this long for the reader thread, then logs and goes on

L4_TAGS = ["src_ip", "dst_ip", "src_port", "dst_port", "l4_proto", "nic_name", "nic_mac", "nic_traceid", "netns",
           "vni_id", "vxlan_packet", "host_network", "virtual_nic", "inner_traceid", "direction",
           "conn_side", "client_ip", "client_port", "server_ip", "server_port", "l7_proto"]
L7_TAGS = L4_TAGS[:-1] + ["l7_proto", "l7_traceid", "trace_id", "parent_id"]
L7_FIELDS = ["http_method", "http_path", "http_status_code", "req_seq", "resp_seq", "tx_seq", "rx_seq",
             "cost_req_sent", "cost_resp_wait", "cost_cnt_dl", "tx_packets", "rx_packets", "tx_bytes",
             "rx_bytes", "tx_retrans", "rx_retrans", "message"]
L4_FIELDS = ["chunk_id", "tx_seq_min", "tx_seq_max", "rx_seq_min", "rx_seq_max", "chunk_syn", "chunk_fin",
             "tcp_3whs_cost", "tcp_4whs_cost", "tcp_rtt", "tx_packets", "rx_packets", "tx_bytes", "rx_bytes",
             "tx_retrans", "rx_retrans", "tcp_syn_retrans", "message"]
COUNTS = ("tx_packets", "rx_packets", "tx_bytes", "rx_bytes", "tx_retrans", "rx_retrans")


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    up: bool


def netns_inode(path):
    return os.stat(path).st_ino


def discover_netns(proc="/proc"):
    """{netns inode: path of one /proc/<pid>/ns/net in it}, every process
    under proc (a process gone while scanning is skipped)."""
    found = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        path = f"{proc}/{entry.name}/ns/net"
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        found.setdefault(ino, path)
    return found


@contextmanager
def in_netns(path):
    """Run the block with this thread in the network namespace at path
    (setns(2) is per thread; the caller's namespace is restored after)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _netlog.enter_netns(target, f"the network namespace of {path}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _netlog.enter_netns(own, "the collector's own network namespace")
    finally:
        os.close(own)


def list_nics():
    """The interfaces of the calling thread's namespace: name, MAC, UP."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _idx, name in socket.if_nameindex():
            req = struct.pack("16s24x", name.encode())
            try:
                flags = struct.unpack_from("16xH", fcntl.ioctl(s, SIOCGIFFLAGS, req))[0]
                hw = fcntl.ioctl(s, SIOCGIFHWADDR, req)[18:24]
            except OSError:
                continue   # gone meanwhile
            out.append(Nic(name, ":".join(f"{b:02x}" for b in hw), bool(flags & IFF_UP)))
    return out


def listening_ports():
    """TCP ports listening in the calling thread's namespace (state 0A in
    /proc/thread-self/net/tcp and tcp6, every line read: the original
    stopped at the first socket not listening)."""
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/thread-self/net/{name}") as f:
                next(f, None)
                for line in f:
                    parts = line.split(None, 4)
                    if len(parts) > 3 and parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def settle_direction(chunks, listening, ephemeral_port):
    """Connections seen mid-stream (no SYN, SYN|ACK or HTTP request told
    who opened them: direction 0): the reference's port rule, a local port
    listening in the namespace means incoming; else a local port in the
    ephemeral range talking to one below it means outgoing; else unknown."""
    unknown = chunks["direction"] == 0
    if not unknown.any():
        return
    lport, rport = chunks["lport"], chunks["rport"]
    listen = np.isin(lport, np.fromiter(listening, np.uint16, len(listening)))
    client = (lport >= ephemeral_port) & (rport < ephemeral_port)
    chunks["direction"] = np.where(unknown & listen, 1, np.where(unknown & client, 2, chunks["direction"]))


def choose_nics(nics, host_network, pattern, virtual_names):
    """The interfaces to capture on (see the module docstring)."""
    if pattern is not None:
        rx = re.compile(pattern)
        return [n for n in nics if n.up and rx.search(n.name)]
    if host_network:
        return [n for n in nics if n.up and n.name not in virtual_names and n.name != "lo"]
    return [n for n in nics if n.up and n.name != "lo"]


def raise_reader_priority():
    """The calling thread (only it) at the ring reader's priority:
    SCHED_FIFO READER_RT_PRIORITY, else nice READER_NICE, else left; says
    which."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(READER_RT_PRIORITY))   # 0: this thread
        return f"SCHED_FIFO {READER_RT_PRIORITY}"
    except OSError:
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICE)
        return f"nice {READER_NICE}"
    except OSError:
        return "the default priority (no CAP_SYS_NICE)"


@contextmanager
def reader_priority_held():
    """The calling thread at the reader's priority inside the block, its
    own after: a thread holding what the reader waits for (the lock, the
    GIL) is not left behind the machine's other work while the reader
    waits (priority inversion: measured, the reader then read blocks up to
    1.8 s after the kernel closed them)."""
    tid = threading.get_native_id()
    policy, param, nice = os.sched_getscheduler(0), os.sched_getparam(0), os.getpriority(os.PRIO_PROCESS, tid)
    raise_reader_priority()
    try:
        yield
    finally:
        try:
            os.sched_setscheduler(0, policy, param)
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass   # raising it was not permitted either: nothing changed


class NicCapture:
    """One interface of one namespace: its packet ring and connections.
    series: keep each chunk's packets for its message (bpf_net_l4_log on);
    chunk_age_ns: an open chunk goes out once that old."""

    # a spilling ring is read and folded in one call without the GIL (ConnTable.fold_ring, a
    # netlog_blacklist's verdicts applied in it); False: read() and add() apart, as before
    # (perf/bench_netlog_e2e.py's comparison, BENCH_FOLD=0)
    fold = True

    def __init__(self, ring, nic, netns, host_network, follow_http, conn_filter=None, series=True,
                 chunk_age_ns=_netlog.CHUNK_AGE_NS):
        self.ring = ring
        self.follow_http = follow_http
        self.nic = nic
        self.netns = netns
        self.host_network = host_network
        self.conns = _netlog.ConnTable(chunk_age_ns=chunk_age_ns, series=series)
        self.conn_filter = conn_filter
        self.listening = set()   # TCP ports listening in the namespace, refreshed at each rescan
        self._blocks_collected = 0   # ring.blocks at the last collect()

    @classmethod
    def open(cls, netns_path, netns, nic, host_network, rules=None, follow_http=True, pods=None, series=True,
             chunk_age_ns=_netlog.CHUNK_AGE_NS, spill=True):
        """rules: the parsed netlog_blacklist, or None for no filter; pods:
        the NetlogK8s its k8s_* fields are looked up in; spill: the ring
        emptied by a spiller thread at the reader's priority (else read()
        takes the ring itself)."""
        conn_filter = None
        if rules is None:
            code = netlog_filter()
        else:
            code = socket_filter(rules, nic.name, NETLOG_SNAPLEN).program
            if rules.statements:
                # every statement, not only those the program left over: the program also hands
                # over, untested, IPv4 fragments after the first and IPv6 with extension headers
                conn_filter = ConnFilter(rules.statements, nic.name, pods, netns, host_network)
        with in_netns(netns_path):
            ifindex = socket.if_nametoindex(nic.name)
            ring = _packets.PacketRing(code, block_size=BLOCK_SIZE,
                                       block_nr=HOST_BLOCKS if host_network else OTHER_BLOCKS,
                                       retire_ms=RETIRE_MS, ifindex=ifindex, bulk_cut_room=BULK_CUT_ROOM)
        if spill:
            try:
                with reader_priority_held():   # the spiller thread inherits it
                    ring.start_spill(spill_blocks=SPILL_BYTES // BLOCK_SIZE, poll_ms=SPILL_POLL_MS)
            except BaseException:
                ring.close()
                raise
        return cls(ring, nic, netns, host_network, follow_http, conn_filter, series, chunk_age_ns)

    def drain(self, linger_ms=0):
        """The ring's ready blocks into the connection table, at most a
        ring's worth (block_nr: a ring the kernel refills as fast, under
        overload, would keep the caller, and its lock, forever); linger_ms:
        see ConnTable.fold_ring (a spilling ring), else PacketRing.read
        (the first read only). Returns True when ready blocks may be left."""
        if self.fold and self.ring.spilling and type(self.conns) is _netlog.ConnTable:
            # read and fold in one call without the GIL: the reader thread takes it back once per
            # turn, not twice per batch (each time behind the agent's thread, which the machine's
            # other work keeps off the CPU while it holds the GIL: the spill then overflowed); a
            # netlog_blacklist's verdicts applied in it, the GIL taken only to judge new connections
            return self.conns.fold_ring(self.ring, self.ring.block_nr, self.follow_http, linger_ms,
                                        self.conn_filter)[1]
        budget_end = self.ring.blocks + self.ring.block_nr
        while True:
            # views of the ring's own buffers: folded into the table before the next read
            pkts, payload, more = self.ring.read(copy=False, linger_ms=linger_ms)
            linger_ms = 0
            if len(pkts):
                self.conns.add(pkts, payload if self.follow_http else None, self.conn_filter)
            if not more:
                return False
            if self.ring.blocks >= budget_end:
                return True

    def collect(self, now_ns, ephemeral_port, flush_all=False):
        """(self, ConnTable.collect's Collected), the direction of
        connections seen mid-stream settled (settle_direction)."""
        got = self.conns.collect(now_ns, flush_all)
        if self.ring.blocks == self._blocks_collected:
            self.ring.release_buffers()   # no block for an interval: an idle socket needs no decode buffers
        self._blocks_collected = self.ring.blocks
        settle_direction(got.chunks, self.listening, ephemeral_port)
        settle_direction(got.flows, self.listening, ephemeral_port)
        return self, got

    def flush(self):
        """Everything the socket holds, the partly filled block included:
        the kernel hands it over at the block timeout (RETIRE_MS)."""
        self.drain()
        if self.ring.wait(2 * RETIRE_MS):
            self.drain()

    def close(self):
        self.ring.close()


class NetlogPlugin(Plugin):
    name = "bpf-netlog"

    def __init__(self, ctx, chunk_age_ns=_netlog.CHUNK_AGE_NS):
        """chunk_age_ns: an open chunk is emitted once this old (the
        original's 30 s; tests lower it). With Kubernetes tags, open chunks
        go out every interval instead: pod names are resolved when a chunk
        is emitted, and a chunk held 30 s across a pod change (an IP given
        to a new pod) would carry the new pod's names for the old one's
        packets."""
        self.ctx = ctx
        self.chunk_age_ns = 0 if ctx.k8s is not None else chunk_age_ns
        self.cfg = ctx.cfg
        self.log = ctx.logger
        self.proc = self.cfg.host_proc
        # a bad rule raises FilterError here: bpf-netlog does not start, the message has its position
        self.rules = parse_rules(self.cfg.netlog_blacklist) if self.cfg.netlog_blacklist.strip() else None
        for warning in self.rules.warnings if self.rules else ():
            self.log.warning("netlog_blacklist: %s", warning)
        self.follow_http = "http" in self.cfg.netlog_protocols
        self.ephemeral_port = self.cfg.ephemeral_port or kernel.local_port_range(self.cfg.host_proc)[0]
        self.resolver = LocalAddressResolver()   # never asked: packets always carry both addresses
        # pods and containers: tags of the logs, the filter's k8s_* fields (dkebpf/netlog/k8s.py)
        self.pods = NetlogK8s(ctx.k8s, self.proc, ContainerRuntimes.from_config(self.cfg, self.log))
        self.captures = {}          # (netns inode, nic name) -> NicCapture
        self.epoll = select.epoll()
        self.by_fd = {}
        self.own_netns = netns_inode("/proc/self/ns/net")
        self.next_scan = 0.0
        self.closed_parts = []      # (capture, Collected) of captures closed since the last collect
        # filter_*: dropped in user space by netlog_blacklist, of the captures closed so far (open
        # ones are added in counters()); what the socket programs drop in the kernel is never seen
        self.totals = {"opened": 0, "closed": 0, "open_errors": 0,
                       "filter_dropped_packets": 0, "filter_dropped_connections": 0}
        self._tick_r, self._tick_w = socket.socketpair()
        self._tick_r.setblocking(False)
        self._stop = threading.Event()
        self._ticker = None
        # the reader thread drains the rings (self.epoll) into the connection tables, so that the
        # agent's other work (encoding, sending, other plugins) does not leave them full; it and the
        # agent's thread take this lock around a ring or a table (reads, collects, opens, closes)
        self.lock = threading.RLock()
        # the agent's callers waiting for the lock (see locked()): Python's locks are not fair, and the
        # reader thread, at a higher priority, would otherwise take it again at once under overload
        self._waiting = []
        self._reader = None
        self._reader_error = None   # what ended the reader thread: raised to the agent at its next step

    def start(self):
        self.pods.start()
        self.rescan()
        self._ticker = threading.Thread(target=self._tick, name="netlog-rescan", daemon=True)
        self._ticker.start()
        self._reader = threading.Thread(target=self._read_rings, name="netlog-reader", daemon=True)
        self._reader.start()

    def _read_rings(self):
        self.log.info("netlog: reader thread at %s", raise_reader_priority())
        try:
            while not self._stop.is_set():
                for fd, ev in self.epoll.poll(READER_POLL_S):
                    with self.lock:
                        cap = self.by_fd.get(fd)   # None: closed meanwhile
                        if cap is None:
                            continue
                        self._take_error(cap)   # what the spiller read, if any: no system call
                        # one turn (a ring's worth): the epoll, level-triggered, hands the rest back
                        left = cap.drain(FOLD_LINGER_MS) if ev & select.EPOLLIN else False
                    while left and self._waiting and not self._stop.is_set():
                        time.sleep(0.0005)   # the agent's thread is let in before the next turn
        except BaseException as exc:  # handed to the agent's thread: never lost with the thread
            if not self._stop.is_set():
                self._reader_error = exc

    def _take_error(self, cap):
        err = cap.ring.take_error()
        if err:
            self.log.info("netlog: %s in netns %s: %s (capture resumes when it is up)", cap.nic.name, cap.netns,
                          os.strerror(err))

    @contextmanager
    def locked(self):
        """self.lock for the agent's side: the reader thread lets it in
        between two turns (see _read_rings)."""
        token = object()
        self._waiting.append(token)   # list.append/remove: atomic, no lock needed
        try:
            # raised before waiting: the reader waits (in _read_rings) until this thread took the lock,
            # which at the default priority on a loaded machine took up to 600 ms to run (the spill full)
            with reader_priority_held(), self.lock:
                self._waiting.remove(token)
                yield
        finally:
            if token in self._waiting:   # interrupted while waiting
                self._waiting.remove(token)

    def _check_reader(self):
        """Raise what ended the reader thread (the supervisor then restarts
        the plugin): a ring nobody reads must not go unnoticed."""
        if self._reader_error is not None:
            raise self._reader_error

    def _tick(self):
        # wakes the agent's loop every RESCAN_S even when no packet comes
        while not self._stop.wait(RESCAN_S):
            try:
                self._tick_w.send(b"t")
            except OSError:
                return

    def fileobjs(self):
        return [self._tick_r]

    def on_readable(self, fileobj):
        self._check_reader()
        try:
            self._tick_r.recv(4096)
        except BlockingIOError:
            pass
        if time.monotonic() >= self.next_scan:
            self.rescan()
        return False

    def rescan(self):
        """Open sockets on new (namespace, interface) pairs, flush and close
        those that went away."""
        with self.locked():
            self._rescan()

    def _rescan(self):
        self.next_scan = time.monotonic() + RESCAN_S
        try:
            virtual = set(os.listdir(VIRTUAL_NET))
        except OSError:
            virtual = None
        wanted = {}
        for ino, path in discover_netns(self.proc).items():
            host = ino == self.own_netns
            try:
                with in_netns(path):
                    nics = list_nics()
                    listening = listening_ports()
            except OSError as exc:
                self.log.debug("netlog: namespace %s: %s", ino, exc)
                continue
            if virtual is None:   # the original's fallback when sysfs is unreadable
                names = {n.name for n in nics if n.name.startswith(("veth", "cali"))}
            else:
                names = virtual
            for nic in choose_nics(nics, host, self.cfg.netlog_interfaces, names):
                wanted[(ino, nic.name)] = (path, nic, host, listening)
        for key in [k for k in self.captures if k not in wanted]:
            self._close(key)
        self.pods.forget({ino for ino, _nic in wanted})
        for key, (path, nic, host, listening) in wanted.items():
            if key in self.captures:
                self.captures[key].listening = listening
                continue
            try:
                cap = NicCapture.open(path, key[0], nic, host, self.rules, self.follow_http, self.pods,
                                      series=self.cfg.netlog_log, chunk_age_ns=self.chunk_age_ns)
            except OSError as exc:
                self.totals["open_errors"] += 1
                self.log.warning("netlog: cannot capture on %s in netns %s: %s", nic.name, key[0], exc)
                continue
            cap.listening = listening
            self.captures[key] = cap
            self.by_fd[cap.ring.fileno()] = cap
            self.epoll.register(cap.ring.fileno(), select.EPOLLIN)
            self.totals["opened"] += 1
            self.log.info("netlog: capturing on %s (netns %s)", nic.name, key[0])

    def _close(self, key):
        cap = self.captures.pop(key)
        fd = cap.ring.fileno()
        self.epoll.unregister(fd)
        del self.by_fd[fd]
        cap.flush()
        self.closed_parts.append(cap.collect(time.time_ns(), self.ephemeral_port, True))
        cap.close()
        self.totals["closed"] += 1
        if cap.conn_filter is not None:
            self.totals["filter_dropped_packets"] += cap.conn_filter.packets
            self.totals["filter_dropped_connections"] += cap.conn_filter.connections

    def drain(self):
        # between the steps of the agent's flush: the rings into the connection tables
        self._check_reader()
        with self.locked():
            for cap in self.captures.values():
                cap.drain()

    def collect_last(self, now_ns):
        # open chunks are held up to chunk_age_ns: the last flush takes them all
        return self.collect(now_ns, flush_all=True)

    def collect(self, now_ns, flush_all=False):
        # [(NicCapture, Collected)]
        self._check_reader()
        with self.locked():   # the points are built after, while the reader goes on
            parts = self.closed_parts
            self.closed_parts = []
            for cap in self.captures.values():
                cap.drain()
                parts.append(cap.collect(now_ns, self.ephemeral_port, flush_all))
                if cap.conn_filter is not None:
                    cap.conn_filter.interval()
        out = []
        if self.cfg.netlog_metric:
            out += self.metrics(parts)
        if not self.cfg.netlog_log:
            return out
        l4 = self.pods.log_tags(l4_batch([(c, got.chunks, got.messages) for c, got in parts]))
        if l4 is not None:
            out.append(PointBatch("bpf_net_l4_log", "logging", "bpf-netlog/netlog", l4,
                                  L4_TAGS + self.pods.tag_names(), L4_FIELDS,
                                  const_tags={"source": "bpf_net_l4_log"}, timestamp_column="time"))
        l7 = self.pods.log_tags(l7_batch([(c, got.exchanges) for c, got in parts]))
        if l7 is not None:
            out.append(PointBatch("bpf_net_l7_log", "logging", "bpf-netlog/netlog", l7,
                                  L7_TAGS + self.pods.tag_names(), L7_FIELDS,
                                  const_tags={"source": "bpf_net_l7_log"}, timestamp_column="time"))
        return out

    def metrics(self, parts):
        """netflow and httpflow of this interval, from packets: inputs
        bpf-netlog/netflow and bpf-netlog/httpflow."""
        out = []
        flows = [got.flows for _c, got in parts if len(got.flows)]
        if flows:
            rows = connection_rows(np.concatenate(flows))
            nf = netflow_finish([netflow_partial(rows, self.ephemeral_port, self.resolver, self.ctx.domains,
                                                 self.ctx.nat)], self.ctx.k8s)
            out.append(PointBatch("netflow", "network", "bpf-netlog/netflow", nf,
                                  NETFLOW_TAGS + k8s_tag_names(self.ctx.k8s), NETFLOW_FIELDS,
                                  const_tags={"source": "netflow"}))
        xs = [got.exchanges[got.exchanges["has_resp"] == 1] for _c, got in parts]
        xs = [x for x in xs if len(x)]
        if xs:
            hf = aggregate_requests(request_rows(np.concatenate(xs)), self.ephemeral_port, self.resolver,
                                    self.ctx.domains, None, self.ctx.k8s)
            out.append(PointBatch("httpflow", "network", "bpf-netlog/httpflow", hf,
                                  HTTPFLOW_TAGS + k8s_tag_names(self.ctx.k8s), HTTPFLOW_FIELDS,
                                  const_tags={"source": "httpflow"}))
        return out

    def memory(self):
        """The connection tables' allocations, summed over the sockets."""
        m = {}
        with self.locked():
            caps = list(self.captures.values())
        for cap in caps:
            for k, v in cap.conns.memory().items():
                m[f"conn_{k}"] = m.get(f"conn_{k}", 0) + v
        return m

    def counters(self):
        """Totals, and per socket (``<netns>/<interface>``) the ring's and
        the connection table's counters: tp_drops is per socket."""
        with self.locked():
            return self._counters()

    def _counters(self):
        c = dict(self.totals)
        c["sockets"] = len(self.captures)
        c.update(self.pods.counters())
        for cap in self.captures.values():
            if cap.conn_filter is not None:
                c["filter_dropped_packets"] += cap.conn_filter.packets
                c["filter_dropped_connections"] += cap.conn_filter.connections
                for k, v in cap.conn_filter.counters().items():
                    c[k] = c.get(k, 0) + v
        for (ino, name), cap in self.captures.items():
            rc = cap.ring.counters()
            for k in ("packets", "kernel_drops", "fragments", "truncated", "cut_bulk_segments", "not_ip",
                      "not_tcp_udp", "socket_errors", "reader_lag_max_ns", "spill_bytes_peak", "spill_drops",
                      "spill_touched_bytes", "spill_released_bytes"):
                c[f"{ino}/{name}_{k}"] = rc[k]
            for k, v in cap.conns.counters().items():
                c[f"{ino}/{name}_conn_{k}"] = v
        return c

    def stop(self):
        """Never hangs the collector's shutdown: a reader thread that does
        not stop in READER_STOP_S is logged and left (a daemon thread)."""
        self._stop.set()
        if self._reader is not None:
            self._reader.join(READER_STOP_S)   # it sees _stop within READER_POLL_S + a turn
            if self._reader.is_alive():
                self.log.error("netlog: thread %s did not stop within %.1f s: shutting down without it",
                               self._reader.name, READER_STOP_S)
        self.pods.stop()
        # a ring is read under the lock: unmapped only once the lock is free
        if not self.lock.acquire(timeout=READER_STOP_S):
            self.log.error("netlog: the capture lock is still held after %.1f s: %d packet sockets left open",
                           READER_STOP_S, len(self.captures))
            return
        try:
            self.by_fd.clear()
            for key in list(self.captures):
                self.captures.pop(key).close()
        finally:
            self.lock.release()
        self.epoll.close()
        self._tick_r.close()
        self._tick_w.close()


def _ms(ns):
    return pc.divide(pa.array(np.asarray(ns, dtype=np.float64)), 1e6)


def _strings(values, index):
    return pa.array(np.array(values, dtype=object)[index], pa.string())


HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def _hex128(hi, lo):
    """32 lower-case hex digits per row of two uint64 columns (hi first),
    as "%016x%016x" writes them, column-wise."""
    n = len(hi)
    raw = np.empty((n, 16), np.uint8)
    raw[:, :8] = np.asarray(hi, ">u8").view(np.uint8).reshape(n, 8)
    raw[:, 8:] = np.asarray(lo, ">u8").view(np.uint8).reshape(n, 8)
    text = np.empty((n, 32), np.uint8)
    text[:, 0::2] = HEX_DIGITS[raw >> 4]
    text[:, 1::2] = HEX_DIGITS[raw & 15]
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text)])


def common_columns(parts, incoming):
    """The tags every L4 and L7 point carries (the reference's
    buildCommTags), from rows of CHUNK_DTYPE or L7_DTYPE (same key
    members) of several captures: [(NicCapture, rows)]; incoming: per row,
    whether the connection (or the request) came in."""
    rows = np.concatenate([p[1] for p in parts])
    caps = [p[0] for p in parts]
    which = np.repeat(np.arange(len(caps)), [len(p[1]) for p in parts])
    fam = rows["family"]
    local_ip = format_addrs(rows["laddr"], fam)
    remote_ip = format_addrs(rows["raddr"], fam)
    lport = pc.cast(pa.array(rows["lport"]), pa.string())
    rport = pc.cast(pa.array(rows["rport"]), pa.string())
    inc = pa.array(incoming)
    return rows, {
        "src_ip": local_ip, "dst_ip": remote_ip, "src_port": lport, "dst_port": rport,
        "nic_name": _strings([c.nic.name for c in caps], which),
        "nic_mac": _strings([c.nic.mac for c in caps], which),
        "netns": _strings([str(c.netns) for c in caps], which),
        "host_network": _strings(["true" if c.host_network else "false" for c in caps], which),
        "virtual_nic": _strings(["false" if c.host_network else "true" for c in caps], which),
        "vni_id": pc.cast(pa.array(rows["vni"]), pa.string()),
        "vxlan_packet": pa.array(np.where(rows["vxlan"] == 1, "true", "false")),
        "inner_traceid": _hex128(rows["inner_hi"], rows["inner_lo"]),
        # the original's undocumented tag: "<SYN seq>_<SYN|ACK seq>", 0 for what was not seen
        "nic_traceid": pc.binary_join_element_wise(pc.cast(pa.array(rows["syn_seq"]), pa.string()),
                                                   pc.cast(pa.array(rows["synack_seq"]), pa.string()), "_"),
        # the client is the local end unless the connection came in
        "client_ip": pc.if_else(inc, remote_ip, local_ip),
        "client_port": pc.if_else(inc, rport, lport),
        "server_ip": pc.if_else(inc, local_ip, remote_ip),
        "server_port": pc.if_else(inc, lport, rport),
    }


def l4_batch(parts):
    """[(NicCapture, CHUNK_DTYPE rows, their messages)] -> one RecordBatch
    of bpf_net_l4_log points, or None when there are none."""
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return None
    ch, cols = common_columns([p[:2] for p in parts], np.concatenate([p[1]["direction"] for p in parts]) == 1)
    rtt = np.where(ch["rtt_samples"] > 0, ch["rtt_sum_ns"] / np.maximum(ch["rtt_samples"], 1), 0.0)
    cols.update({
        "time": pa.array(ch["ts_ns"].astype(np.int64)),
        "l4_proto": pa.array(np.where(ch["proto"] == 6, "tcp", "udp")),
        "direction": _strings(_netlog.DIRECTIONS, ch["direction"]),
        "conn_side": _strings(("unknown", "server", "client"), ch["direction"]),
        "l7_proto": pa.array(np.where(ch["l7_http"] == 1, "http", "unknown")),
        "chunk_id": pa.array(ch["chunk_id"].astype(np.int64)),
        "chunk_syn": pa.array(ch["chunk_syn"].astype(bool)),
        "chunk_fin": pa.array(ch["chunk_fin"].astype(bool)),
        "tcp_3whs_cost": _ms(np.maximum(ch["hs_cost_ns"], 0)),
        "tcp_4whs_cost": _ms(np.maximum(ch["close_cost_ns"], 0)),
        "tcp_rtt": _ms(rtt),
        "tcp_syn_retrans": pa.array(ch["syn_retrans"].astype(np.int64)),
    })
    for k in ("tx_seq_min", "tx_seq_max", "rx_seq_min", "rx_seq_max") + COUNTS:
        cols[k] = pa.array(ch[k].astype(np.int64))
    # written by the connection table in C, per-packet series included
    cols["message"] = pa.concat_arrays([p[2] for p in parts])
    return pa.RecordBatch.from_pydict(cols)


def _fixed_text(fixed, lengths):
    """A fixed-width bytes column (numpy S<n>) cut at per-row lengths ->
    (its rows as one Arrow binary array, plain): plain rows hold printable
    ASCII only, no '"' nor '\\', so that they are their own UTF-8 decoding
    and their own JSON string body. The other rows are rare (a path with
    escapes or non-ASCII bytes): the callers build those the slow way."""
    n = len(fixed)
    width = fixed.dtype.itemsize
    m = np.ascontiguousarray(fixed).view(np.uint8).reshape(n, width)
    lengths = np.minimum(np.asarray(lengths, np.int64), width)
    keep = np.arange(width) < lengths[:, None]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    bad = (m < 0x20) | (m >= 0x7F) | (m == 0x22) | (m == 0x5C)
    plain = ~(bad & keep).any(axis=1)
    data = np.ascontiguousarray(m[keep])
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]), plain


def _with_rows(column, plain, make_row):
    """column (plain rows right) with each other row i replaced by make_row(i)."""
    if plain.all():
        return column
    slow = np.flatnonzero(~plain)
    values = np.array(column.to_pylist(), dtype=object)
    values[slow] = [make_row(i) for i in slow]
    return pa.array(values, pa.string())


def _http_paths(x):
    """L7_DTYPE rows -> (their paths as one string array, invalid UTF-8
    replaced; plain, see _fixed_text)."""
    raw, plain = _fixed_text(x["path"], x["path_len"])
    fast = pc.if_else(pa.array(plain), raw, pa.scalar(b"", pa.binary())).cast(pa.string())
    return _with_rows(fast, plain, lambda i: bytes(x["path"][i][:x["path_len"][i]]).decode("utf-8", "replace")), plain


def _traceparent_ids(x):
    """(trace_id, parent_id, plain) of the rows' W3C traceparent values: ""
    when absent or not of four dash-separated parts."""
    tp = x["traceparent"]
    has = x["has_traceparent"] == 1
    raw, plain = _fixed_text(tp, np.where(has, np.char.str_len(tp), 0))
    parts = pc.split_pattern(pc.if_else(pa.array(plain), raw, pa.scalar(b"", pa.binary())).cast(pa.string()), "-")
    four = pc.equal(pc.list_value_length(parts), 4)
    out = []
    for index in (1, 2):
        part = pc.if_else(four, pc.list_element(pc.if_else(four, parts, pa.scalar(["", "", "", ""],
                                                                                    pa.list_(pa.string()))), index), "")

        def row(i, index=index):
            p = tp[i].decode("ascii", "replace").split("-")
            return p[index] if len(p) == 4 else ""
        out.append(_with_rows(part, plain, row))
    return out[0], out[1], plain


def _json_int(values):
    return pc.cast(pa.array(np.asarray(values, np.int64)), pa.string())


def l7_batch(parts):
    """[(NicCapture, L7_DTYPE rows)] -> one RecordBatch of bpf_net_l7_log
    points, or None. Costs in ms: cost_req_sent from the request's first to
    last segment, cost_resp_wait from the request's last segment to the
    response's first, cost_cnt_dl from the response's first to last
    segment (the original swaps the first and the last). Built column by
    column (no Python object per exchange but for paths or traceparent
    values with bytes JSON escapes)."""
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return None
    x, cols = common_columns(parts, np.concatenate([p[1]["incoming"] for p in parts]) == 1)
    inc = x["incoming"] == 1
    has_resp = x["has_resp"] == 1
    resp_seq = np.where(has_resp, x["resp_seq"], 0).astype(np.int64)
    req_seq = x["req_seq"].astype(np.int64)
    paths, paths_plain = _http_paths(x)
    trace_id, parent_id, tp_plain = _traceparent_ids(x)
    req_text, resp_text = (pc.cast(pa.array(v), pa.string()) for v in (req_seq, resp_seq))
    cols.update({
        "time": pa.array(x["req_ts"].astype(np.int64)),
        "l4_proto": pa.array(np.full(len(x), "tcp", dtype=object), pa.string()),
        "l7_proto": pa.array(np.full(len(x), "http", dtype=object), pa.string()),
        "direction": pa.array(np.where(inc, "incoming", "outgoing")),
        "conn_side": pa.array(np.where(inc, "server", "client")),
        "l7_traceid": pc.binary_join_element_wise(req_text, resp_text, "_"),
        "trace_id": trace_id,
        "parent_id": parent_id,
        "http_method": _strings(_http.METHODS, x["method"]),
        "http_path": paths,
        "http_status_code": pa.array(np.where(has_resp, x["status"], 0).astype(np.int64)),
        "req_seq": req_text,
        "resp_seq": resp_text,
        # tx: what this interface sent (the response when the request came in)
        "tx_seq": pa.array(np.where(inc, resp_seq, req_seq)),
        "rx_seq": pa.array(np.where(inc, req_seq, resp_seq)),
        "cost_req_sent": _ms(x["req_last_ts"] - x["req_ts"]),
        "cost_resp_wait": _ms(np.where(has_resp, x["resp_ts"].astype(np.int64) - x["req_last_ts"].astype(np.int64), 0)),
        "cost_cnt_dl": _ms(np.where(has_resp, x["resp_last_ts"] - x["resp_ts"], 0)),
    })
    for k in COUNTS:
        cols[k] = pa.array(x[k].astype(np.int64))
    cols["message"] = l7_messages(x, cols, paths_plain & tp_plain)
    return pa.RecordBatch.from_pydict(cols)


def l7_messages(x, cols, plain):
    """The message JSON of each exchange, as json.dumps writes it (its
    separators), joined column-wise; rows not plain (see _fixed_text) by
    json.dumps itself."""
    tcp = []
    for k in COUNTS:
        tcp += [f'{", " if tcp else ""}"{k}": ', _json_int(x[k])]
    pieces = ['{"l4_proto": "tcp", "l7_proto": "http", "http": {"direction": "', cols["direction"],
              '", "pkt_chunk_range": [', _json_int(x["first_chunk"]), ", ", _json_int(x["last_chunk"]),
              '], "trace_id": "', cols["trace_id"], '", "parent_id": "', cols["parent_id"],
              '", "path": "', cols["http_path"], '", "method": "', cols["http_method"],
              '", "status_code": ', _json_int(cols["http_status_code"]), '}, "tcp": {', *tcp, "}}"]
    joined = pc.binary_join_element_wise(*[p if isinstance(p, (pa.Array, pa.ChunkedArray)) else
                                           pa.scalar(p) for p in pieces], "")

    def row(i):
        return json.dumps({
            "l4_proto": "tcp", "l7_proto": "http",
            "http": {"direction": cols["direction"][i].as_py(),
                     "pkt_chunk_range": [int(x["first_chunk"][i]), int(x["last_chunk"][i])],
                     "trace_id": cols["trace_id"][i].as_py(), "parent_id": cols["parent_id"][i].as_py(),
                     "path": cols["http_path"][i].as_py(), "method": cols["http_method"][i].as_py(),
                     "status_code": cols["http_status_code"][i].as_py()},
            "tcp": {k: int(x[k][i]) for k in COUNTS}})
    return _with_rows(joined, plain, row)


NF_DIR_OUTGOING, NF_DIR_INCOMING = 1, 2   # bpf/include/netflow.h, what connection_tags() reads


def _conn_columns(rows, incoming):
    n = len(rows)
    return {
        "pid": pa.array(np.zeros(n, np.uint32)),
        "family": pa.array(rows["family"]),
        "proto": pa.array(rows["proto"] if "proto" in rows.dtype.names else np.full(n, 6, np.uint8)),
        "laddr": _fixed16(rows["laddr"]),
        "raddr": _fixed16(rows["raddr"]),
        "lport": pa.array(rows["lport"]),
        "rport": pa.array(rows["rport"]),
        "direction": pa.array(np.where(incoming, NF_DIR_INCOMING, NF_DIR_OUTGOING).astype(np.uint8)),
    }


def connection_rows(ch):
    """CHUNK_DTYPE rows -> the per-connection columns netflow's aggregation
    reads (no process: packets carry none, pid 0)."""
    cols = _conn_columns(ch, ch["direction"] == 1)
    rtt_us = np.where(ch["rtt_samples"] > 0, ch["rtt_sum_ns"] // np.maximum(ch["rtt_samples"], 1) // 1000, 0)
    cols.update({
        "comm": pa.array([""] * len(ch), pa.string()),
        "bytes_recv": pa.array(ch["rx_bytes"]),
        "bytes_sent": pa.array(ch["tx_bytes"]),
        "retransmits": pa.array((ch["tx_retrans"] + ch["rx_retrans"]).astype(np.uint32)),
        "rtt_us": pa.array(np.maximum(rtt_us, (ch["rtt_samples"] > 0).astype(np.uint64)).astype(np.uint32)),
        "rtt_var_us": pa.array(np.zeros(len(ch), np.uint32)),
        "closed": pa.array(ch["closed"]),
        "established": pa.array(((ch["chunk_syn"] == 1) & (ch["hs_cost_ns"] >= 0)).astype(np.uint8)),
    })
    return pa.RecordBatch.from_pydict(cols)


def request_rows(x):
    """L7_DTYPE rows (answered exchanges) -> RAW_KEYS + PARTIAL_SUMS, one
    row per exchange, as httpflow's aggregation reads them."""
    cols = _conn_columns(x, x["incoming"] == 1)
    n = len(x)
    cols.update({
        "comm": _fixed16(np.zeros(n, "V16")),
        "method": _METHODS.take(pa.array(x["method"])),
        "path": _http_paths(x)[0],
        "status_code": pa.array(x["status"].astype(np.int64)),
        "http_version": _VERSIONS.take(pa.array(x["version"])),
        "truncated": pa.array(x["path_len"] >= _netlog.HTTP_PATH_MAX),
        "latency_count": pa.array(np.ones(n, np.int64)),
        "latency_sum": pa.array((x["resp_ts"].astype(np.int64) - x["req_last_ts"].astype(np.int64))),
        "bytes_read_sum": pa.array(x["rx_bytes"].astype(np.int64)),
        "bytes_written_sum": pa.array(x["tx_bytes"].astype(np.int64)),
    })
    return pa.table({k: cols[k] for k in RAW_KEYS + PARTIAL_SUMS})
