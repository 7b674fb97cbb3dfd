"""What bpf-netlog knows of pods and containers, for its logs' tags and for
the netlog_blacklist fields ``k8s_src_pod``, ``k8s_dst_pod``,
``k8s_src_namespace``, ``k8s_dst_namespace``.

The local side of an interface in a pod's network namespace is that pod:
a process of the namespace (found under HOST_PROC), its cgroup, its
container, its pod (the enrichment's CgroupResolver and ClusterStore), so a
pod is found even when its IP is not (yet) in the API's answer. Elsewhere
(the host's namespace, a namespace no pod owns) the local side is the pod
owning the local address, as the remote side always is. Host-network pods
share the node's IP: never found by address (the store's rule).

Logs (``bpf_net_l4_log``, ``bpf_net_l7_log``) get the tags netflow gets
(dkebpf.enrich.k8s: src/dst/client/server pod, namespace, service,
workload, ``sub_source``), computed per distinct connection key of the
batch, and ``k8s_namespace``/``k8s_pod_name``/``k8s_container_name`` of
the interface's namespace (the original's tags of a container NIC): from
``--container-endpoints`` (dkebpf.enrich.containers), else the pod and
namespace of the namespace's pod.

``generation`` changes whenever the answer for some connection may have:
the store's pod generation plus a count of changes of a namespace's pod.
The filter's per-connection verdicts (conn_filter.py) are judged again
when it moves."""
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..enrich.containers import TAGS as RUNTIME_TAGS

NETNS_RECHECK_S = 10.0   # how long a namespace's pod (or its absence) is trusted without a pod change
SCAN_MAX_PIDS = 64       # processes of one namespace tried for a cgroup naming a pod


class NetlogK8s:
    def __init__(self, k8s, host_proc="/proc", runtimes=None):
        """k8s: the agent's K8sEnrichment or None; runtimes:
        enrich.containers.ContainerRuntimes or None."""
        self.k8s = k8s
        self.proc = host_proc
        self.runtimes = runtimes
        self._netns = {}      # inode -> (pid, pod row, store generation, monotonic time checked)
        self._epoch = 0       # +1 when a namespace's pod changed
        self._scan = None     # (monotonic time, {netns inode: [pids]})

    def start(self):
        if self.runtimes is not None:
            self.runtimes.start()

    def stop(self):
        if self.runtimes is not None:
            self.runtimes.stop()

    def counters(self):
        return dict(self.runtimes.stats) if self.runtimes is not None else {}

    @property
    def generation(self):
        if self.k8s is None:
            return 0
        return self.k8s.store.generation + self._epoch

    # ------------------------------------------------------------ namespaces
    def netns_pod(self, inode):
        """(pid, pod row) of the pod owning this network namespace, (0, -1)
        when none does (or there is no Kubernetes data)."""
        if self.k8s is None:
            return 0, -1
        gen = self.k8s.store.generation
        got = self._netns.get(inode)
        now = time.monotonic()
        if got is not None and got[2] == gen and now - got[3] < NETNS_RECHECK_S:
            return got[0], got[1]
        pid, row = self._resolve(inode, got[0] if got else 0)
        if got is not None and got[1] != row:   # verdicts judged with the old answer are stale
            self._epoch += 1
        self._netns[inode] = (pid, row, gen, now)
        return pid, row

    def forget(self, live_inodes):
        """Drop what is known of namespaces that are gone."""
        for ino in [i for i in self._netns if i not in live_inodes]:
            del self._netns[ino]

    def _pod_of_pid(self, pid):
        cid, uid = self.k8s.cgroups.lookup(pid)
        return self.k8s.store.pod_row_by_container(cid, uid) if (cid or uid) else -1

    def _resolve(self, inode, last_pid):
        if last_pid and _netns_of(self.proc, last_pid) == inode:
            row = self._pod_of_pid(last_pid)
            if row >= 0:
                return last_pid, row
        for pid in self._processes().get(inode, ())[:SCAN_MAX_PIDS]:
            row = self._pod_of_pid(pid)
            if row >= 0:
                return pid, row
        return 0, -1

    def _processes(self):
        """{netns inode: [pids]} of every process under HOST_PROC, one walk
        shared by all namespaces, at most every NETNS_RECHECK_S."""
        now = time.monotonic()
        if self._scan is None or now - self._scan[0] >= NETNS_RECHECK_S:
            found = {}
            for pid in _pids(self.proc):
                ino = _netns_of(self.proc, pid)
                if ino is not None:
                    found.setdefault(ino, []).append(pid)
            self._scan = (now, found)
        return self._scan[1]

    # ------------------------------------------------------------ the filter's names
    def fill_names(self, conns, names, netns, host_network):
        """Sets the src_pod, dst_pod, src_ns and dst_ns name ids of CONN_DTYPE
        rows (one per connection to judge) in the StringTable names."""
        if self.k8s is None or not len(conns):
            return
        store = self.k8s.store
        src = store.pod_rows_by_ip(ip_keys(conns["laddr"], conns["family"])).astype(np.int64)
        dst = store.pod_rows_by_ip(ip_keys(conns["raddr"], conns["family"])).astype(np.int64)
        if not host_network:
            own = self.netns_pod(netns)[1]
            if own >= 0:
                src[:] = own
        rows, inverse = np.unique(np.concatenate([src, dst]), return_inverse=True)
        ids = np.array([(names.intern(ns), names.intern(pod)) for ns, pod in store.names(rows)],
                       np.uint32).reshape(-1, 2)
        n = len(conns)
        conns["src_ns"], conns["src_pod"] = ids[inverse[:n], 0], ids[inverse[:n], 1]
        conns["dst_ns"], conns["dst_pod"] = ids[inverse[n:], 0], ids[inverse[n:], 1]

    # ------------------------------------------------------------ the logs' tags
    def tag_names(self):
        """The tags log_tags() adds (none without Kubernetes data or runtimes)."""
        if self.k8s is None and self.runtimes is None:
            return []
        return (self.k8s.tag_names() if self.k8s is not None else []) + list(RUNTIME_TAGS)

    def interface_names(self, inode):
        """k8s_namespace, k8s_pod_name, k8s_container_name of an interface in
        the network namespace inode (not the host's): what a container
        runtime says, else the namespace's pod as the API says (no container
        name then: a pod's containers share the namespace)."""
        got = self.runtimes.names(inode) if self.runtimes is not None else {}
        if "k8s_pod_name" not in got and self.k8s is not None:
            row = self.netns_pod(inode)[1]
            if row >= 0:
                ns, pod = self.k8s.store.names(np.array([row]))[0]
                got = dict(got, k8s_namespace=ns, k8s_pod_name=pod)
        return got

    def log_tags(self, batch):
        """A bpf_net_l4_log or bpf_net_l7_log RecordBatch (as l4_batch and
        l7_batch build it: netns, host_network, src_ip, dst_ip, dst_port,
        l4_proto, direction columns) with tag_names() added."""
        if batch is None or (self.k8s is None and self.runtimes is None):
            return batch
        netns = batch.column("netns")
        uniq = pc.unique(netns)
        at = pc.index_in(netns, uniq)
        host = {ns for ns, h in zip(netns.to_pylist(), batch.column("host_network").to_pylist()) if h == "true"}
        cols = {}
        if self.k8s is not None:
            # the pod of a namespace comes in as a pid of it (the enrichment's pid -> cgroup -> pod)
            pids = [str(self.netns_pod(int(ns))[0] or "") if ns not in host else "" for ns in uniq.to_pylist()]
            direction = batch.column("direction")
            tagged = {
                "src_ip": batch.column("src_ip"), "dst_ip": batch.column("dst_ip"),
                "dst_port": batch.column("dst_port"), "transport": batch.column("l4_proto"),
                "pid": pa.array(pids, pa.string()).take(at),
                # "unknown" is written with the local end as the client (common_columns): so are the pods
                "direction": pc.if_else(pc.equal(direction, "incoming"), direction, pa.scalar("outgoing")),
            }
            self.k8s.add_tags(tagged)
            cols.update({k: tagged[k] for k in self.k8s.tag_names()})
        per_ns = [self.interface_names(int(ns)) if ns not in host else {} for ns in uniq.to_pylist()]
        for tag in RUNTIME_TAGS:
            cols[tag] = pa.array([n.get(tag) for n in per_ns], pa.string()).take(at)
        for name, col in cols.items():
            batch = batch.append_column(name, col)
        return batch


def ip_keys(addrs, family):
    """V16 address column + family (4|6) -> the store's IP_KEY (S17) keys."""
    n = len(addrs)
    raw = np.zeros((n, 17), np.uint8)
    raw[:, 0] = family
    raw[:, 1:] = np.frombuffer(np.ascontiguousarray(addrs).tobytes(), np.uint8).reshape(n, 16)
    return raw.view("S17").ravel()


def _pids(proc):
    try:
        names = os.listdir(proc)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def _netns_of(proc, pid):
    try:
        return os.stat(f"{proc}/{pid}/ns/net").st_ino
    except OSError:
        return None
