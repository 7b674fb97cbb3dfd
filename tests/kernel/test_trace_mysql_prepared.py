"""ebpf-trace's MySQL prepared statements over the real trace.bpf.o: the
real MariaDB server and mysql-connector-python's prepared cursor (pure
Python: it reads the server greeting's 4-byte header and its body in two
calls). A span per COM_STMT_PREPARE and per COM_STMT_EXECUTE at both ends,
with the statement's SQL (normalized), including a prepare that follows
a COM_STMT_CLOSE in the same run of calls."""
import logging
import os
import sys

import pytest

from support.trace_apps import start_after, stop_process
from kernel.test_trace_bpf import MARK, make_cfg, spans_until

pytestmark = [pytest.mark.kernel, pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast")]

CLIENT = r"""
import sys
import mysql.connector

c = mysql.connector.connect(host="127.0.0.1", port=int(sys.argv[1]), user="root", use_pure=True,
                            ssl_disabled=True)
cur = c.cursor(prepared=True)
cur.execute("select ? + 1 from dual where 2 = ?", (41, 2))
assert cur.fetchall() == [(42,)]
cur.execute("select ? + 1 from dual where 2 = ?", (1, 2))  # executed again, not prepared again
assert cur.fetchall() == [(2,)]
cur.close()  # COM_STMT_CLOSE (no answer), then the next prepare
cur = c.cursor(prepared=True)
cur.execute("select concat(?, 'x')", ("a",))
assert [tuple(str(v) for v in r) for r in cur.fetchall()] == [("ax",)]
cur.close()
c.close()
"""


def is_ours(r):
    """A span of the test's statements (the connector's own at its start,
    SET NAMES and @@ variables, are not ours to assert on)."""
    return r.get("operation") == "MySQL" and (r["resource"] or "").startswith(("select ?", "select concat"))


def test_prepared_statements_both_ends(bpf_ok):
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.trace import TracePlugin

    from support.trace_apps import MariaDB

    db = MariaDB()
    p = TracePlugin(PluginContext(cfg=make_cfg(trace_name_list=("mariadbd",)), logger=logging.getLogger("test"),
                                  self_pid=os.getpid()))
    cli = None
    try:
        p.start()
        cli = start_after(1.5, [sys.executable, "-c", CLIENT, str(db.port)], dict(os.environ, **{MARK: "1"}))
        port = str(db.port)

        def done(rows):
            ours = [r for r in rows if is_ours(r)]
            return (sum(r["pid"] == str(cli.pid) for r in ours) >= 5
                    and sum(r["src_port"] == port and r["direction"] == "incoming" for r in ours) >= 5)

        rows = spans_until(p, done, timeout=30)
        assert cli.wait(30) == 0
    finally:
        p.stop()
        stop_process(cli, 5)
        db.stop()
    mine = [r for r in rows if is_ours(r)]
    client = sorted((r for r in mine if r["pid"] == str(cli.pid)), key=lambda r: r["ktime"])
    server = sorted((r for r in mine if r["src_port"] == port and r["direction"] == "incoming"),
                    key=lambda r: r["ktime"])
    want = ["select ? + ? from dual where ? = ?"] * 3 + ["select concat(?, ?)"] * 2
    assert [r["resource"] for r in client] == want
    assert [r["resource"] for r in server] == want
    assert {r["status"] for r in client + server} == {"ok"}
    assert [(r["req_seq"], r["resp_seq"]) for r in server] == [(r["req_seq"], r["resp_seq"]) for r in client]
