"""A Kubernetes API server stand-in for tests: HTTPS on loopback with its
own CA, bearer-token authentication, list (paged: limit/continue) and
watch (chunked JSON lines, bookmarks, timeoutSeconds) of pods, services,
EndpointSlices, ReplicaSets and Jobs, with field selectors on
spec.nodeName (= and !=).

Shapes follow the Kubernetes API reference: list bodies are
``{"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion",
"continue"}, "items": [...]}``; watch lines ``{"type": "ADDED"|"MODIFIED"|
"DELETED"|"BOOKMARK"|"ERROR", "object": {...}}``; a watch from a version
older than the oldest kept answers 200 and one ERROR event whose object is
``Status`` code 410 reason Expired ("too old resource version"); a wrong
token answers 401 with a Status body. The test drives it: add/modify/
delete objects, compact() the history, end_watches(), restart(),
set the token."""
import base64
import contextlib
import copy
import itertools
import json
import os
import ssl
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

COLLECTIONS = {
    "/api/v1/pods": ("Pod", "v1"),
    "/api/v1/services": ("Service", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1"),
    "/apis/apps/v1/replicasets": ("ReplicaSet", "apps/v1"),
    "/apis/batch/v1/jobs": ("Job", "batch/v1"),
}
PATH_OF_KIND = {kind: path for path, (kind, _) in COLLECTIONS.items()}


def make_ca(tmpdir):
    """A self-signed certificate for 127.0.0.1 that is its own CA: (cert, key) paths."""
    cert, key = os.path.join(tmpdir, "apiserver.crt"), os.path.join(tmpdir, "apiserver.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=kube-apiserver-standin", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


# ------------------------------------------------------------------ objects

def _meta(name, namespace, labels=None, owner=None):
    m = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
         "creationTimestamp": "2026-12-01T08:00:00Z", "labels": dict(labels or {})}
    if owner is not None:
        kind, oname, ouid = owner
        api = {"ReplicaSet": "apps/v1", "Deployment": "apps/v1", "StatefulSet": "apps/v1",
               "DaemonSet": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1"}[kind]
        m["ownerReferences"] = [{"apiVersion": api, "kind": kind, "name": oname, "uid": ouid,
                                 "controller": True, "blockOwnerDeletion": True}]
    return m


def pod(name, namespace, node, ip, *, labels=None, owner=None, container_ids=(), host_network=False,
        container_port=None, runtime="containerd"):
    """A running Pod as the API returns it; container_ids are 64-hex ids."""
    containers, statuses = [], []
    for i, cid in enumerate(container_ids or [os.urandom(32).hex()]):
        c = {"name": f"c{i}", "image": "docker.io/library/nginx:1.25", "imagePullPolicy": "IfNotPresent",
             "resources": {}, "terminationMessagePath": "/dev/termination-log",
             "terminationMessagePolicy": "File"}
        if container_port:
            c["ports"] = [{"containerPort": container_port, "protocol": "TCP"}]
        containers.append(c)
        statuses.append({"name": f"c{i}", "ready": True, "restartCount": 0, "started": True,
                         "image": "docker.io/library/nginx:1.25",
                         "imageID": "docker.io/library/nginx@sha256:" + "ab" * 32,
                         "containerID": f"{runtime}://{cid}",
                         "state": {"running": {"startedAt": "2026-12-01T08:00:01Z"}},
                         "lastState": {}})
    spec = {"nodeName": node, "containers": containers, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30}
    if host_network:
        spec["hostNetwork"] = True
    return {"kind": "Pod", "apiVersion": "v1", "metadata": _meta(name, namespace, labels, owner),
            "spec": spec,
            "status": {"phase": "Running", "hostIP": "192.0.2.10", "hostIPs": [{"ip": "192.0.2.10"}],
                       "podIP": ip, "podIPs": [{"ip": ip}], "qosClass": "BestEffort",
                       "startTime": "2026-12-01T08:00:00Z",
                       "conditions": [{"type": "Ready", "status": "True",
                                       "lastTransitionTime": "2026-12-01T08:00:02Z"}],
                       "containerStatuses": statuses}}


def service(name, namespace, cluster_ip, ports, selector=None):
    """ports: [(port, "TCP"|"UDP", targetPort)]."""
    return {"kind": "Service", "apiVersion": "v1", "metadata": _meta(name, namespace),
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "selector": dict(selector or {}), "sessionAffinity": "None",
                     "internalTrafficPolicy": "Cluster",
                     "ports": [{"name": f"p{port}", "port": port, "protocol": proto, "targetPort": target}
                               for port, proto, target in ports]},
            "status": {"loadBalancer": {}}}


def endpoint_slice(svc, pods, ports):
    """The EndpointSlice the control plane makes for ``svc`` and its ready pods."""
    name = svc["metadata"]["name"]
    m = _meta(f"{name}-{uuid.uuid4().hex[:5]}", svc["metadata"]["namespace"],
              {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by":
               "endpointslice-controller.k8s.io"},
              None)
    m["ownerReferences"] = [{"apiVersion": "v1", "kind": "Service", "name": name,
                             "uid": svc["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": m, "addressType": "IPv4",
            "endpoints": [{"addresses": [p["status"]["podIP"]],
                           "conditions": {"ready": True, "serving": True, "terminating": False},
                           "nodeName": p["spec"]["nodeName"],
                           "targetRef": {"kind": "Pod", "namespace": p["metadata"]["namespace"],
                                         "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]}}
                          for p in pods],
            "ports": [{"name": f"p{port}", "port": port, "protocol": proto} for port, proto in ports]}


def replica_set(name, namespace, deployment=None):
    owner = ("Deployment", deployment, str(uuid.uuid4())) if deployment else None
    return {"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": _meta(name, namespace, owner=owner),
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}},
            "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}}


def job(name, namespace, cronjob=None):
    owner = ("CronJob", cronjob, str(uuid.uuid4())) if cronjob else None
    return {"kind": "Job", "apiVersion": "batch/v1", "metadata": _meta(name, namespace, owner=owner),
            "spec": {"completions": 1, "parallelism": 1, "backoffLimit": 6},
            "status": {"active": 1, "startTime": "2026-12-01T08:00:00Z"}}


def owned_by(obj):
    """(kind, name, uid) to pass as ``owner=`` of a pod."""
    return obj["kind"], obj["metadata"]["name"], obj["metadata"]["uid"]


# ------------------------------------------------------------------ server

def _node_filter(selector):
    """spec.nodeName=X / spec.nodeName!=X -> predicate on a pod."""
    if not selector:
        return lambda o: True
    for op in ("!=", "="):
        field_, sep, value = selector.partition(op)
        if sep:
            if field_ != "spec.nodeName":
                raise ValueError(f"field selector {selector!r} not supported by the stand-in")
            if op == "=":
                return lambda o: (o.get("spec") or {}).get("nodeName", "") == value
            return lambda o: (o.get("spec") or {}).get("nodeName", "") != value
    raise ValueError(selector)


@contextlib.contextmanager
def for_collector(tmpdir, token="e2e-token"):
    """A stand-in whose token is also in a file (.token_path), as a
    collector reads it; closed after the block."""
    d = os.path.join(str(tmpdir), "api")
    os.makedirs(d, exist_ok=True)
    s = KubeApiServer(d, token=token)
    s.token_path = os.path.join(d, "token")
    with open(s.token_path, "w") as f:
        f.write(token + "\n")
    try:
        yield s
    finally:
        s.close()


def collector_args(api, node):
    """The flags that point a collector at the stand-in as that node."""
    return ["--k8s-url", api.url, "--k8s-bearer-token-path", str(api.token_path), "--k8s-ca", api.cert,
            "--k8s-node-name", node]


class KubeApiServer:
    def __init__(self, tmpdir, token="token-1", bookmark_interval=0.5):
        self.cert, self.key = make_ca(str(tmpdir))
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.cond = threading.Condition()
        self.rv = itertools.count(100)
        self.current_rv = next(self.rv)
        self.objects = {kind: {} for kind, _ in COLLECTIONS.values()}
        self.events = []          # (rv, kind, type, object)
        self.oldest_rv = 0        # watches from before this get 410
        self.watch_generation = 0
        self.requests = []        # (path, params, authorization) of every request
        self.stopping = False
        self.httpd = None
        self.port = 0
        self._start()

    # ------------------------------------------------------------ control
    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def _start(self):
        server = self

        class Handler(_Handler):
            api = server
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self.port = httpd.server_address[1]
        self.httpd = httpd
        self.stopping = False
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def restart(self, down_s=0.5):
        """Stop serving (every watch ends, connections are refused) and come
        back on the same port with the same objects, as after an API server
        restart (etcd keeps the data and the versions)."""
        self.close()
        time.sleep(down_s)
        self._start()

    def set_token(self, token):
        with self.cond:
            self.token = token

    def _record(self, kind, typ, obj):
        with self.cond:
            rv = self.current_rv = next(self.rv)
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(rv)
            if typ == "DELETED":
                self.objects[kind].pop(obj["metadata"]["uid"], None)
            else:
                self.objects[kind][obj["metadata"]["uid"]] = obj
            self.events.append((rv, kind, typ, obj))
            self.cond.notify_all()
            return obj

    def add(self, obj):
        return self._record(obj["kind"], "ADDED", obj)

    def modify(self, obj):
        return self._record(obj["kind"], "MODIFIED", obj)

    def delete(self, obj):
        return self._record(obj["kind"], "DELETED", obj)

    def compact(self):
        """Forget the history: a watch resuming from an older version gets 410."""
        with self.cond:
            self.oldest_rv = self.current_rv = next(self.rv)
            self.events.clear()
            self.cond.notify_all()

    def end_watches(self):
        """End every open watch stream cleanly (as the server's timeout does)."""
        with self.cond:
            self.watch_generation += 1
            self.cond.notify_all()

    def watch_requests(self, kind=None):
        path = PATH_OF_KIND.get(kind)
        return [(p, q) for p, q, _ in list(self.requests) if q.get("watch") == "true" and (path is None or p == path)]

    def list_requests(self, kind=None):
        path = PATH_OF_KIND.get(kind)
        return [(p, q) for p, q, _ in list(self.requests) if q.get("watch") != "true" and (path is None or p == path)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api = None  # the KubeApiServer, set by a subclass

    def log_message(self, *args):
        pass

    def _json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        api = self.api
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        auth = self.headers.get("Authorization", "")
        api.requests.append((url.path, params, auth))
        if auth != f"Bearer {api.token}":
            return self._json(401, status(401, "Unauthorized", "Unauthorized"))
        if url.path not in COLLECTIONS:
            return self._json(404, status(404, "NotFound", "the server could not find the requested resource"))
        kind, version = COLLECTIONS[url.path]
        try:
            match = _node_filter(params.get("fieldSelector", "")) if kind == "Pod" else (lambda o: True)
        except ValueError as exc:
            return self._json(400, status(400, "BadRequest", str(exc)))
        if params.get("watch") in ("true", "1"):
            return self._watch(kind, match, params)
        with api.cond:
            items = [o for o in api.objects[kind].values() if match(o)]
            rv = api.current_rv
        limit = int(params.get("limit", "0") or 0)
        start = 0
        if params.get("continue"):
            start, rv = json.loads(base64.b64decode(params["continue"]))
        page = items[start:start + limit] if limit else items[start:]
        meta = {"resourceVersion": str(rv)}
        if limit and start + limit < len(items):
            meta["continue"] = base64.b64encode(json.dumps([start + limit, rv]).encode()).decode()
        # items of a list carry no kind/apiVersion: the list says them once
        body_items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]
        self._json(200, {"kind": f"{kind}List", "apiVersion": version, "metadata": meta, "items": body_items})

    def _chunk(self, obj):
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, kind, match, params):
        api = self.api
        since = int(params.get("resourceVersion") or 0)
        timeout = float(params.get("timeoutSeconds") or 1800)
        bookmarks = params.get("allowWatchBookmarks") == "true"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        end = time.monotonic() + timeout
        try:
            with api.cond:
                gen = api.watch_generation
                if since < api.oldest_rv:
                    self._chunk({"type": "ERROR", "object": status(
                        410, "Expired", f"too old resource version: {since} ({api.current_rv})")})
                    return self._end()
            next_bookmark = time.monotonic() + api.bookmark_interval
            while True:
                with api.cond:
                    pending = [(rv, t, o) for rv, k, t, o in api.events if k == kind and rv > since]
                    if not pending:
                        api.cond.wait(0.1)
                    if api.stopping or gen != api.watch_generation or time.monotonic() >= end:
                        break
                    rv_now = api.current_rv
                for rv, typ, obj in pending:
                    since = rv
                    if match(obj):
                        self._chunk({"type": typ, "object": obj})
                if bookmarks and time.monotonic() >= next_bookmark:
                    next_bookmark = time.monotonic() + api.bookmark_interval
                    if rv_now > since:
                        since = rv_now
                    self._chunk({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": COLLECTIONS[PATH_OF_KIND[kind]][1],
                        "metadata": {"resourceVersion": str(since)}}})
            self._end()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        self.close_connection = True

    def _end(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True
