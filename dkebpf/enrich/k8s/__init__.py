"""Kubernetes tags for netflow, httpflow and dnsflow: an enrich step over
the final (grouped) string columns of a batch, fed by list + watch of the
API server (reflector.py) into compact arrays (store.py), with processes
placed in their pods through their cgroup (cgroup.py).

Tags, per side (src/dst, and client/server mirrored by direction as the
original does): ``{side}_k8s_namespace``, ``_pod_name``, ``_service_name``,
``_deployment_name`` (the workload's name, of any kind, as the original),
``_workload_name``, ``_workload_type``; ``sub_source=K8s`` when either side
matched, and then ``N/A`` on the side that did not (the doc's rule); the
configured ``workload_labels`` of the local (src) pod, named
``workload_label_prefix`` + label.

The local side is found by pid first (cgroup -> container id -> pod of this
node), then by IP; the remote side by the DNAT destination when
ebpf-conntrack saw one (a ClusterIP connection: the pod behind it), else by
IP, else as a service by ClusterIP:port/protocol. Pods on the host network
share the node's IP and are found by pid only."""
import logging
import os
import socket
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .cgroup import CgroupResolver, ProcessEvents
from .store import ClusterStore, PROTOS, ip_key, svc_key

NA = "N/A"
SIDE_TAGS = ("k8s_namespace", "k8s_pod_name", "k8s_service_name", "k8s_deployment_name",
             "k8s_workload_name", "k8s_workload_type")
SYNC_WAIT_S = 10.0  # at start, how long the first lists may take before plugins start anyway


def add_k8s_tags(k8s, cols, client_server=True):
    """The enrich step as the plugins call it: nothing when Kubernetes
    enrichment is off (``k8s`` None)."""
    if k8s is not None:
        k8s.add_tags(cols, client_server)


def k8s_tag_names(k8s, client_server=True):
    return k8s.tag_names(client_server) if k8s is not None else []


def resources(node):
    """(kind, scope, API path, params) of every list + watch."""
    return [
        ("Pod", "local", "/api/v1/pods", {"fieldSelector": f"spec.nodeName={node}"}),
        ("Pod", "remote", "/api/v1/pods", {"fieldSelector": f"spec.nodeName!={node}"}),
        ("Service", "", "/api/v1/services", {}),
        ("EndpointSlice", "", "/apis/discovery.k8s.io/v1/endpointslices", {}),
        ("ReplicaSet", "", "/apis/apps/v1/replicasets", {}),
        ("Job", "", "/apis/batch/v1/jobs", {}),
    ]


class K8sEnrichment:
    def __init__(self, api, node, host_proc="/proc", label_keys=(), label_prefix="", logger=None,
                 backoff=None):
        self.log = logger or logging.getLogger("dkebpf")
        self.node = node
        self.store = ClusterStore(label_keys)
        self.cgroups = CgroupResolver(host_proc)
        self.process_events = ProcessEvents(self.cgroups, self.log)
        self.label_tags = [label_prefix + k for k in label_keys]
        self.label_keys = tuple(label_keys)
        self.stats = {"lookups_hit": 0, "lookups_missed": 0}
        kw = {"backoff": backoff} if backoff else {}
        from .reflector import Reflector  # imports the API client (requests) only when watched
        self.reflectors = [Reflector(api, self.store, kind, path, scope, params, self.log, **kw)
                           for kind, scope, path, params in resources(node)]

    @classmethod
    def from_config(cls, cfg, logger):
        """The enrichment the configuration asks for, or None, having said
        why there will be no Kubernetes tags."""
        token_path = cfg.bearer_token
        if not cfg.bearer_token_string and not (token_path and os.path.exists(token_path)):
            logger.info("kubernetes: no pod, service or workload tags: no token (bearer_token %s does not "
                        "exist and bearer_token_string is empty; not running in a pod?)", token_path or "-")
            return None
        # requests + urllib3 + ssl, ~14 MiB: only when there is a cluster to watch
        from .api import ApiError, KubeApi, Token
        try:
            api = KubeApi(cfg.kubernetes_url, Token(token_path, cfg.bearer_token_string),
                          ca_path=cfg.kubernetes_ca, verify=not cfg.kubernetes_insecure_skip_verify)
        except ApiError as exc:
            logger.warning("kubernetes: no pod, service or workload tags: %s", exc)
            return None
        node = cfg.node_name or socket.gethostname()
        return cls(api, node, cfg.host_proc, cfg.workload_labels, cfg.workload_label_prefix, logger)

    def start(self, wait_s=SYNC_WAIT_S):
        self.process_events.start()
        for r in self.reflectors:
            r.start()
        # the first interval's points get tags when the API answers quickly;
        # a slow or absent server delays nothing beyond this
        end = time.monotonic() + wait_s
        for r in self.reflectors:
            if not r.synced.wait(max(0.0, end - time.monotonic())):
                self.log.warning("kubernetes: %s not listed yet (%s); points have no Kubernetes tags "
                                 "until it is", r.name, r.last_error or "no answer")
                break
        else:
            self.log.info("kubernetes: node %s, %s", self.node,
                          ", ".join(f"{k} {v}" for k, v in self.store.object_counts().items()))

    def stop(self):
        self.process_events.stop()
        for r in self.reflectors:
            r.stop()

    def counters(self):
        c = {f"objects_{k}": v for k, v in self.store.object_counts().items()}
        for r in self.reflectors:  # each thread counts its own; summed here
            for k, v in r.stats.items():
                c[k] = c.get(k, 0) + v
        c.update(self.stats)
        c["process_events"] = self.process_events.events
        return c

    # ------------------------------------------------------------ the step
    def tag_names(self, client_server=True):
        sides = ("src", "dst", "client", "server") if client_server else ("src", "dst")
        return [f"{s}_{t}" for s in sides for t in SIDE_TAGS] + ["sub_source"] + self.label_tags

    def add_tags(self, cols, client_server=True):
        """Adds tag_names(client_server) to ``cols`` (dict of string
        columns with src_ip, dst_ip, dst_port, transport, direction and,
        when known, pid, dst_nat_ip, dst_nat_port)."""
        cols.update({k: _array(cols[k]) for k in _INPUTS if k in cols})
        n = len(cols["src_ip"])
        src_row = np.full(n, -1, np.int64)
        if "pid" in cols:
            src_row = _per_unique(cols["pid"], self._pod_of_pid)
        by_ip = _per_unique(cols["src_ip"], self._pod_of_ip)
        src_row = np.where(src_row >= 0, src_row, by_ip)

        dst_ip, dst_port = cols["dst_ip"], cols["dst_port"]
        if "dst_nat_ip" in cols:  # a DNAT destination is where the connection really went
            dst_ip = pc.coalesce(cols["dst_nat_ip"], dst_ip)
        dst_row = _per_unique(dst_ip, self._pod_of_ip)
        # a connection to a ClusterIP that conntrack did not translate is still the service's
        addr = pc.binary_join_element_wise(cols["dst_ip"], dst_port, cols["transport"], "|")
        uniq = pc.unique(addr)
        dst_svc = [self._service(t) for t in uniq.to_pylist()]
        dst_svc_idx = pc.index_in(addr, uniq).to_numpy(zero_copy_only=False).astype(np.int64)

        src = self._side(src_row, None, None)
        dst = self._side(dst_row, dst_svc, dst_svc_idx)
        src_hit, dst_hit = src.pop("_hit"), dst.pop("_hit")
        any_hit = np.logical_or(src_hit, dst_hit)
        self.stats["lookups_hit"] += int(src_hit.sum() + dst_hit.sum())
        self.stats["lookups_missed"] += int(2 * n - src_hit.sum() - dst_hit.sum())
        na = pa.scalar(NA)
        nulls = pa.nulls(n, pa.string())
        for side, vals, hit in (("src", src, src_hit), ("dst", dst, dst_hit)):
            fill = pa.array(np.logical_and(any_hit, np.logical_not(hit)))
            for t in SIDE_TAGS:
                cols[f"{side}_{t}"] = pc.if_else(fill, na, vals[t])
        if client_server:
            outgoing = pc.equal(cols["direction"], pa.scalar("outgoing"))
            for t in SIDE_TAGS:
                cols[f"client_{t}"] = pc.if_else(outgoing, cols[f"src_{t}"], cols[f"dst_{t}"])
                cols[f"server_{t}"] = pc.if_else(outgoing, cols[f"dst_{t}"], cols[f"src_{t}"])
        cols["sub_source"] = pc.if_else(pa.array(any_hit), pa.scalar("K8s"), nulls)
        for tag, key in zip(self.label_tags, self.label_keys):
            cols[tag] = src.pop(f"label:{key}")
        return cols

    def _pod_of_pid(self, pid):
        try:
            pid = int(pid)
        except (TypeError, ValueError):
            return -1
        cid, uid = self.cgroups.lookup(pid)
        return self.store.pod_row_by_container(cid, uid) if (cid or uid) else -1

    def _service(self, text):
        ip, port, proto = text.split("|")
        k = svc_key(ip, port, PROTOS.get(proto.upper(), 0)) if port.isdigit() else None
        return self.store.services_by_addr([k])[0] if k else None

    def _pod_of_ip(self, ip):
        k = ip_key(ip) if ip else None
        return int(self.store.pod_rows_by_ip([k])[0]) if k else -1

    def _side(self, rows, svcs, svc_idx):
        """Tag columns for one side from pod rows and (optionally) the
        ClusterIP service each row's address is; built once per distinct
        (pod, service) pair and spread with take()."""
        n = len(rows)
        svc_code = svc_idx + 1 if svc_idx is not None else np.zeros(n, np.int64)
        code = rows.astype(np.int64) * (1 << 32) + svc_code
        uniq, inv = np.unique(code, return_inverse=True)
        pod_rows = [int(c >> 32) for c in uniq]
        described = dict(zip((r for r in pod_rows if r >= 0),
                             self.store.describe([r for r in pod_rows if r >= 0])))
        values = {t: [] for t in SIDE_TAGS}
        labels = {k: [] for k in self.label_keys}
        hit = []
        for c, row in zip(uniq.tolist(), pod_rows):
            svc = svcs[(c & 0xFFFFFFFF) - 1] if svcs is not None and (c & 0xFFFFFFFF) else None
            if row >= 0:
                ns, pod, pod_svc, wl, wl_type, lab = described[row]
                # the service the connection went through beats the pod's first one
                vals = (ns, pod, svc[1] if svc else pod_svc or NA, wl or NA, wl or NA, wl_type or NA)
            elif svc:
                ns, name = svc
                vals, lab = (ns, NA, name, NA, NA, NA), {}
            else:
                vals, lab = (None,) * len(SIDE_TAGS), {}
            for t, v in zip(SIDE_TAGS, vals):
                values[t].append(v)
            for k in self.label_keys:
                labels[k].append(lab.get(k))
            hit.append(vals[0] is not None)
        take = pa.array(inv.ravel().astype(np.int32))
        out = {t: pa.array(v, pa.string()).take(take) for t, v in values.items()}
        out.update({f"label:{k}": pa.array(v, pa.string()).take(take) for k, v in labels.items()})
        out["_hit"] = np.asarray(hit, bool)[inv.ravel()] if n else np.zeros(0, bool)
        return out


_INPUTS = ("pid", "src_ip", "dst_ip", "dst_port", "transport", "direction", "dst_nat_ip", "dst_nat_port")


def _array(col):
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _per_unique(col, fn):
    """fn over the distinct values of an arrow column, spread back to every
    row as an int64 numpy array (a few hundred distinct values per batch)."""
    if len(col) == 0:
        return np.zeros(0, np.int64)
    uniq = pc.unique(col)
    vals = np.array([fn(v) if v is not None else -1 for v in uniq.to_pylist()], np.int64)
    return vals[pc.index_in(col, uniq).to_numpy(zero_copy_only=False)]
