"""Container names from container runtime sockets (``--container-endpoints``):
which container, and which pod by the kubelet's labels, owns each network
namespace. bpf-netlog tags the points of an interface in that namespace
with ``k8s_namespace``, ``k8s_pod_name`` and ``k8s_container_name``.

Only adds names: bpf-netlog finds namespaces through /proc without any
runtime, and pods through the Kubernetes API. An endpoint is asked every
REFRESH_S seconds on a thread of its own, never on the packet path.

Spoken: containerd's and CRI-O's CRI (gRPC, enrich/cri.py), asked
  ListPodSandbox, ListContainers (the READY pods, the RUNNING containers)
  ContainerStatus / PodSandboxStatus (verbose: the host pid, once per id)
which names the pod (its sandbox's metadata) and the container (its
metadata); and the Docker Engine API (HTTP/JSON over a unix socket;
Docker, cri-dockerd's Docker, Podman's compatible service), the subset
  GET /containers/json              running containers: Id, Names, Labels, Created
  GET /containers/{id}/json         State.Pid, Name, Config.Labels
(https://docs.docker.com/reference/api/engine/, unversioned paths: the
daemon's own API version). The kubelet's labels ``io.kubernetes.pod.name``,
``io.kubernetes.pod.namespace``, ``io.kubernetes.container.name`` (value
``POD`` for the sandbox, which is skipped when the pod has other
containers) name the pod; a container without them is named by its Docker
name. Which of the two a socket speaks is found on first contact: the CRI
first for a socket named like containerd's or CRI-O's, else the Docker API
first; the other only when the first's answer was another protocol (an
HTTP/1 reply to the HTTP/2 preface, or no HTTP/1 reply).

An endpoint that does not answer: one warning, then asked again every
RETRY_S seconds quietly (an info line when it answers again); the other
endpoints and all other data are unaffected. Default (option empty): those
of KNOWN_SOCKETS (the original's default endpoints) that exist under
HOST_ROOT."""
import http.client
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional

from . import cri

REFRESH_S = 10.0
RETRY_S = 60.0
TIMEOUT_S = 2.0
# asked when --container-endpoints is empty, and where `dkebpf check` looks (the original's DefaultEndpoint list)
KNOWN_SOCKETS = ("/var/run/docker.sock", "/var/run/containerd/containerd.sock",
                 "/var/run/k3s/containerd/containerd.sock", "/var/run/crio/crio.sock")
# socket names of the CRI runtimes: asked the CRI first
CRI_SOCKETS = ("containerd.sock", "crio.sock")
POD_NAME, POD_NAMESPACE, CONTAINER_NAME = ("io.kubernetes.pod.name", "io.kubernetes.pod.namespace",
                                           "io.kubernetes.container.name")
SANDBOX = "POD"
TAGS = ("k8s_namespace", "k8s_pod_name", "k8s_container_name")


class EndpointError(Exception):
    """An endpoint that cannot be asked, with the reason. other_protocol:
    it answered, but in another protocol than the one asked."""

    def __init__(self, message, other_protocol=False):
        super().__init__(message)
        self.other_protocol = other_protocol


@dataclass(frozen=True)
class Container:
    id: str
    name: str                 # the container's name in its pod, else its Docker name
    pod: str                  # "" when the runtime did not start it for Kubernetes
    namespace: str
    pid: int                  # its main process on the host (0: not running)
    created: int
    sandbox: bool


def socket_path(endpoint, host_root=""):
    """unix:///path or /path -> the path (under host_root when given)."""
    path = endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint
    if not path.startswith("/"):
        raise ValueError(f'container endpoint "{endpoint}": give unix:///path/to/socket')
    return os.path.join(host_root, path.lstrip("/")) if host_root else path


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self.sock = s


class DockerEndpoint:
    """One Docker-Engine-API socket."""
    api = "the Docker Engine API"

    def __init__(self, path, timeout=TIMEOUT_S):
        self.path = path
        self.timeout = timeout

    def _get(self, url):
        conn = _UnixHTTPConnection(self.path, self.timeout)
        try:
            conn.request("GET", url, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            # no HTTP/1 status line, or the connection reset on our request (a gRPC server sends its
            # SETTINGS, then resets): another protocol
            raise EndpointError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                                other_protocol=isinstance(exc, (http.client.HTTPException, ConnectionResetError,
                                                                BrokenPipeError))) from None
        finally:
            conn.close()
        if resp.status != 200:
            raise EndpointError(f"GET {url}: HTTP {resp.status} {body[:200].decode('utf-8', 'replace')!r}")
        try:
            return json.loads(body)
        except ValueError:
            raise EndpointError(f"GET {url}: the answer is not JSON (not the Docker Engine API?)") from None

    def listed(self):
        """GET /containers/json: the running containers' summaries."""
        listed = self._get("/containers/json")
        if not isinstance(listed, list):
            raise EndpointError("GET /containers/json: not a list of containers (not the Docker Engine API?)")
        return listed

    def containers(self):
        listed = self.listed()
        out = []
        for item in listed:
            cid = item.get("Id") if isinstance(item, dict) else None
            if not isinstance(cid, str) or not cid:
                continue
            try:
                info = self._get(f"/containers/{cid}/json")
            except EndpointError:
                continue   # gone between the list and this (404)
            out.append(_container(cid, item, info))
        return out

    def summary(self):
        return f"{len(self.listed())} running containers"


class CriEndpoint:
    """One CRI socket (containerd, CRI-O): a connection per refresh."""
    api = "the CRI"

    def __init__(self, path, timeout=TIMEOUT_S):
        self.path = path
        self.timeout = timeout
        self.version = cri.APIS[0]     # the one it answered last
        self._pids: Dict[str, int] = {}   # container or sandbox id -> host pid: fixed while it runs

    def _client(self):
        c = cri.CriClient(self.path, self.timeout)
        c.api = self.version
        return c

    def _ask(self, fn):
        try:
            with self._client() as c:
                out = fn(c)
                self.version = c.api
                return out
        except cri.CriError as exc:
            raise EndpointError(str(exc), other_protocol=exc.other_protocol) from None

    def _pid(self, c, kind, ident):
        found = self._pids.get(ident) or cri.pid(c, kind, ident)
        if found:       # 0 (gone, or no pid yet) asked again next time
            self._pids[ident] = found
        return found

    def containers(self):
        return self._ask(self._containers)

    def _containers(self, c):
        pods = cri.ready_sandboxes(c)
        running = cri.running_containers(c)
        out = []
        for cid, sid, name, created in running:
            pod, namespace, _ = pods.get(sid, ("", "", 0))
            out.append(Container(cid, name, pod, namespace, self._pid(c, "Container", cid), created, False))
        alone = set(pods) - {sid for _, sid, _, _ in running}
        for sid in sorted(alone):    # a pod without running containers: its sandbox's namespace, no container name
            pod, namespace, created = pods[sid]
            out.append(Container(sid, "", pod, namespace, self._pid(c, "PodSandbox", sid), created, True))
        listed = set(pods) | {cid for cid, _, _, _ in running}
        self._pids = {k: v for k, v in self._pids.items() if k in listed}
        return out

    def summary(self):
        def ask(c):
            name, version, api = cri.version(c)
            return (f"{name} {version}, {c.api}: {len(cri.ready_sandboxes(c))} pods, "
                    f"{len(cri.running_containers(c))} running containers")
        return self._ask(ask)


class Endpoint:
    """One runtime socket, whichever API it speaks: found on first
    contact (see the module's comment), then kept."""

    def __init__(self, endpoint, path, timeout=TIMEOUT_S):
        self.endpoint = endpoint
        apis = [DockerEndpoint(path, timeout), CriEndpoint(path, timeout)]
        self.apis = apis[::-1] if os.path.basename(path) in CRI_SOCKETS else apis
        self.known = None

    def _ask(self, what):
        errors = []
        for api in [self.known] if self.known else self.apis:
            try:
                out = getattr(api, what)()
            except EndpointError as exc:
                errors.append(f"{api.api}: {exc}")
                if exc.other_protocol:
                    continue
                break
            self.known = api
            return out
        raise EndpointError(" nor ".join(errors))

    def containers(self):
        return self._ask("containers")

    def summary(self):
        """`dkebpf check`'s words on it: the API that answered, what it runs."""
        out = self._ask("summary")
        return f"{self.known.api} ({out})"


def _container(cid, item, info):
    config = info.get("Config") or {}
    labels = config.get("Labels") or item.get("Labels") or {}
    state = info.get("State") or {}
    docker_name = (info.get("Name") or (item.get("Names") or [""])[0] or "").lstrip("/")
    name = labels.get(CONTAINER_NAME) or docker_name
    pid = state.get("Pid") if state.get("Running", True) else 0
    return Container(cid, str(name), str(labels.get(POD_NAME, "")), str(labels.get(POD_NAMESPACE, "")),
                     int(pid or 0), int(item.get("Created") or 0), labels.get(CONTAINER_NAME) == SANDBOX)


def netns_names(containers, host_proc="/proc"):
    """{network namespace inode: {tag: value}} for the running containers:
    several containers of one pod share one namespace, the first created
    that is not the pod's sandbox names it; a namespace shared with the
    host (host-network containers) is left out by the caller."""
    found: Dict[int, Container] = {}
    for c in sorted(containers, key=lambda c: (c.sandbox, c.created, c.id)):
        if c.pid <= 0:
            continue
        try:
            ino = os.stat(f"{host_proc}/{c.pid}/ns/net").st_ino
        except OSError:
            continue
        found.setdefault(ino, c)
    return {ino: {k: v for k, v in zip(TAGS, (c.namespace, c.pod, c.name)) if v} for ino, c in found.items()}


class ContainerRuntimes:
    """The endpoints, asked every REFRESH_S on one thread; ``by_netns``
    is the last answer of all of them together."""

    def __init__(self, endpoints, host_proc="/proc", logger=None,
                 refresh_s=REFRESH_S, retry_s=RETRY_S):
        self.log = logger or logging.getLogger("dkebpf")
        self.host_proc = host_proc
        self.refresh_s, self.retry_s = refresh_s, retry_s
        self.endpoints = []
        for e in endpoints:
            try:
                self.endpoints.append(Endpoint(e, socket_path(e)))
            except ValueError as exc:
                self.log.warning("container endpoints: %s; left out", exc)
        self.by_netns: Dict[int, Dict[str, str]] = {}
        self.stats = {"runtime_queries": 0, "runtime_errors": 0, "runtime_containers": 0}
        self._failing: Dict[str, float] = {}    # endpoint -> when to ask again
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def from_config(cls, cfg, logger):
        """The runtimes --container-endpoints names, or by default the
        known sockets that exist; None when there is nothing to ask."""
        endpoints = list(cfg.container_endpoints) or ["unix://" + path for _, path in known_sockets(cfg.host_root)]
        return cls(endpoints, cfg.host_proc, logger=logger) if endpoints else None

    def start(self):
        # the first answer on the thread too: a socket that hangs delays no start-up
        self._thread = threading.Thread(target=self._run, name="container-runtimes", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT_S * 3)

    def _run(self):
        while True:
            self.refresh()
            if self._stop.wait(self.refresh_s):
                return

    def refresh(self, now=None):
        now = time.monotonic() if now is None else now
        found = []
        for ep in self.endpoints:
            if self._failing.get(ep.endpoint, 0.0) > now:
                continue
            self.stats["runtime_queries"] += 1
            try:
                found += ep.containers()
            except EndpointError as exc:
                self.stats["runtime_errors"] += 1
                if ep.endpoint not in self._failing:
                    self.log.warning("container endpoint %s does not answer (%s): no container names from it; "
                                     "asked again every %.0f s", ep.endpoint, exc, self.retry_s)
                self._failing[ep.endpoint] = now + self.retry_s
                continue
            if self._failing.pop(ep.endpoint, None) is not None:
                self.log.info("container endpoint %s answers again", ep.endpoint)
        self.stats["runtime_containers"] = len(found)
        self.by_netns = netns_names(found, self.host_proc)

    def names(self, netns_inode):
        return self.by_netns.get(netns_inode, {})


def known_sockets(host_root=""):
    """[(endpoint, path under host_root)] of the KNOWN_SOCKETS that exist:
    what is asked when --container-endpoints is empty."""
    paths = [("unix://" + p, socket_path("unix://" + p, host_root)) for p in KNOWN_SOCKETS]
    return [(e, p) for e, p in paths if os.path.exists(p)]


def check_line(endpoints=(), host_root=""):
    """`dkebpf check`'s line: which runtime sockets (endpoints, else the
    known ones that exist under host_root) answer, and which API."""
    if endpoints:
        paths = []
        for e in endpoints:
            try:
                paths.append((e, socket_path(e)))
            except ValueError as exc:
                paths.append((e, exc))
    else:
        paths = known_sockets(host_root)
        if not paths:
            return ("container endpoints: no runtime socket found (" + ", ".join(KNOWN_SOCKETS) +
                    "): namespaces still come from /proc, pods from the Kubernetes API; no container names")
    said = []
    for endpoint, path in paths:
        if isinstance(path, Exception):
            said.append(f"{endpoint}: {path}")
            continue
        try:
            said.append(f"{endpoint} answers {Endpoint(endpoint, path).summary()}")
        except EndpointError as exc:
            said.append(f"{endpoint} does not answer ({exc}): no container names from it")
    return "container endpoints: " + "; ".join(said)
