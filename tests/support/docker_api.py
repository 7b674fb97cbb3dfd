"""A Docker Engine API stand-in on a unix socket, for tests of
--container-endpoints: a real HTTP/1.1 server (http.server over
AF_UNIX) answering the subset the collector asks for, with objects shaped
like the Docker Engine API reference's (v1.43: ContainerSummary of
GET /containers/json, ContainerInspectResponse of GET
/containers/{id}/json; unversioned paths, as the daemon serves them).
No runtime can start a container on the test VM (Debian's Podman 4.3.1
installs, but crun's setrlimit fails without CAP_SYS_RESOURCE; no image can
be pulled either), so the stand-in serves the running containers the test
describes, whose Pid are real processes."""
import json
import os
import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler


def container(cid, name, pid, *, pod=None, namespace=None, container_name=None, created=1764662400):
    """One running container; pod/namespace/container_name: the kubelet's
    labels (dockershim and cri-dockerd set them), container_name "POD" for
    a pod's sandbox."""
    labels = {}
    if pod is not None:
        labels.update({"io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": namespace or "default",
                       "io.kubernetes.pod.uid": "9a1c6e3e-5b1f-4c55-8a55-" + cid[:12],
                       "io.kubernetes.container.name": container_name or name})
    return {"Id": cid, "Names": [f"/{name}"], "Image": "registry.k8s.io/pause:3.9", "ImageID": "sha256:" + "e6" * 32,
            "Command": "/pause", "Created": created, "Labels": labels, "State": "running",
            "Status": "Up 5 minutes", "Pid": pid}


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class DockerApi:
    """`with DockerApi(path, [container(...)]) as api:` serves until the
    block ends; api.requests lists the paths asked for."""

    def __init__(self, path, containers):
        self.path = path
        self.containers = list(containers)
        self.requests = []

    def __enter__(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def address_string(self):
                return "unix"

            def log_message(self, *args):
                pass

            def do_GET(self):
                api.requests.append(self.path)
                path = self.path.split("?", 1)[0]
                path = re.sub(r"^/v1\.\d+", "", path)
                if path == "/containers/json":
                    return self._json(200, [{k: v for k, v in c.items() if k != "Pid"} for c in api.containers])
                m = re.fullmatch(r"/containers/([^/]+)/json", path)
                found = [c for c in api.containers if m and c["Id"] == m.group(1)]
                if found:
                    return self._json(200, inspect(found[0]))
                return self._json(404, {"message": f"No such container: {m.group(1) if m else path}"})

            def _json(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Api-Version", "1.43")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        if os.path.exists(self.path):
            os.unlink(self.path)
        self.server = _Server(self.path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def inspect(c):
    """ContainerInspectResponse of a summary (the members the collector reads, and their neighbours)."""
    return {"Id": c["Id"], "Created": "2026-12-02T08:00:00.000000000Z", "Path": "/pause", "Args": [],
            "State": {"Status": "running", "Running": True, "Paused": False, "Restarting": False,
                      "OOMKilled": False, "Dead": False, "Pid": c["Pid"], "ExitCode": 0, "Error": "",
                      "StartedAt": "2026-12-02T08:00:01.000000000Z", "FinishedAt": "0001-01-01T00:00:00Z"},
            "Image": c["ImageID"], "Name": c["Names"][0], "RestartCount": 0, "Driver": "overlay2",
            "Config": {"Hostname": c["Id"][:12], "Labels": c["Labels"], "Image": c["Image"]},
            "HostConfig": {"NetworkMode": "none"}, "NetworkSettings": {"Networks": {}}}
