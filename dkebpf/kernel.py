"""What the collector needs from the running kernel, prepared from code:
the tracefs/debugfs/bpffs mounts, the memlock limit, and facts read from
/proc and /sys (BTF, ip_local_port_range, tracepoints)."""
import ctypes
import ctypes.util
import errno
import os
import resource

from .errors import kernel_error

TRACEFS = "/sys/kernel/tracing"
DEBUGFS = "/sys/kernel/debug"
BPFFS = "/sys/fs/bpf"
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"

# (mount point, filesystem type): libbpf looks for tracepoint ids under
# tracefs (falling back to debugfs/tracing); bpffs is where maps get pinned.
MOUNTS = ((TRACEFS, "tracefs"), (DEBUGFS, "debugfs"), (BPFFS, "bpf"))

_libc = None


def _mount(source, target, fstype):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        if err != errno.EBUSY:  # already mounted there
            raise kernel_error(f"mount {fstype} on {target}", err)


def mounted_types():
    """{mount point: fs type} from /proc/self/mounts."""
    out = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out[parts[1]] = parts[2]
    return out


def ensure_mounts():
    """Mount tracefs, debugfs and bpffs where they are missing (needs root).
    Returns the list of file systems mounted by this call."""
    have = mounted_types()
    done = []
    for target, fstype in MOUNTS:
        if have.get(target) == fstype:
            continue
        if not os.path.isdir(target):
            continue  # e.g. no /sys/kernel/debug in a container without it
        _mount(fstype, target, fstype)
        done.append(target)
    return done


# where the collector mounts cgroup v2 when the host has not (a private
# mount point: the host's /sys/fs/cgroup layout is left as it is)
CGROUP2_MOUNT = "/run/dkebpf/cgroup2"


def cgroup2_root(mountinfo="/proc/self/mountinfo"):
    """A mount of the whole cgroup v2 hierarchy (as this cgroup namespace
    sees it), where cgroup programs attach to reach every task: from
    /proc/self/mountinfo (a mount of the hierarchy's root, not a bind mount
    of a subtree as containers have; /sys/fs/cgroup on unified hosts,
    /sys/fs/cgroup/unified on hybrid ones), else mounted at CGROUP2_MOUNT
    (needs root)."""
    found = []
    with open(mountinfo) as f:
        for line in f:
            # id parent major:minor root mountpoint options... - fstype source superoptions
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            if len(parts) >= 5 and rparts and rparts[0] == "cgroup2" and parts[3] == "/":
                found.append(parts[4].replace("\\040", " "))
    if found:
        return min(found, key=len)
    os.makedirs(CGROUP2_MOUNT, exist_ok=True)
    _mount("cgroup2", CGROUP2_MOUNT, "cgroup2")
    return CGROUP2_MOUNT


def raise_memlock():
    """Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass


def local_port_range(proc="/proc"):
    """(low, high) of net.ipv4.ip_local_port_range: ports the kernel hands
    out to clients."""
    try:
        with open(os.path.join(proc, "sys/net/ipv4/ip_local_port_range")) as f:
            lo, hi = f.read().split()[:2]
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # the kernel's default


def tracepoint_exists(category, name):
    for root in (TRACEFS, os.path.join(DEBUGFS, "tracing")):
        if os.path.exists(os.path.join(root, "events", category, name, "id")):
            return True
    return False


def btf_available():
    return os.path.exists(BTF_VMLINUX)


def is_root():
    return os.geteuid() == 0


def read_socket_table(path):
    """Rows of /proc/net/{tcp,tcp6,udp,udp6}: (local port, remote address
    hex, remote port, state)."""
    rows = []
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) < 4:
                    continue
                laddr, raddr, st = parts[1], parts[2], parts[3]
                lport = int(laddr.rsplit(":", 1)[1], 16)
                rhex, rport = raddr.rsplit(":", 1)
                rows.append((lport, rhex, int(rport, 16), int(st, 16)))
    except OSError:
        pass
    return rows
