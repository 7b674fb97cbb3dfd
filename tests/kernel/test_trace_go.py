"""ebpf-trace's goroutines over the real trace.bpf.o and trace_go.bpf.o: a
Go chain built here by the Debian Go (tests/support/go/chain.go). The
front's net/http handler hands each request to a new goroutine, which
calls the back server with net/http's client (the transport's writeLoop
goroutine writes the request); concurrent keep-alive clients. Every
outgoing span must be parented to the incoming request that caused it
(same thread_trace_id), and tid_usr must be the goroutine ids the Go
program prints (runtime.Stack): the handler's for an incoming span, the
worker goroutine's (the client's caller, not the writeLoop) for an
outgoing one. Run with the binary as built and with a stripped build
(-ldflags=-s -w: functions found through .gopclntab)."""
import http.client
import logging
import os
import re
import subprocess
import threading
import time
import types

import pytest

from support.trace_apps import build_go, free_port, stop_process, wait_port

pytestmark = [pytest.mark.kernel, pytest.mark.requires("btf", "sock_length_tracepoints", "rdonly_cast")]

MARK = "DKEBPF_TRACE_GO_TEST_%d" % os.getpid()
CHAIN_GO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "go", "chain.go")
CLIENTS, PER_CLIENT = 6, 6


def make_cfg():
    return types.SimpleNamespace(
        ipv6_disabled=False, host_proc="/proc", trace_name_list=(), trace_env_list=(MARK,),
        trace_name_blacklist=("datakit", "datakit-ebpf"), trace_env_blacklist=(), trace_protos=(),
        trace_protos_blacklist=(), conv_to_ddtrace=False, trace_server=None, datakit_apiserver=None,
        spool_dir=None, hostname="h", tags={})


class Lines:
    """A process's stdout lines, read by a thread."""

    def __init__(self, proc):
        self.lines = []
        self.t = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.t.start()

    def _read(self, f):
        for line in f:
            self.lines.append(line.strip())


def _build_chain(tmp_path_factory, flags=()):
    with open(CHAIN_GO) as f:
        return build_go(f.read(), str(tmp_path_factory.mktemp("gochain")), flags)


@pytest.fixture(scope="module")
def chain_symtab(tmp_path_factory):
    return _build_chain(tmp_path_factory)


@pytest.fixture(scope="module")
def chain_stripped(tmp_path_factory):
    """Built as container images often are: no .symtab, no DWARF (the
    probes' functions then come from Go's own .gopclntab)."""
    return _build_chain(tmp_path_factory, ["-ldflags=-s -w"])


@pytest.fixture(params=["symtab", "stripped"])
def chain_exe(request):
    return request.getfixturevalue(f"chain_{request.param}")


def test_go_elf_reading(chain_symtab, chain_stripped):
    """The collector's own ELF reading of the binary: the Go version of
    the toolchain that built it, the probed functions at their file
    offsets (cross-checked with `go tool nm`), the hot ones on the call
    instructions that pass the same registers; the same offsets without
    .symtab (built with -ldflags=-s -w, or run through strip: read from
    .gopclntab)."""
    chain_exe = chain_symtab
    from dkebpf import elf
    from dkebpf.plugins import trace_go

    want = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    info = trace_go.inspect(chain_exe)
    assert info["version"] == want
    assert info["goid_off"] == trace_go.GOID_OFFSETS[trace_go.minor_of(want)]
    assert set(info["offsets"]) == {p for _, p in trace_go.FUNCS}
    nm = subprocess.run(["go", "tool", "nm", chain_exe], capture_output=True, text=True, check=True).stdout
    addrs = {parts[2]: int(parts[0], 16) for parts in (l.split(None, 2) for l in nm.splitlines()) if len(parts) == 3}
    with open(chain_exe, "rb") as f:
        data = f.read()
    loads = elf.load_segments(data)
    for name, prog in trace_go.FUNCS:
        off = info["offsets"][prog]
        if prog in trace_go.CALL_SITES:  # on the call of the callee inside the caller
            caller, callee = trace_go.CALL_SITES[prog]
            assert info["sites"][prog] == f"{caller} calling {callee}"
            start = elf.file_offset(loads, addrs[caller])
            assert start < off < start + 4096 and data[off] == 0xE8
            rel = int.from_bytes(data[off + 1:off + 5], "little", signed=True)
            assert off + 5 + rel == elf.file_offset(loads, addrs[callee])
        else:
            assert off == elf.file_offset(loads, addrs[name])
    assert trace_go.inspect("/bin/sh") is None  # not Go
    stripped = chain_exe + ".stripped"
    subprocess.run(["strip", "-o", stripped, chain_exe], check=True)
    for exe in (stripped, chain_stripped):
        with open(exe, "rb") as f:
            assert not elf.symbols(f.read(), elf.SHT_SYMTAB)[0]
        assert trace_go.inspect(exe) == info, exe


def test_go_chain_goroutine_parentage(bpf_ok, chain_exe):
    from dkebpf.plugins.base import PluginContext
    from dkebpf.plugins.trace import TracePlugin

    env = dict(os.environ, **{MARK: "1"})
    back_port, front_port = free_port(), free_port()
    back = front = plugin = None
    try:
        back = subprocess.Popen([chain_exe, "back", str(back_port)], env=env, stdout=subprocess.PIPE, text=True)
        front = subprocess.Popen([chain_exe, "front", str(front_port), str(back_port)], env=env,
                                 stdout=subprocess.PIPE, text=True)
        back_out, front_out = Lines(back), Lines(front)
        wait_port(back_port, back, "go back")
        wait_port(front_port, front, "go front")
        plugin = TracePlugin(PluginContext(cfg=make_cfg(), logger=logging.getLogger("test"), self_pid=os.getpid()))
        plugin.start()  # finds both (running) Go processes and probes their binary
        assert plugin.builder.go.pids.keys() == {back.pid, front.pid}

        errors = []

        def client(c):
            conn = http.client.HTTPConnection("127.0.0.1", front_port, timeout=10)
            try:
                for i in range(PER_CLIENT):
                    conn.request("GET", f"/req/c{c}-{i}")
                    r = conn.getresponse()
                    body = r.read().decode()
                    if body != f"ok c{c}-{i}":
                        errors.append(body)
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        n = CLIENTS * PER_CLIENT
        fp, bp = str(front.pid), str(back.pid)
        rows = []
        end = time.monotonic() + 20
        while time.monotonic() < end:
            for pb in plugin.collect(time.time_ns()):
                rows += pb.batch.to_pylist()
            if (sum(r["pid"] == fp for r in rows) >= 2 * n and sum(r["pid"] == bp for r in rows) >= n):
                break
            time.sleep(0.3)
        counters = plugin.counters()
    finally:
        if plugin is not None:
            plugin.stop()
        stop_process(front, 5)
        stop_process(back, 5)

    said = {}
    for line in front_out.lines + back_out.lines:
        m = re.match(r"(front|back) (\S+) handler=(\d+)(?: worker=(\d+))?$", line)
        if m:
            said[(m.group(1), m.group(2))] = (int(m.group(3)), int(m.group(4) or 0))
    keys = [f"c{c}-{i}" for c in range(CLIENTS) for i in range(PER_CLIENT)]
    assert len(said) == 2 * n

    def by_route(pid, direction, prefix):
        out = {}
        for r in rows:
            if r["pid"] == pid and r["direction"] == direction and (r["http_route"] or "").startswith(prefix):
                assert r["http_route"] not in out, r
                out[r["http_route"][len(prefix):]] = r
        return out

    entries = by_route(fp, "incoming", "/req/")
    exits = by_route(fp, "outgoing", "/back/")
    at_back = by_route(bp, "incoming", "/back/")
    assert sorted(entries) == sorted(exits) == sorted(at_back) == sorted(keys), counters
    assert len({r["thread_trace_id"] for r in entries.values()}) == n
    for k in keys:
        handler, worker = said[("front", k)]
        # the outgoing call, written by the transport's writeLoop goroutine,
        # is the child of the request whose handler's goroutine started the worker
        assert exits[k]["thread_trace_id"] == entries[k]["thread_trace_id"], (k, counters)
        assert entries[k]["tid_usr"] == handler, k
        assert exits[k]["tid_usr"] == worker, k
        assert at_back[k]["tid_usr"] == said[("back", k)][0], k
        # and it meets the back server's span on its sequence numbers
        assert (exits[k]["req_seq"], exits[k]["resp_seq"]) == (at_back[k]["req_seq"], at_back[k]["resp_seq"])
    assert counters["go_binaries_probed"] == 1  # one file, two processes
    assert counters["go_exits_via_writeloop"] >= n
    assert counters["kernel_drop_trace_go_go_events_ring_full"] == 0


def test_damaged_go_binaries_are_not_probed_and_never_raise(chain_exe, tmp_path):
    """Truncated or corrupted copies of a Go binary: inspect() says None
    (not Go as far as it can tell) or NotProbed, nothing else."""
    import random

    from dkebpf.plugins import trace_go

    with open(chain_exe, "rb") as f:
        data = f.read()
    rnd = random.Random(5)
    cases = [data[:n] for n in (0, 16, 64, 4096, len(data) // 2, len(data) - 1)]
    for _ in range(20):
        b = bytearray(data)
        for _ in range(200):
            b[rnd.randrange(len(b) if rnd.random() < 0.5 else 4096)] = rnd.randrange(256)
        cases.append(bytes(b))
    outcomes = set()
    for i, case in enumerate(cases):
        p = tmp_path / f"case{i}"
        p.write_bytes(case)
        try:
            info = trace_go.inspect(str(p))
            outcomes.add("none" if info is None else "probed")
        except trace_go.NotProbed:
            outcomes.add("not probed")
    assert "none" in outcomes  # the truncated ones at least
