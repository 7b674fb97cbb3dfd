"""ebpf-trace for Go programs: goroutine ids (`tid_usr`) and in-process
parentage by goroutine instead of thread (a goroutine moves between
threads, a thread runs many goroutines).

Kernel side: bpf/trace_go.bpf.c, uprobes on runtime.execute (goroutine
switches), runtime.newproc1 + runtime.runqput (who created a goroutine)
and net/http.(*persistConn).roundTrip / writeLoop (which caller a request
written by the client transport's writeLoop goroutine belongs to), events
on their own ring. User side: ext/goroutines.pyx.

Go binaries are found among the traced processes by their build info
(.go.buildinfo: the Go version) and probed at the file offsets of their
.symtab symbols (dkebpf/elf.py, no ELF library), or in stripped binaries
(`-ldflags=-s -w`, `strip`) at the entries of Go's own function table
(.gopclntab, dkebpf/gopclntab.py). A uprobe
belongs to a file, so each binary is probed once however many processes
run it; the programs act only for processes in `go_procs`, with the
goid offset of their Go version.

Go versions: 1.18 to 1.25 on amd64 (register ABI: arguments in RAX, RBX,
..., the running g in R14; newproc1's creator in its second argument
since 1.18); goid at 152 in runtime.g except 160 in 1.23 and 1.24
(`syscallbp` added before it, gobuf's `ret` removed in 1.25). Tested with
Debian 12's Go (1.19). Other versions, binaries with neither .symtab nor
a readable .gopclntab and Go binaries of other architectures are
reported once and traced by thread.
"""
import mmap
import os
import re
import struct

import numpy as np
import pyarrow as pa

from .. import elf, gopclntab
from ..bpf_objects import TRACE_GO, BpfSkeleton
from ..errors import KernelError

try:
    from .. import _goroutines
except ImportError as exc:  # pragma: no cover - a broken install
    from ..errors import BuildError
    raise BuildError(f"dkebpf's compiled extensions are missing ({exc}); reinstall with pip") from exc

BUILDINFO_MAGIC = b"\xff Go buildinf:"
# goid's offset in runtime.g (amd64), by Go 1.<minor> (see the module doc)
GOID_OFFSETS = {18: 152, 19: 152, 20: 152, 21: 152, 22: 152, 23: 160, 24: 160, 25: 152}
EXECUTE = ("runtime.execute", "go_execute")
NEWPROC = (("runtime.newproc1", "go_newproc1"), ("runtime.runqput", "go_runqput"))
HTTP_CLIENT = (("net/http.(*persistConn).roundTrip", "go_roundtrip"),
               ("net/http.(*persistConn).writeLoop", "go_writeloop"))
FUNCS = (EXECUTE,) + NEWPROC + HTTP_CLIENT
# Where the hot probes go. A uprobe on a Go function's first instruction
# (`cmp 0x10(%r14),%rsp`) is single-stepped: two traps, ~10 us each on a
# KVM guest; on a `call` it is emulated: one (see tls_probes.py). So
# execute's probe sits on its call of casgstatus(gp, ...) (gp still in
# RAX), and the creation probes on the calls of newproc1(fn, callergp, pc)
# and runqput(pp, newg, next) in newproc's system-stack closure (the same
# registers as at those functions' entries; runqput's own entry would also
# fire on every wakeup). Entries are the fallback when the calls are not
# found.
CALL_SITES = {"go_execute": ("runtime.execute", "runtime.casgstatus"),
              "go_newproc1": ("runtime.newproc.func1", "runtime.newproc1"),
              "go_runqput": ("runtime.newproc.func1", "runtime.runqput")}
# switches kept this long (and each thread's latest): a request start is
# looked up in the step it is read, within an interval (10 s) of its time
HORIZON_NS = 30_000_000_000
EM_X86_64 = 62


class NotProbed(Exception):
    """A Go binary the probes cannot serve (the reason is the message)."""


def _uvarint(data, pos):
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def go_version(data):
    """The Go version a binary was built with ("go1.19.8"), from its
    .go.buildinfo, or None for anything that is not a Go binary."""
    sec = elf.section(data, ".go.buildinfo")
    if sec is None:
        return None
    off = sec[1]
    if bytes(data[off:off + 14]) != BUILDINFO_MAGIC:
        return None
    ptr_size, flags = data[off + 14], data[off + 15]
    if flags & 2:  # Go >= 1.18: the strings follow the header, length-prefixed
        n, pos = _uvarint(data, off + 32)
        raw = bytes(data[pos:pos + n])
    else:  # older: pointers to Go string headers
        if ptr_size != 8 or flags & 1:
            return None
        loads = elf.load_segments(data)
        (hdr,) = struct.unpack_from("<Q", data, off + 16)
        hoff = elf.file_offset(loads, hdr)
        if hoff is None:
            return None
        sptr, slen = struct.unpack_from("<QQ", data, hoff)
        soff = elf.file_offset(loads, sptr)
        if soff is None:
            return None
        raw = bytes(data[soff:soff + slen])
    return raw.decode("ascii", "replace") or None


def minor_of(version):
    """1.<minor> of "go1.19.8" / "go1.21rc2" / "go1.22.1 X:..."; None else."""
    m = re.match(r"go1\.(\d+)", version or "")
    return int(m.group(1)) if m else None


def inspect(path):
    """What to probe in a binary: None for anything but a Go program; for
    one, {"version", "goid_off", "offsets": {program: file offset}};
    NotProbed for a Go program the probes cannot serve."""
    with open(path, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            return None
    try:
        try:
            version = go_version(data)
        except (struct.error, ValueError, IndexError):
            return None
        if version is None:
            return None
        (machine,) = struct.unpack_from("<H", data, 0x12)
        if machine != EM_X86_64:
            raise NotProbed(f"{version} binary for another architecture (e_machine {machine})")
        minor = minor_of(version)
        if minor not in GOID_OFFSETS:
            raise NotProbed(f"{version}: goroutine probes know Go 1.{min(GOID_OFFSETS)} to 1.{max(GOID_OFFSETS)}")
        names = {name for name, _ in FUNCS} | {n for pair in CALL_SITES.values() for n in pair}
        try:
            syms, loads = elf.symbols(data, elf.SHT_SYMTAB, wanted=names)
        except (struct.error, ValueError, IndexError) as exc:
            raise NotProbed(f"{version}: unreadable symbol table ({exc})")
        if EXECUTE[0] not in syms:  # stripped: Go's own function table
            try:
                syms = gopclntab.functions(data, names)
            except (struct.error, ValueError, IndexError) as exc:
                raise NotProbed(f"{version}: no .symtab and an unreadable .gopclntab ({exc})")
        offsets, sites = {}, {}
        for name, prog in FUNCS:
            if name not in syms:
                continue
            vaddr = syms[name][0]
            caller, callee = CALL_SITES.get(prog, (None, None))
            if caller in syms and callee in syms:
                calls = elf.call_sites(data, loads, syms[caller][0], syms[caller][1], syms[callee][0])
                if len(calls) == 1:
                    vaddr = calls[0]
                    sites[prog] = f"{caller} calling {callee}"
            off = elf.file_offset(loads, vaddr)
            if off is not None:
                offsets[prog] = off
        if EXECUTE[1] not in offsets:
            raise NotProbed(f"{version}: no runtime.execute in .symtab or .gopclntab")
        for group in (NEWPROC, HTTP_CLIENT):  # both of a pair, or neither
            if not all(prog in offsets for _, prog in group):
                for _, prog in group:
                    offsets.pop(prog, None)
        return {"version": version, "goid_off": GOID_OFFSETS[minor], "offsets": offsets, "sites": sites}
    finally:
        data.close()


class GoTracing:
    """The Go side of ebpf-trace: probes on the traced Go processes'
    binaries (``update`` with the traced pids at each rescan), their
    events into a GoroutineLinker, ``link`` and ``tid_usr`` for the span
    builder."""

    def __init__(self, logger, host_proc="/proc"):
        self.log = logger
        self.proc = host_proc
        self.bpf = None
        self.ring = None
        self.linker = _goroutines.GoroutineLinker(HORIZON_NS)
        self.binaries = {}  # (dev, ino) -> inspect() result, None (not Go) or the NotProbed reason (str)
        self.links = {}     # (dev, ino) -> [links]
        self.pids = {}      # pid -> (dev, ino) of its Go binary, in go_procs
        self.go_pids = np.zeros(0, np.uint32)
        self.totals = {"go_binaries_probed": 0, "go_binaries_not_probed": 0, "go_attach_failures": 0}

    def start(self):
        self.bpf = BpfSkeleton(TRACE_GO).start()
        self.ring = self.bpf.rings.go_events

    def fileobjs(self):
        return [self.ring] if self.ring is not None else []

    def poll(self):
        """Events waiting in the ring into the linker (also when the ring
        wakes the collector: it holds ~100k events, a second or two of a
        busy Go server's goroutine switches)."""
        if self.ring is not None:
            self.ring.poll(0)
            self.ring.consume()
            self.linker.add_events(self.ring.take())

    def _binary(self, pid):
        """(file id, inspect result) of a process's executable."""
        exe = f"{self.proc}/{pid}/exe"
        try:
            st = os.stat(exe)
        except OSError:  # gone, or a kernel thread
            return None, None
        fid = (st.st_dev, st.st_ino)
        if fid not in self.binaries:
            try:
                info = inspect(exe)
            except NotProbed as exc:
                info = str(exc)
                self.totals["go_binaries_not_probed"] += 1
                self.log.warning("ebpf-trace: Go program %s (pid %d) traced by thread: %s", _name(exe), pid, exc)
            except OSError:
                return None, None
            self.binaries[fid] = info
            if isinstance(info, dict):
                self._attach(fid, exe, info, pid)
        return fid, self.binaries[fid]

    def _attach(self, fid, exe, info, pid):
        # the path as this process names it when it is the same file here
        # (it outlives the process), else through /proc
        path = exe
        try:
            real = os.readlink(exe)
            st = os.stat(real)
            if (st.st_dev, st.st_ino) == fid:
                path = real
        except OSError:
            pass
        links = []
        try:
            for prog, off in info["offsets"].items():
                links.append(self.bpf.attach_uprobe(prog, path, "", offset=off))
        except KernelError as exc:
            for link in links:
                link.close()
            self.binaries[fid] = f"cannot probe: {str(exc).splitlines()[0]}"
            self.totals["go_attach_failures"] += 1
            self.log.warning("ebpf-trace: cannot probe Go program %s: %s", path, str(exc).splitlines()[0])
            return
        self.links[fid] = links
        self.totals["go_binaries_probed"] += 1
        self.log.info("ebpf-trace: %s (%s, pid %d): goroutine probes on %s", path, info["version"], pid,
                      ", ".join(info["sites"].get(p, n) for n, p in FUNCS if p in info["offsets"]))

    def update(self, pids):
        """The traced processes now: their Go ones into go_procs (with
        their goid offset), the others and gone ones out."""
        if self.bpf is None:
            return
        m = self.bpf.maps.go_procs
        now = {}
        for pid in pids:
            fid, info = self._binary(pid)
            if isinstance(info, dict):
                now[pid] = fid
                if self.pids.get(pid) != fid:
                    m.update(np.uint32(pid).tobytes(), np.array([info["goid_off"], 0], np.uint32).tobytes())
        for pid in set(self.pids) - set(now):
            m.delete(np.uint32(pid).tobytes())
        self.pids = now
        self.go_pids = np.array(sorted(now), np.uint32)

    def link(self, msgs, idx):
        """Goroutines of the request message starts msgs[idx] (new ones,
        their thread_trace_id just given by thread): outgoing requests of
        Go processes get the id of the request their goroutine works for."""
        self.poll()
        if len(idx) and len(self.go_pids):
            # events up to the newest message are applied now; later ones
            # wait for messages that may not have been read yet
            self.linker.link(msgs, idx, self.go_pids, int(msgs["ts"][idx].max()) + 1)

    def forget(self, now_mono_ns):
        self.linker.forget(now_mono_ns)

    def tid_usr(self, msgs, idx):
        """pyarrow int64: the goroutine id of each request start, null
        where none (not a Go process, or not known)."""
        g = self.linker.tid_usr(msgs, idx).astype(np.int64)
        return pa.array(g, pa.int64(), mask=g == 0)

    def counters(self):
        c = dict(self.totals)
        c.update({f"go_{k}": v for k, v in self.linker.stats.items()})
        c["go_processes"] = len(self.pids)
        if self.bpf is not None:
            c.update(self.bpf.counters())
        return c

    def memory(self):
        m = self.linker.memory()
        if self.bpf is not None:
            m.update(self.bpf.memory())
        return m

    def stop(self):
        if self.bpf is not None:
            self.bpf.close()
            self.bpf = None
            self.ring = None
        self.links = {}


def _name(exe):
    try:
        return os.readlink(exe)
    except OSError:
        return exe
