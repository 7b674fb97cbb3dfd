"""`dkebpf check`: per plugin, can this kernel with these privileges run it,
and if not, why. Checks by doing: the BPF object is loaded and attached,
then detached again."""
import os

from . import kernel
from .errors import DkebpfError

PLUGINS = ("ebpf-net", "ebpf-bash", "ebpf-conntrack", "ebpf-trace", "bpf-netlog")
NETFLOW_TRACEPOINTS = (("sock", "sock_send_length"), ("sock", "sock_recv_length"),
                       ("sock", "inet_sock_set_state"), ("tcp", "tcp_retransmit_skb"),
                       ("syscalls", "sys_enter_sendto"), ("syscalls", "sys_exit_recvmsg"))


def _common():
    """Reasons no BPF plugin can run, shared by all."""
    reasons = []
    if not kernel.is_root():
        reasons.append("not root (loading BPF programs needs root or CAP_BPF+CAP_PERFMON)")
    if not kernel.btf_available():
        reasons.append(f"no kernel BTF ({kernel.BTF_VMLINUX}): CO-RE programs cannot be relocated")
    return reasons


def load_and_attach(name):
    """Load bpf/<name>.bpf.o, attach every program, detach again; returns
    how many programs attached (raises what loading or attaching raised)."""
    from . import _libbpf
    from .plugins.netflow import bpf_object_path
    with _libbpf.BpfObject(bpf_object_path(name)) as obj:
        obj.load()
        links = obj.attach_all()
        for link in links:
            link.close()
    return len(links)


def check_netflow():
    reasons = _common()
    if reasons:
        return False, reasons
    try:
        kernel.ensure_mounts()
    except DkebpfError as exc:
        return False, [f"tracefs not available: {exc}"]
    missing = [f"{c}:{n}" for c, n in NETFLOW_TRACEPOINTS if not kernel.tracepoint_exists(c, n)]
    if missing:
        return False, ["missing tracepoints: " + ", ".join(missing)]
    try:
        nlinks = load_and_attach("netflow")
    except (DkebpfError, ImportError) as exc:
        return False, [str(exc).splitlines()[0]]
    return True, [f"netflow: {nlinks} programs load and attach "
                  "(tp_btf sock_send_length/sock_recv_length/inet_sock_set_state/tcp_retransmit_skb, "
                  "syscall tracepoints)",
                  check_dnsflow(),
                  check_httpflow(),
                  check_httpflow_tls()]


def check_dnsflow():
    """dnsflow needs only a packet socket (no BPF object): open one with the
    port-53 filter and its ring, then close it."""
    try:
        from . import _packets
        from .packetfilter import port_filter
        with _packets.PacketRing(port_filter(53), block_nr=2):
            pass
    except (DkebpfError, ImportError) as exc:
        return f"dnsflow: no: {str(exc).splitlines()[0]}"
    return "dnsflow: packet socket opens (AF_PACKET TPACKET_V3 ring, filter udp/tcp port 53)"


def check_bash(host_root="", proc="/proc"):
    """Whether the readline uretprobe attaches, and to which bash binaries."""
    reasons = _common()
    if reasons:
        return False, reasons
    try:
        from . import _libbpf
        from .plugins.bash import READLINE, find_bash_binaries
        from .plugins.netflow import bpf_object_path
        binaries = find_bash_binaries(host_root, proc)
        if not binaries:
            return False, ["no bash binary found (/bin/bash, /usr/bin/bash, running processes)"]
        ok, failed = [], []
        with _libbpf.BpfObject(bpf_object_path("bash")) as obj:
            obj.load()
            prog = obj.program("bash_readline")
            for path in sorted(binaries.values()):
                try:
                    prog.attach_uprobe(path, READLINE, retprobe=True).close()
                    ok.append(path)
                except DkebpfError as exc:
                    failed.append(f"{path}: {str(exc).splitlines()[0]}")
    except (DkebpfError, ImportError) as exc:
        return False, [str(exc).splitlines()[0]]
    why = [f"uretprobe on readline attaches to {p}" for p in ok]
    why += [f"cannot attach to {f}" for f in failed]
    return bool(ok), why


def check_httpflow():
    """One line: does the HTTP capture object load and attach here."""
    try:
        nlinks = load_and_attach("http")
    except (DkebpfError, ImportError) as exc:
        return f"httpflow: no: {str(exc).splitlines()[0]}"
    return (f"httpflow: {nlinks} programs load and attach (syscall tracepoints read/write/"
            "readv/writev/sendto/recvfrom/sendmsg/recvmsg/sendfile64/splice, tp_btf tcp_destroy_sock)")


def check_httpflow_tls():
    """One line: where libssl is, and do the OpenSSL uprobes attach."""
    try:
        from .plugins.tls_probes import check_line
        return check_line()
    except (DkebpfError, ImportError) as exc:
        return f"httpflow-tls: no: {str(exc).splitlines()[0]}"


def check_conntrack():
    """nf_conntrack present, events on, and a ctnetlink socket that joins the
    event groups and answers a request (the global entry count)."""
    from .plugins import conntrack
    present, events = conntrack.conntrack_status()
    if not present:
        return False, ["nf_conntrack is not available (no /proc/sys/net/netfilter/nf_conntrack_max): "
                       "modprobe nf_conntrack"]
    if not events:
        return False, ["nf_conntrack is available but sends no events "
                       "(net.netfilter.nf_conntrack_events = 0): set it to 2"]
    try:
        sock = conntrack.open_event_socket()
    except DkebpfError as exc:
        return False, ["nf_conntrack is available", str(exc)]
    try:
        entries = conntrack.query_entry_count()
    except DkebpfError as exc:
        return False, ["nf_conntrack is available", str(exc)]
    finally:
        sock.close()
    return True, ["nf_conntrack is available; ctnetlink event groups joined "
                  f"(NEW, DESTROY), {entries} connections tracked now"]


def run_check(out):
    """Print one block per plugin; returns 0 when ebpf-net can run."""
    results = {}
    for name in PLUGINS:
        if name == "ebpf-net":
            ok, why = check_netflow()
        elif name == "ebpf-bash":
            # `check` takes no options: the host root comes from the
            # environment, as for `run` (see config.py host_root/host_proc)
            root = os.environ.get("HOST_ROOT", "").rstrip("/")
            ok, why = check_bash(root, os.environ.get("HOST_PROC") or (root + "/proc" if root else "/proc"))
        elif name == "ebpf-conntrack":
            ok, why = check_conntrack()
        else:
            ok, why = False, ["not implemented in this version"]
        results[name] = ok
        out.write(f"{name}: {'yes' if ok else 'no'}\n")
        for line in why:
            out.write(f"  - {line}\n")
    out.write(f"kernel: {os.uname().release}, BTF: {'yes' if kernel.btf_available() else 'no'}, "
              f"root: {'yes' if kernel.is_root() else 'no'}\n")
    return 0 if results["ebpf-net"] else 1
