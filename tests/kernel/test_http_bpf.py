"""http.bpf.o on the real kernel: a scripted HTTP exchange between two
processes over loopback (every watched syscall), the records decoded and
checked exactly: one per message start, counters before each call, payload
prefixes, direction per side, close totals; non-HTTP traffic sends nothing."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from support import http_peer as hp

pytestmark = [pytest.mark.kernel, pytest.mark.requires("btf", "rdonly_cast", "task_storage")]
PEER = hp.__file__


@pytest.fixture
def http_bpf(bpf_ok):
    from dkebpf.bpf_objects import HTTP, BpfSkeleton

    with BpfSkeleton(HTTP).start(knobs={"self_tgid": os.getpid(), "ipv6_disabled": 0}) as bpf:
        yield bpf, bpf.rings.events


def exchange(host, plain=False):
    extra = ["plain"] if plain else []
    srv = subprocess.Popen([sys.executable, PEER, "server", host, *extra], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(srv.stdout.readline())
        out = subprocess.run([sys.executable, PEER, "client", host, str(info["port"]), *extra],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        cli = json.loads(out.stdout)
        assert srv.wait(30) == 0
    finally:
        if srv.poll() is None:
            srv.kill()
    return info, cli


def payload(e):
    return bytes(e["payload"])[:int(e["cap_len"])]


def records_of(ring, pids, want_closes, timeout=5.0):
    """The records of these pids, waiting for the close records (the
    kernel destroys a socket once the TCP teardown is done)."""
    got = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ring.poll(100)
        ev = ring.take()
        got.append(ev[np.isin(ev["pid"], pids)])
        allev = np.concatenate(got)
        if (allev["op"] == 3).sum() >= want_closes:
            break
    allev = np.concatenate(got)
    return allev[np.argsort(allev["ts_ns"], kind="stable")]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_exchange_records_exact(http_bpf, host):
    from dkebpf import _records as R
    bpf, ring = http_bpf
    srv, cli = exchange(host)
    ev = records_of(ring, [srv["pid"], cli["pid"]], want_closes=2)
    c = ev[ev["pid"] == cli["pid"]]
    s = ev[ev["pid"] == srv["pid"]]
    sent_c, recv_c = len(hp.REQ1) + len(hp.REQ2), len(hp.RESP1) + len(hp.RESP2)
    # client: sendto, recvfrom (first chunk), sendmsg, readv (header), close
    assert c["op"].tolist() == [R.L7_SEND, R.L7_RECV, R.L7_SEND, R.L7_RECV, R.L7_CLOSE]
    assert [(int(e["sk_sent"]), int(e["sk_recv"])) for e in c] == [
        (0, 0), (len(hp.REQ1), 0), (len(hp.REQ1), len(hp.RESP1)),
        (sent_c, len(hp.RESP1)), (sent_c, recv_c)]
    assert int(c["bytes"][0]) == len(hp.REQ1) and int(c["bytes"][2]) == len(hp.REQ2)
    assert payload(c[0]) == hp.REQ1
    # sendmsg with two iovecs: both land in the prefix
    assert int(c["cap_len"][2]) == min(512, len(hp.REQ2))
    assert payload(c[2]) == hp.REQ2[:512]
    assert payload(c[3]) == hp.RESP2_HDR
    assert set(c["direction"].tolist()) == {R.DIR_OUTGOING}
    assert set(c["source"].tolist()) == {R.L7_SYSCALL} and set(c["flags"].tolist()) == {R.L7_COUNTED}
    assert len(set(c["sk"].tolist())) == 1
    # every record, the close record too, carries the tuple and the name
    assert (c["lport"] == cli["lport"]).all() and (c["rport"] == srv["port"]).all()
    assert set(c["comm"].tolist()) == {os.path.basename(sys.executable).encode()[:15]}
    assert c["family"][0] == (6 if ":" in host else 4) and c["proto"][0] == 6
    assert bytes(c["comm"][0]).startswith(b"python")
    # the response's view of the last request byte
    assert c["ts_other_ns"][1] == c["ts_ns"][0] and c["ts_other_ns"][3] == c["ts_ns"][2]

    # server: recvfrom, writev (header and body iovecs), recvmsg, write (then
    # sendfile: bytes only), close
    assert s["op"].tolist() == [R.L7_RECV, R.L7_SEND, R.L7_RECV, R.L7_SEND, R.L7_CLOSE]
    assert [(int(e["sk_sent"]), int(e["sk_recv"])) for e in s] == [
        (0, 0), (0, len(hp.REQ1)), (len(hp.RESP1), len(hp.REQ1)),
        (len(hp.RESP1), sent_c), (recv_c, sent_c)]
    assert int(s["bytes"][1]) == len(hp.RESP1) and int(s["cap_len"][1]) == 512
    assert payload(s[1]) == hp.RESP1[:512]
    assert int(s["bytes"][3]) == len(hp.RESP2_HDR)
    assert set(s["direction"].tolist()) == {R.DIR_INCOMING}
    assert (s["lport"] == srv["port"]).all() and (s["rport"] == cli["lport"]).all()


def test_plain_tcp_sends_nothing(http_bpf):
    bpf, ring = http_bpf
    srv, cli = exchange("127.0.0.1", plain=True)
    ev = records_of(ring, [srv["pid"], cli["pid"]], want_closes=1, timeout=1.0)
    assert len(ev) == 0
    assert bpf.maps.http_drops.percpu_sums().tolist()[:4] == [0, 0, 0, 0]
