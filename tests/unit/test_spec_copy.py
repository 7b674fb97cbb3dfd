"""The project's copy of the measurement spec, and the schema checker built
on it (tests/support/schema.py)."""
import os

import pytest

from support import schema
from support.lineproto_parser import Point, UInt, parse
from support.shared_docs import shared_or_skip

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT_COPY = os.path.join(REPO, "dkebpf", "spec", "measurements.json")


def test_project_copy_equals_shared_spec():
    with open(PROJECT_COPY, "rb") as a, open(shared_or_skip("spec/measurements.json"), "rb") as b:
        assert a.read() == b.read(), "dkebpf/spec/measurements.json differs from shared/spec"


def test_schema_loads_every_measurement():
    schemas = schema.load_schemas()
    assert os.path.samefile(schema.SPEC_PATH, PROJECT_COPY)
    assert {"netflow", "httpflow", "dnsflow", "bash", "bpf_net_l4_log",
            "bpf_net_l7_log", "dketrace"} <= set(schemas)
    assert "_about" not in schemas
    assert schemas["netflow"]["fields"]["bytes_read"]["type"] == "int"
    assert schemas["httpflow"]["fields"]["truncated"]["type"] == "bool"


def netflow_point(**over):
    """A point with every tag netflow requires (placeholder values)."""
    tags = {t: "v" for t in schema.required_tags("netflow")}
    tags.update(host="h1", src_ip="10.0.0.1", direction="outgoing", source="netflow")
    (p,) = parse(b"netflow," + ",".join(f"{k}={v}" for k, v in sorted(tags.items())).encode()
                 + b" bytes_read=10i,bytes_written=3i,rtt=50i 1\n")
    return p._replace(**over)


def test_required_tags_are_the_documented_ones_but_k8s_and_conditional():
    req = schema.required_tags("netflow")
    assert {"host", "src_ip", "dst_ip", "src_port", "dst_port", "pid", "process_name", "family",
            "transport", "direction", "source", "client_ip", "server_ip", "src_ip_type"} <= req
    assert not {t for t in req if "k8s" in t}
    assert not req & {"dst_domain", "dst_nat_ip", "dst_nat_port", "server_domain", "sub_source"}
    assert "dst_domain" in schema.required_tags("dnsflow")  # the queried name, always known
    assert schema.required_tags("bash") == {"host"}
    for m, conditional in schema.CONDITIONAL_TAGS.items():  # no stale names
        assert set(conditional) <= set(schema.schema(m)["tags"]), m


def test_check_point_accepts_valid_points():
    schema.check_point("netflow", netflow_point())
    schema.check_point("netflow", netflow_point(tags={**netflow_point().tags, "service": "ebpf"}))
    (bash,) = parse(b'bash,host=h,source=bash cmd="ls",message="ls -l",pid="12",user="root" 5\n')
    schema.check_point("bash", bash)  # logging points may carry tag source


@pytest.mark.parametrize("change, message", [
    (dict(tags={"src_ip": "1.2.3.4"}), "required tag 'host' is missing"),
    (dict(tags={**netflow_point().tags, "colour": "red"}), "tag 'colour' is not in the schema"),
    (dict(tags={k: v for k, v in netflow_point().tags.items() if k != "process_name"}),
     "required tag 'process_name' is missing"),
    (dict(fields={"bytes_read": 1, "bogus": 2}), "field 'bogus' is not in the schema"),
    (dict(fields={"bytes_read": 1.5}), "field 'bytes_read' = 1.5 is float, schema says int"),
    (dict(fields={"bytes_read": "1"}), "is string, schema says int"),
    (dict(fields={"bytes_read": True}), "is bool, schema says int"),
    (dict(fields={"bytes_read": UInt(3)}), "is uint, schema says int"),
    (dict(measurement="dnsflow"), "measurement is 'dnsflow'"),
])
def test_check_point_names_each_problem(change, message):
    with pytest.raises(AssertionError, match=message):
        schema.check_point("netflow", netflow_point(**change))


def test_check_point_extra_tags_and_unknown_measurement():
    p = netflow_point(tags={**netflow_point().tags, "cluster": "c1"})
    with pytest.raises(AssertionError, match="'cluster'"):
        schema.check_point("netflow", p)
    schema.check_point("netflow", p, extra_tags={"cluster"})
    with pytest.raises(AssertionError, match="not in the spec"):
        schema.check_point("nosuch", Point("nosuch", {"host": "h"}, {"v": 1}, 0))
    # bash declares only host (plus source, as a logging measurement)
    (bash,) = parse(b'bash,host=h,src_ip=1 message="x" 5\n')
    with pytest.raises(AssertionError, match="tag 'src_ip' is not in the schema"):
        schema.check_point("bash", bash)


def test_only_a_flow_without_process_may_lack_its_name():
    tags = {k: v for k, v in netflow_point().tags.items() if k != "process_name"}
    schema.check_point("netflow", netflow_point(tags={**tags, "pid": "0"}))
    with pytest.raises(AssertionError, match="required tag 'process_name' is missing"):
        schema.check_point("netflow", netflow_point(tags={**tags, "pid": "42"}))
