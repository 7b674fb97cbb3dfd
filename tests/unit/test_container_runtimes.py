"""--container-endpoints (dkebpf.enrich.containers) against a Docker Engine
API stand-in on a real unix socket (tests/support/docker_api.py; no
Docker daemon can run images here): names per network namespace of real
processes, the pod's sandbox left out, an endpoint that is absent or does
not speak the API warned about once and asked again only after retry_s."""
import logging
import os
import socketserver
import threading

from dkebpf.enrich.containers import Container, ContainerRuntimes, netns_names, socket_path
from support.docker_api import DockerApi, container

OWN_NETNS = os.stat("/proc/self/ns/net").st_ino


def test_names_of_the_namespace_of_each_container(tmp_path):
    sock = str(tmp_path / "docker.sock")
    listed = [container("a" * 64, "k8s_POD_web-0_shop_0", os.getpid(), pod="web-0", namespace="shop",
                        container_name="POD", created=1),
              container("b" * 64, "k8s_web_web-0_shop_0", os.getpid(), pod="web-0", namespace="shop",
                        container_name="web", created=2),
              container("c" * 64, "k8s_log_web-0_shop_0", os.getpid(), pod="web-0", namespace="shop",
                        container_name="log", created=3),
              container("d" * 64, "gone", 0)]     # not running: no pid
    with DockerApi(sock, listed) as api:
        rt = ContainerRuntimes([f"unix://{sock}"])
        rt.refresh()
    assert rt.names(OWN_NETNS) == {"k8s_namespace": "shop", "k8s_pod_name": "web-0", "k8s_container_name": "web"}
    assert rt.stats == {"runtime_queries": 1, "runtime_errors": 0, "runtime_containers": 4}
    assert api.requests[0] == "/containers/json" and len(api.requests) == 5


def test_a_plain_docker_container_is_named_by_its_docker_name():
    c = Container("e" * 64, "redis-cache", pod="", namespace="", pid=os.getpid(), created=1, sandbox=False)
    assert netns_names([c]) == {OWN_NETNS: {"k8s_container_name": "redis-cache"}}


class _NotDocker(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")


def test_unanswering_endpoints_warn_once_and_are_asked_again_only_after_retry(tmp_path, caplog):
    good = str(tmp_path / "docker.sock")
    other = str(tmp_path / "other.sock")
    srv = socketserver.UnixStreamServer(other, _NotDocker)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    absent = f"unix://{tmp_path}/absent.sock"
    log = logging.getLogger("test-runtimes")
    try:
        with DockerApi(good, [container("b" * 64, "web", os.getpid(), pod="web-0", namespace="shop")]) as api, \
                caplog.at_level(logging.INFO, "test-runtimes"):
            rt = ContainerRuntimes([absent, f"unix://{other}", f"unix://{good}"], logger=log, retry_s=60)
            for now in (0, 10, 20, 30):
                rt.refresh(now)
            assert rt.names(OWN_NETNS)["k8s_pod_name"] == "web-0"   # the good one unaffected
            assert api.requests.count("/containers/json") == 4
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 2, warnings
            assert any(absent in w and "FileNotFoundError" in w for w in warnings), warnings
            assert any(other in w and "not JSON" in w for w in warnings), warnings
            assert rt.stats["runtime_errors"] == 2      # asked once each in 30 s
            rt.refresh(61)
            assert rt.stats["runtime_errors"] == 4      # again after retry_s, quietly
            assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_endpoint_text():
    assert socket_path("unix:///run/docker.sock") == "/run/docker.sock"
    assert socket_path("/run/docker.sock", "/host") == "/host/run/docker.sock"
    bad = ContainerRuntimes(["tcp://127.0.0.1:2375"], logger=logging.getLogger("test-runtimes"))
    assert bad.endpoints == []


def test_check_line_says_which_runtime_sockets_answer(tmp_path):
    """`dkebpf check`'s line, the known sockets looked for under HOST_ROOT:
    a Docker API answers with its count, a socket speaking something else
    (at containerd's path an HTTP/1 server that is neither the CRI nor the
    Docker API: both tried) is named as not answering; with none, what
    still works is said. The CRI's line: tests/unit/test_cri.py and
    tests/e2e/test_netlog_cri_e2e.py."""
    from dkebpf.enrich.containers import check_line
    assert check_line((), str(tmp_path)).startswith("container endpoints: no runtime socket found")
    os.makedirs(tmp_path / "var/run/containerd")
    docker, containerd = tmp_path / "var/run/docker.sock", tmp_path / "var/run/containerd/containerd.sock"
    srv = socketserver.UnixStreamServer(str(containerd), _NotDocker)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with DockerApi(str(docker), [container("b" * 64, "web", os.getpid()), container("c" * 64, "db", 0)]):
            line = check_line((), str(tmp_path))
    finally:
        srv.shutdown()
        srv.server_close()
    assert line.startswith("container endpoints: ")
    said = line.removeprefix("container endpoints: ").split("; ")
    assert said[0] == "unix:///var/run/docker.sock answers the Docker Engine API (2 running containers)"
    assert said[1].startswith("unix:///var/run/containerd/containerd.sock does not answer (the CRI: not HTTP/2: "
                              "the answer starts b'HTTP/1.1 200 OK"), said[1]
    assert " nor the Docker Engine API: GET /containers/json: the answer is not JSON" in said[1] and len(said) == 2
