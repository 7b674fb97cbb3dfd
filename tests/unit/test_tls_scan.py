"""Finding OpenSSL's libssl in /proc/<pid>/maps text and in library
directories (no privileges needed)."""
import os

from dkebpf.plugins.tls_probes import LIBSSL_NAME, LibsslScanner, libssl_in_dirs, libssl_in_maps

MAPS = """\
55d0c8a00000-55d0c8a2e000 r--p 00000000 fe:00 1311042                    /usr/sbin/nginx
7f54ae51f000-7f54ae53d000 r--p 00000000 fe:00 5595315                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f54ae53d000-7f54ae598000 r-xp 0001e000 fe:00 5595315                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f54ae600000-7f54ae700000 r-xp 00000000 fe:00 5595316                    /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f54ae800000-7f54ae900000 r-xp 00000000 fe:00 42                         /opt/app/lib/libssl.so.1.1
7f54aea00000-7f54aeb00000 r-xp 00000000 fe:00 43                         /usr/lib/x86_64-linux-gnu/libssl3.so
7f54aec00000-7f54aed00000 r-xp 00000000 fe:00 44                         /tmp/old/libssl.so.3 (deleted)
7f54aee00000-7f54aef00000 r-xp 00000000 fe:00 45                         /data/with space/libssl.so.3
7f54af000000-7f54af100000 rw-p 00000000 00:00 0                          [heap]
7f54af200000-7f54af300000 r-xp 00000000 fe:00 46                         /usr/lib/libssl.so.3.backup
garbage line libssl.so.3
"""


def test_maps_paths():
    assert libssl_in_maps(MAPS) == {
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/opt/app/lib/libssl.so.1.1",
        "/data/with space/libssl.so.3",
    }


def test_names():
    for ok in ("libssl.so.3", "libssl.so.1.1", "libssl.so.1.0.2"):
        assert LIBSSL_NAME.match(ok)
    for bad in ("libssl3.so", "libssl.so", "libssl.so.3.bak", "libssl.so.", "libcrypto.so.3"):
        assert not LIBSSL_NAME.match(bad)


def test_empty_and_binary_maps():
    assert libssl_in_maps("") == set()
    assert libssl_in_maps("\x00\xff libssl.so.3\n" * 3) == set()


def test_dirs_under_a_root(tmp_path):
    lib = tmp_path / "usr" / "lib" / "x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libssl.so.3").write_bytes(b"\x7fELF")
    (lib / "libssl3.so").write_bytes(b"\x7fELF")
    (lib / "libssl.so").symlink_to("libssl.so.3")
    assert libssl_in_dirs(str(tmp_path)) == [str(lib / "libssl.so.3")]
    found = LibsslScanner(host_root=str(tmp_path)).scan_dirs()
    st = os.stat(lib / "libssl.so.3")
    assert found == {(st.st_dev, st.st_ino): str(lib / "libssl.so.3")}


def test_proc_scan_of_a_fake_proc(tmp_path):
    """A process in another mount namespace: its library is reached through
    <proc>/<pid>/root; a process whose maps vanished is skipped."""
    proc = tmp_path / "proc"
    root = tmp_path / "container"
    lib = root / "usr" / "lib"
    lib.mkdir(parents=True)
    (lib / "libssl.so.3").write_bytes(b"\x7fELF")
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "root").symlink_to(root)
    (proc / "42" / "maps").write_text(
        "7f0-7f1 r-xp 00000000 fe:00 9 /usr/lib/libssl.so.3\n")
    (proc / "43").mkdir()  # exited: no maps
    (proc / "self").mkdir()
    scanner = LibsslScanner(host_proc=str(proc), host_root=str(tmp_path / "host"))
    found = scanner.scan_procs()
    st = os.stat(lib / "libssl.so.3")
    assert found == {(st.st_dev, st.st_ino): str(proc / "42" / "root" / "usr/lib/libssl.so.3")}
    assert scanner.pids_scanned == 1


def test_random_text_never_crashes():
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def check(text):
        for path in libssl_in_maps(text):
            assert path.startswith("/") and LIBSSL_NAME.match(os.path.basename(path))

    check()


SYSTEM_LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def test_internal_entries_of_the_system_libssl():
    """Debian 12's OpenSSL 3.0: SSL_read_ex/SSL_write_ex are `sub; call
    <internal>`, SSL_read/SSL_write call the same functions, which start
    with a push (emulated by uprobes)."""
    import pytest
    from dkebpf.plugins.tls_probes import _elf_dynsyms, _file_offset, internal_entries

    if not os.path.exists(SYSTEM_LIBSSL):
        pytest.skip("no libssl.so.3 here")
    got = internal_entries(SYSTEM_LIBSSL)
    assert set(got) == {"read", "write"} and got["read"] != got["write"]
    data = open(SYSTEM_LIBSSL, "rb").read()
    syms, loads = _elf_dynsyms(data)
    for off in got.values():
        assert data[off] in range(0x50, 0x58) or (data[off] == 0x41 and data[off + 1] in range(0x50, 0x58))
    # the exported wrappers are elsewhere
    assert _file_offset(loads, syms["SSL_read"][0]) not in got.values()


def test_internal_entries_fall_back_on_anything_else(tmp_path):
    from dkebpf.plugins.tls_probes import internal_entries

    assert internal_entries(str(tmp_path / "missing.so")) == {}
    junk = tmp_path / "libssl.so.3"
    import random
    rnd = random.Random(7)
    for _ in range(200):  # ELF magic, then garbage headers and tables
        junk.write_bytes(b"\x7fELF\x02\x01" + rnd.randbytes(rnd.randrange(4000)))
        assert internal_entries(str(junk)) == {}
    junk.write_bytes(b"not an elf")
    assert internal_entries(str(junk)) == {}
    if os.path.exists(SYSTEM_LIBSSL):
        # the same library with SSL_read_ex's first instruction changed
        from dkebpf.plugins.tls_probes import _elf_dynsyms, _file_offset
        data = bytearray(open(SYSTEM_LIBSSL, "rb").read())
        syms, loads = _elf_dynsyms(bytes(data))
        off = _file_offset(loads, syms["SSL_read_ex"][0])
        data[off:off + 4] = b"\x90\x90\x90\x90"
        patched = tmp_path / "patched.so.3"
        patched.write_bytes(bytes(data))
        assert internal_entries(str(patched)) == {}


def test_internal_entries_random_bytes_never_crash(tmp_path):
    from hypothesis import given, settings, strategies as st
    from dkebpf.plugins.tls_probes import internal_entries

    f = tmp_path / "x.so"

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=512))
    def check(tail):
        f.write_bytes(b"\x7fELF\x02\x01" + tail)
        assert internal_entries(str(f)) == {}

    check()


def test_probe_sites_internal_or_exported(tmp_path):
    """Where the probes go: on the internal functions (entry + return each)
    plus SSL_do_handshake where the library has the shape, else on the four
    exported functions (SSL_read/SSL_write required) and the handshake."""
    import pytest
    from dkebpf.plugins.tls_probes import RETURN_PROG, internal_entries, probe_sites

    if not os.path.exists(SYSTEM_LIBSSL):
        pytest.skip("no libssl.so.3 here")
    internal = internal_entries(SYSTEM_LIBSSL)
    where, sites = probe_sites(SYSTEM_LIBSSL)
    assert where == "ssl_read_internal, ssl_write_internal"
    assert sites == [("ssl_read_ex_enter", "", internal["read"], False, True),
                     (RETURN_PROG, "", internal["read"], True, True),
                     ("ssl_write_ex_enter", "", internal["write"], False, True),
                     (RETURN_PROG, "", internal["write"], True, True),
                     ("ssl_handshake_enter", "SSL_do_handshake", 0, False, False),
                     (RETURN_PROG, "SSL_do_handshake", 0, True, False)]
    odd = tmp_path / "libssl.so.3"
    odd.write_bytes(b"not an elf")
    where, sites = probe_sites(str(odd))
    assert where == "SSL_read, SSL_write and _ex"
    entries = [(prog, func, required) for prog, func, _, ret, required in sites if not ret]
    assert entries == [("ssl_read_enter", "SSL_read", True), ("ssl_write_enter", "SSL_write", True),
                       ("ssl_read_ex_enter", "SSL_read_ex", False), ("ssl_write_ex_enter", "SSL_write_ex", False),
                       ("ssl_handshake_enter", "SSL_do_handshake", False)]
    assert [s[1:] for s in sites if s[3]] == [(f, 0, True, r) for _, f, r in entries]
