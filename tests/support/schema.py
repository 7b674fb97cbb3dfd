"""Measurement schemas, and a checker for points received in tests.

The schemas come from ``dkebpf/spec/measurements.json`` -- the project's
own copy of the DataKit eBPF collector's documented measurements
(``tests/unit/test_spec_copy.py`` keeps it equal to the shared spec).

What a point may carry, per the spec's ``_about`` and the DataKit contract:

* the measurement's documented tags and fields;
* the global tags: ``host`` (always required), ``service`` (the
  ``--service`` flag, default ``ebpf``) and whatever the caller passes as
  ``extra_tags`` (``[inputs.ebpf.tags]``, ``--tags``, k8s workload labels);
* logging measurements also the tag ``source``;
* the project's documented extensions to a measurement (``PROJECT_TAGS``:
  tags the README describes and the shared spec copy does not have).

What a point must carry: ``host``, and every tag the spec documents for
its measurement except the Kubernetes ones (no cluster here) and those the
doc itself makes conditional (``CONDITIONAL_TAGS``): a collector that
silently stops writing ``process_name`` fails here.

Field types: ``int`` fields must be written as signed integers (``12i``;
``12u`` is a different type in line protocol and DataKit expects int),
``float`` as floats, ``bool`` as booleans, ``string`` as quoted strings.
"""
import json
import os
from functools import lru_cache

__all__ = ["SPEC_PATH", "GLOBAL_TAGS", "REQUIRED_TAGS", "CONDITIONAL_TAGS", "PROJECT_TAGS", "load_schemas",
           "schema", "required_tags", "check_point", "check_record"]

SPEC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                         "dkebpf", "spec", "measurements.json")
SPEC_PATH = os.path.normpath(SPEC_PATH)
GLOBAL_TAGS = frozenset({"host", "service"})
REQUIRED_TAGS = ("host",)
# Documented tags present only in some cases, per measurement, with the
# doc's reason (reference/datakit-ebpf-collector-doc.txt)
_CONNECTION_CONDITIONAL = {
    "dst_domain": "only when a DNS answer named the peer",
    "server_domain": "only when a DNS answer named the server",
    "dst_nat_ip": "only on outgoing connections the kernel DNATed",
    "dst_nat_port": "only on outgoing connections the kernel DNATed",
    "sub_source": "a classification such as K8s traffic",
}
# Tags this project adds to a measurement, on every point, with the README
# section that documents them (the spec copy stays equal to the shared one)
PROJECT_TAGS = {
    "dnsflow": {"forwarded": "README, dnsflow: asked, answered, forwarded"},
    "bpf_net_l4_log": {"nic_traceid": "README, bpf-netlog: the original's undocumented tag"},
    "bpf_net_l7_log": {"nic_traceid": "README, bpf-netlog: the original's undocumented tag"},
}
CONDITIONAL_TAGS = {
    "netflow": _CONNECTION_CONDITIONAL,
    "httpflow": _CONNECTION_CONDITIONAL,
    "dnsflow": {"sub_source": _CONNECTION_CONDITIONAL["sub_source"]},
    "bpf_net_l4_log": {"sub_source": _CONNECTION_CONDITIONAL["sub_source"]},
    "bpf_net_l7_log": {"sub_source": _CONNECTION_CONDITIONAL["sub_source"],
                       "trace_id": "only when the request carried a traceparent header",
                       "parent_id": "only when the request carried a traceparent header"},
}
# Fields the original collector writes that its doc does not list
# (reference/datakit-original-netlog-trace-k8s.md 1.6 and 1.7): allowed, with
# their types, as the issue asks for them.
UNDOCUMENTED_FIELDS = {
    "bpf_net_l4_log": {"chunk_syn": "bool", "chunk_fin": "bool", "tcp_3whs_cost": "float",
                       "tcp_4whs_cost": "float", "tcp_rtt": "float", "message": "string"},
    "bpf_net_l7_log": {"req_seq": "string", "resp_seq": "string", "cost_req_sent": "float",
                       "cost_resp_wait": "float", "cost_cnt_dl": "float", "tx_packets": "int",
                       "rx_packets": "int", "tx_bytes": "int", "rx_bytes": "int", "tx_retrans": "int",
                       "rx_retrans": "int", "message": "string"},
}


@lru_cache(maxsize=None)
def load_schemas(path=SPEC_PATH):
    """``{measurement: {"category", "tags", "fields": {name: {"type", ...}}, "inputs"}}``."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return {name: spec for name, spec in data.items() if not name.startswith("_")}


def schema(measurement):
    schemas = load_schemas()
    if measurement not in schemas:
        raise AssertionError(f"measurement {measurement!r} is not in the spec "
                             f"(known: {', '.join(sorted(schemas))})")
    return schemas[measurement]


# A required tag a point may lack in one documented case: a flow whose
# events all came in kernel context (a timer's retransmit, a softirq's close
# of a connection older than the collector) has no process: pid 0, no name.
_ABSENT_WHEN = {"process_name": lambda tags: tags.get("pid") == "0"}


def required_tags(measurement):
    """The tags every point of ``measurement`` must carry."""
    conditional = CONDITIONAL_TAGS.get(measurement, {})
    documented = {t for t in schema(measurement)["tags"] if "k8s" not in t and t not in conditional}
    return documented | set(REQUIRED_TAGS) | set(PROJECT_TAGS.get(measurement, ()))


def _type_of(value):
    from .lineproto_parser import UInt  # the parser marks u-suffixed integers
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, UInt):
        return "uint"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def check_point(measurement, point, extra_tags=()):
    """Raise AssertionError listing every way ``point`` breaks the schema of
    ``measurement``: unknown tags or fields, wrongly typed fields, missing
    required tags (``required_tags``). ``extra_tags`` are tag keys allowed on top of the
    schema (user-configured global tags)."""
    spec = schema(measurement)
    problems = []
    if point.measurement != measurement:
        problems.append(f"measurement is {point.measurement!r}, expected {measurement!r}")
    allowed = set(spec["tags"]) | GLOBAL_TAGS | set(PROJECT_TAGS.get(measurement, ())) | set(extra_tags)
    if spec.get("category") == "logging":
        allowed.add("source")
    for tag in point.tags:
        if tag not in allowed:
            problems.append(f"tag {tag!r} is not in the schema")
    for tag in sorted(required_tags(measurement)):
        if tag not in point.tags and not _ABSENT_WHEN.get(tag, lambda t: False)(point.tags):
            problems.append(f"required tag {tag!r} is missing")
    for name, value in point.fields.items():
        fspec = spec["fields"].get(name)
        if fspec is None and name in UNDOCUMENTED_FIELDS.get(measurement, {}):
            fspec = {"type": UNDOCUMENTED_FIELDS[measurement][name]}
        if fspec is None:
            problems.append(f"field {name!r} is not in the schema")
            continue
        got = _type_of(value)
        if got != fspec["type"]:
            problems.append(f"field {name!r} = {value!r} is {got}, schema says {fspec['type']}")
    if problems:
        raise AssertionError(f"{measurement} point breaks the schema: " + "; ".join(problems)
                             + f" -- point: {point!r}")


def check_record(record, extra_tags=()):
    """Like check_point, for a receiver ``Record``: also checks that the
    point came to the category and input the spec lists for it."""
    point = record.point
    spec = schema(point.measurement)
    problems = []
    category = spec["category"].split()[0]
    if record.category != category:
        problems.append(f"posted to category {record.category!r}, spec says {category!r}")
    if record.input not in spec.get("inputs", []):
        problems.append(f"posted with input {record.input!r}, spec lists {spec.get('inputs')}")
    if problems:
        raise AssertionError(f"{point.measurement} point: " + "; ".join(problems))
    check_point(point.measurement, point, extra_tags)
