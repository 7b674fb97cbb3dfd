"""The little of ELF the collector reads itself (no library): symbols,
load segments and named sections of little-endian ELF64 files, for the
uprobes of httpflow-tls (libssl's dynamic symbols) and ebpf-trace's Go
probes (a Go binary's .symtab and .go.buildinfo)."""
import struct

SHT_SYMTAB = 2
SHT_DYNSYM = 11
PT_LOAD = 1


def _is_elf64le(data):
    return len(data) >= 64 and data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1


def _headers(data):
    """(PT_LOAD segments [(vaddr, offset, filesz)], section headers)."""
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 0x20)
    e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
    loads = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
    shdrs = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    return loads, shdrs, e_shstrndx


def symbols(data, section_type=SHT_DYNSYM, wanted=None):
    """({name: (vaddr, size)} of the defined symbols of the symbol table
    sections of that type (only the `wanted` names when given), PT_LOAD
    segments [(vaddr, offset, filesz)]); ({}, []) for anything but a
    little-endian ELF64 image (bytes or mmap). Malformed tables raise
    struct.error, ValueError or IndexError."""
    if not _is_elf64le(data):
        return {}, []
    loads, shdrs, _ = _headers(data)
    wanted_b = None if wanted is None else {w.encode() for w in wanted}
    syms = {}
    for sh in shdrs:
        if sh[1] != section_type:
            continue
        _n, _t, _f, _a, off, size, link, _i, _al, entsize = sh
        str_off = shdrs[link][4]
        for j in range(size // (entsize or 24)):
            st_name, _info, _other, _shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, off + j * 24)
            if not st_value:
                continue
            end = data.find(b"\0", str_off + st_name)
            if end < 0:
                raise ValueError("symbol name runs past the end of the file")
            name = bytes(data[str_off + st_name:end])
            if wanted_b is None or name in wanted_b:
                syms[name.decode("ascii", "replace")] = (st_value, st_size)
    return syms, loads


def section(data, name):
    """(vaddr, file offset, size) of the section called `name`, or None."""
    if not _is_elf64le(data):
        return None
    _loads, shdrs, shstrndx = _headers(data)
    if shstrndx >= len(shdrs):
        return None
    names_off = shdrs[shstrndx][4]
    want = name.encode()
    for sh in shdrs:
        start = names_off + sh[0]
        if bytes(data[start:start + len(want) + 1]) == want + b"\0":
            return sh[3], sh[4], sh[5]
    return None


def load_segments(data):
    """PT_LOAD segments [(vaddr, offset, filesz)] ([] if not ELF64 LE)."""
    return _headers(data)[0] if _is_elf64le(data) else []


def call_sites(data, loads, func_vaddr, func_size, target_vaddr):
    """Virtual addresses of the `call rel32` (e8) instructions in the code
    of a function that call target_vaddr (found by their bytes: an e8 whose
    displacement lands exactly on the target)."""
    off = file_offset(loads, func_vaddr)
    if off is None:
        return []
    body = bytes(data[off:off + func_size])
    out = []
    i = body.find(b"\xe8")
    while 0 <= i <= len(body) - 5:
        if func_vaddr + i + 5 + struct.unpack_from("<i", body, i + 1)[0] == target_vaddr:
            out.append(func_vaddr + i)
        i = body.find(b"\xe8", i + 1)
    return out


def file_offset(loads, vaddr):
    """File offset of a virtual address inside a PT_LOAD segment, or None."""
    for v, off, size in loads:
        if v <= vaddr < v + size:
            return vaddr - v + off
    return None
