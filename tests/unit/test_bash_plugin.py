"""ebpf-bash user-space parts without the kernel: finding bash binaries,
user names, the message, and lines with every troublesome character going
through the line-protocol encoder and back through the test parser."""
import os
import time

import numpy as np
import pytest

from dkebpf._lineproto import encode_batch
from dkebpf._records import (BASH_CAPTURE_MAX, BASH_LEN_AT_LEAST, BASH_LINE_DTYPE, BASH_TRUNCATED)
from dkebpf.plugins import bash
from support.lineproto_parser import parse


def make_records(rows):
    """rows of (line bytes, pid, uid, ts[, line_len, flags]) as the BPF program writes them."""
    recs = np.zeros(len(rows), BASH_LINE_DTYPE)
    for r, row in zip(recs, rows):
        line, pid, uid, ts = row[:4]
        cap = line[:BASH_CAPTURE_MAX]
        r["line"] = cap + b"\0" * (BASH_CAPTURE_MAX + 1 - len(cap))
        r["captured"] = len(cap)
        r["line_len"] = row[4] if len(row) > 4 else len(line)
        r["flags"] = row[5] if len(row) > 5 else (BASH_TRUNCATED if len(line) > BASH_CAPTURE_MAX else 0)
        r["pid"], r["uid"], r["ts"] = pid, uid, ts
    return recs


class FixedNames(bash.UserNames):
    def __init__(self, names):
        super().__init__()
        self.map = names
        self.lookups = []

    def lookup(self, uid):
        self.lookups.append(uid)
        return self.map.get(uid, str(uid))


# --- finding bash binaries ----------------------------------------------------

def test_find_bash_binaries_one_entry_per_file(tmp_path):
    root = tmp_path / "host"
    (root / "usr/bin").mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")  # merged /usr: /bin/bash is /usr/bin/bash
    (root / "usr/bin/bash").write_bytes(b"\x7fELF bash")
    other = tmp_path / "opt/bash5.2"
    other.parent.mkdir()
    other.write_bytes(b"\x7fELF another bash")
    os.link(root / "usr/bin/bash", tmp_path / "opt/rbash")  # a hard link: same file
    python = tmp_path / "opt/python3"
    python.write_bytes(b"\x7fELF python")
    proc = tmp_path / "proc"
    for pid, exe in (("10", root / "usr/bin/bash"), ("11", other), ("12", python),
                     ("13", tmp_path / "opt/rbash"), ("14", tmp_path / "gone/bash")):
        (proc / pid).mkdir(parents=True)
        os.symlink(exe, proc / pid / "exe")
    (proc / "self").mkdir()
    (proc / "15").mkdir()  # a kernel thread: no exe

    found = bash.find_bash_binaries(str(root), str(proc))
    keys = {(os.stat(p).st_dev, os.stat(p).st_ino): p for p in (root / "usr/bin/bash", other)}
    # the collector's own /bin/bash, /usr/bin/bash count too
    own = {(os.stat(p).st_dev, os.stat(p).st_ino) for p in bash.BASH_PATHS if os.path.exists(p)}
    assert set(found) == set(keys) | own
    assert found[next(iter(keys))] == str(root / "bin/bash")  # the usual path is preferred
    assert found[list(keys)[1]] == f"{proc}/11/exe"  # reached through the process


def test_find_bash_binaries_this_machine():
    found = bash.find_bash_binaries()
    st = os.stat("/usr/bin/bash")
    assert (st.st_dev, st.st_ino) in found
    assert len(set(found)) == len(found)


@pytest.mark.parametrize("name,ok", [("bash", True), ("rbash", True), ("bash5.2", True), ("bash-5.1", True),
                                     ("dash", False), ("bashbug", False), ("sh", False), ("mybash", False)])
def test_bash_names(name, ok):
    assert bool(bash.BASH_NAME.fullmatch(name)) == ok


# --- user names ---------------------------------------------------------------

def test_user_names_from_host_root_passwd_with_numeric_fallback(tmp_path):
    (tmp_path / "etc").mkdir()
    passwd = tmp_path / "etc/passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n"
                      "broken line\nbob:x:notanumber:1::/:/bin/sh\n")
    now = [0.0]
    names = bash.UserNames(str(tmp_path), clock=lambda: now[0])
    assert [names.lookup(u) for u in (0, 1000, 1001)] == ["root", "alice", "1001"]
    # a new user: seen once the cached "1001" is older than USER_CACHE_S
    with open(passwd, "a") as f:
        f.write("carol:x:1001:1001::/:/bin/bash\n")
    os.utime(passwd, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert names.lookup(1001) == "1001"
    now[0] += bash.USER_CACHE_S
    assert names.lookup(1001) == "carol"


def test_user_names_system_database():
    names = bash.UserNames()
    assert names.lookup(0) == "root"
    unused = next(u for u in range(4_000_000_000, 4_000_001_000) if not _has_uid(u))
    assert names.lookup(unused) == str(unused)


def _has_uid(uid):
    import pwd
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def test_user_names_column_looks_up_each_distinct_uid_once():
    names = FixedNames({0: "root", 1000: "alice"})
    col = names.names(np.array([1000, 0, 1000, 7, 0], np.uint32))
    assert col.to_pylist() == ["alice", "root", "alice", "7", "root"]
    assert sorted(names.lookups) == [0, 7, 1000]


# --- time and message -----------------------------------------------------------

@pytest.mark.parametrize("off,text", [(0, "Z"), (8 * 3600, "+08:00"), (-(3 * 3600 + 1800), "-03:30"),
                                      (5 * 3600 + 2700, "+05:45")])
def test_utc_offset_text(off, text):
    assert bash.utc_offset_text(off) == text


def test_rfc3339():
    ns = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123Z
    assert bash.rfc3339([ns], 0).to_pylist() == ["2023-11-14T22:13:20Z"]
    assert bash.rfc3339([ns], 8 * 3600).to_pylist() == ["2023-11-15T06:13:20+08:00"]


def test_build_batch_fields_message_and_time():
    mono = 5_000_000_000
    to_wall = 1_700_000_000_000_000_000 - mono
    long = ("echo " + "é" * 300).encode()
    recs = make_records([
        (b"ls -la /tmp", 42, 0, mono),
        (long, 43, 1000, mono + 1_500_000_000),
        (b"y" * BASH_CAPTURE_MAX, 44, 1000, mono + 2_000_000_000, 70000, BASH_TRUNCATED | BASH_LEN_AT_LEAST),
    ])
    b = bash.build_batch(recs, FixedNames({0: "root", 1000: "alice"}), to_wall, 0)
    rows = b.to_pylist()
    assert b.schema.names == ["pid", "user", "cmd", "message", "time"]
    assert [r["pid"] for r in rows] == ["42", "43", "44"]
    assert [r["user"] for r in rows] == ["root", "alice", "alice"]
    assert [r["time"] for r in rows] == [1_700_000_000_000_000_000, 1_700_000_001_500_000_000,
                                         1_700_000_002_000_000_000]
    assert rows[0]["message"] == "2023-11-14T22:13:20Z pid:`42` user:`root` cmd:`ls -la /tmp`"
    kept = 5 + ((BASH_CAPTURE_MAX - 5) // 2) * 2  # whole 2-byte characters only
    assert rows[1]["cmd"] == "echo " + "é" * ((BASH_CAPTURE_MAX - 5) // 2)
    assert rows[1]["message"] == (f"2023-11-14T22:13:21Z pid:`43` user:`alice` cmd:`{rows[1]['cmd']}`"
                                  f" (truncated: first {kept} of {len(long)} bytes)")
    assert rows[2]["message"].endswith(f"` (truncated: first {BASH_CAPTURE_MAX} of at least 70000 bytes)")


TRICKY = [
    'echo "quoted \\"inner\\"" \'single\'',
    "a=1,b=2 c=3 d==4",
    "printf 'tab\there\\nnot a newline\\r'",
    "echo line1\nline2\r\nline3",   # a real newline typed with C-v C-j
    "echo back\\",                  # ends in a backslash
    "echo \\\\ \\\" \\, \\=",
    "echo \x01\x07\x1b[31mred\x1b[0m \x7f",
    "echo 世界 🎉 grüße",
    "x" * 10 + " " + "=" * 5 + "," * 5,
]


def test_tricky_lines_survive_line_protocol():
    recs = make_records([(line.encode(), 100 + i, 0, 10**9 + i) for i, line in enumerate(TRICKY)])
    b = bash.build_batch(recs, FixedNames({0: "root"}), 1_700_000_000_000_000_000, 0)
    body, skipped = encode_batch("bash", b, [], bash.BASH_FIELDS, {"host": "h x,y=z"}, 1, "time")
    assert skipped == 0
    assert body.count(b"\n") == len(TRICKY)  # one line per point, whatever the command held
    points = parse(body)
    assert [p.fields["cmd"] for p in points] == TRICKY
    assert [p.fields["pid"] for p in points] == [str(100 + i) for i in range(len(TRICKY))]
    assert [p.timestamp for p in points] == [1_700_000_001_000_000_000 + i for i in range(len(TRICKY))]
    for p, line in zip(points, TRICKY):
        assert p.measurement == "bash" and p.tags == {"host": "h x,y=z"}
        assert p.fields["message"].endswith(f" user:`root` cmd:`{line}`")
        assert set(p.fields) == {"pid", "user", "cmd", "message"}
