"""dkebpf/gopclntab.py: a Go binary's function entries from its
.gopclntab, against the .symtab of the same binary (built here by the
installed Go), the same from a stripped build, and clear errors (never
another exception) on unknown versions, truncated and corrupted tables."""
import os
import random
import struct

import pytest

from dkebpf import elf, gopclntab
from dkebpf.plugins import trace_go
from support.trace_apps import build_go

CHAIN_GO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "go", "chain.go")

PROBED = sorted({n for n, _ in trace_go.FUNCS} | {n for pair in trace_go.CALL_SITES.values() for n in pair})


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """{build: ELF image} of the same Go program as built, stripped, PIE
    and stripped PIE (one directory: one build cache)."""
    with open(CHAIN_GO) as f:
        source = f.read()
    out = str(tmp_path_factory.mktemp("gopcln"))
    return {name: _read(build_go(source, out, flags)) for name, flags in (
        ("plain", ()), ("plain_stripped", ["-ldflags=-s -w"]),
        ("pie", ["-buildmode=pie"]), ("pie_stripped", ["-buildmode=pie", "-ldflags=-s -w"]))}


def _text_symbols(data):
    """{name: (vaddr, size)} of the .symtab symbols inside .text (but the
    assembly functions' ".abi0" names: pclntab names them without)."""
    tv, _off, tsize = elf.section(data, ".text")
    syms, _ = elf.symbols(data, elf.SHT_SYMTAB)
    return {n: v for n, v in syms.items() if tv <= v[0] < tv + tsize and v[1] and not n.endswith(".abi0")}


@pytest.mark.parametrize("build", ["plain", "pie"])
def test_entries_match_symtab(builds, build):
    data = builds[build]
    syms = _text_symbols(data)
    assert len(syms) > 2000
    found = gopclntab.functions(data, list(syms))
    assert len(found) > 0.95 * len(syms), sorted(set(syms) - set(found))[:20]
    for name, (vaddr, size) in found.items():
        sym_vaddr, sym_size = syms[name]
        assert vaddr == sym_vaddr, name
        # to the next function: the symbol's code and the alignment padding after it
        assert sym_size <= size < sym_size + 64, (name, size, sym_size)
    assert set(PROBED) <= set(found)
    assert gopclntab.functions(data, ["no.such.function", "main"]) == {}  # "main" is only a name's head


@pytest.mark.parametrize("build", ["plain", "pie"])
def test_stripped_build_has_the_same_entries(builds, build):
    data, stripped = builds[build], builds[build + "_stripped"]
    assert not elf.symbols(stripped, elf.SHT_SYMTAB)[0]
    assert gopclntab.functions(stripped, PROBED) == gopclntab.functions(data, PROBED)
    assert gopclntab.functions(_read("/bin/sh"), PROBED) == {}  # no .gopclntab


def _table(data):
    _v, off, size = elf.section(data, ".gopclntab")
    return data[off:off + size], elf.section(data, ".text")[0]


def test_unknown_versions_and_other_architectures_are_named(builds):
    tab, text = _table(builds["plain"])
    go116 = struct.pack("<I", 0xFFFFFFFA) + tab[4:]
    with pytest.raises(gopclntab.PclntabError, match="magic 0xfffffffa is not one this reader knows"):
        gopclntab.lookup(go116, PROBED, text)
    arm32 = tab[:6] + bytes([4, 4]) + tab[8:]
    with pytest.raises(gopclntab.PclntabError, match="another architecture"):
        gopclntab.lookup(arm32, PROBED, text)


def test_truncated_tables_raise_a_clear_error(builds):
    tab, text = _table(builds["plain"])
    for n in (0, 7, 40, 71, 4096, len(tab) // 2):
        with pytest.raises(gopclntab.PclntabError, match="pclntab"):
            gopclntab.lookup(tab[:n], PROBED, text)
    # the section header claiming more than the file holds
    data = builds["plain"]
    _v, off, size = elf.section(data, ".gopclntab")
    with pytest.raises(gopclntab.PclntabError, match="past the end of the file"):
        gopclntab.functions(data[:off + size // 2], PROBED)


def test_corrupted_tables_raise_a_clear_error_or_give_entries(builds):
    """Random bytes changed in the header, the function table and the
    records: PclntabError or entries, never another exception."""
    tab, text = _table(builds["plain"])
    ftab_off = struct.unpack_from("<Q", tab, 8 + 7 * 8)[0]
    nfunc = struct.unpack_from("<Q", tab, 8)[0]
    rnd = random.Random(13)
    errors = results = 0
    for _ in range(300):
        b = bytearray(tab)
        for _ in range(rnd.randrange(1, 8)):
            region = rnd.choice([(0, 72), (ftab_off, ftab_off + (2 * nfunc + 1) * 4), (0, len(b))])
            b[rnd.randrange(*region)] = rnd.randrange(256)
        try:
            found = gopclntab.lookup(bytes(b), PROBED, text)
            assert set(found) <= set(PROBED)
            results += 1
        except gopclntab.PclntabError as exc:
            assert "\n" not in str(exc)
            errors += 1
    assert errors and results


def test_inspect_names_an_unusable_pclntab_of_a_stripped_binary(builds, tmp_path):
    """trace_go.inspect() on a stripped Go binary: probed through its
    .gopclntab, or NotProbed saying what is wrong with it."""
    stripped = builds["plain_stripped"]
    good = tmp_path / "good"
    good.write_bytes(stripped)
    assert set(trace_go.inspect(str(good))["offsets"]) == {p for _, p in trace_go.FUNCS}
    _v, off, _size = elf.section(stripped, ".gopclntab")
    for what, patch, message in (("go116", struct.pack("<I", 0xFFFFFFFA), "magic 0xfffffffa"),
                                 ("huge_nfunc", struct.pack("<Q", 1 << 40), "function table")):
        where = off if what == "go116" else off + 8
        bad = tmp_path / what
        bad.write_bytes(stripped[:where] + patch + stripped[where + len(patch):])
        with pytest.raises(trace_go.NotProbed, match=f"no .symtab and an unreadable .gopclntab .*{message}"):
            trace_go.inspect(str(bad))
