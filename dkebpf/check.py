"""`dkebpf check`: per plugin, can this kernel with these privileges run it,
and if not, why. Checks by doing: the BPF object is loaded and attached,
then detached again."""
import os

from . import kernel
from .errors import DkebpfError

PLUGINS = ("ebpf-net", "ebpf-bash", "ebpf-conntrack", "ebpf-trace", "bpf-netlog")
NETFLOW_TRACEPOINTS = (("sock", "sock_send_length"), ("sock", "sock_recv_length"),
                       ("sock", "inet_sock_set_state"), ("tcp", "tcp_retransmit_skb"),
                       ("syscalls", "sys_enter_sendto"), ("syscalls", "sys_exit_recvmsg"),
                       ("syscalls", "sys_enter_bind"))


def _common():
    """Reasons no BPF plugin can run, shared by all."""
    reasons = []
    if not kernel.is_root():
        reasons.append("not root (loading BPF programs needs root or CAP_BPF+CAP_PERFMON)")
    if not kernel.btf_available():
        reasons.append(f"no kernel BTF ({kernel.BTF_VMLINUX}): CO-RE programs cannot be relocated")
    return reasons


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
        from . import _libbpf
        from .plugins.netflow import bpf_object_path
        with _libbpf.BpfObject(bpf_object_path("netflow")) as obj:
            obj.load()
            links = obj.attach_all()
            for link in links:
                link.close()
    except (DkebpfError, ImportError) as exc:
        return False, [str(exc).splitlines()[0]]
    return True, [f"netflow: {len(links)} programs load and attach "
                  "(tp_btf sock_send_length/sock_recv_length/inet_sock_set_state/tcp_retransmit_skb, "
                  "syscall tracepoints)",
                  check_httpflow(),
                  check_httpflow_tls(),
                  "dnsflow: not implemented in this version"]


def check_httpflow():
    """One line: does the HTTP capture object load and attach here."""
    try:
        from . import _libbpf
        from .plugins.netflow import bpf_object_path
        with _libbpf.BpfObject(bpf_object_path("http")) as obj:
            obj.load()
            links = obj.attach_all()
            for link in links:
                link.close()
    except (DkebpfError, ImportError) as exc:
        return f"httpflow: no: {str(exc).splitlines()[0]}"
    return (f"httpflow: {len(links)} programs load and attach (syscall tracepoints read/write/"
            "readv/writev/sendto/recvfrom/sendmsg/recvmsg/sendfile64/splice, tp_btf tcp_destroy_sock)")


def check_httpflow_tls():
    """One line: where libssl is, and do the OpenSSL uprobes attach."""
    try:
        from .plugins.tls_probes import check_line
        return check_line()
    except (DkebpfError, ImportError) as exc:
        return f"httpflow-tls: no: {str(exc).splitlines()[0]}"


def check_conntrack():
    have = os.path.exists("/proc/net/nf_conntrack") or os.path.isdir("/sys/module/nf_conntrack")
    reasons = ["not implemented in this version"]
    reasons.append("nf_conntrack is loaded" if have else "nf_conntrack is not loaded (modprobe nf_conntrack)")
    return False, reasons


def run_check(out):
    """Print one block per plugin; returns 0 when ebpf-net can run."""
    results = {}
    for name in PLUGINS:
        if name == "ebpf-net":
            ok, why = check_netflow()
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
