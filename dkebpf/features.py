"""Named kernel feature probes, shared by ``dkebpf check`` and the tests.

Each probe says whether the running host has one thing a plugin needs, and
carries the first kernel that has it, so that a missing feature on a kernel
at least that new reads as what it is -- a kernel built without it, a module
not loaded, or a broken probe -- rather than an old kernel (cilium's feature
tests work the same way). The tests mark what they need with
``@pytest.mark.requires("name", ...)`` (tests/conftest.py): missing -> skip,
missing under ``DKEBPF_REQUIRE_BPF=1`` or on a kernel at or above the
minimum -> fail.

A probe returns None when the feature is there, else one line saying what is
missing. Probes are cheap (file and BTF reads, one socket) and cached per
process.
"""
import os
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Tuple

from . import kernel
from .errors import DkebpfError

__all__ = ["Feature", "FEATURES", "feature", "missing", "kernel_version", "btf_names"]


@dataclass(frozen=True)
class Feature:
    name: str
    what: str                              # one line for `dkebpf check` and skip reasons
    min_kernel: Optional[Tuple[int, int]]  # first kernel with it; None: not a kernel feature
    probe: Callable[[], Optional[str]]


def kernel_version(release=None):
    """(major, minor) of ``uname -r`` (``6.18.0-1-amd64`` -> (6, 18))."""
    release = release or os.uname().release
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1].split("-")[0] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


@lru_cache(maxsize=None)
def btf_names(path=kernel.BTF_VMLINUX):
    """The string section of the kernel's BTF: every type, member, enum value
    and function name the kernel was built with. The kernel describes itself
    here: a kfunc (``bpf_rdonly_cast``) or a map type
    (``BPF_MAP_TYPE_TASK_STORAGE`` in ``enum bpf_map_type``) it knows has
    its name in it."""
    with open(path, "rb") as f:
        data = f.read()
    # struct btf_header: magic u16, version u8, flags u8, hdr_len u32,
    # type_off, type_len, str_off, str_len u32 (include/uapi/linux/btf.h)
    magic, _ver, _flags, hdr_len, _toff, _tlen, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        raise ValueError(f"{path}: not BTF (magic {magic:#x})")
    start = hdr_len + str_off
    return frozenset(data[start:start + str_len].split(b"\0"))


def _btf():
    if not kernel.btf_available():
        return f"no kernel BTF ({kernel.BTF_VMLINUX}): CO-RE programs cannot be relocated"
    return None


def _btf_has(name, what):
    def probe():
        if _btf() is not None:
            return _btf()
        if name.encode() not in btf_names():
            return f"the kernel's BTF has no {name}: {what}"
        return None
    return probe


def _tracepoints(*names):
    def probe():
        try:
            kernel.ensure_mounts()
        except (OSError, DkebpfError) as exc:  # not root: tracefs cannot be mounted
            return f"tracefs not available: {exc}"
        if os.path.isdir(kernel.TRACEFS) and not os.access(kernel.TRACEFS, os.R_OK | os.X_OK):
            return f"cannot read the tracepoints in {kernel.TRACEFS} (needs root)"
        absent = [n for n in names if not kernel.tracepoint_exists(*n.split(":"))]
        if absent:
            return "no tracepoint " + ", ".join(absent)
        return None
    return probe


def _packet_socket():
    # TPACKET_V3 (the block ring dnsflow reads) is set per socket; asking for
    # it proves both AF_PACKET and the ring version
    packet_version, tpacket_v3, sol_packet = 10, 2, 263  # linux/if_packet.h
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
            s.setsockopt(sol_packet, packet_version, tpacket_v3)
    except OSError as exc:
        return f"cannot open an AF_PACKET socket with a TPACKET_V3 ring: {exc.strerror or exc}"
    return None


def _vxlan():
    """The vxlan driver loaded, built in, or there to be loaded (creating a
    device loads it): bpf-netlog's VXLAN tests need VXLAN devices."""
    if os.path.isdir("/sys/module/vxlan"):
        return None
    base = f"/lib/modules/{os.uname().release}"
    for index in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(base, index)) as f:
                if any("/vxlan.ko" in line for line in f):
                    return None
        except OSError:
            continue
    return f"no vxlan driver (not in /sys/module, {base}/modules.builtin or modules.dep)"


def _ctnetlink_events():
    from .plugins.conntrack import conntrack_status
    present, events = conntrack_status()
    if not present:
        return ("nf_conntrack is not available (no /proc/sys/net/netfilter/nf_conntrack_max): "
                "modprobe nf_conntrack")
    if not events:
        return "nf_conntrack sends no events (net.netfilter.nf_conntrack_events = 0): set it to 2"
    return None


def _proc_events():
    from .enrich.k8s.cgroup import open_process_events
    try:
        open_process_events().close()
    except OSError as exc:
        return f"cannot subscribe to process events (netlink connector): {exc.strerror or exc}"
    return None


def _cgroup2():
    if not any(t == "cgroup2" for t in kernel.mounted_types().values()):
        return "no cgroup v2 hierarchy mounted (/proc/self/mounts)"
    return None


def _libssl():
    from .plugins.tls_probes import libssl_in_dirs
    root = os.environ.get("HOST_ROOT", "").rstrip("/") or "/"
    if not libssl_in_dirs(root):
        return f"no OpenSSL libssl.so.N in the library directories under {root}"
    return None


FEATURES = {f.name: f for f in (
    Feature("btf", "kernel BTF (/sys/kernel/btf/vmlinux), for CO-RE", (5, 4), _btf),
    Feature("sock_length_tracepoints", "tracepoints sock:sock_send_length and sock:sock_recv_length",
            (6, 3), _tracepoints("sock:sock_send_length", "sock:sock_recv_length")),
    Feature("rdonly_cast", "the bpf_rdonly_cast kfunc (typed loads through a kernel pointer)",
            (6, 2), _btf_has("bpf_rdonly_cast", "kfunc added in 6.2")),
    Feature("packet_socket", "AF_PACKET sockets with TPACKET_V3 rings (root or CAP_NET_RAW)",
            (3, 2), _packet_socket),
    Feature("vxlan", "VXLAN network devices (the vxlan driver)", (3, 7), _vxlan),
    Feature("ctnetlink_events", "conntrack netlink events (nf_conntrack loaded, events on)",
            (2, 6), _ctnetlink_events),
    Feature("proc_events", "process events from the netlink connector (CONFIG_PROC_EVENTS, CAP_NET_ADMIN), "
            "so Kubernetes tags find short-lived processes", (2, 6), _proc_events),
    Feature("cgroup2", "a cgroup v2 hierarchy (on hybrid hosts /sys/fs/cgroup/unified)", (4, 5), _cgroup2),
    Feature("libssl", "OpenSSL's libssl.so.N on the host (a library, not a kernel feature)",
            None, _libssl),
)}


def feature(name):
    """The Feature called ``name``; a LookupError names the known ones."""
    try:
        return FEATURES[name]
    except KeyError:
        raise LookupError(f"no feature probe {name!r} (known: {', '.join(FEATURES)})") from None


@lru_cache(maxsize=None)
def missing(name):
    """None when the host has feature ``name``, else why not (one line)."""
    return feature(name).probe()
