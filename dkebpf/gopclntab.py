"""Function entries of a Go binary from its pclntab (the `.gopclntab`
section, `.data.rel.ro.gopclntab` in PIE binaries), which Go keeps for
its own tracebacks: binaries built with `-ldflags=-s -w` or run through
`strip` lose their .symtab but not this.

Layout (Go 1.18 to 1.19: magic 0xfffffff0; 1.20 and later: 0xfffffff1,
same layout; see Go's src/debug/gosym/pclntab.go and the pcHeader of
src/runtime/symtab.go): a header of the magic (uint32), two zero bytes,
the instruction size quantum and the pointer size (bytes), then eight
pointer-sized words: nfunc, nfiles, textStart, and the offsets (from the
header) of the function name table, compile unit table, file table, pc
table and function table. The function table is nfunc + 1 pairs of
uint32 (entry offset from textStart, offset of the function's _func
record from the function table's start); the last pair's entry is the
end of the code. A _func starts with uint32 entryOff and int32 nameOff
(into the function name table, NUL-terminated names).

Only the wanted names are looked up (their bytes found in the name
table, then the record naming that offset, all records compared at once
with numpy): no Python object per function."""
import struct

import numpy as np

from . import elf

MAGICS = {0xFFFFFFF0: "Go 1.18-1.19", 0xFFFFFFF1: "Go 1.20+"}
HEADER = struct.Struct("<IBBBB8Q")
# where Go's linker puts it: in executables, and in position-independent
# ones (-buildmode=pie: among the data relocated at load time)
SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")


class PclntabError(ValueError):
    """A .gopclntab this reader cannot use (the reason is the message)."""


def functions(data, wanted):
    """{name: (vaddr, size)} of the `wanted` function names found in the
    pclntab section of an ELF64 LE image (bytes or mmap); {} when there is
    no such section. Names two functions share (pclntab leaves out the
    ABI suffixes of .symtab: `runtime.osyield` and `runtime.osyield.abi0`)
    are left out. The size runs to the next function's entry (alignment
    padding included). PclntabError for an unknown version or a table
    that does not hold together."""
    sec = next(filter(None, (elf.section(data, name) for name in SECTIONS)), None)
    if sec is None:
        return {}
    _vaddr, off, size = sec
    if off + size > len(data):
        raise PclntabError(f".gopclntab runs past the end of the file ({off + size} > {len(data)} bytes)")
    return lookup(bytes(data[off:off + size]), wanted, text_vaddr=_text_vaddr(data))


def _text_vaddr(data):
    text = elf.section(data, ".text")
    return text[0] if text is not None else 0


def lookup(tab, wanted, text_vaddr=0):
    """functions() on the bytes of a pclntab; text_vaddr stands in for a
    header textStart of 0 (left to a relocation in PIE binaries)."""
    if len(tab) < HEADER.size:
        raise PclntabError(f"pclntab of {len(tab)} bytes is shorter than its header")
    (magic, pad1, pad2, quantum, ptr_size, nfunc, _nfiles, text_start, names_off, cu_off, _files_off,
     _pc_off, ftab_off) = HEADER.unpack_from(tab, 0)
    if magic not in MAGICS:
        raise PclntabError(f"pclntab magic {magic:#x} is not one this reader knows "
                           f"({', '.join(f'{m:#x} {v}' for m, v in MAGICS.items())})")
    if pad1 or pad2 or quantum != 1 or ptr_size != 8:
        raise PclntabError(f"pclntab header for another architecture (quantum {quantum}, pointer size {ptr_size})")
    if not names_off <= cu_off <= len(tab):
        raise PclntabError(f"pclntab function name table [{names_off}, {cu_off}) outside its {len(tab)} bytes")
    if nfunc == 0 or ftab_off + (2 * nfunc + 1) * 4 > len(tab):
        raise PclntabError(f"pclntab function table ({nfunc} functions at {ftab_off}) outside its {len(tab)} bytes")
    ftab = np.frombuffer(tab, "<u4", count=2 * nfunc + 1, offset=ftab_off)
    entries = ftab[0:2 * nfunc:2].astype(np.int64)
    ends = ftab[2:2 * nfunc + 1:2].astype(np.int64)  # the next function's entry, or the end of the code
    if np.any(ends < entries):
        raise PclntabError("pclntab function table not in address order")
    records = ftab[1:2 * nfunc:2].astype(np.int64) + ftab_off
    if int(records.max()) + 8 > len(tab):
        raise PclntabError(f"pclntab function record past the end of its {len(tab)} bytes")
    # each record's (entryOff, nameOff), gathered little-endian byte by byte
    raw = np.frombuffer(tab, np.uint8)
    gathered = raw[records[:, None] + np.arange(8)].astype(np.uint32)
    words = gathered[:, 0::4] | gathered[:, 1::4] << 8 | gathered[:, 2::4] << 16 | gathered[:, 3::4] << 24
    names = tab[names_off:cu_off]
    base = text_start or text_vaddr
    out = {}
    for name in wanted:
        name_at = _name_offsets(names, name.encode())
        if not name_at:
            continue
        hit = np.flatnonzero(np.isin(words[:, 1], name_at))
        if len(hit) != 1:  # absent, or a name with two bodies (an assembly function and its ABI wrapper)
            continue
        i = int(hit[0])
        if words[i, 0] != entries[i]:
            raise PclntabError(f"pclntab record of {name} says entry {int(words[i, 0]):#x}, "
                               f"its function table {int(entries[i]):#x}")
        out[name] = (base + int(entries[i]), int(ends[i] - entries[i]))
    return out


def _name_offsets(names, want):
    """Offsets of the NUL-terminated name `want` in the name table (a
    name is there once per function that has it)."""
    key = want + b"\0"
    out = []
    i = names.find(key)
    while i >= 0:
        if i == 0 or names[i - 1] == 0:  # not the tail of a longer name
            out.append(i)
        i = names.find(key, i + 1)
    return out
