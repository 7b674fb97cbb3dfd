"""A real containerd (Debian's, with its CRI plugin and runc) for tests of
--container-endpoints, all of it under a test directory: its config,
root, state, socket and CNI configuration. No image is pulled: the pods'
image is built here from Debian's busybox-static (an OCI image archive
with one layer) and imported with `ctr -n k8s.io images import`.

Pods get their own network namespace (containerd makes it, and needs
CNI to give it an eth0 with an address: CNI's host-device plugin moves a
veth end of the test there); the test then moves the peer end of a
veth pair of its own into it (move_into), the host end keeping the other
address of a /24 only this pair has (as support/netns.py)."""
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid

from dkebpf.enrich import cri
from dkebpf.enrich.cri import pb_bytes

IMAGE = "docker.io/library/dkebpf-busybox:test"
BINARIES = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "/usr/lib/cni/host-device",
            "/usr/lib/cni/static", "/bin/busybox")
CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  # the sandbox's oom_score_adj is -998 otherwise: lowering it needs CAP_SYS_RESOURCE, which this VM's
  # root lacks (runc: "can't get final child's PID from pipe: EOF")
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"""


def missing():
    """What this machine lacks to run it, else None."""
    for b in BINARIES:
        if shutil.which(b) is None:
            return f"{b} not installed (apt-get install containerd runc containernetworking-plugins busybox-static)"
    return None


def _blob(blobs, data):
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": "sha256:" + digest, "size": len(data)}


def _add(tar, name, data=None, mode=0o755, link=None, kind=None):
    info = tarfile.TarInfo(name)
    info.mode = mode
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
    elif data is None:
        info.type = tarfile.DIRTYPE
    else:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def image_archive(path):
    """An OCI image archive of busybox-static (sh, sleep, httpd and the
    rest as its links), named IMAGE; the pods' sandbox sleeps."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "www"):
            _add(tar, d)
        with open("/bin/busybox", "rb") as f:
            _add(tar, "bin/busybox", f.read())
        for applet in ("sh", "sleep", "httpd"):
            _add(tar, f"bin/{applet}", link="busybox")
        _add(tar, "www/index.html", b"ok from the pod\n", mode=0o644)
    raw = layer.getvalue()
    blobs = {}
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **_blob(blobs, json.dumps(config).encode())},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            **_blob(blobs, gzip.compress(raw, mtime=0))}]}
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **_blob(blobs, json.dumps(manifest).encode()),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "test"}}]}
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', mode=0o644)
        _add(tar, "index.json", json.dumps(index).encode(), mode=0o644)
        _add(tar, "blobs")
        _add(tar, "blobs/sha256")
        for digest, data in blobs.items():
            _add(tar, f"blobs/sha256/{digest}", data, mode=0o644)


class Containerd:
    """`with Containerd(tmp_path) as c:` c.socket, c.run_pod(...)."""

    def __init__(self, directory):
        self.dir = str(directory)
        self.socket = os.path.join(self.dir, "containerd.sock")
        self.proc = None
        self.pods = []

    def __enter__(self):
        os.makedirs(os.path.join(self.dir, "cni"), exist_ok=True)
        config = os.path.join(self.dir, "config.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(d=self.dir, image=IMAGE))
        self.log = open(os.path.join(self.dir, "containerd.log"), "w")
        self.proc = subprocess.Popen(["containerd", "--config", config], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(self.socket):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"containerd did not start: {self.log_text()[-2000:]}")
                time.sleep(0.1)
            archive = os.path.join(self.dir, "image.tar")
            image_archive(archive)
            subprocess.run(["ctr", "--address", self.socket, "-n", "k8s.io", "images", "import", archive],
                           check=True, capture_output=True, text=True, timeout=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def log_text(self):
        with open(os.path.join(self.dir, "containerd.log")) as f:
            return f.read()

    def client(self):
        return cri.CriClient(self.socket, 30.0)

    def run_pod(self, name, namespace, device, containers):
        """A pod with the running containers {name: command}; its eth0 (the
        one interface containerd's CNI call must give it) is `device` of
        the test, moved there by CNI's host-device plugin, no traffic on
        it: -> (sandbox id, {container name: id}, the sandbox's host pid)."""
        with open(os.path.join(self.dir, "cni", "10-dkebpf.conflist"), "w") as f:
            json.dump({"cniVersion": "0.4.0", "name": "dkebpf-test", "plugins": [
                {"type": "host-device", "device": device,
                 "ipam": {"type": "static", "addresses": [{"address": "192.0.2.1/32"}]}}]}, f)   # TEST-NET-1
        metadata = pb_bytes(1, pb_bytes(1, name) + pb_bytes(2, str(uuid.uuid4())) + pb_bytes(3, namespace))
        sandbox_config = metadata + pb_bytes(2, name) + pb_bytes(3, os.path.join(self.dir, "logs", name))
        with self.client() as c:
            sid = dict(cri.pb_fields(c.call("RunPodSandbox", pb_bytes(1, sandbox_config))))[1].decode()
            self.pods.append(sid)
            ids = {}
            for cname, command in containers.items():
                config = (pb_bytes(1, pb_bytes(1, cname)) + pb_bytes(2, pb_bytes(1, IMAGE)) +
                          b"".join(pb_bytes(3, a) for a in command) + pb_bytes(11, f"{cname}.log"))
                reply = c.call("CreateContainer", pb_bytes(1, sid) + pb_bytes(2, config) + pb_bytes(3, sandbox_config))
                ids[cname] = dict(cri.pb_fields(reply))[1].decode()
                c.call("StartContainer", pb_bytes(1, ids[cname]))
            return sid, ids, cri.pid(c, "PodSandbox", sid)

    def __exit__(self, *exc):
        if self.proc is None:
            return
        with contextlib.suppress(cri.CriError, OSError):
            with self.client() as c:
                for sid in self.pods:
                    c.call("StopPodSandbox", pb_bytes(1, sid))
                    c.call("RemovePodSandbox", pb_bytes(1, sid))
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        # the shims outlive containerd by design; those of our pods are gone with them
        subprocess.run(["umount", "-R", os.path.join(self.dir, "root")], capture_output=True)
        subprocess.run(["umount", "-R", os.path.join(self.dir, "state")], capture_output=True)


def move_into(pid, device, cidr):
    """Moves `device` into the network namespace of process `pid`, up with
    that address."""
    subprocess.run(["ip", "link", "set", device, "netns", str(pid)], check=True, capture_output=True)
    for cmd in (["ip", "addr", "add", cidr, "dev", device], ["ip", "link", "set", device, "up"]):
        subprocess.run(["nsenter", "-t", str(pid), "-n", *cmd], check=True, capture_output=True)
