"""Start a collector exactly as DataKit (1.84) starts its eBPF external
input, from the facts in reference/datakit-contract.md and DataKit's ebpf
and external inputs:

- argv: ``run`` + the ``args`` of ``[[inputs.ebpf]]``, then ``--hostname``
  (unless args have it), ``--l7net-enabled`` (default httpflow),
  ``--pprof-host``/``--pprof-port`` when set, boolean flags only when true,
  ``--ephemeral_port`` when set, ``--interval`` when set, ``--netlog-metric``
  (on by default), the trace, limit and sampling flags when set,
  ``--enabled`` with the plugin names DataKit knows, and last ``--tags``
  with the ``[inputs.ebpf.tags]`` joined as ``k=v`` by ``;``;
- environment: only ``envs`` plus the DKE_* variables of the input's keys
  (no PATH, no HOME);
- standard output and error: the null device.
"""
import subprocess

# the plugin names DataKit passes on (others are dropped before the start)
DATAKIT_PLUGINS = ("ebpf-bash", "ebpf-net", "ebpf-conntrack", "ebpf-trace", "bpf-netlog")

# DataKit's sample ebpf.conf, as installed (the keys it leaves uncommented)
DEFAULT_EBPF_CONF = {
    "args": ["--datakit-apiserver", "0.0.0.0:9529"],
    "envs": [],
    "enabled_plugins": ["ebpf-net"],
    "l7net_enabled": ["httpflow"],
    "pprof_host": "127.0.0.1",
    "pprof_port": "6061",
    "netlog_metric": True,
    "netlog_log": False,
    "trace_server": "",
    "trace_env_list": [],
    "trace_env_blacklist": [],
    "trace_name_list": [],
    "trace_name_blacklist": [],
    "conv_to_ddtrace": False,
    "ipv6_disabled": False,
    "tags": {},
}


def datakit_argv(conf, hostname):
    """The words after the program name, as DataKit builds them."""
    args = list(conf.get("args", []))
    if not any("--hostname" in a for a in args):
        args += ["--hostname", hostname]
    l7 = conf.get("l7net_enabled")
    l7_off = conf.get("l7net_disabled")
    if l7 is None and l7_off is None:
        l7 = ["httpflow"]
    if l7:
        args += ["--l7net-enabled", ",".join(l7)]
    elif l7_off:
        args += ["--l7net-disabled", ",".join(l7_off)]
    for key, flag in (("pprof_host", "--pprof-host"), ("pprof_port", "--pprof-port")):
        if conf.get(key):
            args += [flag, str(conf[key])]
    if conf.get("ipv6_disabled"):
        args.append("--ipv6-disabled")
    if conf.get("ephemeral_port", -1) >= 0:
        args += ["--ephemeral_port", str(conf["ephemeral_port"])]
    if conf.get("interval"):
        args += ["--interval", conf["interval"]]
    if conf.get("netlog_metric", True):
        args.append("--netlog-metric")
    if not conf.get("netlog_metric_only", True) or conf.get("netlog_log"):
        args.append("--netlog-log")
    if conf.get("trace_server"):
        args += ["--trace-server", conf["trace_server"]]
    if conf.get("trace_all_process"):
        args.append("--trace-allprocess")
    for key, flag in (("trace_env_list", "--trace-env-list"), ("trace_env_blacklist", "--trace-env-blacklist"),
                      ("trace_name_list", "--trace-name-list"),
                      ("trace_name_blacklist", "--trace-name-blacklist")):
        if conf.get(key):
            args += [flag, ",".join(conf[key])]
    if conf.get("conv_to_ddtrace"):
        args.append("--conv-to-ddtrace")
    for key, flag in (("cpu_limit", "--res-cpu"), ("mem_limit", "--res-mem"), ("net_limit", "--res-net")):
        if conf.get(key):
            args += [flag, conf[key]]
    if conf.get("sampling_rate"):
        args += ["--sampling-rate", conf["sampling_rate"]]
    elif conf.get("sampling_rate_pts_per_min"):
        args += ["--sampling-rate-ptsperminute", conf["sampling_rate_pts_per_min"]]
    plugins = [p for p in conf.get("enabled_plugins") or ["ebpf-net"] if p in DATAKIT_PLUGINS]
    args = ["run", *args, "--enabled", ",".join(plugins)]
    tags = [f"{k}={v}" for k, v in conf.get("tags", {}).items()]
    if tags:
        args += ["--tags", ";".join(tags)]
    return args


def datakit_env(conf):
    env = dict(e.split("=", 1) for e in conf.get("envs", []))
    if conf.get("netlog_blacklist"):
        env["DKE_NETLOG_NET_FILTER"] = conf["netlog_blacklist"]
    return env


def start(launcher, conf, hostname, prefix=()):
    """Popen of ``launcher`` as DataKit starts it (``prefix``: a wrapper
    such as unshare, placed before the launcher)."""
    return subprocess.Popen([*prefix, str(launcher), *datakit_argv(conf, hostname)],
                            env=datakit_env(conf), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
