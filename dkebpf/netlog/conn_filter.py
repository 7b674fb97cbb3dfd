"""netlog_blacklist in user space for one interface: per connection, not
per packet. Each batch of packets (PKT_DTYPE rows, before the connection
table) goes through the Cython VerdictCache (dkebpf._netlog_filter): a
packet of a connection already judged at the current Kubernetes generation
costs one hash lookup without the GIL; new connections, and those judged
before the pods last changed, are evaluated together, with their pod and
namespace names looked up once per connection (netlog/k8s.py). No Python
object per packet.

The socket's classic BPF program has already dropped what the header-field
statements match; every statement runs here too, as the program passes
some packets untested (IPv4 fragments after the first, IPv6 with extension
headers)."""
import time

import numpy as np

from .. import _netlog_filter

IDLE_NS = 120 * 10**9     # a connection without a packet this long is forgotten (as the connection table)
CACHE_CONNECTIONS = 65536
NAMES_MAX = 100_000       # distinct pod/namespace names kept before the table starts anew


class ConnFilter:
    def __init__(self, statements, nic_name, pods=None, netns=0, host_network=True,
                 capacity=CACHE_CONNECTIONS):
        """pods: the NetlogK8s that names the pods (None: the k8s_* fields
        are ""); asked only when a statement reads a k8s_* field."""
        self.evaluator = _netlog_filter.ConnFilter(statements)
        self.names = _netlog_filter.StringTable()
        self.nic_name = nic_name
        self.nic_id = self.names.intern(nic_name)
        self.cache = _netlog_filter.VerdictCache(capacity)
        self.capacity = capacity
        reads_pods = any(f.startswith("k8s_") for st in statements for f in st.fields)
        self.pods = pods if reads_pods else None
        self.netns, self.host_network = netns, host_network

    @property
    def packets(self):
        """dropped"""
        return self.cache.dropped_packets

    @property
    def connections(self):
        """dropped, each counted once while it keeps sending (again after it
        was forgotten idle, or turned from kept to dropped)"""
        return self.cache.dropped_connections

    @property
    def generation(self):
        """The pods' generation verdicts are judged at (0 without pods)."""
        return self.pods.generation if self.pods is not None else 0

    def keep(self, pkts):
        """Per packet, True when no statement drops its connection. The
        connection table applies the same verdicts while it folds
        (ConnTable.add/fold_ring with conn_filter: the cache looked up
        without the GIL, settle() called for the entries to judge)."""
        gen = self.generation
        if len(pkts) <= self.capacity:
            return self._keep(pkts, gen)
        return np.concatenate([self._keep(pkts[i:i + self.capacity], gen)
                               for i in range(0, len(pkts), self.capacity)])

    def _keep(self, pkts, gen):
        slots, todo = self.cache.lookup(pkts, gen)
        if len(todo):
            self.settle(todo, gen)
        return self.cache.keep(slots)

    def settle(self, todo, gen):
        """Judge the cache entries lookup() listed (todo) at generation gen:
        their pod and namespace names looked up once per connection, the
        evaluator run over them, the verdicts stored."""
        if len(self.names) > NAMES_MAX:
            # settled verdicts never read their names again: only the ids still to hand out change
            self.names = _netlog_filter.StringTable()
            self.nic_id = self.names.intern(self.nic_name)
        conns = self.cache.connections(todo)
        conns["nic"] = self.nic_id
        if self.pods is not None:
            self.pods.fill_names(conns, self.names, self.netns, self.host_network)
        self.cache.settle(todo, conns, self.evaluator.verdicts(conns, self.names), gen)

    def interval(self, now_ns=None):
        """Forget the connections idle for IDLE_NS (called each interval)."""
        self.cache.expire(time.time_ns() if now_ns is None else now_ns, IDLE_NS)

    def counters(self):
        return {"filter_cached_connections": len(self.cache), "filter_evaluations": self.cache.evaluations,
                "filter_cache_resets": self.cache.resets}
