"""What the enrichment keeps of the cluster, in numpy arrays: a pod is one
row of small integers (names are ids into one string table), its IPs and a
service's ClusterIP:port/protocol are fixed-size byte keys in sorted arrays
looked up with ``searchsorted`` for a whole column at once.

Fed by the reflectors (``replace`` after a list, ``apply`` per watch
event, from their threads: every public method takes the lock). Only
this node's pods keep their container ids and labels; pods of other nodes
keep what a remote address needs (IPs, namespace, name, owner). Pod ->
service comes from EndpointSlices (what kube-proxy itself uses), so other
nodes' pods need no labels. The original instead matched every service's
selector against every pod's labels every 30 s.

Field facts (Kubernetes API reference, core/v1 Pod, Service, discovery/v1
EndpointSlice, apps/v1 ReplicaSet, batch/v1 Job): ``metadata.uid``,
``metadata.ownerReferences[]{kind,name,controller}``, ``spec.nodeName``,
``spec.hostNetwork``, ``status.podIPs[].ip`` (``status.podIP`` on old
servers), ``status.containerStatuses[].containerID`` = ``<runtime>://<id>``
(also initContainerStatuses, ephemeralContainerStatuses);
``spec.clusterIPs`` (``clusterIP``; "None" for headless services),
``spec.ports[]{port,protocol}`` (protocol defaults to TCP);
EndpointSlice ``endpoints[].addresses``, label
``kubernetes.io/service-name``."""
import ipaddress
import threading

import numpy as np

# workload kinds as the original writes them in *_workload_type
WORKLOAD_TYPES = ("", "pod", "deployment", "replicaset", "statefulset", "daemonset", "cronjob", "job")
_KIND = {"ReplicaSet": 3, "StatefulSet": 4, "DaemonSet": 5, "Job": 7}
_PARENT_KIND = {3: 2, 7: 6}  # ReplicaSet's owner Deployment, Job's owner CronJob
WORKLOAD_KIND = {3: "ReplicaSet", 7: "Job"}
PROTOS = {"TCP": 6, "UDP": 17, "SCTP": 132}
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
COMPACT_AFTER_DELETIONS = 10000

LOCAL, HOST_NETWORK = 1, 2
POD_DTYPE = np.dtype([("ns", "i4"), ("name", "i4"), ("owner", "i4"), ("kind", "u1"), ("flags", "u1")])
IP_KEY = "S17"     # family (4|6), 16 address bytes
SVC_KEY = "S20"    # IP_KEY, port (big-endian), protocol number (never 0: no ambiguous NUL padding)


def ip_key(text):
    """IP text -> IP_KEY bytes, None when it is not an address."""
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    return bytes([a.version]) + a.packed.ljust(16, b"\0")


def svc_key(ip, port, proto):
    k = ip_key(ip)
    if k is None or proto not in PROTOS.values():
        return None
    return k + int(port).to_bytes(2, "big") + bytes([proto])


class Strings:
    """Strings by integer id; id 0 is ''. Names many objects share
    (namespaces, ReplicaSets, services) are interned; a pod's own name is
    owned by its row (no lookup dict: one per pod would cost more than the
    name) and its id is reused once the pod is gone."""

    def __init__(self):
        self.ids = {"": 0}
        self.strs = [""]
        self.free = []

    def id(self, s):
        i = self.ids.get(s)
        if i is None:
            i = self.ids[s] = len(self.strs)
            self.strs.append(s)
        return i

    def own(self, s):
        if self.free:
            i = self.free.pop()
            self.strs[i] = s
            return i
        self.strs.append(s)
        return len(self.strs) - 1

    def release(self, i):
        self.strs[i] = None
        self.free.append(i)

    def __len__(self):
        return len(self.strs) - len(self.free)


class _SortedIndex:
    """keys -> values through a sorted array, rebuilt lazily after changes."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.keys = np.empty(0, dtype)
        self.vals = np.empty(0, np.int32)

    def build(self, keys, vals):
        keys = np.asarray(keys, self.dtype)
        order = np.argsort(keys, kind="stable")
        self.keys, self.vals = keys[order], np.asarray(vals, np.int32)[order]

    def lookup(self, keys):
        keys = np.asarray(keys, self.dtype)
        if not len(self.keys):
            return np.full(len(keys), -1, np.int32)
        i = np.searchsorted(self.keys, keys)
        i[i >= len(self.keys)] = 0
        return np.where(self.keys[i] == keys, self.vals[i], -1).astype(np.int32)


class ClusterStore:
    def __init__(self, label_keys=()):
        self.lock = threading.Lock()
        self.strings = Strings()
        self.label_keys = tuple(label_keys)
        self.pods = np.zeros(1024, POD_DTYPE)
        self.pod_ips = np.zeros((1024, 2), IP_KEY)  # dual-stack pods have two
        self.row_of_uid = {}     # 16 uid bytes -> row
        self.free = []
        self.n_rows = 0
        self.local = {}          # row -> (container ids, {label: value}) for this node's pods
        self.row_of_container = {}
        self.services = {}       # uid -> (ns id, name id, [SVC_KEY])
        self.slices = {}         # uid -> (service key id "ns/name", [IP_KEY])
        # kind -> {(ns id, ReplicaSet or Job name id): Deployment or CronJob name id}
        self.owners = {"ReplicaSet": {}, "Job": {}}
        self._ip_index = _SortedIndex(IP_KEY)
        self._svc_index = _SortedIndex(SVC_KEY)
        self._ep_index = _SortedIndex(IP_KEY)
        self._svcs = []
        self._deleted = 0        # deletions since the string table was last compacted
        self._dirty = {"ip", "svc", "ep"}
        # +1 at every change of the pods (names, namespaces, IPs, containers): what was
        # derived from them (bpf-netlog's per-connection filter verdicts) is stale when it moved
        self.generation = 0

    # ---------------------------------------------------------------- feeding
    def replace(self, kind, scope, pages):
        """The whole list of ``kind`` (for pods: of ``scope``, "local" or
        "remote"), as pages of items: each page is stored as it comes
        (lookups go on meanwhile), then what was not listed goes. Returns
        the number of items."""
        keep = set()
        local = scope == "local"
        for items in pages:
            with self.lock:
                for o in items:
                    if kind == "Pod":
                        keep.add(_uid(o))
                        self._put_pod(o, local)
                    else:
                        keep.add(self._key(kind, o))
                        self._put(kind, o)
                self._dirty.update(("ip", "svc", "ep"))
                self.generation += kind == "Pod"
        with self.lock:
            if kind == "Pod":
                for uid, row in list(self.row_of_uid.items()):
                    if bool(self.pods["flags"][row] & LOCAL) == local and uid not in keep:
                        self._del_pod(uid)
                        self.generation += 1
            else:
                table = self._table(kind)
                for k in [k for k in table if k not in keep]:
                    del table[k]
            self._dirty.update(("ip", "svc", "ep"))
        return len(keep)

    def apply(self, kind, scope, typ, obj):
        with self.lock:
            if typ == "DELETED":
                self._deleted += 1
                if self._deleted >= COMPACT_AFTER_DELETIONS:
                    self._compact_strings()
            if kind == "Pod":
                if typ == "DELETED":
                    self._del_pod(_uid(obj))
                else:
                    self._put_pod(obj, scope == "local")
                self._dirty.add("ip")
                self.generation += 1
            elif typ == "DELETED":
                self._table(kind).pop(self._key(kind, obj), None)
                self._dirty.update(("svc", "ep"))
            else:
                self._put(kind, obj)
                self._dirty.update(("svc", "ep"))

    def _table(self, kind):
        return {"Service": self.services, "EndpointSlice": self.slices, **self.owners}[kind]

    def _key(self, kind, o):
        """Services and slices by uid; ReplicaSets and Jobs by the
        (namespace, name) that their pods' ownerReferences give."""
        if kind in self.owners:
            meta = o.get("metadata") or {}
            return self.strings.id(meta.get("namespace", "")), self.strings.id(meta.get("name", ""))
        return _uid(o)

    def _put(self, kind, o):
        meta = o.get("metadata") or {}
        ns = self.strings.id(meta.get("namespace", ""))
        if kind == "Service":
            spec = o.get("spec") or {}
            ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
            keys = [svc_key(ip, p.get("port", 0), PROTOS.get(str(p.get("protocol", "TCP")).upper(), 0))
                    for ip in ips if ip and ip != "None" for p in spec.get("ports") or ()]
            self.services[_uid(o)] = (ns, self.strings.id(meta.get("name", "")), b"".join(k for k in keys if k))
        elif kind == "EndpointSlice":
            svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
            if not svc:
                return
            keys = [ip_key(a) for ep in o.get("endpoints") or () for a in ep.get("addresses") or ()]
            self.slices[_uid(o)] = (ns, self.strings.id(svc), b"".join(k for k in keys if k))
        else:  # ReplicaSet, Job: only the owner above them matters
            parent = _controller(meta)
            if parent and parent.get("kind") in ("Deployment", "CronJob"):
                self.owners[kind][self._key(kind, o)] = self.strings.id(parent.get("name", ""))

    def _put_pod(self, o, local):
        meta, spec, status = o.get("metadata") or {}, o.get("spec") or {}, o.get("status") or {}
        uid = _uid(o)
        row = self.row_of_uid.get(uid)
        if row is None:
            row = self._new_row()
            self.row_of_uid[uid] = row
        else:
            self.strings.release(self.pods["name"][row])
        owner = _controller(meta) or {}
        kind = _KIND.get(owner.get("kind"), 1)
        name = self.strings.own(meta.get("name", ""))
        # a bare pod is its own workload
        self.pods[row] = (self.strings.id(meta.get("namespace", "")), name,
                          self.strings.id(owner.get("name", "")) if kind != 1 else name,
                          kind, (LOCAL if local else 0) | (HOST_NETWORK if spec.get("hostNetwork") else 0))
        ips = [ip_key(p.get("ip", "")) for p in status.get("podIPs") or ()] or [ip_key(status.get("podIP", ""))]
        ips = [k for k in ips if k][:2]
        self.pod_ips[row] = (ips + [b"", b""])[:2]
        if local:
            self._drop_local(row)
            cids = tuple(c["containerID"].split("://", 1)[-1]
                         for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")
                         for c in status.get(key) or () if c.get("containerID"))
            labels = meta.get("labels") or {}
            self.local[row] = (cids, {k: labels[k] for k in self.label_keys if k in labels},
                               meta.get("uid", ""))
            for cid in cids:
                self.row_of_container[cid] = row
            self.row_of_container[meta.get("uid", "")] = row  # the pod UID found in a cgroup path

    def _del_pod(self, uid):
        row = self.row_of_uid.pop(uid, None)
        if row is None:
            return
        self._drop_local(row)
        self.strings.release(self.pods["name"][row])
        self.pods[row] = 0
        self.pod_ips[row] = b""
        self.free.append(row)

    def _drop_local(self, row):
        old = self.local.pop(row, None)
        if old:
            for cid in old[0] + (old[2],):
                if self.row_of_container.get(cid) == row:
                    del self.row_of_container[cid]

    def _compact_strings(self):
        """Drop the interned names nothing refers to any more (every
        CronJob run leaves a Job name, every rollout a ReplicaSet name) and
        renumber the rest (under the lock)."""
        old = self.strings
        live = np.zeros(len(old.strs), bool)
        live[0] = True
        for col in ("ns", "name", "owner"):
            live[self.pods[col][:self.n_rows]] = True
        for ns, name, _ in list(self.services.values()) + list(self.slices.values()):
            live[[ns, name]] = True
        for table in self.owners.values():
            for (ns, name), parent in table.items():
                live[[ns, name, parent]] = True
        interned = np.zeros(len(old.strs), bool)
        interned[list(old.ids.values())] = True
        remap = (np.cumsum(live) - 1).astype(np.int32)
        r = remap.tolist()
        new = Strings()
        new.strs = [old.strs[i] for i in np.nonzero(live)[0]]
        new.ids = {old.strs[i]: r[i] for i in np.nonzero(live & interned)[0]}
        for col in ("ns", "name", "owner"):
            self.pods[col] = remap[self.pods[col]]  # free rows hold 0, which stays 0
        self.services = {k: (r[ns], r[name], keys) for k, (ns, name, keys) in self.services.items()}
        self.slices = {k: (r[ns], r[name], keys) for k, (ns, name, keys) in self.slices.items()}
        self.owners = {kind: {(r[ns], r[name]): r[p] for (ns, name), p in table.items()}
                       for kind, table in self.owners.items()}
        self.strings = new
        self._deleted = 0
        self._dirty.update(("svc", "ep"))

    def _new_row(self):
        if self.free:
            return self.free.pop()
        if self.n_rows == len(self.pods):
            n = 2 * len(self.pods)
            self.pods = np.resize(self.pods, n)
            self.pod_ips = np.resize(self.pod_ips, (n, 2))
        self.n_rows += 1
        return self.n_rows - 1

    # ---------------------------------------------------------------- lookups
    def _indexes(self):
        """Rebuild the sorted indexes that changed (under the lock)."""
        if "ip" in self._dirty:
            rows = np.nonzero(self.pods["flags"][:self.n_rows] & HOST_NETWORK == 0)[0]
            ips = self.pod_ips[rows]
            rr = np.repeat(rows, 2)
            flat = ips.ravel()
            keep = flat != b""
            # host-network pods share the node's IP: they are found by pid only
            self._ip_index.build(flat[keep], rr[keep])
        if "svc" in self._dirty:
            self._svcs = list(self.services.values())
            self._svc_index.build(*_joined(self._svcs, SVC_KEY, range(len(self._svcs))))
        if "ep" in self._dirty:
            slices = list(self.slices.values())
            self._ep_index.build(*_joined(slices, IP_KEY, [name for _, name, _ in slices]))
        self._dirty.clear()

    def pod_rows_by_ip(self, ip_keys):
        with self.lock:
            self._indexes()
            return self._ip_index.lookup(ip_keys)

    def services_by_addr(self, keys):
        """(namespace, name) of the service behind each ClusterIP:port/proto key, or None."""
        with self.lock:
            self._indexes()
            idx = self._svc_index.lookup(keys)
            s = self.strings.strs
            return [(s[self._svcs[i][0]], s[self._svcs[i][1]]) if i >= 0 else None for i in idx]

    def pod_row_by_container(self, cid, pod_uid=None):
        with self.lock:
            row = self.row_of_container.get(cid, -1) if cid else -1
            if row < 0 and pod_uid:
                row = self.row_of_container.get(pod_uid, -1)
            return row

    def names(self, rows):
        """(namespace, pod name) of each pod row, ("", "") for -1: what the
        netlog_blacklist fields need, without describe()'s service and
        workload lookups."""
        with self.lock:
            s = self.strings.strs
            pods = self.pods
            return [(s[pods["ns"][r]], s[pods["name"][r]]) if r >= 0 else ("", "") for r in rows.tolist()]

    def describe(self, rows):
        """For pod rows: [(namespace, pod name, service name, workload name,
        workload type, {label: value})]."""
        with self.lock:
            self._indexes()
            s = self.strings.strs
            out = []
            for row in rows:
                ns, name, owner, kind, _ = self.pods[row].tolist()
                parents = self.owners.get(WORKLOAD_KIND.get(kind), {})
                if (ns, owner) in parents:
                    owner, kind = parents[(ns, owner)], _PARENT_KIND[kind]
                svc = -1
                for k in self.pod_ips[row]:
                    if k:
                        svc = int(self._ep_index.lookup([k])[0])
                        if svc >= 0:
                            break
                labels = self.local.get(row, ((), {}, ""))[1]
                out.append((s[ns], s[name], s[svc] if svc >= 0 else "", s[owner], WORKLOAD_TYPES[kind],
                            labels))
            return out

    def object_counts(self):
        with self.lock:
            local = len(self.local)
            return {"pods_local": local, "pods_remote": len(self.row_of_uid) - local,
                    "services": len(self.services), "endpointslices": len(self.slices),
                    "replicasets_owned": len(self.owners["ReplicaSet"]), "jobs_owned": len(self.owners["Job"]),
                    "strings": len(self.strings)}


def _joined(entries, dtype, vals):
    """(ns, name, concatenated keys) entries -> (keys, one value per key)."""
    size = np.dtype(dtype).itemsize
    keys = np.frombuffer(b"".join(k for _, _, k in entries), dtype)
    return keys, np.repeat(np.asarray(list(vals), np.int32), [len(k) // size for _, _, k in entries])


def _uid(o):
    uid = (o.get("metadata") or {}).get("uid", "")
    try:
        return bytes.fromhex(uid.replace("-", ""))[:16].ljust(16, b"\0")
    except ValueError:  # not a UUID (only a stand-in would do that): still a stable key
        return uid.encode()[:16].ljust(16, b"\0")


def _controller(meta):
    refs = meta.get("ownerReferences") or ()
    for r in refs:
        if r.get("controller"):
            return r
    return refs[0] if refs else None
