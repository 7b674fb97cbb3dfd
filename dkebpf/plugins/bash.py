"""ebpf-bash: every line an interactive bash executes, as a `bash` log point.

Kernel side: bpf/bash.bpf.c, a uretprobe on readline() in bash, sends one
bash_line record per non-empty line on the `lines` ring (pid, real uid,
time, the first BASH_CAPTURE_MAX bytes, the line's length). A uprobe
belongs to a file (inode), not a process: it is attached once per distinct
bash binary and then fires in every process running it, also those started
later. The binaries are found at start and again at every collect():
/bin/bash and /usr/bin/bash (here and under HOST_ROOT), and the executable
of every running process named bash (/proc/<pid>/exe, which also reaches
binaries in other mount namespaces, e.g. containers).

User side: records are copied from the ring into a numpy array (C), the
lines decoded into an Arrow string column in Cython (dkebpf._bashline);
the user name is resolved once per distinct uid, the message built with
Arrow compute. Points go out each interval, or as soon as
EARLY_FLUSH_LINES lines wait (the agent flushes a plugin whose
on_readable() returns True).
"""
import os
import pwd
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..bpf_objects import BASH, BpfSkeleton
from ..errors import BuildError, KernelError
from .base import Plugin, PointBatch

try:
    from .. import _bashline, _records
except ImportError as exc:  # pragma: no cover - a broken install
    raise BuildError(f"dkebpf's compiled extensions are missing ({exc}); reinstall with pip") from exc

BASH_PATHS = ("/bin/bash", "/usr/bin/bash")
# executable names taken for bash: bash, rbash (Debian's restricted bash is
# a link to it), versioned builds such as bash5.2 or bash-5.1
BASH_NAME = re.compile(r"r?bash(-?[0-9][0-9.]*)?")
READLINE = "readline"
EARLY_FLUSH_LINES = 128   # lines waiting that trigger a flush before the interval ends
USER_CACHE_S = 60.0       # a uid's name is looked up again after this long
BASH_FIELDS = ["pid", "user", "cmd", "message"]


def find_bash_binaries(host_root="", proc="/proc"):
    """{(st_dev, st_ino): path} of the bash binaries in use: the usual paths
    (here and under host_root) and the executables of running processes
    named bash. One entry per file, whatever the number of paths and links
    leading to it. Processes are reached through <proc>/<pid>/exe, which
    opens the very file the process runs, in whatever mount namespace."""
    found = {}
    roots = [""] + ([host_root] if host_root else [])
    for root in roots:
        for path in BASH_PATHS:
            full = root + path
            try:
                st = os.stat(full)
            except OSError:
                continue
            found.setdefault((st.st_dev, st.st_ino), full)
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for pid in entries:
        if not pid.isdigit():
            continue
        exe = f"{proc}/{pid}/exe"
        try:
            target = os.readlink(exe)
        except OSError:  # kernel thread, exited, or not ours to see
            continue
        name = os.path.basename(target.removesuffix(" (deleted)"))
        if not BASH_NAME.fullmatch(name):
            continue
        try:
            st = os.stat(exe)
        except OSError:
            continue
        found.setdefault((st.st_dev, st.st_ino), exe)
    return found


class UserNames:
    """uid -> user name, like the `user` field wants: the name of the real
    uid from the host's passwd database (HOST_ROOT/etc/passwd when the
    collector runs in a container with the host mounted there, else the
    system's, NSS included), the number itself when the uid has no name.
    Names are cached per uid for USER_CACHE_S, so renamed or new users show
    up soon without a lookup per line."""

    def __init__(self, host_root="", clock=time.monotonic):
        self.passwd = os.path.join(host_root, "etc/passwd") if host_root else None
        self.clock = clock
        self._cache = {}       # uid -> (name, looked up at)
        self._file = (None, {})  # (mtime_ns, {uid: name}) of self.passwd

    def _from_file(self):
        try:
            mtime = os.stat(self.passwd).st_mtime_ns
        except OSError:
            return {}
        if self._file[0] != mtime:
            names = {}
            try:
                with open(self.passwd, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        parts = line.rstrip("\n").split(":")
                        if len(parts) >= 3 and parts[2].isdigit():
                            names.setdefault(int(parts[2]), parts[0])
            except OSError:
                return {}
            self._file = (mtime, names)
        return self._file[1]

    def lookup(self, uid):
        uid = int(uid)
        now = self.clock()
        hit = self._cache.get(uid)
        if hit is not None and now - hit[1] < USER_CACHE_S:
            return hit[0]
        if self.passwd is not None:
            name = self._from_file().get(uid)
        else:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = None
        name = name or str(uid)
        self._cache[uid] = (name, now)
        return name

    def names(self, uids):
        """Arrow string column of the names of a uid column (one lookup per distinct uid)."""
        uids = pa.array(uids, pa.uint32())
        distinct = pc.unique(uids)
        names = pa.array([self.lookup(u) for u in distinct.to_pylist()], pa.string())
        return pc.take(names, pc.index_in(uids, value_set=distinct))


def utc_offset_text(seconds):
    """RFC 3339 zone suffix: Z or +hh:mm / -hh:mm."""
    if seconds == 0:
        return "Z"
    sign = "+" if seconds > 0 else "-"
    m = abs(int(seconds)) // 60
    return f"{sign}{m // 60:02d}:{m % 60:02d}"


def rfc3339(wall_ns, gmtoff):
    """Arrow strings '2006-01-02T15:04:05+08:00' of wall-clock ns in the
    zone gmtoff seconds east of UTC (the collector's local zone, as the
    original's time.Now().Format(time.RFC3339))."""
    local = pa.array(np.asarray(wall_ns, np.int64) // 1_000_000_000 + int(gmtoff), pa.int64())
    text = pc.strftime(local.cast(pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%S")
    return pc.binary_join_element_wise(text, pa.scalar(utc_offset_text(gmtoff)), "")


def build_batch(records, user_names, mono_to_wall_ns, gmtoff):
    """bash_line records -> the RecordBatch of `bash` points: pid, user,
    cmd, message (strings, as the spec says) and time (ns, when readline
    returned)."""
    cmd, kept = _bashline.decode_lines(records)
    wall = records["ts"].astype(np.int64) + np.int64(mono_to_wall_ns)
    pid = pc.cast(pa.array(records["pid"]), pa.string())
    user = user_names.names(records["uid"])
    # "<time> pid:`<pid>` user:`<user>` cmd:`<cmd>`", the original's layout;
    # a line longer than the capture says how much of it is shown
    flags = records["flags"]
    truncated = pa.array((flags & _records.BASH_TRUNCATED) != 0)
    at_least = pa.array((flags & _records.BASH_LEN_AT_LEAST) != 0)
    note = pc.binary_join_element_wise(
        " (truncated: first ", pc.cast(pa.array(kept), pa.string()),
        pc.if_else(at_least, pa.scalar(" of at least "), pa.scalar(" of ")),
        pc.cast(pa.array(records["line_len"]), pa.string()), " bytes)", "")
    note = pc.if_else(truncated, note, pa.scalar(""))
    message = pc.binary_join_element_wise(
        rfc3339(wall, gmtoff), " pid:`", pid, "` user:`", user, "` cmd:`", cmd, "`", note, "")
    return pa.RecordBatch.from_arrays([pid, user, cmd, message, pa.array(wall, pa.int64())],
                                      names=BASH_FIELDS + ["time"])


class BashPlugin(Plugin):
    name = "ebpf-bash"

    def __init__(self, ctx):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.log = ctx.logger
        self.bpf = None
        self.ring = None  # bpf.rings.lines once started
        self.links = {}       # (st_dev, st_ino) -> Link
        self.paths = {}       # (st_dev, st_ino) -> path it was attached through
        self.failed = {}      # (st_dev, st_ino) -> why attaching failed (not retried)
        self.users = UserNames(self.cfg.host_root)
        self.started = False
        self.totals = {"lines": 0, "points": 0, "early_flushes": 0, "binaries_attached": 0,
                       "binaries_failed": 0}

    def start(self):
        self.bpf = BpfSkeleton(BASH)
        try:
            self.bpf.start(setup=lambda bpf: self.rescan())
        except BaseException:
            self.stop()
            raise
        self.ring = self.bpf.rings.lines
        if self.failed and not self.links:
            why = "; ".join(self.failed.values())
            self.stop()
            raise KernelError(f"ebpf-bash: the readline uretprobe attaches to no bash binary: {why}")
        if not self.links:  # bash may be installed or started later: rescanned each interval
            self.log.warning("bash: no bash binary found (%s, running processes); looking again "
                             "each interval", ", ".join(BASH_PATHS))
        else:
            self.log.info("bash: readline uretprobe on %s", ", ".join(self.attached()))
        self.started = True

    def rescan(self):
        """Attach to bash binaries not seen before. Cheap: a stat per usual
        path and a readlink per process."""
        for key, path in find_bash_binaries(self.cfg.host_root, self.cfg.host_proc).items():
            if key in self.links or key in self.failed:
                continue
            try:
                self.links[key] = self.bpf.attach_uprobe("bash_readline", path, READLINE, retprobe=True)
            except KernelError as exc:
                self.failed[key] = f"{path}: {str(exc).splitlines()[0]}"
                self.totals["binaries_failed"] += 1
                self.log.warning("bash: cannot probe %s", self.failed[key])
                continue
            self.paths[key] = path
            self.totals["binaries_attached"] += 1
            if self.started:
                self.log.info("bash: readline uretprobe on %s", path)

    def fileobjs(self):
        return [self.ring] if self.bpf else []

    def on_readable(self, fileobj):
        # records are copied into the reader's C buffer; no Python per record
        held = self.ring.poll(0)
        if held >= EARLY_FLUSH_LINES:
            self.totals["early_flushes"] += 1
            return True
        return False

    def collect(self, now_ns):
        self.rescan()
        recs = self.ring.take()
        if len(recs) == 0:
            return []
        mono_to_wall = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        batch = build_batch(recs, self.users, mono_to_wall, time.localtime().tm_gmtoff)
        self.totals["lines"] += len(recs)
        self.totals["points"] += batch.num_rows
        return [PointBatch("bash", "logging", "ebpf-bash", batch, [], BASH_FIELDS,
                           const_tags={"source": "bash"}, timestamp_column="time")]

    def counters(self):
        c = dict(self.totals)
        if self.bpf is not None:
            c.update(self.bpf.counters())
        return c

    def attached(self):
        """Paths of the binaries the uretprobe is on."""
        return sorted(self.paths.values())

    def stop(self):
        if self.bpf is not None:
            self.bpf.close()  # its uprobe links too
            self.bpf = None
        self.links, self.paths = {}, {}
