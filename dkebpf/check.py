"""`dkebpf check`: per plugin, can this kernel with these privileges run it,
and if not, why. Table-driven (dkebpf/plugins/__init__.py): for each row,
first the named feature probes it requires (dkebpf/features.py, shared with
the tests), then its check function, which checks by doing -- the BPF
object is loaded and attached, then detached again; the socket is opened,
then closed.

A check function takes no arguments and returns (ok, [lines]); a row with a
part or an L7 protocol gets its lines prefixed with that name."""
import os

from . import features, kernel
from .errors import PRIVILEGE_HINT, DkebpfError
from .plugins import L7NET, PLUGIN, PLUGINS, names


# What this host refused (the kernel's errno, a missing file, no privilege)
# or a broken install: reported as a "no". A bug (RuntimeError, LookupError)
# is not caught, and ends as an internal error with its traceback.
HOST_REFUSED = (DkebpfError, OSError, ImportError)


def _not_root():
    """The one reason no BPF object loads, whatever the kernel has."""
    if not kernel.is_root():
        return [f"not root: {PRIVILEGE_HINT}"]
    return []


def _first_line(exc):
    return str(exc).splitlines()[0]


def load_and_attach(name):
    """Load bpf/<name>.bpf.o, attach the programs its spec attaches at start,
    detach again; returns how many attached (raises what loading or
    attaching raised)."""
    from .bpf_objects import OBJECTS, BpfSkeleton
    with BpfSkeleton(OBJECTS[name]).start() as bpf:
        return len(bpf.links)


def _check_object(name, hooks):
    """A BPF object's check: load and attach it (then detach); the line says
    how many programs attached to which hooks, or what the host refused."""
    reasons = _not_root()
    if reasons:
        return False, reasons
    try:
        nlinks = load_and_attach(name)
    except HOST_REFUSED as exc:
        return False, [_first_line(exc)]
    return True, [f"{nlinks} programs load and attach ({hooks})"]


def check_netflow():
    ok, lines = _check_object("netflow", "tp_btf sock_send_length/sock_recv_length/inet_sock_set_state/"
                              "tcp_retransmit_skb/tcp_destroy_sock; cgroup sendmsg4/sendmsg6/recvmsg4/"
                              "recvmsg6 on the root cgroup v2; no syscall tracepoint")
    if ok:
        lines.append("not covered: datagrams of unconnected UDP sockets received without asking for the "
                     "source address (recv/read), and sockets of cgroups outside the hierarchy the "
                     "collector sees (counted as kernel_drop_udp_peer_unknown)")
    return ok, lines


def check_dnsflow():
    """dnsflow needs only packet sockets (no BPF object): open its receive
    socket and a transmit one (on loopback, which it never uses: any
    interface tells the same), then close them."""
    try:
        from .plugins.dnsflow import TX_BLOCK_NR, TX_BLOCK_SIZE, receive_ring, transmit_ring
        ring, split = receive_ring(block_nr=2)
        with ring:
            if split:
                with transmit_ring(1):
                    pass
    except HOST_REFUSED as exc:
        return False, [_first_line(exc)]
    lines = ["packet socket opens (AF_PACKET TPACKET_V3 ring, filter udp/tcp port 53)"]
    if split:
        lines.append("sockets: one for packets received on every interface (PACKET_IGNORE_OUTGOING: sent "
                     "packets are not cloned for it), one per interface other than loopback for what it "
                     f"sends ({TX_BLOCK_NR * TX_BLOCK_SIZE >> 10} KiB ring each), interfaces followed")
    else:
        lines.append("no PACKET_IGNORE_OUTGOING (Linux < 4.20): one socket on every interface, received and "
                     "sent; the kernel clones every packet sent, loopback's too, for it")
    return True, lines


def check_netlog():
    """bpf-netlog needs packet sockets opened inside other namespaces:
    enter this process's own namespace (the same setns(2)), open a ring
    with the capture filter there, close it."""
    try:
        from . import _packets
        from .packetfilter import netlog_filter
        from .plugins.netlog import in_netns
        with in_netns("/proc/self/ns/net"), _packets.PacketRing(netlog_filter(), block_nr=2):
            pass
    except HOST_REFUSED as exc:
        return False, [_first_line(exc)]
    from .enrich.containers import check_line
    host_root = os.environ.get("HOST_ROOT", "").rstrip("/")
    return True, ["packet socket opens inside a namespace (setns, AF_PACKET TPACKET_V3 ring)",
                  check_line((), host_root)]


def check_bash():
    """Whether the readline uretprobe attaches, and to which bash binaries.
    `check` takes no options: the host root comes from the environment, as
    for `run` (see config.py host_root/host_proc)."""
    reasons = _not_root()
    if reasons:
        return False, reasons
    host_root = os.environ.get("HOST_ROOT", "").rstrip("/")
    proc = os.environ.get("HOST_PROC") or (host_root + "/proc" if host_root else "/proc")
    try:
        from .bpf_objects import BASH, BpfSkeleton
        from .plugins.bash import READLINE, find_bash_binaries
        binaries = find_bash_binaries(host_root, proc)
        if not binaries:
            return False, ["no bash binary found (/bin/bash, /usr/bin/bash, running processes)"]
        ok, failed = [], []
        with BpfSkeleton(BASH).start() as bpf:
            for path in sorted(binaries.values()):
                try:
                    bpf.attach_uprobe("bash_readline", path, READLINE, retprobe=True).close()
                    ok.append(path)
                except HOST_REFUSED as exc:
                    failed.append(f"{path}: {_first_line(exc)}")
    except HOST_REFUSED as exc:
        return False, [_first_line(exc)]
    why = [f"uretprobe on readline attaches to {p}" for p in ok]
    why += [f"cannot attach to {f}" for f in failed]
    return bool(ok), why


def check_httpflow():
    return _check_object("http", "tp_btf sock_send_length/sock_recv_length with the task's syscall registers "
                         "(read/write/readv/writev/sendto/recvfrom/sendmsg/recvmsg; sendfile/splice bytes "
                         "only), tp_btf tcp_destroy_sock; not covered, counted in kernel_calls_not_covered: "
                         "io_uring, sendmmsg/recvmmsg, kernel threads")


def check_httpflow_tls():
    """Where libssl is, and do the OpenSSL uprobes attach."""
    reasons = _not_root()
    if reasons:
        return False, reasons
    try:
        from .plugins.tls_probes import check_line
        return True, [check_line().removeprefix("httpflow-tls: ")]
    except HOST_REFUSED as exc:
        return False, [_first_line(exc)]


def check_trace():
    ok, lines = _check_object("trace", "tp_btf sock_send_length/sock_recv_length/tcp_destroy_sock/"
                              "sched_process_fork")
    if ok:  # TLS spans are a part the plugin runs without
        lines.append(_trace_tls_line())
    return ok, lines


def _trace_tls_line():
    """TLS spans: trace.bpf.o, then tls.bpf.o with trace_spans on its maps
    and the OpenSSL uprobes (all detached again)."""
    from .bpf_objects import TLS_TRACE, TRACE, BpfSkeleton, tls_trace_start
    from .plugins.tls_probes import check_line
    try:
        with BpfSkeleton(TRACE).start() as bpf:
            line = check_line(spec=TLS_TRACE, label="TLS spans", **tls_trace_start(bpf, False))
        # what the libssl probes cannot see, named (HTTP/1.x and HTTP/2 inside are followed)
        return (line + "; HTTP/1.x and HTTP/2 inside; not covered: grpcio (BoringSSL linked in "
                "statically: no libssl), Go's crypto/tls, other statically linked TLS")
    except HOST_REFUSED as exc:
        return f"TLS spans: no: {_first_line(exc)}"


def check_conntrack():
    """A ctnetlink socket that joins the event groups and answers a request
    (the global entry count); the ctnetlink_events probe said nf_conntrack
    is there with events on."""
    from .plugins import conntrack
    try:
        sock = conntrack.open_event_socket()
    except HOST_REFUSED as exc:
        return False, ["nf_conntrack is available", str(exc)]
    try:
        entries = conntrack.query_entry_count()
    except HOST_REFUSED as exc:
        return False, ["nf_conntrack is available", str(exc)]
    finally:
        sock.close()
    return True, ["nf_conntrack is available; ctnetlink event groups joined "
                  f"(NEW, DESTROY), {entries} connections tracked now"]


def missing_features(row):
    """One line per feature probe of the row that fails here, saying which
    kernel brought it when this one is older."""
    this = features.kernel_version()
    out = []
    for name in row.requires:
        why = features.missing(name)
        if why is None:
            continue
        need = features.feature(name).min_kernel
        if need is not None and this < need:
            why += f" (needs kernel {need[0]}.{need[1]} or later; this is {os.uname().release})"
        out.append(why)
    return out


def check_row(row):
    """(ok, [lines]) for one row of the plugin table."""
    if not row.implemented:
        return False, ["not implemented in this version"]
    missing = missing_features(row)
    if missing:
        return False, missing
    return globals()[row.check]()


def run_check(out):
    """Print one block per plugin (ebpf-net's L7 protocols in its block);
    returns 0 when ebpf-net can run. A plugin runs when every one of its
    rows does; an L7 protocol that cannot run is reported and does not
    count, as it can be left out (--l7net-disabled)."""
    results = {}
    for name in names(PLUGIN):
        rows = [r for r in PLUGINS if r.kind == PLUGIN and r.name == name]
        if name == "ebpf-net":
            rows += [r for r in PLUGINS if r.kind == L7NET]
        ok, lines = True, []
        for row in rows:
            row_ok, why = check_row(row)
            tag = row.part or (row.name if row.kind == L7NET else "")
            if row.kind == PLUGIN:
                ok = ok and row_ok
            if tag:
                why = [f"{tag}: {'' if row_ok else 'no: '}{line}" for line in why]
            lines += why
        results[name] = ok
        out.write(f"{name}: {'yes' if ok else 'no'}\n")
        for line in lines:
            out.write(f"  - {line}\n")
    out.write(f"kernel: {os.uname().release}, BTF: {'yes' if kernel.btf_available() else 'no'}, "
              f"root: {'yes' if kernel.is_root() else 'no'}\n")
    return 0 if results["ebpf-net"] else 1
