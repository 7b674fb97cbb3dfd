"""dkebpf._sqlnorm.normalize against tests/reference/sqlnorm_ref.py
(hypothesis, fuzz) and pinned statements of MySQL and PostgreSQL."""
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import _sqlnorm
from reference import sqlnorm_ref as ref


def normalize(*sqls):
    n = len(sqls)
    got = _sqlnorm.normalize(pa.array(sqls, pa.binary()), range(n), [0] * n, [len(s) for s in sqls]).to_pylist()
    assert got == ref.normalize(sqls, range(n), [0] * n, [len(s) for s in sqls])
    return got


def test_literals_become_placeholders():
    assert normalize(
        b"SELECT * FROM users WHERE name = 'O''Brien' AND age > 42 AND score IN (1, 2.5, 1e-3, 0x1F) LIMIT 10",
        b"select $1, t2.c from t2 where d = E'\\n\\'' and x = $body$ it's $body$",
        b"  /* hint */ SELECT `a` , \"B\"\n\n FROM x # trailing comment",
        b"INSERT INTO t VALUES ('cut by the capture",
    ) == ["SELECT * FROM users WHERE name = ? AND age > ? AND score IN (?, ?, ?, ?) LIMIT ?",
          "select $1, t2.c from t2 where d = ? and x = ?",
          "SELECT `a` , \"B\" FROM x",
          "INSERT INTO t VALUES (?"]


def test_rows_are_slices_of_payloads_and_invalid_utf8_replaced():
    payloads = pa.array([b"\x03SELECT 1", b"xxUPDATE t SET v = 'a' WHERE k = \xff\xfe"], pa.binary())
    out = _sqlnorm.normalize(payloads, [0, 1, 1], [1, 2, 200], [8, 100, 5]).to_pylist()
    assert out == ["SELECT ?", "UPDATE t SET v = ? WHERE k = \ufffd\ufffd", ""]


def test_bad_rows_are_clear_errors():
    with pytest.raises(ValueError, match="points at payload 3 of 1"):
        _sqlnorm.normalize(pa.array([b"x"]), [3], [0], [1])
    with pytest.raises(ValueError, match="different lengths"):
        _sqlnorm.normalize(pa.array([b"x"]), [0], [0, 1], [1])


sqlish = st.lists(st.sampled_from([b"SELECT", b" ", b"\n", b"'", b"''", b"\\", b"\"", b"`", b"--", b"#", b"/*",
                                   b"*/", b"$", b"$$", b"$a$", b"1", b"0x", b"e", b"E", b"X", b".", b"-", b"+",
                                   b"a", b"_", b"\xc3\xa9", b"\xff", b"t1", b"(", b","]), max_size=30).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(st.lists(sqlish, max_size=5))
def test_agrees_with_reference(sqls):
    normalize(*sqls)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=5))
def test_fuzz_random_bytes(sqls):
    normalize(*sqls)
