"""httpflow-tls: OpenSSL uprobes that hand the plaintext of TLS connections
to httpflow as struct http_exchange records (source HTTP_SRC_SSL), paired
in the kernel.

Kernel side: bpf/tls.bpf.c. A uprobe belongs to a file (the kernel keys it
by inode), not to a process: attached with pid -1 it fires in every process
that maps that file, including processes started later. So the probes are
attached once per distinct libssl file (device + inode), found

  * at start in the host's library directories (the distribution's
    libssl, used by most processes, covered before they start), and
  * in /proc/<pid>/maps of running processes, now and at every rescan:
    containers and bundled copies are other files. A process in another
    mount namespace is reached through /proc/<pid>/root/<path>.

OpenSSL's libssl is libssl.so.<N> (libssl.so.3, libssl.so.1.1); NSS's
libssl3.so is another library and is left alone. Statically linked OpenSSL
(no libssl in the maps) is not found.
"""
import os
import re
import struct
import time

from .. import elf
from ..bpf_objects import TLS, TLS_RING_BYTES, BpfSkeleton
from ..errors import KernelError

# OpenSSL's soname: libssl.so.3, libssl.so.1.1 (not libssl3.so, NSS)
LIBSSL_NAME = re.compile(r"^libssl\.so\.\d+(\.\d+)*$")
# (function, entry program of bpf_objects.TLS); every function's return goes to ssl_leave.
# SSL_do_handshake (SSL_connect/SSL_accept call it) is probed only so that
# the socket of an SSL object is known before its first read.
REQUIRED_FUNCS = (("SSL_read", "ssl_read_enter"), ("SSL_write", "ssl_write_enter"))
HANDSHAKE_FUNCS = (("SSL_do_handshake", "ssl_handshake_enter"),)
OPTIONAL_FUNCS = (("SSL_read_ex", "ssl_read_ex_enter"),      # OpenSSL >= 1.1.1
                  ("SSL_write_ex", "ssl_write_ex_enter")) + HANDSHAKE_FUNCS
RETURN_PROG = "ssl_leave"
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64",
                "/usr/lib", "/lib", "/usr/local/lib64", "/usr/local/lib")
RESCAN_S = 10.0         # how often /proc is scanned for new libssl files
WAKEUP_BYTES = TLS_RING_BYTES // 32  # the reader is woken per 1 MiB of records, not per record


# --- where to put the probes -------------------------------------------------
#
# A uprobe traps twice when the kernel must single-step the probed
# instruction out of line, once when it can emulate it (push, call, jmp,
# nop: arch/x86/kernel/uprobes.c). The exported SSL_read/SSL_write start with
# `sub $n,%rsp` (single-stepped); on a KVM guest each trap is microseconds
# (perf/bench_tls_uprobe.py: 10.5 us vs 1.2 us per entry probe). In OpenSSL
# 1.1.1 and 3.x SSL_read, SSL_read_ex (and SSL_write, SSL_write_ex) are thin
# wrappers around ssl_read_internal(s, buf, num, size_t *readbytes) (and
# ssl_write_internal), which begin with `push`: probing those covers both
# wrappers with the _ex semantics at a third of the cost. They are local
# symbols, found by decoding SSL_read_ex = `sub $n,%rsp; call <internal>`,
# and used only when SSL_read/SSL_write call the same function (not inlined
# there) and it starts with a push; otherwise the exported functions are
# probed.

def _elf_dynsyms(data):
    """{name: (vaddr, size)} of the dynamic symbols, and the PT_LOAD
    segments [(vaddr, offset, filesz)], of a little-endian ELF64 image."""
    return elf.symbols(data, elf.SHT_DYNSYM)


_file_offset = elf.file_offset


def _starts_with_push(code):
    """push %reg (50+r) or push %r8-%r15 (41 50+r): emulated by x86 uprobes."""
    return (0x50 <= code[0] <= 0x57) or (code[0] == 0x41 and 0x50 <= code[1] <= 0x57)


def internal_entries(path):
    """File offsets {"read": off, "write": off} of ssl_read_internal and
    ssl_write_internal in a libssl file, or {} when its code does not have
    the expected shape (then the exported functions are probed)."""
    try:
        with open(path, "rb") as f:
            return _internal_entries(f.read())
    except (OSError, struct.error, ValueError, IndexError, OverflowError):
        return {}  # unreadable or malformed: the exported functions are probed


def _internal_entries(data):
    syms, loads = _elf_dynsyms(data)
    out = {}
    for kind, wrapper_ex, wrapper in (("read", "SSL_read_ex", "SSL_read"), ("write", "SSL_write_ex", "SSL_write")):
        if wrapper_ex not in syms or wrapper not in syms:
            return {}
        va = syms[wrapper_ex][0]
        off = _file_offset(loads, va)
        if off is None:
            return {}
        code = data[off:off + 9]
        # 48 83 ec XX = sub $XX,%rsp; e8 rel32 = call
        if len(code) < 9 or code[:3] != b"\x48\x83\xec" or code[4] != 0xE8:
            return {}
        target = va + 9 + struct.unpack_from("<i", code, 5)[0]
        t_off = _file_offset(loads, target)
        if t_off is None or not _starts_with_push(data[t_off:t_off + 2]):
            return {}
        # the plain wrapper must call the same function (not an inlined copy)
        wv, wsize = syms[wrapper]
        if not elf.call_sites(data, loads, wv, max(wsize, 16), target):
            return {}
        out[kind] = t_off
    return out


def libssl_in_maps(maps_text):
    """Paths of OpenSSL libssl files in the text of a /proc/<pid>/maps."""
    out = set()
    for line in maps_text.splitlines():
        if "libssl.so." not in line:
            continue
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5]
        if path.endswith(" (deleted)"):
            continue  # replaced on disk: the running copy has no path left to attach to
        if path.startswith("/") and LIBSSL_NAME.match(os.path.basename(path)):
            out.add(path)
    return out


def libssl_in_dirs(root):
    """libssl files in the usual library directories under root."""
    out = []
    for d in LIBRARY_DIRS:
        full = os.path.join(root, d.lstrip("/"))
        try:
            names = os.listdir(full)
        except OSError:
            continue
        out.extend(os.path.join(full, n) for n in sorted(names) if LIBSSL_NAME.match(n))
    return out


def file_id(path):
    """(device, inode) of the file a path names (links followed), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class LibsslScanner:
    """Finds libssl files: ``scan()`` returns {(dev, ino): path usable from
    here}. Reading every /proc/<pid>/maps costs about a millisecond per 10
    processes (measured in tests/kernel/test_tls_bpf.py's scan test)."""

    def __init__(self, host_proc="/proc", host_root=""):
        self.proc = host_proc
        # the host's file system: host_root when the collector runs in a
        # container with the host mounted there (as for host_proc), else ours
        self.root = host_root or "/"
        self.self_pid = os.getpid()
        self.pids_scanned = 0

    def scan_dirs(self):
        found = {}
        for path in libssl_in_dirs(self.root):
            fid = file_id(path)
            if fid is not None:
                found.setdefault(fid, path)
        return found

    def scan_procs(self):
        found = {}
        try:
            pids = [p for p in os.listdir(self.proc) if p.isdigit()]
        except OSError:
            return found
        for pid in pids:
            try:
                with open(os.path.join(self.proc, pid, "maps")) as f:
                    paths = libssl_in_maps(f.read())
            except OSError:  # exited, or a kernel thread
                continue
            self.pids_scanned += 1
            for path in paths:
                # the path as the process sees it, from here: its root
                via_root = os.path.join(self.proc, pid, "root", path.lstrip("/"))
                fid = file_id(via_root)
                if fid is None or fid in found:
                    continue
                # the same file under the host's root is a stabler name (it
                # outlives the process)
                on_host = os.path.join(self.root, path.lstrip("/"))
                found[fid] = on_host if file_id(on_host) == fid else via_root
        return found


def probe_sites(path):
    """Where the probes of one libssl file go: (description, [(program,
    function, file offset, retprobe, required)]); function "" with an offset
    is a local function found by internal_entries(). Every entry program
    has a return probe (RETURN_PROG) on the same site. The one list that
    TlsProbes and perf/bench_httpflow_tls.py's floor attach."""
    internal = internal_entries(path)
    sites = []
    if internal:
        # the _ex programs: the internal functions have their signature
        for kind, prog in (("read", "ssl_read_ex_enter"), ("write", "ssl_write_ex_enter")):
            sites.append((prog, "", internal[kind], True))
        funcs, where = HANDSHAKE_FUNCS, "ssl_read_internal, ssl_write_internal"
    else:
        funcs, where = REQUIRED_FUNCS + OPTIONAL_FUNCS, "SSL_read, SSL_write and _ex"
    sites.extend((prog, func, 0, (func, prog) in REQUIRED_FUNCS) for func, prog in funcs)
    out = []
    for prog, func, offset, required in sites:
        out.append((prog, func, offset, False, required))
        out.append((RETURN_PROG, func, offset, True, required))
    return where, out


def attach_library(bpf, path, returns=True):
    """Attach the programs of a BpfSkeleton (tls.bpf.o, or an object with
    the same program names) to one libssl file: (links, description). A
    required site that does not attach raises KernelError (nothing stays
    attached); an optional one (an older OpenSSL without the _ex functions)
    is skipped with its return probe. returns=False: the entry probes
    alone (the floor benchmarks)."""
    where, sites = probe_sites(path)
    links = []
    try:
        skip = None
        for prog, func, offset, retprobe, required in sites:
            if retprobe and (skip == (func, offset) or not returns):
                continue
            try:
                links.append(bpf.attach_uprobe(prog, path, func, retprobe=retprobe, offset=offset))
            except KernelError:
                if required:
                    raise
                skip = (func, offset)
    except BaseException:
        for link in links:
            link.close()
        raise
    return links, where


class TlsProbes:
    """The OpenSSL capture source that HttpflowPlugin reads from (and,
    with spec bpf_objects.TLS_TRACE, ebpf-trace's TLS spans: TracePlugin).

    start() loads tls.bpf.o (``bpf``, a BpfSkeleton of ``spec``),
    attaches the socket tracepoints and the uprobes on every libssl found;
    with bpf_objects.TLS ``bpf.rings.events`` is the RingReader of struct
    http_exchange records; rescan() (called from the plugin's periodic
    hooks, cheap when not due) covers libssl files that appeared since;
    counters(); stop(). ``label`` names the plugin in log lines."""

    def __init__(self, cfg, logger, self_pid, rescan_s=RESCAN_S, spec=TLS, label="httpflow-tls"):
        self.cfg = cfg
        self.log = logger
        self.self_pid = self_pid
        self.rescan_s = rescan_s
        self.spec = spec
        self.label = label
        self.scanner = LibsslScanner(cfg.host_proc, getattr(cfg, "host_root", ""))
        self.bpf = None
        self.libraries = {}    # (dev, ino) -> (path, [links])
        self.failed = {}       # (dev, ino) -> (path, reason): not retried
        self.sites = {}        # path -> which functions carry the probes
        self.next_scan = 0.0
        self.totals = {"tls_rescans": 0, "tls_attach_failures": 0, "tls_scan_seconds": 0.0}

    def start(self, settle_ns=1_000_000_000, knobs=None, reuse=None):
        """settle_ns: the idle flush reports responses quiet this long
        (bpf/include/http.h). knobs: instead of httpflow's (another
        spec's); reuse: maps of another object (BpfSkeleton.start)."""
        self.bpf = BpfSkeleton(self.spec)
        if knobs is None:
            knobs = {"wakeup_bytes": WAKEUP_BYTES, "settle_ns": settle_ns}
        try:
            self.bpf.start(knobs={"ipv6_disabled": int(bool(self.cfg.ipv6_disabled)),
                                  "self_tgid": self.self_pid, **knobs},
                           setup=self._probe_libraries, reuse=reuse)
        except BaseException:
            self.stop()
            raise
        self.log.info("%s: uprobes on %d libssl file(s): %s", self.label, len(self.libraries),
                      ", ".join(p for p, _ in self.libraries.values()) or "none yet")

    def _probe_libraries(self, bpf):
        """Start's last step: uprobes on the libssl files of the library
        directories, then on those running processes map."""
        self._attach_new(self.scanner.scan_dirs())
        self.rescan(force=True)

    def rescan(self, force=False):
        """Attach to libssl files mapped by processes since the last scan."""
        now = time.monotonic()
        if self.bpf is None or (not force and now < self.next_scan):
            return 0
        self.next_scan = now + self.rescan_s
        t0 = time.perf_counter()
        found = self.scanner.scan_procs()
        self.totals["tls_rescans"] += 1
        n = self._attach_new(found)
        self.totals["tls_scan_seconds"] += time.perf_counter() - t0
        return n

    def _attach_new(self, found):
        n = 0
        for fid, path in found.items():
            if fid in self.libraries or fid in self.failed:
                continue
            try:
                links, where = attach_library(self.bpf, path)
            except KernelError as exc:
                self.failed[fid] = (path, str(exc).splitlines()[0])
                self.totals["tls_attach_failures"] += 1
                self.log.warning("%s: cannot probe %s: %s", self.label, path, str(exc).splitlines()[0])
                continue
            self.libraries[fid] = (path, links)
            self.sites[path] = where
            self.log.info("%s: attached %d uprobes to %s (%s)", self.label, len(links), path, where)
            n += 1
        return n

    def counters(self):
        c = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.totals.items()}
        c["tls_libraries_attached"] = len(self.libraries)
        c["tls_uprobes_attached"] = sum(len(links) for _, links in self.libraries.values())
        if self.bpf is not None:
            c.update(self.bpf.counters())
        return c

    def attached_paths(self):
        return sorted(p for p, _ in self.libraries.values())

    def stop(self):
        if self.bpf is not None:
            self.bpf.close()  # the uprobe links too
            self.bpf = None
        self.libraries = {}


def check_line(host_proc="/proc", host_root="", spec=TLS, label="httpflow-tls", **start):
    """`dkebpf check`: load tls.bpf.o (of spec, started with **start),
    attach to every libssl found (then detach); one line saying where
    libssl is and whether the probes attach."""
    from types import SimpleNamespace
    import logging

    cfg = SimpleNamespace(host_proc=host_proc, host_root=host_root, ipv6_disabled=False)
    probes = TlsProbes(cfg, logging.getLogger("dkebpf.check"), os.getpid(), spec=spec, label=label)
    try:
        probes.start(**start)
        paths = [f"{p} ({probes.sites[p]})" for p in probes.attached_paths()]
        failed = [f"{p} ({why})" for p, why in probes.failed.values()]
        nprobes = probes.counters()["tls_uprobes_attached"]
    finally:
        probes.stop()
    if not paths and not failed:
        return (f"{label}: no OpenSSL libssl.so.N in the library directories or in any "
                "process; programs started later are found by the periodic rescan")
    line = f"{label}: {nprobes} uprobes attach to {len(paths)} libssl file(s): {', '.join(paths) or '-'}"
    if failed:
        line += "; cannot probe: " + ", ".join(failed)
    return line
