"""pid -> container id (and pod UID) from ``<HOST_PROC>/<pid>/cgroup``.

Every process of a container lives in the container's cgroup, so this
resolves workers and children too, not only the init process the runtime
reports (the original's CRI lookup). Path shapes, last component of the
cgroup path (v2: the ``0::`` line; v1: any hierarchy line):

  containerd, systemd driver   .../kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
  containerd/Docker, cgroupfs  /kubepods/burstable/pod<uid>/<id>
  CRI-O                        .../crio-<id>.scope   (crio-conmon-<id>.scope is its monitor, not the container)
  Docker, systemd driver       /system.slice/docker-<id>.scope, .../docker-<id>.scope
  Docker, cgroupfs             /docker/<id>
  Podman                       .../libpod-<id>.scope

<id> is the 64-hex container id that ``status.containerStatuses[].
containerID`` carries after its ``<runtime>://`` scheme.

A process may be gone by the time its connections are reported (curl in a
container); the kernel's process-events connector (``ProcessEvents``)
tells of every fork and exec as it happens, and the cgroup is read then."""
import os
import re
import socket
import struct
import threading

_CONTAINER = re.compile(r"^(?:(?:cri-containerd|crio|docker|libpod)-)?([0-9a-f]{64})(?:\.scope)?$")
# kubelet names the pod's cgroup pod<uid> (cgroupfs) or ...-pod<uid with _ for ->.slice (systemd)
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$")


def parse_cgroup(text):
    """(container id or None, pod UID or None) from the text of a
    /proc/<pid>/cgroup file. The v2 line wins; on v1 the first line that
    names a container (every controller shows the same path for a
    container's processes)."""
    lines = text.splitlines()
    # v2's "0::/path" first: on hybrid hosts it is the one systemd keeps current
    lines.sort(key=lambda l: not l.startswith("0::"))
    for line in lines:
        path = line.split(":", 2)[-1]
        parts = path.rstrip("/").split("/")
        cid = uid = None
        for part in reversed(parts):
            m = _CONTAINER.match(part)
            if m and cid is None:
                cid = m.group(1)
                continue
            m = _POD.search(part)
            if m:
                uid = m.group(1).replace("_", "-")
                break
        if cid or uid:
            return cid, uid
    return None, None


class CgroupResolver:
    """pid -> (container id, pod UID), re-read at every lookup so a pid
    reused by another process is seen; a pid that has exited keeps its last
    container answer (its connections are reported after it is gone), in a
    cache bounded to ``max_pids``. Called from the collect path and from
    the ProcessEvents thread."""

    def __init__(self, host_proc="/proc", max_pids=65536):
        self.proc = host_proc
        self.max_pids = max_pids
        self.cache = {}
        self.lock = threading.Lock()

    def lookup(self, pid):
        pid = int(pid)
        try:
            with open(f"{self.proc}/{pid}/cgroup") as f:
                found = parse_cgroup(f.read())
        except (OSError, ValueError):
            with self.lock:
                return self.cache.get(pid, (None, None))
        with self.lock:
            if found == (None, None):  # not in a container: nothing worth keeping
                self.cache.pop(pid, None)
            else:
                if pid not in self.cache and len(self.cache) >= self.max_pids:
                    self.cache.pop(next(iter(self.cache)))  # the oldest
                self.cache[pid] = found
        return found


# linux/netlink.h, connector.h, cn_proc.h
NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXEC = 2
_NLMSG = struct.Struct("=IHHII")        # nlmsghdr
_CN_MSG = struct.Struct("=IIIIHH")      # cn_msg: id.idx, id.val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")          # proc_event: what, cpu, timestamp_ns; event_data follows
_EXEC = struct.Struct("=II")            # process_pid, process_tgid
_UNION = 24                             # sizeof(event_data), the largest member's


def open_process_events():
    """A netlink socket subscribed to the kernel's process events (the
    ``cn_proc`` connector); OSError when the kernel or our privileges do
    not allow it (CONFIG_PROC_EVENTS, CAP_NET_ADMIN)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    try:
        s.bind((os.getpid(), CN_IDX_PROC))
        op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
        s.send(_NLMSG.pack(_NLMSG.size + len(cn), 3, 0, 0, os.getpid()) + cn)  # type NLMSG_DONE
    except OSError:
        s.close()
        raise
    return s


class ProcessEvents:
    """Reads the cgroup of every process as it execs, from the kernel's
    process-events connector (needs CAP_NET_ADMIN and the host's pid
    namespace, as a DaemonSet with hostPID has), so that short-lived
    processes are known when their connections are reported. Forks are not
    followed: a child that never execs is mostly a long-lived worker, which
    the read at collect time finds (and each event costs ~100 us of CPU,
    perf/bench_k8s_store.py)."""

    def __init__(self, resolver, logger):
        self.resolver = resolver
        self.log = logger
        self.sock = None
        self.events = 0

    def start(self):
        try:
            s = open_process_events()
        except OSError as exc:
            self.log.warning("kubernetes: process events unavailable (%s): a process that exits before its "
                             "connections are reported is matched to its pod by IP only", exc.strerror)
            return False
        self.sock = s
        threading.Thread(target=self._run, name="k8s-proc-events", daemon=True).start()
        return True

    def stop(self):
        if self.sock is not None:
            self.sock.close()  # ends the thread's recv
            self.sock = None

    def _run(self):
        sock = self.sock
        while True:
            try:
                data = sock.recv(65536)
            except OSError:  # closed by stop(), or ENOBUFS after a burst: collect-time reads remain
                if self.sock is None:
                    return
                continue
            off = 0
            while off + _NLMSG.size <= len(data):
                length = _NLMSG.unpack_from(data, off)[0]
                if length < _NLMSG.size:
                    break
                ev = off + _NLMSG.size + _CN_MSG.size
                if ev + _EVENT.size + _UNION <= off + length and \
                        _EVENT.unpack_from(data, ev)[0] == PROC_EVENT_EXEC:
                    pid, tgid = _EXEC.unpack_from(data, ev + _EVENT.size)
                    if pid == tgid:  # a thread's exec replaces its whole process
                        self.events += 1
                        self.resolver.lookup(pid)
                off += (length + 3) & ~3
