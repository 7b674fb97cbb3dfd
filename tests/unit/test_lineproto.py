"""dkebpf._lineproto.encode_batch against the independent parser
(tests/support/lineproto_parser.py) and the pure-Python reference encoder
(tests/reference/lineproto_ref.py)."""
import math
import sys
import threading

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkebpf._lineproto import encode_batch, encode_batch_stats
from reference import lineproto_ref
from support.lineproto_parser import Point, UInt, parse

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1


def both(*args, **kw):
    """Encode with Cython and the reference; they must agree byte for byte
    and on the counters."""
    body, skipped = encode_batch(*args, **kw)
    stats = encode_batch_stats()
    assert type(body) is bytes
    assert skipped == stats["skipped_rows"]
    assert (body, skipped) == lineproto_ref.encode_batch(*args, **kw)
    assert stats == lineproto_ref.encode_batch_stats()
    return body, stats


# ------------------------------------------------------------ exact output

def test_exact_line_format():
    batch = pa.record_batch({
        "src_ip": ["10.0.0.1", "::1"],
        "src_port": pa.array([443, 8080], pa.uint16()),
        "bytes_read": pa.array([12, -3], pa.int64()),
        "rtt": [0.5, 1e16],
        "ok": [True, False],
        "path": ['/a b"c', "x\\y"],
    })
    body, stats = both("netflow", batch, ["src_ip", "src_port"],
                       ["bytes_read", "rtt", "ok", "path"],
                       {"host": "node-1", "service": "ebpf"}, 1700000000000000000)
    assert body == (
        b'netflow,src_ip=10.0.0.1,src_port=443,host=node-1,service=ebpf '
        b'bytes_read=12i,rtt=0.5,ok=true,path="/a b\\"c" 1700000000000000000\n'
        b'netflow,src_ip=::1,src_port=8080,host=node-1,service=ebpf '
        b'bytes_read=-3i,rtt=1e+16,ok=false,path="x\\\\y" 1700000000000000000\n')
    assert stats == {"rows": 2, "lines": 2, "skipped_rows": 0, "nonfinite_floats": 0,
                     "saturated_uints": 0, "bytes": len(body)}


def test_escaping_of_names_and_tag_values():
    batch = pa.record_batch({
        "t k": ["a,b=c d", "tail\\", "new\nline\r", "mid\\dle", "\\,"],
        "f=k,": [1, 2, 3, 4, 5],
    })
    body, _ = both("my meas,x=y", batch, ["t k"], ["f=k,"], {}, 7)
    lines = body.decode().splitlines()
    assert lines == [
        "my\\ meas\\,x=y,t\\ k=a\\,b\\=c\\ d f\\=k\\,=1i 7",
        "my\\ meas\\,x=y,t\\ k=tail\\  f\\=k\\,=2i 7",      # trailing backslash -> space
        "my\\ meas\\,x=y,t\\ k=new\\ line\\  f\\=k\\,=3i 7",  # newline, CR -> space
        "my\\ meas\\,x=y,t\\ k=mid\\dle f\\=k\\,=4i 7",       # inner backslash literal
        "my\\ meas\\,x=y,t\\ k=\\\\, f\\=k\\,=5i 7",
    ]
    points = parse(body)
    assert [p.measurement for p in points] == ["my meas,x=y"] * 5
    assert [p.tags["t k"] for p in points] == ["a,b=c d", "tail ", "new line ", "mid\\dle", "\\,"]
    assert [p.fields["f=k,"] for p in points] == [1, 2, 3, 4, 5]


def test_string_field_newlines_are_escaped_and_round_trip():
    text = 'line1\nline2\r\n"quoted" back\\slash \\n literal'
    batch = pa.record_batch({"message": [text]})
    body, _ = both("bash", batch, [], ["message"], {"host": "h"}, 1)
    assert body.count(b"\n") == 1 and body.endswith(b"\n")
    assert b'line1\\nline2\\r\\n\\"quoted\\" back\\\\slash \\\\n literal' in body
    (point,) = parse(body)
    assert point.fields["message"] == text


def test_nulls_empty_tags_and_skipped_rows():
    batch = pa.record_batch({
        "a": pa.array(["x", None, "", "y"]),
        "b": pa.array([None, 5, 6, None], pa.int32()),
        "n": pa.array([1, None, None, None], pa.int64()),
        "f": pa.array([None, float("nan"), None, float("-inf")]),
        "s": pa.array([None, None, None, "ok"]),
    })
    body, stats = both("m", batch, ["a", "b"], ["n", "f", "s"], {"host": "h"}, 9)
    assert body == b'm,a=x,host=h n=1i 9\nm,a=y,host=h s="ok" 9\n'
    assert stats["skipped_rows"] == 2          # rows 1 and 2 have no field left
    assert stats["nonfinite_floats"] == 2
    assert stats["lines"] == 2 and stats["rows"] == 4


def test_global_tags_point_tag_wins_and_empty_global_dropped():
    batch = pa.record_batch({"host": ["own", None], "pid": pa.array([1, 2]),
                             "v": pa.array([1, 2])})
    body, _ = both("m", batch, ["host"], ["v", "pid"],
                   {"host": "global", "service": "ebpf", "empty": "", "pid": "x", "z": "a b"},
                   1)
    points = parse(body)
    assert points[0].tags == {"host": "own", "service": "ebpf", "z": "a b"}
    # the batch has a host column, so the global host is not used even when null
    assert points[1].tags == {"service": "ebpf", "z": "a b"}
    assert points[0].fields == {"v": 1, "pid": 1}


def test_integer_tags_all_widths():
    cols, names = {}, []
    for typ in (pa.int8(), pa.int16(), pa.int32(), pa.int64(),
                pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()):
        info = np.iinfo(typ.to_pandas_dtype())
        name = str(typ)
        cols[name] = pa.array([int(info.min), int(info.max), 0], typ)
        names.append(name)
    cols["v"] = pa.array([1, 2, 3])
    body, _ = both("m", pa.record_batch(cols), names, ["v"], {}, 0)
    points = parse(body)
    for name in names:
        typ = cols[name].type
        info = np.iinfo(typ.to_pandas_dtype())
        assert [p.tags[name] for p in points] == [str(info.min), str(info.max), "0"]


def test_integer_fields_unsigned_written_as_int_and_saturated():
    batch = pa.record_batch({
        "i8": pa.array([-128, 127, None], pa.int8()),
        "i64": pa.array([INT64_MIN, INT64_MAX, 0], pa.int64()),
        "u32": pa.array([0, 2**32 - 1, 7], pa.uint32()),
        "u64": pa.array([INT64_MAX, INT64_MAX + 1, UINT64_MAX], pa.uint64()),
    })
    body, stats = both("m", batch, [], ["i8", "i64", "u32", "u64"], {}, 0)
    assert b"u" not in body.replace(b"u32", b"").replace(b"u64", b"")
    points = parse(body)
    assert [p.fields.get("i8") for p in points] == [-128, 127, None]
    assert [p.fields["i64"] for p in points] == [INT64_MIN, INT64_MAX, 0]
    assert [p.fields["u32"] for p in points] == [0, 2**32 - 1, 7]
    assert [p.fields["u64"] for p in points] == [INT64_MAX] * 3
    assert not any(isinstance(v, UInt) for p in points for v in p.fields.values())
    assert stats["saturated_uints"] == 2


def test_timestamp_column_overrides_and_null_falls_back():
    batch = pa.record_batch({"v": [1, 2, 3],
                             "ts": pa.array([5, None, -7], pa.int64()),
                             "tus": pa.array([1, 2, None], pa.timestamp("us"))})
    body, _ = both("m", batch, [], ["v"], {}, 1000, timestamp_column="ts")
    assert [p.timestamp for p in parse(body)] == [5, 1000, -7]
    body, _ = both("m", batch, [], ["v"], {}, 1000, timestamp_column="tus")
    assert [p.timestamp for p in parse(body)] == [1000, 2000, 1000]


def test_sliced_batches_and_chunked_tables():
    n = 1000
    batch = pa.record_batch({
        "s": pa.array([None if i % 7 == 0 else f"v{i}" for i in range(n)]),
        "ls": pa.array([f"L{i}" for i in range(n)], pa.large_string()),
        "b": pa.array([None if i % 5 == 0 else i % 3 == 0 for i in range(n)]),
        "u": pa.array([None if i % 11 == 0 else i for i in range(n)], pa.uint16()),
        "f": pa.array([i / 3 for i in range(n)]),
    })
    for off, length in ((0, n), (1, 10), (3, 997), (13, 0), (999, 1), (250, 500)):
        part = batch.slice(off, length)
        assert part.column(0).offset == off
        body, stats = both("m", part, ["s", "ls", "u"], ["b", "f"], {"host": "h"}, off)
        points = parse(body)
        assert len(points) == length == stats["lines"]
        for k, p in enumerate(points):
            i = off + k
            assert p.tags.get("s") == (None if i % 7 == 0 else f"v{i}")
            assert p.tags["ls"] == f"L{i}"
            assert p.fields["f"] == i / 3
    table = pa.Table.from_batches([batch.slice(0, 300), batch.slice(300, 1), batch.slice(301)])
    assert table.column("s").num_chunks == 3
    body, skipped = encode_batch("m", table, ["s"], ["u"], {}, 0)
    assert skipped == len(range(0, n, 11)) == encode_batch_stats()["skipped_rows"]
    assert (body, skipped) == encode_batch("m", batch, ["s"], ["u"], {}, 0)
    assert encode_batch_stats()["rows"] == n


def test_other_column_types_are_normalised():
    batch = pa.record_batch({
        "dict_tag": pa.array(["a", "b", None, "a"]).dictionary_encode(),
        "view_tag": pa.array(["x y", "z", "w", None], pa.string_view()),
        "null_tag": pa.nulls(4),
        "f32": pa.array([0.1, 1.5, None, 3.0], pa.float32()),
        "dict_msg": pa.array(["m1", "m2", "m1", None]).dictionary_encode(),
        "null_field": pa.nulls(4),
    })
    body, _ = both("m", batch, ["dict_tag", "view_tag", "null_tag"],
                   ["f32", "dict_msg", "null_field"], {}, 0)
    points = parse(body)
    assert [p.tags for p in points] == [{"dict_tag": "a", "view_tag": "x y"},
                                        {"dict_tag": "b", "view_tag": "z"},
                                        {"view_tag": "w"}, {"dict_tag": "a"}]
    assert points[0].fields == {"f32": float(np.float32(0.1)), "dict_msg": "m1"}
    assert points[2].fields == {"dict_msg": "m1"}


def test_empty_batch():
    batch = pa.record_batch({"v": pa.array([], pa.int64())})
    assert encode_batch("m", batch, [], ["v"], {"host": "h"}, 0) == (b"", 0)
    assert encode_batch_stats()["rows"] == 0


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(fields=["nope"]), ValueError, "field column 'nope' is not in the batch"),
    (dict(tags=["nope"]), ValueError, "tag column 'nope' is not in the batch"),
    (dict(fields=[]), ValueError, "at least one field"),
    (dict(tags=["v"], fields=["v"]), ValueError, "both tags and fields"),
    (dict(fields=["v", "v"]), ValueError, "duplicate field"),
    (dict(tags=["f"]), TypeError, "tag column 'f' has type double"),
    (dict(fields=["lst"]), TypeError, "field column 'lst' has type list"),
    (dict(measurement=""), ValueError, "non-empty"),
    (dict(measurement="#x"), ValueError, "comment"),
    (dict(global_tags={"k": 1}), TypeError, "must be str"),
    (dict(timestamp_column="f"), TypeError, "timestamp column 'f'"),
    (dict(batch=[1, 2]), TypeError, "RecordBatch"),
])
def test_bad_arguments(kwargs, exc, match):
    batch = pa.record_batch({"v": [1], "f": [1.0], "lst": pa.array([[1]])})
    args = dict(measurement="m", batch=batch, tags=[], fields=["v"], global_tags={},
                timestamp_ns=0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        encode_batch(**args)


def test_large_batch_grows_buffer():
    n = 15000
    long = "x" * 5000
    batch = pa.record_batch({"t": [f"{long},{i}" for i in range(n)], "v": list(range(n))})
    body, stats = both("m", batch, ["t"], ["v"], {}, 0)
    assert stats["bytes"] == len(body) > 64 << 20  # past the capped first guess
    assert body.count(b"\n") == n


def test_worst_case_value_lengths_fit():
    """Every value at its longest text: the output is sized from an upper
    bound before the loop, and must be exactly as long as the reference."""
    n = 500
    worst_float = -1.2345678901234567e-308
    assert len(repr(worst_float)) == 24
    batch = pa.record_batch({
        "t": [",=, " * 5 + "\\"] * n,
        "it": pa.array([INT64_MIN] * n, pa.int64()),
        "ut": pa.array([UINT64_MAX] * n, pa.uint64()),
        "i": pa.array([INT64_MIN] * n, pa.int64()),
        "u": pa.array([UINT64_MAX] * n, pa.uint64()),
        "f": [worst_float] * n,
        "b": [False] * n,
        "s": ['"\\\n\r' * 5] * n,
        "ts": pa.array([INT64_MIN] * n, pa.int64()),
    })
    body, stats = both(",= x", batch, ["t", "it", "ut"], ["i", "u", "f", "b", "s"],
                       {"g": ", ="}, INT64_MIN, timestamp_column="ts")
    assert stats["lines"] == n and stats["saturated_uints"] == n
    assert sys.getsizeof(body) < len(body) + 64      # shrunk to fit
    assert parse(body)[0].fields["f"] == worst_float


def test_threads_encode_concurrently_with_own_stats():
    batches = [pa.record_batch({"t": [f"w{k}"] * 5000,
                                "v": pa.array([None if i % (k + 2) == 0 else i
                                               for i in range(5000)])})
               for k in range(4)]
    expected = [lineproto_ref.encode_batch("m", b, ["t"], ["v"], {}, 0)[0] for b in batches]
    results = {}

    def work(k):
        for _ in range(20):
            body, _ = encode_batch("m", batches[k], ["t"], ["v"], {}, 0)
            results[k] = (body, encode_batch_stats())

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        body, stats = results[k]
        assert body == expected[k]
        assert stats["skipped_rows"] == len(range(0, 5000, k + 2))


# ------------------------------------------------------------------ floats

def _float_lines(values):
    batch = pa.record_batch({"f": pa.array(values, pa.float64())})
    return encode_batch("m", batch, [], ["f"], {}, 0)[0].decode().splitlines()


def test_float_repr_on_hard_values():
    values = [0.0, -0.0, 0.1, 0.5, 1.0, 1e15, 1e16, 123456789012345678.0, 1e-4, 1e-5,
              5e-324, 2.2250738585072014e-308, 2.225073858507201e-308,
              1.7976931348623157e308, 9007199254740993.0, 1 / 3, 2 / 3, 100.0, 1e22, 1e23]
    for k in range(-1074, 1024):
        p = math.ldexp(1.0, k)
        values += [p, math.nextafter(p, 0), math.nextafter(p, math.inf)]
    for e in range(-325, 309):
        try:
            p = float(f"1e{e}")
        except OverflowError:
            continue
        values += [p, math.nextafter(p, 0), math.nextafter(p, math.inf)]
    values = [v for v in values if math.isfinite(v)]
    values += [-v for v in values]
    lines = _float_lines(values)
    assert lines == [f"m f={v!r} 0" for v in values]
    assert [p.fields["f"] for p in parse("\n".join(lines))] == values


def test_float_repr_on_random_bit_patterns():
    rng = np.random.default_rng(12345)
    bits = rng.integers(0, 2**64, size=300_000, dtype=np.uint64, endpoint=False)
    # also a block of subnormals and of small-exponent normals
    bits[:20000] = rng.integers(1, 2**52, size=20000, dtype=np.uint64)
    values = bits.view(np.float64)
    values = values[np.isfinite(values)].tolist()
    lines = _float_lines(values)
    bad = [(v, line) for v, line in zip(values, lines) if line != f"m f={v!r} 0"]
    assert len(lines) == len(values) and not bad[:5]


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
                min_size=1, max_size=50))
def test_float_property(values):
    batch = pa.record_batch({"f": pa.array(values, pa.float64()), "k": [1] * len(values)})
    body, stats = both("m", batch, [], ["f", "k"], {}, 0)
    points = parse(body)
    finite = [v for v in values if math.isfinite(v)]
    assert [p.fields["f"] for p in points if "f" in p.fields] == finite
    assert stats["nonfinite_floats"] == len(values) - len(finite)


# -------------------------------------------------------- property: round trip

SPECIAL = list(' ,="\\\n\r\t=#é€😀\x00') + ["ab", "\\ ", "\\,", '\\"']
text = st.lists(st.one_of(st.sampled_from(SPECIAL), st.characters(codec="utf-8")),
                max_size=10).map("".join)
name_text = st.text(alphabet=st.sampled_from(list("abcxyz_ ,=\\\n\"é")), min_size=1, max_size=6)


def norm_token(s):
    """What a tag key/value or field key reads back as (documented rules)."""
    s = s.replace("\n", " ").replace("\r", " ")
    return s[:-1] + " " if s.endswith("\\") else s


FIELD_KINDS = {
    "int": (pa.int64(), st.integers(INT64_MIN, INT64_MAX)),
    "int16": (pa.int16(), st.integers(-(2**15), 2**15 - 1)),
    "uint": (pa.uint64(), st.integers(0, UINT64_MAX)),
    "uint8": (pa.uint8(), st.integers(0, 255)),
    "float": (pa.float64(), st.floats()),
    "bool": (pa.bool_(), st.booleans()),
    "str": (pa.string(), text),
    "lstr": (pa.large_string(), text),
}
TAG_KINDS = {
    "str": (pa.string(), text),
    "lstr": (pa.large_string(), text),
    "int": (pa.int64(), st.integers(INT64_MIN, INT64_MAX)),
    "uint": (pa.uint32(), st.integers(0, 2**32 - 1)),
}


@st.composite
def batches(draw):
    n = draw(st.integers(0, 12))
    pre = draw(st.integers(0, 3))
    post = draw(st.integers(0, 2))
    total = pre + n + post
    names = draw(st.lists(name_text, min_size=1, max_size=9,
                          unique_by=norm_token))
    n_tags = draw(st.integers(0, len(names) - 1))
    globs_names = draw(st.lists(name_text, max_size=3, unique_by=norm_token))
    used = {norm_token(x) for x in names[:n_tags]}
    cols, tags, fields, kinds = {}, [], [], {}
    for k, name in enumerate(names):
        if k < n_tags:
            kind = draw(st.sampled_from(sorted(TAG_KINDS)))
            typ, values = TAG_KINDS[kind]
            tags.append(name)
        else:
            kind = draw(st.sampled_from(sorted(FIELD_KINDS)))
            typ, values = FIELD_KINDS[kind]
            fields.append(name)
        kinds[name] = kind
        vals = draw(st.lists(st.one_of(st.none(), values), min_size=total, max_size=total))
        cols[name] = pa.array(vals, typ)
    global_tags = {}
    for g in globs_names:
        # a global tag may share a column's name (then it is dropped) but
        # must not collide with a different tag key after normalisation
        if g in cols or norm_token(g) not in used:
            global_tags[g] = draw(text)
            used.add(norm_token(g))
    batch = pa.record_batch(cols) if cols else None
    measurement = draw(st.text(alphabet=st.sampled_from(list("netflow ,=\\\"é")), min_size=1,
                               max_size=8))
    ts = draw(st.integers(INT64_MIN, INT64_MAX))
    return measurement, batch.slice(pre, n), tags, fields, global_tags, ts, kinds


def expected_points(measurement, batch, tags, fields, global_tags, ts):
    out = []
    meas = norm_token(measurement)
    tag_lists = {name: batch.column(name).to_pylist() for name in tags}
    field_lists = {name: batch.column(name).to_pylist() for name in fields}
    for i in range(batch.num_rows):
        tag_map = {}
        for name in tags:
            v = tag_lists[name][i]
            if v is not None and v != "":
                tag_map[norm_token(name)] = norm_token(str(v))
        for k, v in global_tags.items():
            if k not in tags and k not in fields and v:
                tag_map[norm_token(k)] = norm_token(v)
        field_map = {}
        for name in fields:
            v = field_lists[name][i]
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            if isinstance(v, int) and not isinstance(v, bool):
                v = min(v, INT64_MAX)
            field_map[norm_token(name)] = v
        if field_map:
            out.append(Point(meas, tag_map, field_map, ts))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_round_trip_property(case):
    measurement, batch, tags, fields, global_tags, ts, kinds = case
    body, stats = both(measurement, batch, tags, fields, global_tags, ts)
    points = parse(body)
    assert points == expected_points(measurement, batch, tags, fields, global_tags, ts)
    assert stats["lines"] == len(points) == body.count(b"\n")
    assert stats["lines"] + stats["skipped_rows"] == batch.num_rows
    kind_of = {norm_token(f): kinds[f] for f in fields}
    want = {"float": float, "bool": bool, "str": str, "lstr": str}
    for p in points:
        for name, v in p.fields.items():
            assert type(v) is want.get(kind_of[name], int)   # never UInt: DataKit wants int


# ------------------------------------------------------------ the parser

def test_parser_accepts_spec_forms():
    body = (b"# a comment\n\n"
            b"  cpu,host=a\\ b,region=us\\,w\\=1 v=1i,u=2u,f=-1.5,g=1e+16,h=.5,j=3,"
            b"t=t,T=T,tr=true,Tr=True,TR=TRUE,fa=f,Fa=F,fal=false,FA=False,FAL=FALSE,"
            b's="a\\"b\\\\c\\nd\\qe" -12\n'
            b"mem\\ x,k=v\\ w v=0i\n"
            b"back\\slash,k=a\\b b=1i 5\n")
    p1, p2, p3 = parse(body)
    assert p1.measurement == "cpu"
    assert p1.tags == {"host": "a b", "region": "us,w=1"}
    assert p1.fields == {"v": 1, "u": 2, "f": -1.5, "g": 1e16, "h": 0.5, "j": 3.0,
                         "t": True, "T": True, "tr": True, "Tr": True, "TR": True,
                         "fa": False, "Fa": False, "fal": False, "FA": False, "FAL": False,
                         "s": 'a"b\\c\nd\\qe'}
    assert isinstance(p1.fields["u"], UInt) and not isinstance(p1.fields["v"], UInt)
    assert isinstance(p1.fields["j"], float)
    assert p1.timestamp == -12
    assert p2 == Point("mem x", {"k": "v w"}, {"v": 0}, None)
    assert p3 == Point("back\\slash", {"k": "a\\b"}, {"b": 1}, 5)


@pytest.mark.parametrize("line, match", [
    ("m", "expected a space and the field set"),
    ("m ", "empty field key"),
    ("m,t=1", "expected a space"),
    ("m,=1 v=1i", "empty tag key"),
    ("m,t= v=1i", "empty value of tag 't'"),
    ("m,t v=1i", "unescaped ' ' in tag key"),
    ("m,t=a=b v=1i", "unescaped '=' in value of tag 't'"),
    ("m,t=1,t=2 v=1i", "duplicate tag 't'"),
    ("m v=1i,v=2i", "duplicate field 'v'"),
    ("m v=", "missing value of field 'v'"),
    ("m v", "field 'v' has no '='"),
    ("m v=1x", "invalid value '1x'"),
    ("m v=nan", "invalid value 'nan'"),
    ("m v=1e999", "out of range"),
    ("m v=9223372036854775808i", "out of the int64 range"),
    ("m v=-1u", "invalid value '-1u'"),
    ("m v=18446744073709551616u", "out of the uint64 range"),
    ('m v="abc', "unterminated string"),
    ('m v="a"b', "unexpected 'b'"),
    ("m v=1i 12x", "invalid timestamp '12x'"),
    ("m v=1i 1 2", "invalid timestamp '1 2'"),
    ("m v=1i 9223372036854775808", "out of the int64 range"),
    (",t=1 v=1i", "missing measurement"),
])
def test_parser_rejects_malformed(line, match):
    with pytest.raises(ValueError, match=match):
        parse("ok v=1i\n" + line + "\n")
    with pytest.raises(ValueError, match="line 2"):
        parse("ok v=1i\n" + line + "\n")


def test_parser_rejects_raw_newline_in_string_and_bad_utf8():
    with pytest.raises(ValueError, match="unterminated string"):
        parse(b'm s="a\nb" 1\n')
    with pytest.raises(ValueError, match="not valid UTF-8"):
        parse(b"m v=1i \xff\n")



# ------------------------------------------------------------ the reader

from dkebpf._lineproto import read_points  # noqa: E402
from support.lineproto_parser import parse as strict_parse  # noqa: E402

SPAN_REQUIRED = {"ebpf_span_type": "string", "direction": "string", "thread_trace_id": "int", "req_seq": "int",
                 "resp_seq": "int"}


def rows_of(table):
    return [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_reader_reads_what_the_encoder_writes(case):
    measurement, batch, tags, fields, global_tags, ts, kinds = case
    body, _ = encode_batch(measurement, batch, tags, fields, global_tags, ts)
    table, rejected, errors = read_points(body, timestamp_ns=1)
    points = parse(body)
    # a global tag named as a field (after escaping): one key twice, which the columns refuse
    both = [p for p in points if set(p.tags) & set(p.fields)]
    assert rejected == len(both) and all("duplicate key" in e for e in errors)
    want = [{**p.tags, **{k: int(v) if isinstance(v, UInt) else v for k, v in p.fields.items()}, "time": ts}
            for p in points if p not in both]
    assert rows_of(table) == want


KINDS_OF = {bool: "bool", int: "int", float: "float", str: "string"}


def columnar_oracle(body):
    """read_points' rules on top of the strict parser, line by line."""
    kinds, rows, rejected = {}, [], 0
    for line in body.split("\n"):
        if not line.lstrip(" \t") or line.lstrip(" \t").startswith("#"):
            continue
        try:
            (p,) = strict_parse(line)
        except ValueError:
            rejected += 1
            continue
        values = {**p.tags, **p.fields}
        if (set(p.tags) & set(p.fields) or any(isinstance(v, UInt) and v >= 2**63 for v in p.fields.values())
                or any(kinds.get(k, KINDS_OF[type(v) if not isinstance(v, UInt) else int]) !=
                       KINDS_OF[type(v) if not isinstance(v, UInt) else int] for k, v in values.items())):
            rejected += 1
            continue
        for k, v in values.items():
            kinds.setdefault(k, KINDS_OF[int if isinstance(v, UInt) else type(v)])
        rows.append({**{k: int(v) if isinstance(v, UInt) else v for k, v in values.items()},
                     "time": p.timestamp if p.timestamp is not None else 7})
    return rows, rejected


line_parts = st.sampled_from(["m", "m,t=a", "m,t=b,u=c", "m,t=", "m,=x", "m,t=a=b", " m", "#m", "m\\ x",
                              " ", ",", "=", "\\", '"', "v=1i", "v=1u", "v=18446744073709551615u", "v=-1i",
                              "v=1.5", "v=1e400", "v=.5", "v=t", "v=FALSE", 'v="s"', 'v="a\\"b', "w=2i", "t=1i",
                              'v="x\\ny"', " 12", " -5", " 9223372036854775808", " 1 2", "i", "u", "e5", "\t"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(st.one_of(line_parts, st.text(max_size=4)), max_size=8).map("".join), max_size=8))
def test_reader_accepts_and_rejects_lines_as_the_strict_parser(lines):
    body = "\n".join(lines)
    table, rejected, errors = read_points(body.encode(), timestamp_ns=7)
    want_rows, want_rejected = columnar_oracle(body)
    assert rejected == want_rejected and len(errors) == min(3, rejected)
    got = rows_of(table)
    assert [{k: v for k, v in r.items() if k != "time"} for r in got] == [
        {k: v for k, v in r.items() if k != "time"} for r in want_rows]
    assert [r["time"] for r in got] == [r.get("time") for r in want_rows] or "time" in "".join(lines)


def test_reader_errors_name_the_line_and_keep_the_rest():
    good = 'dketrace,host=a ebpf_span_type="entry",direction="incoming",thread_trace_id=1i,req_seq=2i,resp_seq=3i'
    str_seq, no_resp = good.replace("req_seq=2i", 'req_seq="2"'), good.replace(",resp_seq=3i", "")
    body = "\n".join([good + " 10", "not line protocol", str_seq, no_resp, good + ',duration=1.5',
                      good + ",duration=2i", "", good + " 20"]).encode()
    table, rejected, errors = read_points(body, SPAN_REQUIRED, 0)
    assert table.column("time").to_pylist() == [10, 0, 20]
    assert table.column("duration").to_pylist() == [None, 1.5, None]
    assert rejected == 4
    assert errors == [
        "line 2, column 9: unescaped ' ' in field key: 'not line protocol'",
        f"line 3, column 80: 'req_seq' is a string, an integer is required: {str_seq!r}",
        f"line 4, column 1: required field 'resp_seq' (an integer) missing: {no_resp!r}",
    ]
    _, _, errors = read_points(body[body.index(b"\n" + good.encode() + b",duration=2i") + 1:], None, 0)
    assert errors == []  # the type conflict is with an earlier line of the same body only
    with pytest.raises(ValueError, match="required kind 'text'"):
        read_points(b"", {"a": "text"})


def test_reader_repairs_invalid_utf8_and_unescapes():
    table, rejected, _ = read_points(b'm,k=a\xffb,s\\ p\\,c\\=e=x f="q\\"\\\\\\n\xc3" 5\r\n', timestamp_ns=0)
    assert rejected == 1  # "5\r": CR is no part of line protocol (the strict parser says the same)
    table, rejected, _ = read_points(b'm,k=a\xffb,s\\ p\\,c\\=e=x f="q\\"\\\\\\n\xc3" 5\n', timestamp_ns=0)
    assert rejected == 0
    assert rows_of(table) == [{"k": "a\ufffdb", "s p,c=e": "x", "f": 'q"\\\n\ufffd', "time": 5}]


def test_reader_rejects_huge_lines_keeps_the_rest():
    body = b"m v=1i 1\nm s=\"" + b"x" * (1 << 20) + b"\" 2\nm v=3i 3\n"
    table, rejected, errors = read_points(body)
    assert table.column("v").to_pylist() == [1, 3] and rejected == 1
    assert errors[0].startswith("line 2, column 1: line longer than 1048576 bytes: 'm s=\"xxx")


def test_reader_empty_and_comment_bodies():
    for body in (b"", b"\n\n", b"# only a comment\n  \t\n"):
        table, rejected, errors = read_points(body, SPAN_REQUIRED, 0)
        assert (table.num_rows, rejected, errors) == (0, 0, [])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_reader_fuzz_random_bytes_give_valid_columns(body, required):
    table, rejected, errors = read_points(body, {"a": "int"} if required else None, 5)
    table.validate(full=True)  # offsets, bitmaps, UTF-8 of every string
    lines = [ln for ln in body.split(b"\n") if ln.lstrip(b" \t") and not ln.lstrip(b" \t").startswith(b"#")]
    assert table.num_rows + rejected == len(lines) and len(errors) == min(3, rejected)
