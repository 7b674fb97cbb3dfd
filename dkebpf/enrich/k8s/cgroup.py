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
containerID`` carries after its ``<runtime>://`` scheme."""
import re

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
    answer (its connections are reported after it is gone), in a cache
    bounded to ``max_pids``."""

    def __init__(self, host_proc="/proc", max_pids=65536):
        self.proc = host_proc
        self.max_pids = max_pids
        self.cache = {}

    def lookup(self, pid):
        try:
            with open(f"{self.proc}/{int(pid)}/cgroup") as f:
                found = parse_cgroup(f.read())
        except (OSError, ValueError):
            return self.cache.get(pid, (None, None))
        if pid not in self.cache and len(self.cache) >= self.max_pids:
            self.cache.pop(next(iter(self.cache)))  # the oldest
        self.cache[pid] = found
        return found
