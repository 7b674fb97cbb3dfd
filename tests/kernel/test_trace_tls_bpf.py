"""ebpf-trace's TLS spans on the real kernel: trace.bpf.o plus tls.bpf.o
loaded with trace_spans on its maps (TracePlugin), uprobes on the real
libssl; a real nginx serving HTTPS on loopback and curl -k as its client,
both traced (nginx by a name of its own, curl by this test's environment
variable, so other engineers' processes are not). Every request gives an
entry span at nginx and an exit span at curl with the right route and
status, carrying the same sequence numbers (the linker joins them), and
the ciphertext on the same sockets gives no span."""
import logging
import os
import subprocess
import time
import types

import pytest

from support.tls_nginx import ROUTES, TlsNginx
from support.trace_apps import spans_until, start_after

pytestmark = [pytest.mark.kernel,
              pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast", "libssl")]

MARK = "DKEBPF_TRACE_TLS_TEST_%d" % os.getpid()
NGINX_NAME = "tlsngx%d" % (os.getpid() % 1000000)  # its comm: at most 15 characters


def make_cfg(**over):
    cfg = dict(ipv6_disabled=False, host_proc="/proc", trace_name_list=(NGINX_NAME,), trace_env_list=(MARK,),
               trace_name_blacklist=(), trace_env_blacklist=(), trace_protos=(), trace_protos_blacklist=(),
               conv_to_ddtrace=False, trace_server=None, datakit_apiserver=None, spool_dir=None, hostname="h",
               tags={})
    cfg.update(over)
    return types.SimpleNamespace(**cfg)


@pytest.fixture
def plugin(bpf_ok):
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.trace import TracePlugin

    p = TracePlugin(PluginContext(cfg=make_cfg(), logger=logging.getLogger("test"), self_pid=os.getpid()))
    p.start()
    yield p
    p.stop()


@pytest.fixture
def nginx(tmp_path, plugin):
    # started after the collector: it sees the master at its rescan, the
    # worker (forked) inherits its trace_pids entry
    plugin.rescan(force=True)
    s = TlsNginx(tmp_path, name=NGINX_NAME)
    s.start()
    yield s
    s.stop()


def test_https_client_and_server_spans_linked(plugin, nginx):
    assert plugin.tls is not None and plugin.tls.libraries, "no TLS uprobes attached"
    paths = list(ROUTES)
    args = ["curl", "-k", "-s", "--http1.1", "-H",
            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
    for p in paths:
        args += ["-o", "/dev/null", nginx.url(p)]
    # through a waiting shell: the collector learns of curl by its variable
    curl = start_after(2.5, args, dict(os.environ, **{MARK: "1"}), stderr=subprocess.PIPE)
    curl_pid, worker = str(curl.pid), str(nginx.worker)

    def done(rows):
        return (sum(r["pid"] == curl_pid for r in rows) >= len(paths)
                and sum(r["pid"] == worker for r in rows) >= len(paths))

    rows = spans_until(plugin, done, timeout=20)
    assert curl.wait(10) == 0, curl.stderr.read()
    server = sorted((r for r in rows if r["pid"] == worker), key=lambda r: r["ktime"])
    client = sorted((r for r in rows if r["pid"] == curl_pid), key=lambda r: r["ktime"])
    want_status = [str(ROUTES[p][0]) for p in paths]
    assert [r["http_route"] for r in server] == paths
    assert [r["http_route"] for r in client] == paths
    assert [r["http_status_code"] for r in server] == want_status
    assert [r["http_status_code"] for r in client] == want_status
    assert {(r["direction"], r["ebpf_span_type"], r["src_port"]) for r in server} == \
        {("incoming", "entry", str(nginx.port))}
    assert {(r["direction"], r["ebpf_span_type"], r["dst_port"]) for r in client} == \
        {("outgoing", "exit", str(nginx.port))}
    assert all(r["app_trace_id"] == "0af7651916cd43dd8448eb211c80319c" for r in server + client)
    # both ends of each exchange carry the same sequence numbers (of the
    # TLS records that started the request and the response)
    assert [(r["req_seq"], r["resp_seq"]) for r in client] == [(r["req_seq"], r["resp_seq"]) for r in server]
    assert len({r["req_seq"] for r in server}) == len(paths)
    c = plugin.counters()
    assert c["kernel_drop_trace_tls_span_ring_full"] == 0
    assert c["kernel_drop_trace_events_ring_full"] == 0
    assert c["trace_tls_uprobes_attached"] > 0


def test_ciphertext_of_tls_sockets_is_ignored(plugin, nginx):
    """The TLS socket's own calls (bpf/trace.bpf.c) are flagged ignored at
    the first SSL call: the records of the socket's ciphertext stop, the
    plaintext's go on under the tagged key."""
    from dkebpf import _records

    tag = _records.TLS_SOCKET_TAG
    curl = start_after(2.5, ["curl", "-k", "-s", "--http1.1", "-o", "/dev/null", nginx.url("/tls/ok"),
                             "-o", "/dev/null", nginx.url("/tls/created")], dict(os.environ, **{MARK: "1"}))
    end = time.monotonic() + 15
    while curl.poll() is None and time.monotonic() < end:
        plugin.rescan()  # (the collector's loop does it): curl is found as the shell waits
        time.sleep(0.1)
    assert curl.wait(1) == 0
    time.sleep(1.0)
    msgs = plugin.ring.take()
    mine = msgs[msgs["pid"] == curl.pid]
    tagged = mine[(mine["sk"] & tag) == tag]
    plain = mine[(mine["sk"] & tag) == 0]
    # the plaintext: two requests and two responses
    assert sorted(tagged["op"].tolist()) == [1, 1, 2, 2]
    assert all(m["payload"].tobytes()[:4] in (b"GET ", b"HTTP") for m in tagged)
    # the ciphertext: the handshake only (ClientHello, the server's
    # flights), never the records of the requests
    assert len(plain) <= 4
    assert all(m["payload"].tobytes()[:1] in (b"\x16", b"\x14") for m in plain if m["cap_len"])
