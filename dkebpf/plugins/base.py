"""What every plugin provides to the agent."""
from dataclasses import dataclass, field
from typing import List

import pyarrow as pa


@dataclass
class PointBatch:
    """Points of one measurement, ready for the line-protocol encoder: the
    columns named in ``tags`` and ``fields`` of ``batch``; one row, one point."""

    measurement: str
    category: str      # DataKit /v1/write/<category>
    input_name: str    # ?input=<input_name>
    batch: pa.RecordBatch
    tags: List[str]
    fields: List[str]
    const_tags: dict = field(default_factory=dict)  # same on every point, e.g. source
    timestamp_column: str = None


@dataclass
class PluginContext:
    """What the agent hands to plugins."""

    cfg: object
    logger: object
    self_pid: int
    stats: dict = field(default_factory=dict)
    # enrichment shared between plugins, filled by the plugin that owns the
    # source (None when that plugin is not enabled):
    domains: object = None   # IP -> domain from DNS answers (dnsflow)
    nat: object = None       # connection -> DNAT destination (ebpf-conntrack)
    k8s: object = None       # Kubernetes tags (enrich.k8s.K8sEnrichment), when an API server is configured


class Plugin:
    """Lifecycle: start() loads and attaches; the agent watches fileobjs()
    and calls on_readable(); collect() once per interval returns
    PointBatches; stop() detaches everything. None of these may block for
    long; errors are DkebpfError subclasses with user-facing text.

    Early flush: when on_readable() returns True the agent calls this
    plugin's collect() right away and sends its points, without waiting
    for the interval to end (e.g. ebpf-bash once 128 lines wait). The
    interval's own flush still comes on time."""

    name = "?"

    def start(self):
        raise NotImplementedError

    def fileobjs(self):
        return []

    def on_readable(self, fileobj):
        """Read what the fileobj has; return True to be flushed now."""
        return False

    def collect(self, now_ns):
        return []

    def counters(self):
        return {}

    def stop(self):
        pass


def ring_counters(rings):
    """Counters of RingReaders: records received, lost in user space (the
    reader's buffer was full), of a wrong size."""
    c = {}
    for r in rings:
        rc = r.counters()
        c[f"ring_{r.name}_received"] = rc["received"]
        c[f"ring_{r.name}_lost_userspace"] = rc["lost"]
        if "bad_size" in rc:
            c[f"ring_{r.name}_bad_size"] = rc["bad_size"]
    return c


def kernel_drop_counters(drops_map, names):
    """The per-CPU drop counters a BPF object keeps (index -> name), summed."""
    sums = drops_map.percpu_sums()
    return {f"kernel_drop_{name}": int(sums[idx]) for idx, name in names.items()}


def close_bpf(links, rings, obj):
    """Detach links, close rings, then the object (its maps and programs)."""
    for link in links:
        link.close()
    for r in rings:
        if r is not None:
            r.close()
    if obj is not None:
        obj.close()
