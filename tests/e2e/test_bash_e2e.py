"""ebpf-bash end to end: real interactive bash sessions on pseudo-terminals
(root, a user the test creates, nobody), typed as a person would, and the
`bash` log points DataKit receives: every executed line exactly once, with
the bash pid, the user's name, the command as typed (quotes, separators,
unicode, control characters, lines past the capture limit) and the time
it was entered. Points are picked by the pids of the bash processes this
test started: other tests may run bash on this machine at the same time."""
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime

import pytest

from dkebpf.plugins import requirements

from support import traffic
from support.bashpty import BashSession
from support.schema import check_record

pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("ebpf-bash",)))]

CAPTURE = 480  # BASH_LINE_MAX in bpf/include/bash.h
MESSAGE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)) pid:`(\d+)` user:`([^`]*)` cmd:`(.*)`"
                     r"( \(truncated: first (\d+) of (\d+) bytes\))?\Z", re.S)
lit = BashSession.literal


def utf8_prefix(text, limit=CAPTURE):
    """The longest prefix of text whose UTF-8 form fits in limit bytes."""
    out, n = [], 0
    for ch in text:
        n += len(ch.encode())
        if n > limit:
            break
        out.append(ch)
    return "".join(out)


@pytest.fixture
def test_user():
    """A user of our own, removed afterwards."""
    name = f"dkb{uuid.uuid4().hex[:10]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/bash", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def bash_points(receiver, pids):
    pids = {str(p) for p in pids}
    return [r for r in receiver.records if r.point.measurement == "bash" and r.point.fields.get("pid") in pids]


def wait_points(receiver, pids, n, timeout=30):
    traffic.wait_until(lambda: len(bash_points(receiver, pids)) >= n, timeout)
    return bash_points(receiver, pids)


# (what is typed, the line bash executes); an empty line executes nothing
ROOT_LINES = [
    ('echo "hello, world" a=b', 'echo "hello, world" a=b'),
    ("x='single quoted' y=\"double \\\"inner\\\"\" z=1,2,3", "x='single quoted' y=\"double \\\"inner\\\"\" z=1,2,3"),
    ("", None),
    ('printf "%s\\n" grüße 世界 🎉', 'printf "%s\\n" grüße 世界 🎉'),
    ("echo a\\b \\\\ c\\,d \\=e", "echo a\\b \\\\ c\\,d \\=e"),
    ("echo tab" + lit("\t") + "x", "echo tab\tx"),
    ("echo one" + lit("\n") + "echo two", "echo one\necho two"),
    ("echo bell" + lit("\x07") + " esc" + lit("\x1b") + "[0m", "echo bell\x07 esc\x1b[0m"),
    ("echo " + "A" * 1000, "echo " + "A" * 1000),
    (": " + "世" * 400, ": " + "世" * 400),
    ("   ", "   "),
]
USER_LINES = [
    ("whoami", "whoami"),
    ('echo "$USER, ok" key=value', 'echo "$USER, ok" key=value'),
    ("echo " + "é" * 300 + " tail", "echo " + "é" * 300 + " tail"),
]
NOBODY_LINES = [("id -u", "id -u")]


def run_session(lines, user=None):
    t0 = time.time_ns()
    with BashSession(user=user) as sh:
        for typed, _ in lines:
            sh.run(typed)
    expected = [line for _, line in lines if line] + ["exit"]
    return sh.pid, expected, t0, time.time_ns()


def test_lines_of_several_users(collector, receiver, test_user):
    collector.start(enabled="ebpf-bash", interval="2s")
    sessions = {
        "root": run_session(ROOT_LINES),
        test_user: run_session(USER_LINES, user=test_user),
        "nobody": run_session(NOBODY_LINES, user="nobody"),
    }
    pids = [s[0] for s in sessions.values()]
    total = sum(len(s[1]) for s in sessions.values())
    recs = wait_points(receiver, pids, total)
    time.sleep(2.5)  # one more interval: nothing comes twice
    recs = bash_points(receiver, pids)
    assert len(recs) == total, [r.point.fields["cmd"] for r in recs]

    for user, (pid, expected, t0, t1) in sessions.items():
        mine = [r for r in recs if r.point.fields["pid"] == str(pid)]
        pts = sorted((r.point for r in mine), key=lambda p: p.timestamp)
        assert [p.fields["cmd"] for p in pts] == [utf8_prefix(x) for x in expected]
        for r, p in zip(mine, pts):
            check_record(r, extra_tags=("team", "env"))
            assert (r.category, r.input) == ("logging", "ebpf-bash")
        for p, line in zip(pts, expected):
            assert p.tags == {"host": "e2e-host", "service": "ebpf", "source": "bash", "team": "net", "env": "test"}
            assert p.fields["user"] == user and p.fields["pid"] == str(pid)
            assert t0 <= p.timestamp <= t1, (t0, p.timestamp, t1)
            m = MESSAGE.match(p.fields["message"])
            assert m, p.fields["message"]
            stamp, mpid, muser, mcmd, note, kept, full = m.groups()
            assert (mpid, muser, mcmd) == (str(pid), user, utf8_prefix(line))
            # the message's clock time is the point's, to the second
            assert int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()) == p.timestamp // 10**9
            if len(line.encode()) > CAPTURE:
                assert (int(kept), int(full)) == (len(utf8_prefix(line).encode()), len(line.encode()))
            else:
                assert note is None
    assert "readline uretprobe on" in collector.log_text()


def test_128_waiting_lines_flush_before_the_interval(collector, receiver):
    collector.start(enabled="ebpf-bash", interval="10m")
    n = 130
    with BashSession() as sh:
        for i in range(n):
            sh.run(f": line {i}")
        # no interval has ended: these come from the early flush
        early = wait_points(receiver, [sh.pid], 128, timeout=20)
        assert 128 <= len(early) <= n
    assert collector.stop(signal.SIGTERM) == 0  # the last, partial interval
    pts = [r.point for r in bash_points(receiver, [sh.pid])]
    assert sorted(p.fields["cmd"] for p in pts) == sorted([f": line {i}" for i in range(n)] + ["exit"])


def test_user_names_from_host_root(collector, receiver, tmp_path, monkeypatch):
    # in a container the host's / is mounted at HOST_ROOT: names come from its passwd
    (tmp_path / "host/etc").mkdir(parents=True)
    (tmp_path / "host/etc/passwd").write_text("hostroot:x:0:0::/root:/bin/bash\n")
    monkeypatch.setenv("HOST_ROOT", str(tmp_path / "host"))
    monkeypatch.setenv("HOST_PROC", "/proc")
    collector.start(enabled="ebpf-bash", interval="1s")
    pid, expected, _, _ = run_session([("echo from the host", "echo from the host")])
    nobody, _, _, _ = run_session(NOBODY_LINES, user="nobody")
    pts = [r.point for r in wait_points(receiver, [pid, nobody], 4)]
    by_pid = {(p.fields["pid"], p.fields["cmd"]): p.fields["user"] for p in pts}
    assert by_pid == {(str(pid), "echo from the host"): "hostroot", (str(pid), "exit"): "hostroot",
                      (str(nobody), "id -u"): "65534", (str(nobody), "exit"): "65534"}


def test_check_reports_the_bash_binaries(bpf_ok, tmp_path):
    p = subprocess.run([sys.executable, "-m", "dkebpf", "check"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    block = p.stdout.split("ebpf-bash: ", 1)[1].split("\nebpf-", 1)[0]
    assert block.startswith("yes\n"), p.stdout
    # /bin/bash and /usr/bin/bash are one file here: named once
    usual = re.findall(r"^  - uretprobe on readline attaches to (/usr)?/bin/bash$", block, re.M)
    assert len(usual) == 1, block
