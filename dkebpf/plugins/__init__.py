"""The one table of plugins. Config validation (``--enabled``,
``--l7net-enabled``), the agent (what to build, in which order),
``dkebpf check`` (what to check, with which probes) and the tests (the
README table, the unimplemented example) all read ``PLUGINS``; adding a
plugin is its own module plus one row here.

A row is one unit the agent starts: a ``Plugin`` subclass named by module
and class (imported only when used, so config and check need no compiled
extension), or a name the user may ask for that is not built yet. Rows of
kind ``PLUGIN`` are enabled by ``--enabled <name>``; one name may have
several rows (``ebpf-net`` is dnsflow and netflow). Rows of kind ``L7NET``
are ebpf-net's layer-7 protocols, enabled by ``--l7net-enabled <name>``
when ebpf-net is on.

``provides`` / ``needs`` name the slots of ``PluginContext`` a row fills or
reads (``domains``, ``nat``, ``k8s``); the agent starts a provider before
every row that needs its slot, so one interval sees fresh data. A need
nobody enabled provides is simply empty (no DNS names, no NAT tags).
"""
import importlib
from dataclasses import dataclass
from typing import Optional, Tuple

PLUGIN = "plugin"   # selected by --enabled / enabled_plugins
L7NET = "l7net"     # an ebpf-net L7 protocol, selected by --l7net-enabled
# PluginContext attributes one plugin fills for others (k8s: the Kubernetes
# enrichment, dkebpf/enrich/k8s, which the agent runs itself when a chosen
# row needs it and an API server is configured)
CONTEXT_SLOTS = ("domains", "nat", "k8s")


@dataclass(frozen=True)
class PluginRow:
    name: str                     # as the user writes it
    kind: str                     # PLUGIN or L7NET
    part: str = ""                # which part of a multi-row plugin ("netflow"), else ""
    implementation: Optional[str] = None  # "module:Class" under dkebpf.plugins; None: not built yet
    check: Optional[str] = None   # function in dkebpf.check: () -> (ok, [lines])
    requires: Tuple[str, ...] = ()  # dkebpf.features probes it cannot run without
    provides: Tuple[str, ...] = ()
    needs: Tuple[str, ...] = ()

    @property
    def implemented(self):
        return self.implementation is not None

    @property
    def label(self):
        """How the README table names the row."""
        if self.kind == L7NET:
            return f"`ebpf-net` {self.name}"
        return f"`{self.name}` {self.part}".rstrip()

    def plugin_class(self):
        module, cls = self.implementation.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


PLUGINS = (
    PluginRow("ebpf-net", PLUGIN, "netflow", "netflow:NetflowPlugin", "check_netflow",
              requires=("btf", "sock_length_tracepoints", "rdonly_cast", "cgroup2"),
              needs=("domains", "nat", "k8s")),
    PluginRow("ebpf-net", PLUGIN, "dnsflow", "dnsflow:DnsflowPlugin", "check_dnsflow",
              requires=("packet_socket",), provides=("domains",), needs=("k8s",)),
    PluginRow("httpflow", L7NET, "", "httpflow:HttpflowPlugin", "check_httpflow",
              requires=("btf", "sock_length_tracepoints", "rdonly_cast"), needs=("domains", "nat", "k8s")),
    PluginRow("httpflow-tls", L7NET, "", "httpflow_tls:HttpflowTlsPlugin", "check_httpflow_tls",
              requires=("btf", "sock_length_tracepoints", "rdonly_cast"), needs=("domains", "nat", "k8s")),
    PluginRow("ebpf-bash", PLUGIN, "", "bash:BashPlugin", "check_bash", requires=("btf",)),
    PluginRow("ebpf-conntrack", PLUGIN, "", "conntrack:ConntrackPlugin", "check_conntrack",
              requires=("ctnetlink_events",), provides=("nat",)),
    PluginRow("ebpf-trace", PLUGIN, "", "trace:TracePlugin", "check_trace",
              requires=("btf", "sock_length_tracepoints", "rdonly_cast")),
    PluginRow("bpf-netlog", PLUGIN, "", "netlog:NetlogPlugin", "check_netlog", requires=("packet_socket",),
              needs=("domains", "k8s")),
)


def names(kind, implemented_only=False):
    """The names of ``kind`` in table order, each once: all of them (what
    config accepts) or only those built in this version."""
    return tuple(dict.fromkeys(r.name for r in PLUGINS
                               if r.kind == kind and (r.implemented or not implemented_only)))


def rows_for(enabled_plugins, l7net_enabled):
    """The rows to run for these settings, providers before the rows that
    need what they provide (table order otherwise)."""
    chosen = [r for r in PLUGINS if r.implemented and (
        r.name in enabled_plugins if r.kind == PLUGIN
        else "ebpf-net" in enabled_plugins and r.name in l7net_enabled)]
    return start_order(chosen)


def start_order(rows):
    """Stable topological order over provides/needs: a row comes after every
    other chosen row that provides a slot it needs."""
    pending, ordered = list(rows), []
    while pending:
        for r in pending:
            if not any(o is not r and set(o.provides) & set(r.needs) for o in pending):
                break
        else:
            raise RuntimeError("plugin table: provides/needs form a cycle among "
                               + ", ".join(x.label for x in pending))
        ordered.append(r)
        pending.remove(r)
    return ordered


def requirements(enabled_plugins, l7net_enabled=()):
    """The feature probes (dkebpf/features.py) the rows these settings run
    require, each once: what a test running the collector so must mark."""
    return tuple(dict.fromkeys(f for r in rows_for(enabled_plugins, l7net_enabled) for f in r.requires))
