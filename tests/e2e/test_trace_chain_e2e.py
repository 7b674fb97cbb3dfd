"""ebpf-trace across services and hosts, end to end: a Python threaded
chain A -> B -> C over HTTP, each service a real threaded HTTP server in its
own network namespace (a test host; veth pairs, no NAT) with its own DKE_SERVICE, called by curl from the host. Through the
real pipeline: `dkebpf run --enabled ebpf-trace` -> `dkebpf linker` -> the
DataKit stand-in.

Every request must become exactly one trace of six spans -- curl's exit,
A's entry and exit, B's entry and exit, C's entry -- each parented to the
one before it (in-process joins by thread, cross-host joins by sequence
numbers and mirrored addresses), with the services from DKE_SERVICE and
the app's traceparent as trace_id where curl sent one (else the eBPF trace
id), also when several requests run through the chain at once (C holds
them until all have come, so they overlap at every link), and when A and B
call the next link over one kept-alive connection their threads share.

Cross host: two collectors at once, one tracing only curl and A, the other
only B and C (by --trace-env-list), posting to one linker: the same traces.

Over HTTPS (every link and curl through OpenSSL: the spans come from
tls.bpf.c's uprobes, trace_spans): the same traces, with one collector and
across two.
"""
import os
import time
import uuid

import pytest
import requests as requests_lib

from support.netns import NetNS, sh
from support.trace_apps import ServiceChain, running_linker

from .conftest import Collector, dkebpf_cmd

pytestmark = [pytest.mark.e2e, pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast")]

MARK_A = "DKEBPF_CHAIN_A_%d" % os.getpid()
MARK_BC = "DKEBPF_CHAIN_BC_%d" % os.getpid()
SPANS_PER_REQUEST = 6  # curl out, A in, A out, B in, B out, C in
# (path, traceparent trace id or None); the last four run at once
SEQUENTIAL = [("/chain/seq-tp", "0af7651916cd43dd8448eb211c80319c"), ("/chain/seq-plain", None)]
CONCURRENT = [("/chain/con-tp1", "11111111111111111111111111111111"),
              ("/chain/con-tp2", "22222222222222222222222222222222"),
              ("/chain/con-plain1", None), ("/chain/con-plain2", None)]
APP_PARENT = "00f067aa0ba902b7"  # the parent span id in every traceparent sent
# a request whose traceparent says "not sampled": the linker drops its trace
UNSAMPLED = ("/chain/seq-unsampled", "33333333333333333333333333333333")


def _wire(x, y, subnet):
    """A veth pair straight from namespace x (<subnet>.1) to namespace y
    (<subnet>.2), gone with them; returns y's address."""
    tag = uuid.uuid4().hex[:6]
    sh("ip", "link", "add", f"dkx{tag}", "netns", x.name, "type", "veth", "peer", "name", f"dky{tag}", "netns", y.name)
    for ns, dev, ip in ((x, f"dkx{tag}", f"{subnet}.1"), (y, f"dky{tag}", f"{subnet}.2")):
        ns.exec("ip", "addr", "add", f"{ip}/24", "dev", dev)
        ns.exec("ip", "link", "set", dev, "up")
    return f"{subnet}.2"


@pytest.fixture
def hosts():
    """Three namespaces A, B, C (hosts): the host reaches A on its veth
    (10.213.221-253.x: away from NetNS's default range other tests use); A
    is wired straight to B and B to C (10.214.x.x, inside the namespaces
    only: no forwarding through the host, no system setting touched).
    Yields ([a, b, c], [B's address seen by A, C's seen by B])."""
    base = 221 + (os.getpid() % 11) * 3
    with NetNS(base) as a, NetNS(base + 1) as b, NetNS(base + 2) as c:
        yield [a, b, c], [_wire(a, b, f"10.214.{base}"), _wire(b, c, f"10.214.{base + 1}")]


@pytest.fixture
def linker(tmp_path, receiver):
    with running_linker(dkebpf_cmd(), tmp_path / "spans", receiver.apiserver, tmp_path) as url:
        yield url


def run_requests(chain, receiver, env, collectors, unsampled=False):
    """curl each request (SEQUENTIAL one after the other, the UNSAMPLED one
    first if asked, then CONCURRENT at once) and wait for their spans;
    returns ({curl pid: (path, trace id)} of the sampled requests, spans as
    dicts of the chain's and those curls' processes)."""
    requests = {}
    for n, (path, trace) in enumerate([UNSAMPLED] * unsampled + SEQUENTIAL):
        # the first waits longer as a shell: the collector, just started,
        # must find it in /proc (a rescan each second, later on a loaded CI
        # machine: one CI run missed a span of the first request)
        curl = chain.curl(path, env, headers=_traceparent(trace, sampled=(path, trace) != UNSAMPLED),
                          delay=5.0 if n == 0 else 2.5)
        assert curl.wait(40) == 0
        assert curl.stdout.read() == b"chain-a(chain-b(chain-c))"
        if (path, trace) != UNSAMPLED:
            requests[str(curl.pid)] = (path, trace)
    curls = [(chain.curl(path, env, headers=_traceparent(trace)), path, trace) for path, trace in CONCURRENT]
    for curl, path, trace in curls:
        assert curl.wait(40) == 0
        assert curl.stdout.read() == b"chain-a(chain-b(chain-c))"
        requests[str(curl.pid)] = (path, trace)
    want = set(requests) | set(chain.pids)

    def mine():
        return [{**p.fields, **p.tags} for p in receiver.points("dketrace") if p.fields.get("pid") in want]

    total = SPANS_PER_REQUEST * len(requests)
    assert receiver.wait_for(lambda: len(mine()) >= total, timeout=60), \
        (len(mine()), [c.log_text()[-3000:] for c in collectors])
    time.sleep(2)  # a span too many (a second trace of one request) would arrive by now
    return requests, mine()


def _traceparent(trace, sampled=True):
    return [f"traceparent: 00-{trace}-{APP_PARENT}-{'01' if sampled else '00'}"] if trace else []


def check_traces(requests, spans, pids, overlapping=True):
    """Every request one trace of six spans parented curl -> A -> A -> B ->
    B -> C, all about its own path; services from DKE_SERVICE; trace_id the
    app's where curl sent a traceparent; with `overlapping`, the concurrent
    requests were all in A at once. Returns the traces' shape for
    comparison: {path: [(service, direction, parent's service)]}."""
    a, b, c = pids
    assert len(spans) == SPANS_PER_REQUEST * len(requests), sorted((s["pid"], s["direction"]) for s in spans)
    by_id = {s["span_id"]: s for s in spans}
    assert len(by_id) == len(spans)
    traces = {}
    for s in spans:
        traces.setdefault(s["ebpf_trace_id"], []).append(s)
    assert len(traces) == len(requests)
    shapes = {}
    for members in traces.values():
        curl = [s for s in members if s["pid"] in requests]
        assert len(curl) == 1 and curl[0]["direction"] == "outgoing", members
        path, trace = requests[curl[0]["pid"]]

        def one(pid, direction):
            found = [s for s in members if s["pid"] == pid and s["direction"] == direction]
            assert len(found) == 1, (path, pid, direction, members)
            return found[0]

        chain = [curl[0], one(a, "incoming"), one(a, "outgoing"), one(b, "incoming"), one(b, "outgoing"),
                 one(c, "incoming")]
        assert chain[0]["ebpf_parent_id"] == "0"
        for parent, child in zip(chain, chain[1:]):
            assert child["ebpf_parent_id"] == parent["span_id"], (path, child, parent)
        assert [s["ebpf_span_type"] for s in chain] == ["exit", "entry", "exit", "entry", "exit", "entry"]
        assert [s["service"] for s in chain] == ["curl", "chain-a", "chain-a", "chain-b", "chain-b", "chain-c"]
        for s in chain:  # the request's own path at every hop: no crossed wires between concurrent requests
            assert s["resource"] == f"GET {path}", (path, s)
            assert s["http_status_code"] == "200"  # a string field (spec/measurements.json)
        assert {s["trace_id"] for s in chain} == {trace or chain[0]["ebpf_trace_id"]}, (path, chain)
        # parent_id: the app's parent span where the span carried the app's
        # context (curl's request and A's side of it), else the eBPF parent
        carried = 2 if trace else 0
        assert [s["parent_id"] for s in chain] == [APP_PARENT] * carried + [s["ebpf_parent_id"]
                                                                          for s in chain[carried:]], (path, chain)
        shapes[path] = [(s["service"], s["direction"], by_id[s["ebpf_parent_id"]]["service"] if
                         s["ebpf_parent_id"] != "0" else None) for s in chain]
    if overlapping:  # (C held them until all had come)
        a_in = [s for s in spans if s["pid"] == a and s["direction"] == "incoming"
                and requests[_curl_of(s, by_id)][0] in dict(CONCURRENT)]
        assert len(a_in) == len(CONCURRENT)
        assert max(s["start"] for s in a_in) < min(s["start"] + s["duration"] for s in a_in), a_in
    return shapes


def _curl_of(span, by_id):
    while span["ebpf_parent_id"] != "0":
        span = by_id[span["ebpf_parent_id"]]
    return span["pid"]


EXPECTED_SHAPE = [("curl", "outgoing", None), ("chain-a", "incoming", "curl"), ("chain-a", "outgoing", "chain-a"),
                  ("chain-b", "incoming", "chain-a"), ("chain-b", "outgoing", "chain-b"),
                  ("chain-c", "incoming", "chain-b")]


def run_one_collector(collector, receiver, linker, hosts, unsampled=False, **chain_kw):
    """The chain (ServiceChain(**chain_kw)) traced by one collector posting
    to the linker; returns (the chain's pids, requests, spans) of
    run_requests."""
    env = {MARK_A: "1"}
    chain = ServiceChain(*hosts, [env, env, env], **chain_kw)
    try:
        collector.start("--trace-server", linker, "--trace-env-list", MARK_A, enabled="ebpf-trace", interval="1s")
        time.sleep(1.5)  # attached, the chain's processes found
        return (chain.pids, *run_requests(chain, receiver, env, [collector], unsampled=unsampled))
    finally:
        chain.stop()


def test_chain_one_collector(collector, receiver, linker, hosts):
    pids, requests, spans = run_one_collector(collector, receiver, linker, hosts, unsampled=True,
                                              hold=len(CONCURRENT))
    shapes = check_traces(requests, spans, pids)
    assert all(shape == EXPECTED_SHAPE for shape in shapes.values()), shapes
    # the unsampled request's six spans were linked and dropped, whole
    assert not [p for p in receiver.points("dketrace") if {**p.fields, **p.tags}.get("trace_id") == UNSAMPLED[1]]
    metrics = requests_lib.get(linker + "/metrics", timeout=5).text
    assert f"dkebpf_linker_spans_sampled_out_total {SPANS_PER_REQUEST}" in metrics.splitlines(), metrics
    assert "Traceback" not in collector.log_text()


def test_chain_over_https(collector, receiver, linker, hosts, tmp_path):
    """The chain with TLS between every two services (Python's ssl, curl
    -k): entry and exit spans from the plaintext of SSL_read/SSL_write,
    joined across hosts by the sequence numbers of the TLS records; the
    ciphertext of the same sockets gives no span of its own."""
    pids, requests, spans = run_one_collector(collector, receiver, linker, hosts, hold=len(CONCURRENT),
                                              tls=tmp_path / "tls")
    shapes = check_traces(requests, spans, pids)
    assert all(shape == EXPECTED_SHAPE for shape in shapes.values()), shapes
    assert "Traceback" not in collector.log_text()
    assert "no TLS spans" not in collector.log_text()


def test_chain_over_pooled_connections(collector, receiver, linker, hosts):
    """A and B call the next link over one kept-alive connection that all
    their threads share: B serves every request of A on one connection
    (one thread), C every request of B; each request still its own trace.
    (The concurrent requests take turns on the connection: C cannot hold
    them together.)"""
    pids, requests, spans = run_one_collector(collector, receiver, linker, hosts, sleep=0.2, pooled=True)
    shapes = check_traces(requests, spans, pids, overlapping=False)
    assert all(shape == EXPECTED_SHAPE for shape in shapes.values()), shapes
    # one connection per hop: B's entries all share A's ephemeral port
    b_in = [s for s in spans if s["pid"] == pids[1] and s["direction"] == "incoming"]
    assert len({(s["dst_ip"], s["dst_port"]) for s in b_in}) == 1, b_in
    assert "Traceback" not in collector.log_text()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_chain_two_collectors_cross_host(bpf_ok, tmp_path, receiver, linker, hosts, tls):
    """Collector 1 sees curl and A (their mark), collector 2 B and C: each
    side of the A -> B hop comes from another collector, joined by the
    linker alone (over HTTPS too: each collector its own TLS uprobes)."""
    env_a, env_bc = {MARK_A: "1"}, {MARK_BC: "1"}
    chain = ServiceChain(*hosts, [env_a, env_bc, env_bc], hold=len(CONCURRENT), tls=tls and tmp_path / "tls")
    collectors = []
    try:
        for name, mark in (("one", MARK_A), ("two", MARK_BC)):
            (tmp_path / name).mkdir()
            c = Collector(tmp_path / name, receiver)
            collectors.append(c)
            c.start("--trace-server", linker, "--trace-env-list", mark, "--hostname", f"host-{name}",
                    enabled="ebpf-trace", interval="1s")
        time.sleep(1.5)
        requests, spans = run_requests(chain, receiver, env_a, collectors)
    finally:
        chain.stop()
        for c in collectors:
            c.stop()
    shapes = check_traces(requests, spans, chain.pids)
    assert all(shape == EXPECTED_SHAPE for shape in shapes.values()), shapes
    # each side came from its own collector (its host tag): the A -> B hop
    # was joined across the two
    a, b, c = chain.pids
    for s in spans:
        assert s["host"] == ("host-two" if s["pid"] in (b, c) else "host-one"), s
    for collector in collectors:
        assert "Traceback" not in collector.log_text()
