"""The CRI client (dkebpf.enrich.cri) against bytes a real containerd
(Debian's 1.6.20, runtime.v1, one pod web-0/shop with one running
container web started through its CRI: tests/support/containerd.py) sent on
its unix socket, replayed here on a unix socket: the calls decoded as
containerd meant them, the requests as sent decoded by the project's HPACK
decoder, and every cut or corruption of the replies a CriError (one line),
never another exception. tests/e2e/test_netlog_cri_e2e.py runs the real
containerd."""
import logging
import os
import random
import socket
import threading
from types import SimpleNamespace

import pytest

from dkebpf._hpack import HpackDecoder
from dkebpf.enrich import cri
from dkebpf.enrich.containers import Container, ContainerRuntimes, Endpoint
from support.docker_api import DockerApi, container

DATA = os.path.join(os.path.dirname(__file__), "data")
POD = "013b68159ee8b2da3ba1d5f96961b320422f675828ef5d71a1c0d168e9593063"
WEB = "de58ef81bb5b5a1269ef5bb06b614e6f11c7bf5523e1df8bbde82ab35e40f808"


def captured(name):
    with open(os.path.join(DATA, f"containerd-1.6.20-cri-{name}.bin"), "rb") as f:
        return f.read()


class Replay:
    """A unix socket that answers every connection with `reply` (bytes the
    real containerd sent), keeps what each client sent, then closes."""

    def __init__(self, path, reply):
        self.path, self.reply, self.sent = path, reply, []
        self.stopping = False
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(path)
        self.srv.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while True:
            conn, _ = self.srv.accept()
            if self.stopping:
                conn.close()
                return
            got = bytearray()
            self.sent.append(got)
            with conn:
                conn.settimeout(2)
                try:
                    conn.sendall(self.reply)
                    conn.shutdown(socket.SHUT_WR)   # all said: a client wanting more sees the end at once
                    while chunk := conn.recv(65536):
                        got += chunk
                except OSError:
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        with socket.socket(socket.AF_UNIX) as wake:   # out of accept()
            wake.connect(self.path)
        self.thread.join(5)     # what the last client sent, to its end
        self.srv.close()


def frames(data):
    """[(type, flags, stream, payload)] of a client's bytes after the preface."""
    assert data.startswith(cri.PREFACE)
    i, out = len(cri.PREFACE), []
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        out.append((data[i + 3], data[i + 4], int.from_bytes(data[i + 5:i + 9], "big"), data[i + 9:i + 9 + n]))
        i += 9 + n
    return out


def headers(block):
    raw, off = HpackDecoder().decode(block)
    return {raw[off[2 * i]:off[2 * i + 1]].decode(): raw[off[2 * i + 1]:off[2 * i + 2]].decode()
            for i in range(len(off) // 2)}


def test_calls_decoded_from_the_real_containerds_replies(tmp_path):
    sock = str(tmp_path / "containerd.sock")
    with Replay(sock, captured("calls")) as replay, cri.CriClient(sock, 5) as c:
        assert cri.version(c) == ("containerd", "1.6.20~ds1", "v1")
        assert cri.ready_sandboxes(c) == {POD: ("web-0", "shop", 1796293277397346396)}
        assert cri.running_containers(c) == [(WEB, POD, "web", 1796293277911965226)]
        assert cri.pid(c, "Container", WEB) == 3468
        assert cri.pid(c, "PodSandbox", POD) == 3422
        with pytest.raises(cri.CriError) as err:
            c.call("ContainerStatus", cri.pb_bytes(1, "0" * 64) + cri.pb_int(2, True))
        assert err.value.status == cri.NOT_FOUND and str(err.value) == (
            '/runtime.v1.RuntimeService/ContainerStatus: gRPC status 5 an error occurred when try to find '
            'container "0000000000000000000000000000000000000000000000000000000000000000": not found')
    sent = frames(bytes(replay.sent[0]))
    assert sent[0][:3] == (cri.SETTINGS, 0, 0) and sent[1][0] == cri.WINDOW_UPDATE
    calls = [(stream, headers(payload)) for kind, _, stream, payload in sent if kind == cri.HEADERS]
    assert [(s, h[":path"]) for s, h in calls] == [
        (1, "/runtime.v1.RuntimeService/Version"), (3, "/runtime.v1.RuntimeService/ListPodSandbox"),
        (5, "/runtime.v1.RuntimeService/ListContainers"), (7, "/runtime.v1.RuntimeService/ContainerStatus"),
        (9, "/runtime.v1.RuntimeService/PodSandboxStatus"), (11, "/runtime.v1.RuntimeService/ContainerStatus")]
    assert all(h["content-type"] == "application/grpc" and h["te"] == "trailers" for _, h in calls)
    # the requests: ListContainers filtered on RUNNING, ContainerStatus verbose
    data = {stream: payload for kind, _, stream, payload in sent if kind == cri.DATA}
    assert data[5] == b"\0\0\0\0\x06" + bytes.fromhex("0a04 1202 0801")
    assert cri.pb_fields(data[7][5:]) == [(1, WEB.encode()), (2, 1)]
    assert any(kind == cri.SETTINGS and flags == cri.ACK for kind, flags, _, _ in sent)   # theirs acknowledged


def run_calls(sock):
    with cri.CriClient(sock, 2) as c:
        cri.version(c)
        cri.ready_sandboxes(c)
        cri.running_containers(c)
        cri.pid(c, "Container", WEB)


def test_every_cut_and_corruption_is_one_line_error(tmp_path):
    """The reply cut at 60 places, and 300 copies with 1-4 bytes changed:
    a CriError with one line, or (a byte that changes nothing decoded) the
    same answer; no other exception, no hang past the deadline."""
    reply = captured("calls")[:4000]     # Version .. ContainerStatus's reply
    rng = random.Random(12)
    variants = [reply[:n] for n in sorted(rng.sample(range(len(reply)), 60))]
    for _ in range(300):
        b = bytearray(reply)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        variants.append(bytes(b))
    errors = 0
    for i, v in enumerate(variants):
        sock = str(tmp_path / f"{i}.sock")
        with Replay(sock, v):
            try:
                run_calls(sock)
            except cri.CriError as exc:
                assert "\n" not in str(exc) and str(exc)
                errors += 1
    assert errors >= 60


def test_an_http1_server_is_another_protocol(tmp_path):
    sock = str(tmp_path / "crio.sock")
    with Replay(sock, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"):
        with pytest.raises(cri.CriError) as err, cri.CriClient(sock, 2) as c:
            cri.version(c)
    assert err.value.other_protocol and str(err.value).startswith("not HTTP/2: the answer starts b'HTTP/1.1 400")


def test_the_api_a_socket_speaks_is_found_on_first_contact(tmp_path, caplog):
    """A socket named like containerd's asked the CRI first: a Docker API
    answers HTTP/1, so the Docker API next; any other name the Docker API
    first: the real containerd's bytes are no HTTP/1 reply, so the CRI
    next. Then each stays with the API that answered."""
    docker_sock, cri_sock = str(tmp_path / "containerd.sock"), str(tmp_path / "runtime.sock")
    with DockerApi(docker_sock, [container("b" * 64, "web", os.getpid())]), \
            Replay(cri_sock, captured("containers")) as replay:
        docker, crie = Endpoint("unix://" + docker_sock, docker_sock), Endpoint("unix://" + cri_sock, cri_sock)
        assert [c.name for c in docker.containers()] == ["web"] and docker.known.api == "the Docker Engine API"
        assert crie.containers() == [Container(WEB, "web", "web-0", "shop", 3468, 1796293277911965226, False)]
        assert crie.known.api == "the CRI" and len(replay.sent) == 2    # the Docker API asked first
        replay.reply = captured("summary")
        assert crie.summary() == "the CRI (containerd 1.6.20~ds1, runtime.v1: 1 pods, 1 running containers)"
        assert len(replay.sent) == 3


def test_a_cri_socket_that_breaks_counts_errors_warns_once(tmp_path, caplog):
    sock = str(tmp_path / "containerd.sock")
    with Replay(sock, captured("containers")[:700]), caplog.at_level(logging.INFO, "test-cri"):
        rt = ContainerRuntimes([f"unix://{sock}"], logger=logging.getLogger("test-cri"), retry_s=60)
        rt.refresh(0)
        rt.refresh(61)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert rt.stats["runtime_errors"] == 2 and len(warnings) == 1, warnings
    assert f"container endpoint unix://{sock} does not answer (the CRI: " in warnings[0]
    assert "\n" not in warnings[0]


def test_protobuf_bounds():
    assert cri.pb_fields(cri.pb_bytes(1, "ab") + cri.pb_int(2, 300)) == [(1, b"ab"), (2, 300)]
    for bad, what in ((b"\x0a\x05ab", "field 1 of 5 bytes, 2 left"), (b"\x08" + b"\xff" * 11, "more than 10 bytes"),
                      (b"\x0b", "wire type 3"), (b"\x08", "cut short")):
        with pytest.raises(cri.CriError, match=what):
            cri.pb_fields(bad)


def test_runtime_v1alpha2_when_v1_is_unimplemented(tmp_path):
    """The real containerd's replies to an unknown runtime.v1 method
    (UNIMPLEMENTED, what a v1alpha2-only runtime answers) and to
    runtime.v1alpha2's Version: the client asks v1alpha2 next, and keeps it."""
    sock = str(tmp_path / "containerd.sock")
    with Replay(sock, captured("v1alpha2")) as replay, cri.CriClient(sock, 5) as c:
        assert cri.version(c) == ("containerd", "1.6.20~ds1", "v1alpha2") and c.api == "runtime.v1alpha2"
    paths = [headers(p)[":path"] for kind, _, _, p in frames(bytes(replay.sent[0])) if kind == cri.HEADERS]
    assert paths == ["/runtime.v1.RuntimeService/Version", "/runtime.v1alpha2.RuntimeService/Version"]


def test_by_default_the_known_sockets_that_exist_are_asked(tmp_path):
    cfg = SimpleNamespace(container_endpoints=(), host_root=str(tmp_path), host_proc="/proc")
    log = logging.getLogger("test-cri")
    assert ContainerRuntimes.from_config(cfg, log) is None
    os.makedirs(tmp_path / "var/run/containerd")
    sock = str(tmp_path / "var/run/containerd/containerd.sock")
    with Replay(sock, captured("containers")) as replay:
        rt = ContainerRuntimes.from_config(cfg, log)
        rt.refresh()
    assert [e.endpoint for e in rt.endpoints] == [f"unix://{sock}"] and len(replay.sent) == 1   # the CRI first
    assert rt.stats == {"runtime_queries": 1, "runtime_errors": 0, "runtime_containers": 1}


def test_a_container_gone_since_listed_has_no_pid(tmp_path):
    """containerd's NOT_FOUND to ContainerStatus (the 6th call replayed): pid 0, no error."""
    sock = str(tmp_path / "containerd.sock")
    with Replay(sock, captured("calls")), cri.CriClient(sock, 5) as c:
        for call in (cri.version, cri.ready_sandboxes, cri.running_containers):
            call(c)
        assert (cri.pid(c, "Container", WEB), cri.pid(c, "PodSandbox", POD)) == (3468, 3422)
        assert cri.pid(c, "Container", "0" * 64) == 0
