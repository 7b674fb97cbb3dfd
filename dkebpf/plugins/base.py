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

    def collect_last(self, now_ns):
        """The last collect before the collector stops: what a plugin holds
        back for a later interval (bpf-netlog's open chunks) goes out now."""
        return self.collect(now_ns)

    def drain(self):
        """Move what waits in the kernel into this plugin's own bounded
        buffers, quickly (the agent calls it between the steps of a flush)."""

    def counters(self):
        return {}

    def memory(self):
        """{holder: bytes} this plugin keeps in user space (reader buffers,
        records carried to the next interval, caches), for /metrics."""
        return {}

    def stop(self):
        pass
