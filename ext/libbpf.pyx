"""Cython binding of libbpf: open an object, set ``const volatile`` knobs,
load, attach, read maps and ring buffers into numpy.

Error handling has one choke point, ``_check``: libbpf's negative errno (or
NULL + errno) becomes a ``KernelError`` (errors.kernel_error) whose message
names the operation, the object and libbpf's own last words (the verifier
log tail on a failed load). Misuse by the caller (a name the object does not
have, an object used before load or after close) raises LookupError or
RuntimeError: a bug, not the kernel's refusal. C callbacks never raise;
they only count.
"""
from libc.errno cimport errno
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memmove, memset
from libc.stdint cimport uint32_t, uint64_t

import os

import numpy as np
cimport numpy as cnp

from libbpf cimport *
from sysio cimport POLLIN, poll, pollfd
from dkebpf.errors import kernel_error

cnp.import_array()

BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
_PERCPU_TYPES = (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH)
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

dk_log_install(1 if os.environ.get("DKEBPF_LIBBPF_DEBUG") else 0)


def libbpf_log_tail(int nlines=8):
    """The last lines libbpf printed (warnings, verifier log)."""
    text = dk_log_text().decode("utf-8", "replace").strip()
    return "\n".join(text.splitlines()[-nlines:])


cdef int _check(int rc, str what) except -1:
    """Turn a libbpf return code into a KernelError naming the operation."""
    if rc >= 0:
        return rc
    tail = libbpf_log_tail()
    raise kernel_error(what, -rc, ("libbpf: " + tail.replace("\n", "\nlibbpf: ")) if tail else "")


cdef int _check_ptr(const void *p, str what) except -1:
    if p == NULL:
        _check(-(errno if errno else 22), what)
    return 0


cdef class Link:
    """An attached program. Detached by close() or when collected."""
    cdef bpf_link *link
    cdef readonly str name

    def __cinit__(self):
        self.link = NULL

    def close(self):
        if self.link != NULL:
            bpf_link__destroy(self.link)
            self.link = NULL

    def __dealloc__(self):
        if self.link != NULL:
            bpf_link__destroy(self.link)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


cdef Link _wrap_link(bpf_link *l, str name):
    cdef Link link = Link.__new__(Link)
    link.link = l
    link.name = name
    return link


cdef class Map:
    """A map of a loaded object. Keys and values are bytes-like (numpy
    records, bytes); batch operations work on numpy arrays of records."""
    cdef bpf_map *map
    cdef BpfObject owner  # keeps the object (and its fds) alive
    cdef readonly str name
    cdef readonly int map_type
    cdef readonly uint32_t key_size, value_size, max_entries
    cdef readonly int ncpus

    @property
    def fd(self):
        self.owner._require_loaded()
        return bpf_map__fd(self.map)

    cdef Py_ssize_t _stride(self):
        # per-CPU maps hand over one 8-byte-aligned value per possible CPU
        if self.map_type in _PERCPU_TYPES:
            return ((self.value_size + 7) // 8) * 8 * self.ncpus
        return self.value_size

    def set_max_entries(self, uint32_t n):
        _check(bpf_map__set_max_entries(self.map, n), f"resize map {self.name}")
        self.max_entries = n

    def reuse_fd(self, int fd):
        """Before load: use the existing map behind fd (another object's)
        instead of creating this one; its type and sizes are taken from
        fd. Two objects then share one map (a ring, a hash)."""
        if self.owner.loaded:
            raise RuntimeError(f"map {self.name}: reuse_fd must come before load")
        _check(bpf_map__reuse_fd(self.map, fd), f"reuse fd {fd} for map {self.name}")
        self.key_size = bpf_map__key_size(self.map)
        self.value_size = bpf_map__value_size(self.map)
        self.max_entries = bpf_map__max_entries(self.map)

    def lookup(self, key):
        """Value bytes for key, or None when absent."""
        cdef const unsigned char[::1] k = memoryview(key).cast("B")
        buf = bytearray(self._stride())
        cdef unsigned char[::1] v = buf
        rc = bpf_map_lookup_elem(self.fd, &k[0], &v[0])
        if rc == -2:  # ENOENT
            return None
        _check(rc, f"lookup in map {self.name}")
        return bytes(buf)

    def update(self, key, value, uint64_t flags=BPF_ANY):
        cdef const unsigned char[::1] k = memoryview(key).cast("B")
        cdef const unsigned char[::1] v = memoryview(value).cast("B")
        if len(k) != self.key_size or len(v) != self._stride():
            raise ValueError(f"map {self.name}: key/value of {len(k)}/{len(v)} bytes, "
                             f"expected {self.key_size}/{self._stride()}")
        _check(bpf_map_update_elem(self.fd, &k[0], &v[0], flags), f"update map {self.name}")

    def delete(self, key):
        """Delete key; returns False when it was absent."""
        cdef const unsigned char[::1] k = memoryview(key).cast("B")
        rc = bpf_map_delete_elem(self.fd, &k[0])
        if rc == -2:
            return False
        _check(rc, f"delete from map {self.name}")
        return True

    def dump(self, key_dtype, value_dtype=None):
        """All entries as (keys, values) numpy arrays, read with the batch
        lookup (one syscall per few thousand entries, no Python object per
        entry); falls back to get_next_key on kernels without batch ops.
        Hash maps change while being read: an entry inserted meanwhile may
        be missed until the next dump, none is returned twice."""
        cdef Py_ssize_t stride = self._stride()
        key_dtype = np.dtype(key_dtype)
        if key_dtype.itemsize != self.key_size:
            raise ValueError(f"map {self.name}: key dtype of {key_dtype.itemsize} bytes, key is {self.key_size}")
        cdef Py_ssize_t cap = self.max_entries
        keys = np.empty(cap, dtype=key_dtype)
        vals = np.empty(cap * stride, dtype=np.uint8)
        cdef char *kp = <char *>cnp.PyArray_DATA(keys)
        cdef char *vp = <char *>cnp.PyArray_DATA(vals)
        cdef uint64_t out_batch = 0
        cdef uint32_t count
        cdef Py_ssize_t n = 0
        cdef int rc = 0, fd = self.fd
        cdef bpf_map_batch_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        cdef void *in_batch = NULL
        with nogil:
            while n < cap:
                count = <uint32_t>(cap - n)
                rc = bpf_map_lookup_batch(fd, in_batch, &out_batch, kp + n * self.key_size,
                                          vp + n * stride, &count, &opts)
                n += count
                if rc < 0:
                    break
                in_batch = &out_batch
        if rc == -22 or rc == -95:  # EINVAL/EOPNOTSUPP: no batch ops here
            n = self._dump_iter(keys, vals, stride)
        elif rc < 0 and rc != -2:  # ENOENT marks the end
            _check(rc, f"batch dump of map {self.name}")
        vals = vals[: n * stride]
        keys = keys[:n]
        if value_dtype is not None:
            vals = vals.view(np.dtype(value_dtype)) if self.map_type not in _PERCPU_TYPES else vals
        return keys, vals

    cdef Py_ssize_t _dump_iter(self, keys, vals, Py_ssize_t stride):
        cdef char *kp = <char *>cnp.PyArray_DATA(keys)
        cdef char *vp = <char *>cnp.PyArray_DATA(vals)
        cdef Py_ssize_t n = 0, cap = self.max_entries
        cdef int fd = self.fd
        cdef void *prev = NULL
        with nogil:
            while n < cap and bpf_map_get_next_key(fd, prev, kp + n * self.key_size) == 0:
                if bpf_map_lookup_elem(fd, kp + n * self.key_size, vp + n * stride) == 0:
                    prev = kp + n * self.key_size
                    n += 1
        return n

    def take_many(self, keys):
        """Look up and delete, each in one step, the records of a numpy key
        array (a hash map, kernel 5.14+): nothing written between the
        lookup and the delete is lost. Returns (keys, values) of those that
        existed; values as raw bytes rows (np.void of value_size)."""
        keys = np.ascontiguousarray(keys)
        vals = np.zeros(len(keys), np.dtype((np.void, self.value_size)))
        found = np.zeros(len(keys), np.bool_)
        if len(keys) == 0:
            return keys, vals
        cdef char *kp = <char *>cnp.PyArray_DATA(keys)
        cdef char *vp = <char *>cnp.PyArray_DATA(vals)
        cdef unsigned char[::1] f = found.view(np.uint8)
        cdef Py_ssize_t i, n = len(keys)
        cdef int fd = self.fd
        with nogil:
            for i in range(n):
                f[i] = bpf_map_lookup_and_delete_elem(fd, kp + i * self.key_size,
                                                      vp + i * self.value_size) == 0
        return keys[found], vals[found]

    def percpu_sums(self):
        """For a per-CPU array of u64 counters: the sum over CPUs per index."""
        if self.map_type != BPF_MAP_TYPE_PERCPU_ARRAY or self.value_size != 8:
            raise ValueError(f"map {self.name} is not a per-CPU array of u64")
        out = np.zeros(self.max_entries, dtype=np.uint64)
        cdef uint32_t i
        for i in range(self.max_entries):
            v = self.lookup(np.uint32(i).tobytes())
            if v is not None:
                out[i] = np.frombuffer(v, dtype=np.uint64).sum()
        return out


cdef class Program:
    cdef bpf_program *prog
    cdef BpfObject owner
    cdef readonly str name, section

    @property
    def autoload(self):
        return bool(bpf_program__autoload(self.prog))

    @property
    def fd(self):
        """The loaded program's file descriptor (-1 before load)."""
        return bpf_program__fd(self.prog)

    def attach(self):
        """Attach by section name (tracepoint/, tp_btf/, raw_tp/, ...)."""
        self.owner._require_loaded()
        dk_log_clear()
        cdef bpf_link *l = bpf_program__attach(self.prog)
        _check_ptr(l, f"attach {self.name} ({self.section})")
        return _wrap_link(l, self.name)

    def attach_cgroup(self, str cgroup_dir):
        """Attach a cgroup program (cgroup/sendmsg4, ...) to the cgroup v2
        directory cgroup_dir and every cgroup below it. A BPF link: the
        kernel attaches links in multi mode (as BPF_F_ALLOW_MULTI), so other
        programs on the hierarchy stay, and the link goes away with close()
        or with this process, never left behind."""
        self.owner._require_loaded()
        cdef int fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
        cdef bpf_link *l
        try:
            dk_log_clear()
            l = bpf_program__attach_cgroup(self.prog, fd)
            _check_ptr(l, f"attach {self.name} ({self.section}) to cgroup {cgroup_dir}")
        finally:
            os.close(fd)  # the link holds the cgroup
        return _wrap_link(l, f"{self.name}@{cgroup_dir}")

    def attach_uprobe(self, str binary, str func_name, bint retprobe=False, int pid=-1,
                      size_t offset=0):
        """Attach a uprobe (or uretprobe) to func_name in binary, in every
        process (pid -1) or one process."""
        self.owner._require_loaded()
        cdef bpf_uprobe_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        opts.retprobe = retprobe
        cdef bytes bfunc = func_name.encode() if func_name else b""
        if bfunc:
            opts.func_name = bfunc
        bbin = binary.encode()
        dk_log_clear()
        cdef bpf_link *l = bpf_program__attach_uprobe_opts(self.prog, pid, bbin, offset, &opts)
        _check_ptr(l, f"attach {'uretprobe' if retprobe else 'uprobe'} {self.name} to {binary}:{func_name}")
        return _wrap_link(l, f"{self.name}@{binary}")


cdef class BpfObject:
    """A BPF object file: open() -> set knobs -> load() -> attach.

    Use as a context manager or call close(); links returned by attach
    should be closed first (close() here closes the ones it made)."""
    cdef bpf_object *obj
    cdef readonly str path
    cdef bint loaded
    cdef list _links

    def __cinit__(self, str path):
        self.obj = NULL
        self.loaded = False
        self._links = []
        self.path = path
        if not os.path.exists(path):
            raise kernel_error(f"open BPF object {path}", 2)
        dk_log_clear()
        bpath = path.encode()
        self.obj = bpf_object__open_file(bpath, NULL)
        _check_ptr(self.obj, f"open BPF object {path}")

    def __dealloc__(self):
        if self.obj != NULL:
            bpf_object__close(self.obj)

    def close(self):
        for link in self._links:
            link.close()
        self._links = []
        if self.obj != NULL:
            bpf_object__close(self.obj)
            self.obj = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef _require_open(self):
        if self.obj == NULL:
            raise RuntimeError(f"BPF object {self.path} is closed")

    cdef _require_loaded(self):
        self._require_open()
        if not self.loaded:
            raise RuntimeError(f"BPF object {self.path} is not loaded yet")

    cdef char *_rodata(self, size_t *size) except? NULL:
        """The initial value of .rodata (the ``const volatile`` knobs), or
        NULL with size 0 when the object has none."""
        cdef bpf_map *m = NULL
        size[0] = 0
        while True:
            m = bpf_object__next_map(self.obj, m)
            if m == NULL:
                return NULL
            if bpf_map__name(m).decode().endswith(".rodata"):
                return <char *>bpf_map__initial_value(m, size)

    def knobs(self):
        """{name: (offset, size)} of the ``const volatile`` globals (.rodata),
        read from the object's BTF; no load needed."""
        self._require_open()
        cdef size_t size = 0
        if self._rodata(&size) == NULL:
            return {}
        cdef const btf *b = bpf_object__btf(self.obj)
        cdef int sec_id = btf__find_by_name_kind(b, b".rodata", BTF_KIND_DATASEC)
        _check(sec_id, f"find .rodata in BTF of {self.path}")
        cdef const btf_type *sec = btf__type_by_id(b, sec_id)
        cdef btf_var_secinfo *vs = btf_var_secinfos(sec)
        out = {}
        cdef int i
        for i in range(btf_vlen(sec)):
            name = btf__name_by_offset(b, btf__type_by_id(b, vs[i].type).name_off).decode()
            out[name] = (vs[i].offset, vs[i].size)
        return out

    def set_knobs(self, **values):
        """Set ``const volatile`` globals (.rodata) before load. Each value is
        an int or bytes, written with the variable's own size."""
        self._require_open()
        if self.loaded:
            raise RuntimeError(f"{self.path}: knobs must be set before load")
        offsets = self.knobs()
        cdef size_t size = 0
        cdef char *data = self._rodata(&size)
        cdef Py_ssize_t off_c
        for name, value in values.items():
            if name not in offsets:
                raise LookupError(f"{self.path} has no knob {name!r} (has: {', '.join(sorted(offsets))})")
            off, sz = offsets[name]
            off_c = off
            raw = value if isinstance(value, bytes) else int(value).to_bytes(sz, "little", signed=int(value) < 0)
            if len(raw) > sz:
                raise ValueError(f"knob {name}: {len(raw)} bytes given, it holds {sz}")
            memcpy(data + off_c, <char *>raw, len(raw))

    def load(self):
        self._require_open()
        dk_log_clear()
        _check(bpf_object__load(self.obj), f"load BPF object {self.path}")
        self.loaded = True

    def program(self, str name):
        self._require_open()
        cdef bpf_program *p = bpf_object__find_program_by_name(self.obj, name.encode())
        if p == NULL:
            raise LookupError(f"{self.path} has no program {name!r}")
        return self._wrap_prog(p)

    cdef Program _wrap_prog(self, bpf_program *p):
        cdef Program prog = Program.__new__(Program)
        prog.prog = p
        prog.owner = self
        prog.name = bpf_program__name(p).decode()
        prog.section = bpf_program__section_name(p).decode()
        return prog

    def programs(self):
        self._require_open()
        out = []
        cdef bpf_program *p = NULL
        while True:
            p = bpf_object__next_program(self.obj, p)
            if p == NULL:
                return out
            out.append(self._wrap_prog(p))

    def map(self, str name):
        self._require_open()
        cdef bpf_map *m = bpf_object__find_map_by_name(self.obj, name.encode())
        if m == NULL:
            raise LookupError(f"{self.path} has no map {name!r}")
        cdef Map mp = Map.__new__(Map)
        mp.map = m
        mp.owner = self
        mp.name = name
        mp.map_type = bpf_map__type(m)
        mp.key_size = bpf_map__key_size(m)
        mp.value_size = bpf_map__value_size(m)
        mp.max_entries = bpf_map__max_entries(m)
        mp.ncpus = libbpf_num_possible_cpus()
        return mp

    def attach_all(self, skip=()):
        """Attach every autoloaded program by its section, but those named
        in skip (attached otherwise, e.g. to a cgroup); on failure the ones
        already attached are detached again. Returns the links."""
        links = []
        try:
            for p in self.programs():
                if p.autoload and p.name not in skip:
                    links.append(p.attach())
        except BaseException:
            for l in links:
                l.close()
            raise
        self._links.extend(links)
        return links


# --- ring buffers ----------------------------------------------------------

from cpython.buffer cimport PyBuffer_FillInfo


cdef class _RecordBlock:
    """A reader's C buffer handed over to numpy by take() (no copy): freed
    with the last array that views it."""
    cdef char *ptr
    cdef Py_ssize_t size

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.ptr, self.size, 0, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass

    def __dealloc__(self):
        free(self.ptr)


cdef class RingReader:
    """Reads a BPF ring buffer of fixed-size records into numpy.

    The ring is mmap'd and walked in C (ext/includes/dk_ringbuf.h) with the
    GIL released; records land in a C buffer that grows up to max_records
    (beyond it they stay in the kernel ring until take() or a consume after
    the buffer was emptied; never dropped here); take() hands them
    over as one structured array: the buffer itself when it is large (no
    second copy of up to max_records at the moment memory peaks), and the
    reader starts again from its first size, so an idle reader does not
    keep the largest buffer it ever needed."""
    cdef dk_ring ring
    cdef size_t initial
    cdef bint opened
    cdef readonly object dtype
    cdef readonly str name
    cdef object _map  # keeps the owning object (and the map fd) alive

    def __cinit__(self, Map ring_map, dtype, size_t initial=4096, size_t max_records=1 << 20,
                  size_t min_size=0):
        self.opened = False
        self.dtype = np.dtype(dtype)
        self.name = ring_map.name
        self._map = ring_map
        if min_size > <size_t>self.dtype.itemsize:
            raise ValueError(f"ring {self.name}: min_size {min_size} > record size {self.dtype.itemsize}")
        _check(dk_ring_open(&self.ring, ring_map.fd, self.dtype.itemsize, initial, max_records),
               f"map ring buffer {self.name}")
        if min_size:
            # variable-length records (a header, then only the valid part of
            # a payload): the tail of each numpy row is then unspecified
            self.ring.min_size = min_size
        self.initial = self.ring.cap
        self.opened = True

    def __dealloc__(self):
        if self.opened:
            dk_ring_close(&self.ring)

    def close(self):
        if self.opened:
            dk_ring_close(&self.ring)
            self.opened = False

    def fileno(self):
        """The ring's map fd: readable (poll/epoll) when records wait."""
        return self.ring.map_fd

    def poll(self, int timeout_ms=0):
        """Wait up to timeout_ms for records and read all that are there.
        Returns the number of records now held."""
        cdef pollfd p
        if not self.opened:
            raise RuntimeError(f"ring buffer {self.name} is closed")
        p.fd = self.ring.map_fd
        p.events = POLLIN
        with nogil:
            if timeout_ms != 0:
                poll(&p, 1, timeout_ms)
            dk_ring_consume(&self.ring)
        return self.ring.n

    def consume(self):
        """Read what is there without waiting."""
        if not self.opened:
            raise RuntimeError(f"ring buffer {self.name} is closed")
        with nogil:
            dk_ring_consume(&self.ring)
        return self.ring.n

    def take(self):
        """The records held from earlier polls, then what waits in the ring,
        up to max_records in all. The reader is left empty."""
        cdef size_t rec = self.ring.record_size
        cdef size_t held = self.ring.n
        # each record takes at least its (minimum) size plus the 8-byte header
        cdef size_t bound = dk_ring_pending_bytes(&self.ring) // (((self.ring.min_size + 8 + 7) // 8) * 8)
        cdef size_t got = 0
        cdef size_t n
        cdef char *nbuf
        cdef _RecordBlock block
        if not self.opened:
            raise RuntimeError(f"ring buffer {self.name} is closed")
        # no more than the reader's budget in all: the rest waits in the ring
        bound = min(bound, self.ring.max_records - held if self.ring.max_records > held else 0)
        if not held:  # nothing held: straight from the ring into the array
            out = np.empty(bound, dtype=self.dtype)
            nbuf = <char *>cnp.PyArray_DATA(out)
            if bound:
                with nogil:
                    got = dk_ring_consume_to(&self.ring, nbuf, bound)
            return out if got == bound else out[:got]
        if bound:
            if held + bound > self.ring.cap:
                nbuf = <char *>realloc(self.ring.buf, (held + bound) * rec)
                if nbuf == NULL:
                    raise MemoryError(f"ring buffer {self.name}: {(held + bound) * rec} bytes")
                self.ring.buf = nbuf
                self.ring.cap = held + bound
            with nogil:
                got = dk_ring_consume_to(&self.ring, self.ring.buf + held * rec, bound)
            self.ring.n = held + got
        n = self.ring.n
        if n <= self.initial:  # small: one short copy, the buffer back to its first size
            out = np.empty(n, dtype=self.dtype)
            memcpy(<char *>cnp.PyArray_DATA(out), self.ring.buf, n * rec)
            self.ring.n = 0
            if self.ring.cap > self.initial:
                nbuf = <char *>realloc(self.ring.buf, self.initial * rec)
                if nbuf != NULL:
                    self.ring.buf = nbuf
                    self.ring.cap = self.initial
            return out
        nbuf = <char *>malloc(self.initial * rec)
        if nbuf == NULL:
            raise MemoryError(f"ring buffer {self.name}: {self.initial * rec} bytes")
        block = _RecordBlock.__new__(_RecordBlock)
        # trimmed to what it holds (in place; an mmap'd block shrinks by mremap)
        block.ptr = <char *>realloc(self.ring.buf, n * rec) or self.ring.buf
        block.size = n * rec
        self.ring.buf = nbuf
        self.ring.cap = self.initial
        self.ring.n = 0
        return np.frombuffer(block, dtype=self.dtype, count=n)

    def take_into(self, out, Py_ssize_t start=0):
        """Records into rows start.. of out, a caller's buffer kept between
        calls (a writable contiguous array of the reader's dtype; the rows
        before start are the caller's, e.g. records it carries to its next
        step): first those the reader holds from poll(), then straight from
        the ring, with the GIL released, up to len(out). What does not fit
        stays where it is (held, or in the kernel ring) for the next call.
        Returns the rows of out now filled (start + those copied)."""
        cdef cnp.ndarray arr = out
        cdef size_t rec = self.ring.record_size
        cdef size_t room, first, got = 0
        cdef char *dest
        if not self.opened:
            raise RuntimeError(f"ring buffer {self.name} is closed")
        if arr.dtype.itemsize != <Py_ssize_t>rec or not arr.flags.c_contiguous or not arr.flags.writeable:
            raise TypeError(f"ring buffer {self.name}: take_into needs a writable contiguous array "
                            f"of {rec}-byte records")
        if start < 0 or start > len(arr):
            raise ValueError(f"ring buffer {self.name}: take_into at row {start} of {len(arr)}")
        room = len(arr) - start
        dest = <char *>cnp.PyArray_DATA(arr) + start * rec
        with nogil:
            first = self.ring.n if self.ring.n < room else room
            if first:
                memcpy(dest, self.ring.buf, first * rec)
                self.ring.n -= first
                if self.ring.n:  # the rest of what was held moves up, in order
                    memmove(self.ring.buf, self.ring.buf + first * rec, self.ring.n * rec)
            if first < room and self.ring.n == 0:
                got = dk_ring_consume_to(&self.ring, dest + first * rec, room - first)
        return start + first + got

    @property
    def held(self):
        return self.ring.n

    @property
    def pending_bytes(self):
        """Bytes waiting in the kernel ring (records and their headers)."""
        return dk_ring_pending_bytes(&self.ring) if self.opened else 0

    @property
    def buffer_bytes(self):
        """Size of the C buffer records wait in (it grows up to max_records
        between two take()s)."""
        return self.ring.cap * self.ring.record_size

    def counters(self):
        return {"received": self.ring.received, "bad_size": self.ring.bad_size}
