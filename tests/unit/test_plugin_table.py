"""The plugin table (dkebpf/plugins/__init__.py) and what reads it: the
README table, config's choices, the agent's start order, `dkebpf check`'s
functions and the feature probes' names (dkebpf/features.py)."""
import logging
import os
import re
import struct
import types

import pytest

from dkebpf import check, config, features
from dkebpf.agent import plugin_factories
from dkebpf.plugins import (CONTEXT_SLOTS, L7NET, PLUGIN, PLUGINS, PluginRow, names, requirements,
                            rows_for, start_order)
from dkebpf.plugins.base import Plugin, PluginContext

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "README.md")


def readme_rows():
    """(plugin cell, status cell) of the table under "What works in this version"."""
    text = open(README, encoding="utf-8").read()
    section = text.split("### What works in this version", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [tuple(c.strip() for c in line.strip("|").split("|", 1)) for line in rows]


def test_readme_table_is_the_plugin_table():
    rows = readme_rows()
    assert [label for label, _ in rows] == [r.label for r in PLUGINS]
    not_yet = {label for label, status in rows if status.startswith("not yet")}
    assert not_yet == {r.label for r in PLUGINS if not r.implemented}


def test_every_row_is_wired():
    for r in PLUGINS:
        assert r.kind in (PLUGIN, L7NET), r
        assert set(r.provides) | set(r.needs) <= set(CONTEXT_SLOTS), r
        for f in r.requires:
            features.feature(f)  # LookupError for a name that is no probe
        if not r.implemented:
            assert r.check is None and not r.requires, r
            continue
        cls = r.plugin_class()
        assert issubclass(cls, Plugin), r
        # the name the plugin reports in logs and counters follows the row
        expected = {L7NET: f"ebpf-net/{r.name}"}.get(r.kind, f"{r.name}/{r.part}" if r.part else r.name)
        assert cls.name == expected, r
        assert callable(getattr(check, r.check)), r
    labels = [r.label for r in PLUGINS]
    assert len(labels) == len(set(labels))


def test_config_accepts_exactly_the_table_names():
    assert config.PLUGINS == names(PLUGIN) == ("ebpf-net", "ebpf-bash", "ebpf-conntrack",
                                               "ebpf-trace", "bpf-netlog")
    assert config.L7NET_PROTOCOLS == names(L7NET) == ("httpflow", "httpflow-tls")
    assert names(PLUGIN, implemented_only=True) == ("ebpf-net", "ebpf-bash", "ebpf-conntrack", "ebpf-trace",
                                                    "bpf-netlog")


def labels(rows):
    return [r.label for r in rows]


def test_start_order_puts_providers_first():
    order = labels(rows_for(("ebpf-bash", "ebpf-net", "ebpf-conntrack"), ("httpflow-tls", "httpflow")))
    assert order.index("`ebpf-conntrack`") < order.index("`ebpf-net` netflow")
    assert order.index("`ebpf-net` dnsflow") < order.index("`ebpf-net` netflow")
    assert order.index("`ebpf-conntrack`") < order.index("`ebpf-net` httpflow")
    assert order.index("`ebpf-net` dnsflow") < order.index("`ebpf-net` httpflow-tls")
    assert len(order) == 6
    # L7 protocols only with ebpf-net; unimplemented names build nothing
    assert labels(rows_for(("ebpf-bash",), ("httpflow",))) == ["`ebpf-bash`"]
    assert labels(rows_for(("ebpf-net",), ())) == ["`ebpf-net` dnsflow", "`ebpf-net` netflow"]


def test_start_order_is_stable_and_refuses_a_cycle():
    a = PluginRow("a", PLUGIN, implementation="m:A", needs=("nat",))
    b = PluginRow("b", PLUGIN, implementation="m:B")
    c = PluginRow("c", PLUGIN, implementation="m:C", provides=("nat",), needs=("domains",))
    d = PluginRow("d", PLUGIN, implementation="m:D", provides=("domains",), needs=("nat",))
    assert start_order([a, b, c]) == [b, c, a]
    assert start_order([b, a]) == [b, a]
    with pytest.raises(RuntimeError, match="cycle among `c`, `d`"):
        start_order([c, d])


def test_requirements_follow_the_rows():
    assert requirements(("ebpf-bash",)) == ("btf",)
    net = requirements(("ebpf-net",), ("httpflow",))
    assert {"btf", "sock_length_tracepoints", "rdonly_cast", "cgroup2", "packet_socket"} == set(net)
    assert "ctnetlink_events" in requirements(("ebpf-conntrack",))


def test_agent_warns_about_what_the_table_marks_unimplemented_and_runs_the_rest():
    unimplemented = [r.name for r in PLUGINS if not r.implemented]
    cfg = types.SimpleNamespace(enabled_plugins=("ebpf-net", *unimplemented), l7net_enabled=())
    ctx = PluginContext(cfg=cfg, logger=logging.getLogger("test"), self_pid=os.getpid())
    factories, notes = plugin_factories(cfg, ctx)
    assert [name for name, _ in factories] == ["ebpf-net/dnsflow", "ebpf-net/netflow"]
    assert notes == [f"{n}: not implemented in this version of dkebpf "
                     "(available: ebpf-net, ebpf-bash, ebpf-conntrack, ebpf-trace, bpf-netlog)"
                     for n in unimplemented]


def test_check_reports_an_unimplemented_row_and_missing_features(monkeypatch):
    row = next((r for r in PLUGINS if not r.implemented), PluginRow("not-built", PLUGIN))
    assert check.check_row(row) == (False, ["not implemented in this version"])
    netflow = next(r for r in PLUGINS if r.part == "netflow")
    monkeypatch.setattr(features, "missing",
                        lambda name: "no tracepoint sock:sock_send_length"
                        if name == "sock_length_tracepoints" else None)
    monkeypatch.setattr(features, "kernel_version", lambda release=None: (6, 1))
    ok, why = check.check_row(netflow)
    assert not ok
    assert why == [f"no tracepoint sock:sock_send_length (needs kernel 6.3 or later; "
                   f"this is {os.uname().release})"]


@pytest.mark.parametrize("release, version", [
    ("6.18.0-1-amd64", (6, 18)), ("5.15.0", (5, 15)), ("6.3-rc1", (6, 3)), ("4.19.0+", (4, 19)),
    ("garbage", (0, 0)),
])
def test_kernel_version(release, version):
    assert features.kernel_version(release) == version


def test_btf_names_reads_the_string_section(tmp_path):
    strings = b"\0int\0bpf_rdonly_cast\0BPF_MAP_TYPE_TASK_STORAGE\0"
    # header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
    blob = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 4, 4, len(strings)) + b"\0" * 4 + strings
    path = tmp_path / "vmlinux"
    path.write_bytes(blob)
    got = features.btf_names(str(path))
    assert {b"int", b"bpf_rdonly_cast", b"BPF_MAP_TYPE_TASK_STORAGE"} <= got
    path.write_bytes(b"\0" * 24)
    with pytest.raises(ValueError, match="not BTF"):
        features.btf_names.__wrapped__(str(path))


def test_unknown_feature_is_a_lookup_error():
    with pytest.raises(LookupError, match=re.escape("no feature probe 'nope' (known: btf,")):
        features.feature("nope")
