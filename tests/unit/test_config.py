"""dkebpf.config: flags, environment, both config-file shapes, value parsers."""
import argparse
import dataclasses
import json
import re
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkebpf import config as cfgmod
from dkebpf.config import (
    Config,
    ConfigArgumentParser,
    add_run_arguments,
    build_run_parser,
    load_config,
    parse_bytes,
    parse_duration,
    parse_rate,
)
from dkebpf.errors import ConfigError
from support.shared_docs import IN_CI, find_shared, shared_or_skip

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "conf" / "ebpf.conf.sample"
SPEC = REPO / "dkebpf" / "spec" / "config.json"


def load(argv=(), env=None):
    return load_config(list(argv), {} if env is None else env)


def error_of(argv=(), env=None):
    with pytest.raises(ConfigError) as info:
        load(argv, env)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def write(tmp_path, text, name="ebpf.conf"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


# ---------------------------------------------------------------- defaults

def test_defaults():
    c = load()
    assert c.enabled_plugins == ("ebpf-net",)
    assert c.l7net_enabled == ("httpflow",)
    assert c.interval == 60.0
    assert c.datakit_apiserver == "http://0.0.0.0:9529" and c.trace_server is None and c.output is None
    assert c.hostname == socket.gethostname()
    assert c.service == "ebpf" and c.tags == {}
    assert c.pidfile is None and c.log is None and c.log_level == "info"
    assert c.ipv6_disabled is False and c.ephemeral_port is None
    assert c.pprof_host == "127.0.0.1" and c.pprof_port is None
    assert c.netlog_metric is True and c.netlog_log is False
    assert c.netlog_protocols == ("http",) and c.netlog_blacklist == ""
    assert c.trace_env_list == c.trace_name_list == c.trace_env_blacklist == ()
    assert c.trace_name_blacklist == ("datakit", "datakit-ebpf")
    assert c.trace_protos == c.trace_protos_blacklist == ()
    assert c.conv_to_ddtrace is False and c.trace_allprocess is False
    assert c.cpu_limit is None and c.mem_limit is None and c.net_limit is None
    assert c.sampling_rate is None and c.sampling_rate_pts_per_min is None
    assert c.workload_labels == () and c.workload_label_prefix == ""
    assert c.kubernetes_url == "https://kubernetes.default:443"
    assert c.bearer_token == "/run/secrets/kubernetes.io/serviceaccount/token"
    assert c.bearer_token_string == ""
    assert c.container_endpoints == ()
    assert c.host_root == "" and c.host_proc == "/proc"
    assert c.spool_dir is None and c.spool_max_bytes == 256 * 1024 * 1024
    assert c.config_file is None
    assert set(c.sources.values()) == {"default"}


def test_config_dataclass_defaults_agree_with_load():
    assert Config() == load()


def test_config_is_frozen_and_plain():
    c = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.interval = 5  # type: ignore[misc]
    d = c.to_dict()
    json.dumps(d)
    assert d["enabled_plugins"] == ["ebpf-net"] and "sources" not in d


def test_environment_is_read_from_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("ENV_INPUT_EBPF_INTERVAL", "2m")
    assert load_config([]).interval == 120.0


# ------------------------------------------------------- DataKit's command line

DATAKIT_ARGV = [
    # what DataKit 1.84's ebpf input appends after the user's `args`
    "--datakit-apiserver", "0.0.0.0:9529",
    "--hostname", "node-1",
    "--l7net-enabled", "httpflow,httpflow-tls",
    "--pprof-host", "127.0.0.1",
    "--pprof-port", "6061",
    "--ipv6-disabled",
    "--ephemeral_port", "32768",
    "--interval", "1m30s",
    "--netlog-metric",
    "--netlog-log",
    "--trace-server", "10.0.0.7:9529",
    "--trace-allprocess",
    "--trace-env-list", "DK_BPFTRACE_SERVICE,DD_SERVICE",
    "--trace-env-blacklist", "DKE_DISABLE_ETRACE",
    "--trace-name-list", "nginx,java",
    "--trace-name-blacklist", "bash",
    "--conv-to-ddtrace",
    "--res-cpu", "2.0",
    "--res-mem", "4GiB",
    "--res-net", "100MiB/s",
    "--sampling-rate", "0.50",
    "--enabled", "ebpf-net,ebpf-bash,ebpf-conntrack,ebpf-trace,bpf-netlog",
    "--tags", "zone=cn-1;team=net",  # external input joins [inputs.ebpf.tags] with ';'
    # the rest of the contract table
    "--pidfile", "/usr/local/datakit/externals/datakit-ebpf.pid",
    "--log", "/usr/local/datakit/externals/datakit-ebpf.log",
    "--log-level", "debug",
    "--service", "ebpf",
    "--l7net-disabled", "httpflow-tls",
    "--netlog-protocols", "http",
    "--trace-protos", "HTTP,mysql",
    "--trace-protos-blacklist", "redis",
    "--container-endpoints", "unix:///run/containerd/containerd.sock",
]


def test_datakit_command_line_is_accepted():
    c = load(DATAKIT_ARGV)
    assert c.datakit_apiserver == "http://0.0.0.0:9529"
    assert c.hostname == "node-1"
    assert c.l7net_enabled == ("httpflow",)
    assert c.pprof_host == "127.0.0.1" and c.pprof_port == 6061
    assert c.ipv6_disabled is True
    assert c.ephemeral_port == 32768
    assert c.interval == 90.0
    assert c.netlog_metric is True and c.netlog_log is True
    assert c.trace_server == "http://10.0.0.7:9529"
    assert c.trace_allprocess is True
    assert c.trace_env_list == ("DK_BPFTRACE_SERVICE", "DD_SERVICE")
    assert c.trace_env_blacklist == ("DKE_DISABLE_ETRACE",)
    assert c.trace_name_list == ("nginx", "java")
    assert c.trace_name_blacklist == ("datakit", "datakit-ebpf", "bash")
    assert c.conv_to_ddtrace is True
    assert c.cpu_limit == 2.0
    assert c.mem_limit == 4 * 1024**3
    assert c.net_limit == 100 * 1024**2
    assert c.sampling_rate == 0.5
    assert c.enabled_plugins == cfgmod.PLUGINS
    assert c.tags == {"zone": "cn-1", "team": "net"}
    assert c.pidfile == "/usr/local/datakit/externals/datakit-ebpf.pid"
    assert c.log == "/usr/local/datakit/externals/datakit-ebpf.log"
    assert c.log_level == "debug"
    assert c.service == "ebpf"
    assert c.netlog_protocols == ("http",)
    assert c.trace_protos == ("http", "mysql")
    assert c.trace_protos_blacklist == ("redis",)
    assert c.container_endpoints == ("unix:///run/containerd/containerd.sock",)
    assert c.sources["interval"] == "--interval"
    assert c.sources["net_limit"] == "--res-net"


def test_flag_aliases_and_our_own_flags(tmp_path):
    conf = write(tmp_path, 'interval = "5s"\n', "a.toml")
    c = load(["--ephemeral-port", "10001", "--res-bandwidth", "10MB/s",
              "--sampling-rate-ptsperminute", "1500", "--output", "-",
              "--spool-dir", "/var/spool/dke", "--spool-max-bytes", "1GiB",
              "--config", conf])
    assert c.ephemeral_port == 10001
    assert c.net_limit == 10 * 1000**2
    assert c.sampling_rate_pts_per_min == 1500
    assert c.output == "-"
    assert c.spool_dir == "/var/spool/dke" and c.spool_max_bytes == 1024**3
    assert c.config_file == conf and c.interval == 5.0


def test_every_contract_flag_is_a_run_flag():
    contract = shared_or_skip("reference/datakit-contract.md")
    text = contract.read_text(encoding="utf-8")
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `--"))
    flags = set(re.findall(r"--[a-z0-9][a-z0-9_-]*", table))
    assert len(flags) >= 35
    parser = build_run_parser()
    known = set(parser._option_string_actions)
    assert flags - known == set()
    # and each one parses with a value (or none, for booleans)
    for flag in sorted(flags):
        action = parser._option_string_actions[flag]
        value = {"--enabled": "ebpf-net", "--l7net-enabled": "httpflow",
                 "--l7net-disabled": "httpflow-tls", "--log-level": "info",
                 "--interval": "10s", "--tags": "a=b", "--datakit-apiserver": "h:1",
                 "--trace-server": "h:2", "--ephemeral_port": "1", "--ephemeral-port": "1",
                 "--pprof-port": "1", "--res-cpu": "1", "--res-mem": "1MiB",
                 "--res-bandwidth": "1MiB/s", "--res-net": "1MiB/s",
                 "--sampling-rate": "0.5", "--sampling-rate-ptsperminute": "10"}.get(flag, "x")
        if flag == "--config":
            continue
        argv = [flag] if action.nargs == "?" else [flag, value]
        load(argv)


@pytest.mark.parametrize("argv,expected", [
    (["--ipv6-disabled"], True),
    (["--ipv6-disabled", "false"], False),
    (["--ipv6-disabled=true"], True),
    (["--ipv6-disabled=0"], False),
    (["--ipv6-disabled", "YES"], True),
    (["--ipv6-disabled", "off"], False),
    (["--ipv6-disabled", "--interval", "10s"], True),
])
def test_bool_flags_take_an_optional_value(argv, expected):
    assert load(argv).ipv6_disabled is expected


def test_repeated_list_flags_accumulate_and_scalars_take_the_last():
    c = load(["--enabled", "ebpf-net", "--enabled", "ebpf-bash,ebpf-net",
              "--interval", "10s", "--interval", "20s",
              "--tags", "a=1", "--tags", "b=2;a=3"])
    assert c.enabled_plugins == ("ebpf-net", "ebpf-bash")
    assert c.interval == 20.0
    assert c.tags == {"a": "3", "b": "2"}


def test_empty_values_mean_unset_for_scalars_but_not_for_lists():
    c = load(["--trace-server", "", "--l7net-enabled", ""],
             {"ENV_INPUT_EBPF_INTERVAL": "", "ENV_INPUT_EBPF_ENABLED_PLUGINS": " "})
    assert c.trace_server is None and c.interval == 60.0
    assert c.enabled_plugins == ("ebpf-net",)
    assert c.l7net_enabled == ()


def test_l7net_disabled_removes_from_enabled():
    assert load(["--l7net-disabled", "httpflow"]).l7net_enabled == ()
    assert load(["--l7net-enabled", "httpflow,httpflow-tls",
                 "--l7net-disabled", "httpflow"]).l7net_enabled == ("httpflow-tls",)


# -------------------------------------------------------------- durations

GOOD_DURATIONS = [
    ("60s", 60), ("1m30s", 90), ("1.5h", 5400), ("500ms", 0.5), ("2h45m", 9900),
    ("0", 0), ("-0", 0), ("+5s", 5), ("-1.5s", -1.5), (".5s", 0.5), ("1.s", 1),
    ("1h2m3s4ms5us6ns", 3723.004005006), ("300us", 0.0003), ("1\u00b5s", 1e-6),
    ("1\u03bcs", 1e-6), ("10ns", 1e-8), ("1.000000001s", 1.000000001),
    ("1.0000000009s", 1.0), ("30", 30), ("1.5", 1.5), (" 60s ", 60),
    ("2562047h47m16.854775807s", 9223372036.854775807), (90, 90), (2.5, 2.5),
]
BAD_DURATIONS = [
    "", " ", "s", "1x", "1m30", ".s", ".", "+", "-", "1.5.5s", "1 s", "1S", "1H",
    "1d", "one", "1e3s", "9223372037s", "2562048h", "--1s", "1s-", True, None, [],
]


@pytest.mark.parametrize("text,seconds", GOOD_DURATIONS)
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_bad_durations(text):
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert isinstance(info.value, ConfigError)
    assert str(info.value).startswith('invalid duration "')


def test_bare_number_is_seconds_but_a_trailing_number_needs_a_unit():
    assert parse_duration("1") == 1.0
    with pytest.raises(ValueError, match="missing unit"):
        parse_duration("1m1")


_UNIT_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(sorted(_UNIT_NS)),
                          st.one_of(st.none(), st.integers(0, 999))),
                min_size=1, max_size=5),
       st.sampled_from(["", "-", "+"]))
def test_duration_matches_reference(parts, sign):
    # reference: sum of components in ns, fractions truncated per component
    text = sign
    total_ns = 0
    for whole, unit, frac in parts:
        text += str(whole) + ("" if frac is None else f".{frac:03d}") + unit
        total_ns += whole * _UNIT_NS[unit]
        if frac is not None:
            total_ns += frac * _UNIT_NS[unit] // 1000
    if total_ns > 2**63 - 1:
        with pytest.raises(ValueError):
            parse_duration(text)
        return
    expected = -total_ns / 1e9 if sign == "-" else total_ns / 1e9
    assert parse_duration(text) == pytest.approx(expected, rel=1e-15, abs=1e-15)


@pytest.mark.parametrize("value,allowed", [("1s", True), ("0.999s", False), ("999ms", False),
                                           ("1000ms", True), ("-5s", False), ("0", False)])
def test_interval_at_least_one_second(value, allowed):
    if allowed:
        assert load(["--interval", value]).interval >= 1
    else:
        msg = error_of([f"--interval={value}"])
        assert msg.startswith(f'invalid --interval "{value}": ') and "at least 1s" in msg


# --------------------------------------------------------------- sizes, rates

@pytest.mark.parametrize("text,size", [
    ("1024", 1024), ("1024B", 1024), ("1b", 1), ("4GiB", 4 * 1024**3), ("4gib", 4 * 1024**3),
    ("512MB", 512 * 1000**2), ("512mb", 512 * 1000**2), ("100MiB", 100 * 1024**2),
    ("1KiB", 1024), ("1KB", 1000), ("1kb", 1000), ("1K", 1024), ("1k", 1024), ("1Ki", 1024),
    ("2M", 2 * 1024**2), ("1G", 1024**3), ("1T", 1024**4), ("1TiB", 1024**4), ("1TB", 10**12),
    ("1.5KiB", 1536), ("0.5KB", 500), (" 10 MiB ", 10 * 1024**2), (4096, 4096), (1.5, 1),
    ("1PiB", 1024**5),
])
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "-1MiB", "1XB", "1 GiBs", "1e3", "4 G i B",
                                  "1MiB/s", True, None, ["1"]])
def test_parse_bytes_bad(text):
    with pytest.raises(ValueError, match=r'^invalid size "'):
        parse_bytes(text)


@pytest.mark.parametrize("text,rate", [
    ("100MiB/s", 100 * 1024**2), ("10MB/s", 10 * 1000**2), ("10MB", 10 * 1000**2),
    ("1GiB/S", 1024**3), ("5 KiB / s", 5 * 1024), ("1000", 1000), ("1k/sec", 1024),
])
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "/s", "10MB/m", "fast", "10MB/s/s"])
def test_parse_rate_bad(text):
    with pytest.raises(ValueError, match=r'^invalid rate "'):
        parse_rate(text)


def test_zero_resource_limit_means_no_limit():
    c = load(["--res-cpu", "0", "--res-mem", "0", "--res-net", "0MiB/s"])
    assert c.cpu_limit is None and c.mem_limit is None and c.net_limit is None


# -------------------------------------------------------------------- tags

@pytest.mark.parametrize("text,tags", [
    ("a=1,b=2", {"a": "1", "b": "2"}),
    ("a=1;b=2", {"a": "1", "b": "2"}),
    ("a=1;b=2,c=3", {"a": "1", "b": "2,c=3"}),  # DataKit joins with ';', a value may hold ','
    ("team=a,b;x=", {"team": "a,b"}),
    (" a = 1 ; ", {"a": "1"}),
    ("url=http://x/?q=1", {"url": "http://x/?q=1"}),
    ("", {}),
])
def test_tags(text, tags):
    assert load(["--tags", text]).tags == tags


@pytest.mark.parametrize("text,tags,warnings", [
    ("a", {}, ['--tags: tag "a": has no "="; dropped']),
    ("a=1;b", {"a": "1"}, ['--tags: tag "b": has no "="; dropped']),
    ("=1,a=2", {"a": "2"}, ['--tags: tag "=1": needs a non-empty key and value; dropped']),
    ("team=a,b;x=;y", {"team": "a,b"}, ['--tags: tag "x=": needs a non-empty key and value; dropped',
                                       '--tags: tag "y": has no "="; dropped']),
])
def test_bad_tags_are_dropped_with_one_warning_each(text, tags, warnings):
    c = load(["--tags", text])
    assert c.tags == tags and list(c.warnings) == warnings


def test_bad_tags_in_files_are_dropped_too(tmp_path):
    conf = write(tmp_path, '[[inputs.ebpf]]\n[inputs.ebpf.tags]\nx = [1]\ny = ""\nz = "1"\n')
    c = load(["--config", conf])
    assert c.tags == {"z": "1"}
    assert list(c.warnings) == [f'[inputs.ebpf.tags] ({conf}): tag "x": needs a string value; dropped',
                                f'[inputs.ebpf.tags] ({conf}): tag "y=": needs a non-empty key and value; '
                                "dropped"]


def test_host_and_service_tags_fold_into_their_fields():
    c = load(["--tags", "host=h1,service=s1,a=1"])
    assert (c.hostname, c.service, c.tags) == ("h1", "s1", {"a": "1"})
    c = load(["--tags", "host=h1,service=s1", "--hostname", "h2", "--service", "s2"])
    assert (c.hostname, c.service, c.tags) == ("h2", "s2", {})


# -------------------------------------------------------------- precedence

def test_precedence_flags_over_env_over_file(tmp_path):
    conf = write(tmp_path, """
interval = "10s"
trace-server = "file:1"
pprof_port = 1111
enabled = ["ebpf-bash"]
netlog_blacklist = "tcp"
[tags]
a = "file"
b = "file"
""", "dke.toml")
    env = {"ENV_INPUT_EBPF_INTERVAL": "20s", "ENV_INPUT_EBPF_TRACE_SERVER": "env:2",
           "ENV_INPUT_EBPF_ENABLED_PLUGINS": "ebpf-conntrack"}
    c = load(["--config", conf], env)
    assert c.interval == 20 and c.trace_server == "http://env:2"
    assert c.pprof_port == 1111 and c.enabled_plugins == ("ebpf-conntrack",)
    assert c.netlog_blacklist == "tcp" and c.tags == {"a": "file", "b": "file"}
    assert c.sources["interval"] == "ENV_INPUT_EBPF_INTERVAL"
    assert c.sources["pprof_port"] == f"pprof_port ({conf})"

    c = load(["--config", conf, "--interval", "30s", "--trace-server", "https://flag:3",
              "--pprof-port", "3333", "--tags", "b=flag,c=flag"], env)
    assert c.interval == 30 and c.trace_server == "https://flag:3" and c.pprof_port == 3333
    assert c.tags == {"a": "file", "b": "flag", "c": "flag"}

    c = load(["--config", conf], {"DKE_NETLOG_NET_FILTER": "udp",
                                  "ENV_INPUT_EBPF_NETLOG_BLACKLIST": "ipv6"})
    assert c.netlog_blacklist == "udp"
    c = load(["--config", conf], {"ENV_INPUT_EBPF_NETLOG_BLACKLIST": "ipv6"})
    assert c.netlog_blacklist == "ipv6"


def test_values_overridden_by_a_higher_source_are_still_checked():
    msg = error_of(["--interval", "10s"], {"ENV_INPUT_EBPF_INTERVAL": "ten"})
    assert msg.startswith('invalid ENV_INPUT_EBPF_INTERVAL "ten": ')


def test_environment_variables():
    env = {
        "ENV_INPUT_EBPF_ENABLED_PLUGINS": "ebpf-net,bpf-netlog",
        "ENV_INPUT_EBPF_L7NET_ENABLED": "httpflow-tls",
        "ENV_INPUT_EBPF_INTERVAL": "1m30s",
        "ENV_INPUT_EBPF_IPV6_DISABLED": "true",
        "ENV_INPUT_EBPF_EPHEMERAL_PORT": "32768",
        "ENV_INPUT_EBPF_PPROF_HOST": "0.0.0.0",
        "ENV_INPUT_EBPF_PPROF_PORT": "6061",
        "ENV_INPUT_EBPF_TRACE_SERVER": "1.2.3.4:9529",
        "ENV_INPUT_EBPF_TRACE_ENV_LIST": "DK_BPFTRACE_SERVICE,DD_SERVICE,OTEL_SERVICE_NAME",
        "ENV_INPUT_EBPF_TRACE_ENV_BLACKLIST": "DKE_DISABLE_ETRACE",
        "ENV_INPUT_EBPF_TRACE_NAME_LIST": "chrome,firefox",
        "ENV_INPUT_EBPF_TRACE_NAME_BLACKLIST": "sshd",
        "ENV_INPUT_EBPF_TRACE_ALL_PROCESS": "1",
        "ENV_INPUT_EBPF_CONV_TO_DDTRACE": "false",
        "ENV_INPUT_EBPF_NETLOG_BLACKLIST": "ip_saddr=='127.0.0.1' || ip_daddr=='127.0.0.1'",
        "ENV_INPUT_EBPF_NETLOG_METRIC": "false",
        "ENV_INPUT_EBPF_NETLOG_LOG": "true",
        "ENV_INPUT_EBPF_CPU_LIMIT": "2.0",
        "ENV_INPUT_EBPF_MEM_LIMIT": "4GiB",
        "ENV_INPUT_EBPF_NET_LIMIT": "100MiB/s",
        "ENV_INPUT_EBPF_SAMPLING_RATE": "0.50",
        "ENV_INPUT_EBPF_WORKLOAD_LABELS": "app,project_id",
        "ENV_INPUT_EBPF_WORKLOAD_LABEL_PREFIX": "k8s_workload_label_",
        "DKE_OUTPUT": "/tmp/points.lp",
        "DKE_K8S_URL": "https://10.0.0.1:6443",
        "DKE_K8S_BEARER_TOKEN_PATH": "/tok",
        "HOST_ROOT": "/rootfs/",
    }
    c = load([], env)
    assert c.enabled_plugins == ("ebpf-net", "bpf-netlog")
    assert c.l7net_enabled == ("httpflow-tls",)
    assert c.interval == 90 and c.ipv6_disabled and c.ephemeral_port == 32768
    assert (c.pprof_host, c.pprof_port) == ("0.0.0.0", 6061)
    assert c.trace_server == "http://1.2.3.4:9529"
    assert c.trace_env_list == ("DK_BPFTRACE_SERVICE", "DD_SERVICE", "OTEL_SERVICE_NAME")
    assert c.trace_env_blacklist == ("DKE_DISABLE_ETRACE",)
    assert c.trace_name_list == ("chrome", "firefox")
    assert c.trace_name_blacklist == ("datakit", "datakit-ebpf", "sshd")
    assert c.trace_allprocess is True and c.conv_to_ddtrace is False
    assert c.netlog_blacklist == "ip_saddr=='127.0.0.1' || ip_daddr=='127.0.0.1'"
    assert c.netlog_metric is False and c.netlog_log is True
    assert (c.cpu_limit, c.mem_limit, c.net_limit) == (2.0, 4 * 1024**3, 100 * 1024**2)
    assert c.sampling_rate == 0.5
    assert c.workload_labels == ("app", "project_id")
    assert c.workload_label_prefix == "k8s_workload_label_"
    assert c.output == "/tmp/points.lp"
    assert c.kubernetes_url == "https://10.0.0.1:6443" and c.bearer_token == "/tok"
    assert c.host_root == "/rootfs" and c.host_proc == "/rootfs/proc"


def test_env_names_datakit_actually_passes():
    c = load([], {"DKE_K8S_WORKLOAD_LABELS": "app", "K8S_WORKLOAD_LABEL_PREFIX": "p_",
                  "DKE_K8S_BEARER_TOKEN": "secret", "HOST_ROOT": "/rootfs",
                  "HOST_PROC": "/hostproc", "ENV_INPUT_EBPF_SAMPLING_RATE_PTSPERMIN": "1500"})
    assert c.workload_labels == ("app",) and c.workload_label_prefix == "p_"
    assert c.bearer_token_string == "secret" and c.bearer_token == ""
    assert c.host_proc == "/hostproc"
    assert c.sampling_rate_pts_per_min == 1500
    c = load([], {"DKE_K8S_BEARER_TOKEN": "secret", "DKE_K8S_BEARER_TOKEN_PATH": "/t"})
    assert c.bearer_token == "/t" and c.bearer_token_string == "secret"


# ---------------------------------------------------------- config files

def test_datakit_ebpf_toml_with_flag_names(tmp_path):
    conf = write(tmp_path, """
datakit-apiserver = "127.0.0.1:9529"
enabled = "ebpf-net,ebpf-bash"
l7net_enabled = []
ipv6_disabled = "yes"
ephemeral_port = 0
res-cpu = 1.5
res_mem = "512MB"
res-bandwidth = "1MiB/s"
sampling-rate-ptsperminute = "1500"
trace_allprocess = true
log-level = "WARN"
tags = "a=1;b=2"
""", "datakit-ebpf.toml")
    c = load(["--config", conf])
    assert c.datakit_apiserver == "http://127.0.0.1:9529"
    assert c.enabled_plugins == ("ebpf-net", "ebpf-bash") and c.l7net_enabled == ()
    assert c.ipv6_disabled is True and c.ephemeral_port is None
    assert (c.cpu_limit, c.mem_limit, c.net_limit) == (1.5, 512 * 10**6, 1024**2)
    assert c.sampling_rate_pts_per_min == 1500 and c.trace_allprocess is True
    assert c.log_level == "warning" and c.tags == {"a": "1", "b": "2"}


def test_same_option_twice_in_one_file(tmp_path):
    conf = write(tmp_path, 'res_cpu = 1\ncpu_limit = 2\n')
    with pytest.raises(ConfigError, match=r'"res_cpu" in the same file already sets cpu_limit'):
        load(["--config", conf])


EBPF_CONF = """
[[inputs.ebpf]]
  daemon = true
  name = 'ebpf'
  cmd = "/usr/local/datakit/externals/datakit-ebpf"
  election = false
  args = ["--datakit-apiserver", "0.0.0.0:9529", "--interval", "30s", "--tags", "a=args,b=args",
          "--ipv6-disabled"]
  envs = ["LD_LIBRARY_PATH=/x"]
  enabled_plugins = ["ebpf-net", "ebpf-trace"]
  trace_server = "127.0.0.1:9529"
  trace_all_process = true
  interval = "45s"
  netlog_metric_only = false
  cpu_limit = "2.0"
  mem_limit = "4GiB"
  net_limit = "100MiB/s"
  sampling_rate = "0.50"

  [inputs.ebpf.tags]
    b = "table"
    n = 1
"""


def test_ebpf_conf_with_args(tmp_path):
    conf = write(tmp_path, EBPF_CONF)
    c = load(["--config", conf])
    assert c.datakit_apiserver == "http://0.0.0.0:9529"
    assert c.interval == 45  # the table's keys override its args, as in DataKit
    assert c.ipv6_disabled is True
    assert c.tags == {"a": "args", "b": "table", "n": "1"}
    assert c.enabled_plugins == ("ebpf-net", "ebpf-trace")
    assert c.trace_server == "http://127.0.0.1:9529" and c.trace_allprocess
    assert c.netlog_log is True  # DataKit: netlog_metric_only = false -> --netlog-log
    assert (c.cpu_limit, c.mem_limit, c.net_limit, c.sampling_rate) == (
        2.0, 4 * 1024**3, 100 * 1024**2, 0.5)
    assert c.sources["datakit_apiserver"] == f"--datakit-apiserver (args in {conf})"
    assert c.sources["interval"] == f"interval ({conf})"
    # command line over env over file
    c = load(["--config", conf, "--interval", "15s"], {"ENV_INPUT_EBPF_INTERVAL": "20s"})
    assert c.interval == 15
    assert load(["--config", conf], {"ENV_INPUT_EBPF_INTERVAL": "20s"}).interval == 20


def test_ebpf_conf_args_errors(tmp_path):
    conf = write(tmp_path, '[[inputs.ebpf]]\nargs = ["--interval", "x"]\n')
    assert str(pytest.raises(ConfigError, load, ["--config", conf]).value) == (
        f'invalid --interval (args in {conf}) "x": ' + cfgmod._DURATION_ALLOWED)
    conf = write(tmp_path, '[[inputs.ebpf]]\nargs = ["--bogus", "1"]\n')
    msg = str(pytest.raises(ConfigError, load, ["--config", conf]).value)
    assert '"--bogus"' in msg and conf in msg
    conf = write(tmp_path, '[[inputs.ebpf]]\nargs = ["--config", "/etc/other.conf"]\n')
    msg = str(pytest.raises(ConfigError, load, ["--config", conf]).value)
    assert msg.startswith(f'invalid --config (args in {conf}) "/etc/other.conf"')
    conf = write(tmp_path, '[[inputs.ebpf]]\nargs = "--ipv6-disabled"\n')
    msg = str(pytest.raises(ConfigError, load, ["--config", conf]).value)
    assert msg.startswith(f'invalid args ({conf}) "--ipv6-disabled"')
    conf = write(tmp_path, '[[inputs.ebpf]]\nargs = ["run", "--ipv6-disabled"]\n')
    assert load(["--config", conf]).ipv6_disabled is True


DOC_SAMPLE_FALLBACK = '''[[inputs.ebpf]]
daemon = true
name = 'ebpf'
cmd = "/usr/local/datakit/externals/datakit-ebpf"
args = [
"--datakit-apiserver", "0.0.0.0:9529",
]
envs = []
# cpu_limit = "2.0"
# mem_limit = "4GiB"
# net_limit = "100MiB/s"
# kubernetes_url = "https://kubernetes.default:443"
# bearer_token = "/run/secrets/kubernetes.io/serviceaccount/token"
# bearer_token_string = "<your-token-string>"
# workload_labels = ["app"]
# workload_label_prefix = ""
enabled_plugins = [
"ebpf-net",
]
l7net_enabled = [
"httpflow",
# "httpflow-tls"
]
pprof_host = "127.0.0.1"
pprof_port = "6061"
# netlog_blacklist = "ip_saddr=='127.0.0.1' || ip_daddr=='127.0.0.1'"
netlog_metric = true
netlog_log = false
trace_server = ""
trace_env_list = [
# "DK_BPFTRACE_SERVICE",
]
trace_env_blacklist = []
trace_name_list = []
trace_name_blacklist = [
# "datakit",
]
conv_to_ddtrace = false
ipv6_disabled = false
# ephemeral_port = 10001
# interval = "60s"
# sampling_rate = "0.50"
# sampling_rate_pts_per_min = "1500"
[inputs.ebpf.tags]
# some_tag = "some_value"
'''


def doc_sample_text():
    # outside CI a checkout without shared/ compares with the copy below
    doc = (shared_or_skip if IN_CI else find_shared)("reference/datakit-ebpf-collector-doc.txt")
    if doc is None:
        return DOC_SAMPLE_FALLBACK
    text = doc.read_text(encoding="utf-8")
    start = text.index("[[inputs.ebpf]]")
    end = text.index("#############################", start)
    return text[start:end]


def test_doc_sample_ebpf_conf_loads(tmp_path):
    conf = write(tmp_path, doc_sample_text())
    c = load(["--config", conf])
    assert c.datakit_apiserver == "http://0.0.0.0:9529"
    assert c.enabled_plugins == ("ebpf-net",) and c.l7net_enabled == ("httpflow",)
    assert (c.pprof_host, c.pprof_port) == ("127.0.0.1", 6061)
    assert c.trace_server is None and c.trace_env_list == ()
    assert c.netlog_metric is True and c.netlog_log is False and c.ipv6_disabled is False
    assert c.tags == {} and c.interval == 60


def test_doc_sample_with_every_option_uncommented(tmp_path):
    text = re.sub(r"(?m)^# (\w+ = )", r"\1", doc_sample_text())
    text = text.replace('sampling_rate_pts_per_min = "1500"', "")
    text = re.sub(r"(?m)^some_tag", "some_tag", text)
    c = load(["--config", write(tmp_path, text)])
    assert c.cpu_limit == 2.0 and c.mem_limit == 4 * 1024**3 and c.net_limit == 100 * 1024**2
    assert c.ephemeral_port == 10001 and c.sampling_rate == 0.5
    assert c.bearer_token_string == "<your-token-string>"


def test_project_sample_loads_cleanly():
    c = load(["--config", str(SAMPLE)])
    assert dataclasses.replace(c, config_file=None) == Config()
    assert c.datakit_apiserver == "http://0.0.0.0:9529" and not c.warnings


def test_project_sample_documents_every_option(tmp_path):
    text = SAMPLE.read_text(encoding="utf-8")
    keys = set(re.findall(r"(?m)^\s*#? ?(\w+) = ", text))
    table_keys = {o.name for o in cfgmod.OPTIONS}
    # documented as trace_all_process, as [inputs.ebpf.tags], or legacy (netlog_metric_only)
    table_keys -= {"netlog_metric_only", "trace_allprocess", "tags"}
    assert table_keys - keys == set()
    assert keys - set(cfgmod.FILE_KEYS) - set(cfgmod.DATAKIT_KEYS) - {"args", "some_tag",
                                                                      "more_tag"} == set()
    # uncommenting everything (but one of the exclusive sampling keys) is valid too
    un = re.sub(r"(?m)^(\s*)# (\w+ = )", r"\1\2", text)
    un = un.replace("sampling_rate_pts_per_min = 1500", "")
    c = load(["--config", write(tmp_path, un)])
    assert c.tags == {"some_tag": "some_value", "more_tag": "some_other_value"}
    assert c.host_proc == "/rootfs/proc" and c.output == "-"


@pytest.mark.parametrize("text,expect", [
    ("interval = \n", r"TOML syntax error at line 1, column \d+: "),
    ('a = 1\n\n[[inputs.ebpf]\n', r"TOML syntax error at line 3, column \d+: "),
    ('interval = "60s"\ninterval = "30s"\n', r"TOML syntax error at line 2, column \d+: "),
])
def test_toml_syntax_errors_name_file_and_line(tmp_path, text, expect):
    conf = write(tmp_path, text)
    msg = str(pytest.raises(ConfigError, load, ["--config", conf]).value)
    assert "\n" not in msg
    assert re.match(r'invalid --config "' + re.escape(conf) + r'": ' + expect, msg), msg


@pytest.mark.parametrize("text,expect", [
    ('intervl = "60s"\n', r'unknown key "intervl" at top level \(did you mean "interval"\?\)'),
    ('[[inputs.ebpf]]\nintervl = "1s"\n',
     r'unknown key "intervl" in \[\[inputs.ebpf\]\] \(did you mean "interval"\?\)'),
    ('[[inputs.ebpf]]\ndaemon = true\n[[inputs.ebpf]]\ndaemon = true\n',
     r"2 \[\[inputs.ebpf\]\] tables; exactly one is allowed"),
    ('[[inputs.cpu]]\npercpu = true\n', r'unknown input "\[\[inputs.cpu\]\]"'),
    ('interval = "1s"\n[[inputs.ebpf]]\n', r'unknown key "interval" outside \[\[inputs.ebpf\]\]'),
    ('inputs = 3\n', r'"inputs" must hold an \[\[inputs.ebpf\]\] table'),
    ('inputs = {}\n', r"no \[\[inputs.ebpf\]\] table"),
    ('daemon = true\n', r'unknown key "daemon" at top level'),
])
def test_bad_file_structure(tmp_path, text, expect):
    conf = write(tmp_path, text)
    msg = str(pytest.raises(ConfigError, load, ["--config", conf]).value)
    assert "\n" not in msg
    assert re.match(r'invalid --config "' + re.escape(conf) + r'": ' + expect, msg), msg


def test_single_inputs_ebpf_table_is_accepted(tmp_path):
    conf = write(tmp_path, '[inputs.ebpf]\ninterval = "7s"\n')
    assert load(["--config", conf]).interval == 7


def test_unreadable_files(tmp_path):
    missing = str(tmp_path / "missing.conf")
    assert error_of(["--config", missing]) == (
        f'invalid --config "{missing}": cannot read it: No such file or directory')
    assert error_of(["--config", str(tmp_path)]).startswith(
        f'invalid --config "{tmp_path}": cannot read it: ')
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b'interval = "1s"\n\xff\xfe\n')
    assert error_of(["--config", str(binary)]) == (
        f'invalid --config "{binary}": line 2: not UTF-8 text')


def test_bad_values_in_files_name_key_and_file(tmp_path):
    conf = write(tmp_path, '[[inputs.ebpf]]\nmem_limit = "4 gigs"\n')
    msg = error_of(["--config", conf])
    assert msg.startswith(f'invalid mem_limit ({conf}) "4 gigs": a size such as')
    conf = write(tmp_path, '[[inputs.ebpf]]\nenabled_plugins = ["ebpf-net", 3]\n')
    assert error_of(["--config", conf]).startswith(
        f'invalid enabled_plugins ({conf}) "ebpf-net,3": a comma-separated list')
    conf = write(tmp_path, 'interval = {a = 1}\n')
    assert error_of(["--config", conf]) == (
        f'invalid interval ({conf}) "a=1": a value, not a table')


# ------------------------------------------------------ bad values, one line

BAD_INPUTS = [
    # (argv, env, option as written, value)
    (["--enabled", "ebpf-foo,ebpf-bar"], {}, "--enabled", "ebpf-foo,ebpf-bar"),
    (["--enabled", ""], {}, "--enabled", ""),
    ([], {"ENV_INPUT_EBPF_ENABLED_PLUGINS": "nope"}, "ENV_INPUT_EBPF_ENABLED_PLUGINS", "nope"),
    (["--interval", "60"], {"ENV_INPUT_EBPF_INTERVAL": "1m30"}, "ENV_INPUT_EBPF_INTERVAL",
     "1m30"),
    (["--interval", "soon"], {}, "--interval", "soon"),
    (["--datakit-apiserver", "ftp://x:1"], {}, "--datakit-apiserver", "ftp://x:1"),
    (["--datakit-apiserver", "x:99999"], {}, "--datakit-apiserver", "x:99999"),
    (["--datakit-apiserver", "x:0"], {}, "--datakit-apiserver", "x:0"),
    (["--datakit-apiserver", "http://"], {}, "--datakit-apiserver", "http://"),
    (["--datakit-apiserver", "a b:1"], {}, "--datakit-apiserver", "a b:1"),
    (["--trace-server", "h:1?x=1"], {}, "--trace-server", "h:1?x=1"),
    ([], {"DKE_K8S_URL": "kube:port"}, "DKE_K8S_URL", "kube:port"),
    (["--log-level", "trace"], {}, "--log-level", "trace"),
    (["--ipv6-disabled", "maybe"], {}, "--ipv6-disabled", "maybe"),
    ([], {"ENV_INPUT_EBPF_NETLOG_METRIC": "2"}, "ENV_INPUT_EBPF_NETLOG_METRIC", "2"),
    (["--ephemeral_port", "65536"], {}, "--ephemeral_port", "65536"),
    (["--ephemeral-port", "-1"], {}, "--ephemeral-port", "-1"),
    (["--ephemeral-port", "1.5"], {}, "--ephemeral-port", "1.5"),
    (["--pprof-port", "0"], {}, "--pprof-port", "0"),
    (["--pprof-port", "http"], {}, "--pprof-port", "http"),
    (["--res-cpu", "-1"], {}, "--res-cpu", "-1"),
    (["--res-cpu", "two"], {}, "--res-cpu", "two"),
    (["--res-cpu", "nan"], {}, "--res-cpu", "nan"),
    (["--res-mem", "4GB/s"], {}, "--res-mem", "4GB/s"),
    (["--res-bandwidth", "lots"], {}, "--res-bandwidth", "lots"),
    (["--res-net", "10MB/h"], {}, "--res-net", "10MB/h"),
    (["--sampling-rate", "0.001"], {}, "--sampling-rate", "0.001"),
    (["--sampling-rate", "1.5"], {}, "--sampling-rate", "1.5"),
    (["--sampling-rate", "half"], {}, "--sampling-rate", "half"),
    (["--sampling-rate-ptsperminute", "0"], {}, "--sampling-rate-ptsperminute", "0"),
    (["--sampling-rate-ptsperminute", "1e3"], {}, "--sampling-rate-ptsperminute", "1e3"),
    (["--spool-max-bytes", "0"], {}, "--spool-max-bytes", "0"),
    (["--spool-max-bytes", "big"], {}, "--spool-max-bytes", "big"),
    (["--trace-name-list", 'a"b'], {}, None, None),  # any name is fine
]


@pytest.mark.parametrize("argv,env,option,value", BAD_INPUTS)
def test_bad_inputs_name_option_and_value(argv, env, option, value):
    if option is None:
        load(argv, env)
        return
    msg = error_of(argv, env)
    assert msg.startswith(f'invalid {option} "{value}": '), msg
    assert len(msg) > len(f'invalid {option} "{value}": ') + 5


def test_values_are_quoted_safely_on_one_line():
    msg = error_of([], {"ENV_INPUT_EBPF_INTERVAL": 'a"b\nc'})
    assert msg.startswith(r'invalid ENV_INPUT_EBPF_INTERVAL "a\"b\nc": ')


@pytest.mark.parametrize("argv,expect", [
    (["--intervl", "60s"], 'invalid argument "--intervl": not a flag of dkebpf run; '
                           "did you mean --interval?"),
    (["--interval"], 'invalid --interval "": a value is required after --interval'),
    (["--ephemeral_port"], 'invalid --ephemeral-port "": a value is required after '
                           "--ephemeral-port"),
    (["stray"], 'invalid argument "stray": not a flag of dkebpf run'),
    (["--inter", "60s"], 'invalid argument "--inter": not a flag of dkebpf run; '
                         "did you mean --interval?"),
])
def test_command_line_errors_are_one_line_config_errors(argv, expect, capsys):
    assert error_of(argv) == expect
    assert capsys.readouterr().err == ""  # no usage dump


def test_sampling_options_are_exclusive(tmp_path):
    msg = error_of(["--sampling-rate", "0.5", "--sampling-rate-ptsperminute", "1500"])
    assert msg.startswith('invalid --sampling-rate-ptsperminute "1500": exclusive with')
    assert "--sampling-rate" in msg and "sampling_rate_pts_per_min" in msg
    conf = write(tmp_path, '[[inputs.ebpf]]\nsampling_rate = "0.5"\n')
    msg = error_of(["--config", conf], {"ENV_INPUT_EBPF_SAMPLING_RATE_PTSPERMIN": "100"})
    assert msg.startswith('invalid ENV_INPUT_EBPF_SAMPLING_RATE_PTSPERMIN "100": exclusive')
    assert f"sampling_rate ({conf})" in msg


# ------------------------------------------------------------- argparse API

def test_parser_is_usable_as_parent_and_namespace_is_accepted():
    main = argparse.ArgumentParser(prog="dkebpf")
    sub = main.add_subparsers(dest="cmd")
    sub.add_parser("run", parents=[build_run_parser(add_help=False)])
    ns = main.parse_args(["run", "--interval", "2m", "--enabled", "ebpf-bash"])
    c = load_config(ns, {})
    assert c.interval == 120 and c.enabled_plugins == ("ebpf-bash",)


def test_add_run_arguments_on_a_plain_parser():
    p = add_run_arguments(ConfigArgumentParser(prog="x", add_help=False))
    ns = p.parse_args(["--tags", "a=1"])
    assert load_config(ns, {}).tags == {"a": "1"}
    with pytest.raises(ConfigError):
        p.parse_args(["--nope"])


def test_help_lists_every_flag():
    text = build_run_parser().format_help()
    for flag in cfgmod.ALL_FLAGS:
        assert flag in text
    assert "ENV_INPUT_EBPF_INTERVAL" in text and "(default 60s)" in text


# ------------------------------------------------------------ spec coverage

def test_every_spec_option_has_a_table_entry():
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    by_name = cfgmod.OPTION
    for item in spec["options"]:
        o = by_name.get(item["name"])
        assert o is not None, item["name"]
        assert o.is_field
        assert item["name"] in cfgmod.FILE_KEYS
        if item["env"].startswith("ENV_"):
            assert item["env"] in o.envs, item
        for word in re.findall(r"--[a-z0-9_-]+|DKE_[A-Z0-9_]+", item["flag"]):
            assert word in o.flags or word in o.envs, (item, word)
        default = item["default"]
        if default and not default.startswith("(") and item["name"] != "sampling_rate":
            # sampling_rate: spec says 1.0 (keep all); ours is None (no sampling)
            assert o.parse(default) == o.default, item
        if item["example"] and not item["example"].startswith("<"):
            o.parse(item["example"])


def test_project_spec_copy_equals_shared_spec():
    shared_spec = shared_or_skip("spec/config.json")
    assert SPEC.read_bytes() == shared_spec.read_bytes()


def test_table_covers_every_config_field_once():
    field_names = {f.name for f in dataclasses.fields(Config)}
    table = {o.name for o in cfgmod.OPTIONS if o.is_field}
    assert field_names - table == {"config_file", "sources", "foreign_options", "warnings"}
    assert len(cfgmod.OPTIONS) == len(cfgmod.OPTION)
    assert len(cfgmod.ALL_FLAGS) == len(set(cfgmod.ALL_FLAGS))


# ------------------------------------------------ as DataKit starts datakit-ebpf

def test_unknown_plugin_names_are_warned_about_and_left_out():
    c = load(["--enabled", "ebpf-net,ebpf-future", "--l7net-enabled", "httpflow,grpc"])
    assert c.enabled_plugins == ("ebpf-net",) and c.l7net_enabled == ("httpflow",)
    assert list(c.warnings) == [
        "--enabled: unknown plugin ebpf-future ignored (plugins: " + ", ".join(cfgmod.PLUGINS) + ")",
        "--l7net-enabled: unknown l7net protocol grpc ignored (l7net protocols: httpflow, httpflow-tls)"]


def test_flags_of_other_datakit_versions_are_accepted_and_named():
    argv = ["--enabled", "ebpf-net", "--netlog-fallback-sockets", "2", "--netlog-fallback-blocks=4",
            "--network-path-enabled", "--network-path-api", "http://127.0.0.1:9529/v1/netpath",
            "--trace-uprobe", "--kubeconfig", "/root/.kube/config", "--operator-url", "http://op:1",
            "--interval", "10s"]
    c = load(argv)
    assert c.interval == 10.0 and c.enabled_plugins == ("ebpf-net",)
    assert c.foreign_options == ("--netlog-fallback-sockets", "--netlog-fallback-blocks",
                                 "--network-path-enabled", "--network-path-api", "--trace-uprobe",
                                 "--kubeconfig", "--operator-url")
    # a typo is still refused
    assert "did you mean --interval?" in error_of(["--intervall", "1s"])


def test_options_without_effect_name_what_the_user_wrote(tmp_path):
    conf = write(tmp_path, '[[inputs.ebpf]]\nargs = ["--trace-uprobe"]\nworkload_labels = ["app"]\n')
    c = load(["--config", conf, "--trace-server", "127.0.0.1:9529", "--netlog-metric",
              "--network-path-enabled"], {"DKE_K8S_URL": "https://127.0.0.1:6443"})
    assert cfgmod.options_without_effect(c, {"ebpf-net"}) == [
        "--trace-server (ebpf-trace not running)", "--netlog-metric (bpf-netlog not running)",
        f"workload_labels ({conf}) (kubernetes not running)", "DKE_K8S_URL (kubernetes not running)",
        "--network-path-enabled (not used by this collector)",
        f"--trace-uprobe (args in {conf}) (not used by this collector)"]
    assert cfgmod.options_without_effect(load(["--enabled", "ebpf-net"]), {"ebpf-net"}) == []


def test_started_as_datakit_ebpf_logs_and_locks_beside_itself(tmp_path):
    program = str(tmp_path / "externals" / "datakit-ebpf")
    c = load_config(["--enabled", "ebpf-net"], {}, program=program)
    assert c.log == str(tmp_path / "externals" / "datakit-ebpf.log")
    assert c.pidfile == str(tmp_path / "externals" / "datakit-ebpf.pid")
    c = load_config(["--log", "/x.log", "--pidfile", "/x.pid"], {}, program=program)
    assert (c.log, c.pidfile) == ("/x.log", "/x.pid")
    c = load_config([], {}, program="/usr/bin/dkebpf")
    assert c.log is None and c.pidfile is None


def test_points_go_to_datakit_unless_only_output_is_given():
    assert load([]).datakit_apiserver == "http://0.0.0.0:9529"
    assert load(["--output", "-"]).datakit_apiserver is None
    c = load(["--output", "-", "--datakit-apiserver", "127.0.0.1:1"])
    assert c.datakit_apiserver == "http://127.0.0.1:1"
