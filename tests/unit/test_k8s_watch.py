"""List + watch against the API server stand-in (tests/support/kube_apiserver.py):
field selectors, workloads through owners, bookmarks, a watch that ends,
410 Gone, a restart, a changed token, TLS verification."""
import logging
import time

import pytest

from dkebpf.enrich.k8s import K8sEnrichment
from dkebpf.enrich.k8s.api import ApiError, KubeApi, Token
from support import kube_apiserver as ks

NODE = "node-a"


def wait_for(pred, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(tmp_path):
    s = ks.KubeApiServer(tmp_path, token="token-1", bookmark_interval=0.2)
    yield s
    s.close()


@pytest.fixture
def token_file(tmp_path):
    p = tmp_path / "token"
    p.write_text("token-1\n")
    return p


def enrichment(server, token_file, **kw):
    api = KubeApi(server.url, Token(str(token_file)), ca_path=server.cert)
    e = K8sEnrichment(api, NODE, label_keys=kw.pop("label_keys", ()), logger=logging.getLogger("test"),
                      backoff=(0.05, 0.2), **kw)
    e.start(wait_s=10)
    return e


def by_ip(e, ip):
    row = e._pod_of_ip(ip)
    return e.store.describe([row])[0] if row >= 0 else None


def test_list_watch_workloads_and_services(server, token_file):
    rs = server.add(ks.replica_set("web-5d8f9", "shop", deployment="web"))
    jb = server.add(ks.job("report-2901", "ops", cronjob="report"))
    web = server.add(ks.pod("web-5d8f9-x1", "shop", NODE, "10.244.1.5", owner=ks.owned_by(rs),
                            labels={"app": "web", "team": "a"}))
    server.add(ks.pod("report-2901-q", "ops", "node-b", "10.244.2.7", owner=ks.owned_by(jb)))
    server.add(ks.pod("solo", "default", "node-b", "10.244.2.8"))
    ss = ks.pod("db-0", "shop", "node-b", "10.244.2.9", owner=("StatefulSet", "db", "u-db"))
    server.add(ss)
    svc = server.add(ks.service("web", "shop", "10.96.0.10", [(80, "TCP", 8080)], {"app": "web"}))
    server.add(ks.endpoint_slice(svc, [web], [(8080, "TCP")]))

    e = enrichment(server, token_file)
    try:
        assert e.store.object_counts()["pods_local"] == 1
        assert e.store.object_counts()["pods_remote"] == 3
        # this node's pods in full, the others' by a second selector: never one cluster-wide pod list
        sels = sorted(q["fieldSelector"] for _, q in server.list_requests("Pod"))
        assert sels == [f"spec.nodeName!={NODE}", f"spec.nodeName={NODE}"]
        assert by_ip(e, "10.244.1.5")[:5] == ("shop", "web-5d8f9-x1", "web", "web", "deployment")
        assert by_ip(e, "10.244.2.7")[:5] == ("ops", "report-2901-q", "", "report", "cronjob")
        assert by_ip(e, "10.244.2.8")[:5] == ("default", "solo", "", "solo", "pod")
        assert by_ip(e, "10.244.2.9")[:5] == ("shop", "db-0", "", "db", "statefulset")
        assert by_ip(e, "10.244.9.9") is None
        assert e.store.services_by_addr([ks_svc_key("10.96.0.10", 80, 6)]) == [("shop", "web")]
        assert e.store.services_by_addr([ks_svc_key("10.96.0.10", 80, 17)]) == [None]

        # watch: a pod comes, one changes its IP, one goes
        server.add(ks.pod("late", "shop", "node-b", "10.244.2.20"))
        moved = dict(ss, status=dict(ss["status"], podIP="10.244.2.30", podIPs=[{"ip": "10.244.2.30"}]))
        server.modify(moved)
        server.delete(web)
        wait_for(lambda: by_ip(e, "10.244.2.20") is not None and by_ip(e, "10.244.1.5") is None
                 and by_ip(e, "10.244.2.30") is not None, what="watch events")
        assert by_ip(e, "10.244.2.9") is None
        assert e.counters()["objects_pods_local"] == 0
        assert e.counters()["lists"] == 6  # one per reflector, nothing listed again
        # the watches asked for bookmarks and started at the lists' version
        for _, q in server.watch_requests():
            assert q["allowWatchBookmarks"] == "true" and int(q["resourceVersion"]) >= 100
    finally:
        e.stop()


def ks_svc_key(ip, port, proto):
    from dkebpf.enrich.k8s.store import svc_key
    return svc_key(ip, port, proto)


def test_watch_end_resumes_from_bookmark_without_relist(server, token_file):
    server.add(ks.pod("a", "ns", NODE, "10.244.1.1"))
    e = enrichment(server, token_file)
    try:
        # changes of other kinds move the version on; the pod watch learns it from bookmarks
        for i in range(3):
            server.add(ks.service(f"s{i}", "ns", f"10.96.1.{i}", [(80, "TCP", 80)]))
        top = server.current_rv
        wait_for(lambda: e.counters()["objects_services"] == 3, what="services")
        time.sleep(0.6)  # a few bookmark intervals
        server.end_watches()
        server.add(ks.pod("b", "ns", NODE, "10.244.1.2"))  # while no watch is open
        wait_for(lambda: by_ip(e, "10.244.1.2") is not None, what="pod added between two watches")
        assert e.counters()["lists"] == 6 and e.counters()["relists_gone"] == 0
        assert e.counters()["watch_restarts"] >= 6
        resumed = [int(q["resourceVersion"]) for p, q in server.watch_requests("Pod")][2:]
        assert resumed and min(resumed) >= top, (resumed, top)
    finally:
        e.stop()


def test_gone_lists_again_and_drops_what_disappeared(server, token_file):
    keep = server.add(ks.pod("keep", "ns", NODE, "10.244.1.1"))
    lost = server.add(ks.pod("lost", "ns", "node-b", "10.244.2.1"))
    e = enrichment(server, token_file)
    try:
        assert by_ip(e, "10.244.2.1") is not None
        # history compacted and the delete never delivered: only a new list can tell
        server.compact()
        with server.cond:
            del server.objects["Pod"][lost["metadata"]["uid"]]
        server.end_watches()
        wait_for(lambda: by_ip(e, "10.244.2.1") is None, what="relist after 410")
        assert e.counters()["relists_gone"] >= 1
        assert by_ip(e, "10.244.1.1")[1] == "keep"
        assert keep  # still served
    finally:
        e.stop()


def test_restart_and_changed_token(server, token_file):
    e = enrichment(server, token_file)
    try:
        server.restart(down_s=0.5)
        server.add(ks.pod("after-restart", "ns", NODE, "10.244.1.3"))
        wait_for(lambda: by_ip(e, "10.244.1.3") is not None, what="pod after restart")
        # the token is rotated: the old one is refused until the file has the new one
        errors = e.counters()["api_errors"]
        server.set_token("token-2")
        server.end_watches()
        wait_for(lambda: e.counters()["api_errors"] > errors, what="401 seen")
        assert any(a == "Bearer token-1" for _, _, a in server.requests)
        token_file.write_text("token-2\n")
        server.add(ks.pod("after-rotation", "ns", NODE, "10.244.1.4"))
        wait_for(lambda: by_ip(e, "10.244.1.4") is not None, what="pod after token rotation")
        assert server.requests[-1][2] == "Bearer token-2"
    finally:
        e.stop()


def test_tls_is_verified(server, token_file, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _ = ks.make_ca(str(other))  # a CA that did not sign the server's certificate
    api = KubeApi(server.url, Token(str(token_file)), ca_path=other_ca)
    with pytest.raises(ApiError, match="TLS with https://127.0.0.1"):
        list(api.list("/api/v1/pods"))
    # the user can turn verification off (as the original always did)
    pages = KubeApi(server.url, Token(str(token_file)), verify=False).list("/api/v1/pods")
    assert list(pages) == [[]] and pages.resource_version
    with pytest.raises(ApiError, match="CA file /nonexistent/ca.crt does not exist"):
        KubeApi(server.url, Token(str(token_file)), ca_path="/nonexistent/ca.crt")


def test_paged_list(server, token_file):
    for i in range(1203):
        server.add(ks.pod(f"p{i}", "ns", "node-b", f"10.245.{i // 250}.{i % 250 + 1}"))
    api = KubeApi(server.url, Token(str(token_file)), ca_path=server.cert)
    pages = api.list("/api/v1/pods", {"fieldSelector": "spec.nodeName!=x"})
    items = [i for page in pages for i in page]
    assert pages.resource_version and len(items) == 1203 and len({i["metadata"]["uid"] for i in items}) == 1203
    assert len(server.list_requests("Pod")) == 3  # pages of 500


def test_unreachable_server_says_why(token_file, caplog, tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    api = KubeApi(f"https://127.0.0.1:{port}", Token(str(token_file)), verify=False)
    e = K8sEnrichment(api, NODE, logger=logging.getLogger("test.k8s"), backoff=(0.05, 0.1))
    with caplog.at_level(logging.INFO, logger="test.k8s"):
        e.start(wait_s=0.5)
        wait_for(lambda: e.counters()["api_errors"] >= 6, what="errors counted")
        e.stop()
    text = caplog.text
    assert "not reachable" in text and "points have no Kubernetes tags until it is" in text
    # one warning per reflector and problem, not one per retry
    assert text.count("retrying with backoff") <= 6


def test_token_string_and_missing_file(tmp_path):
    assert Token("", "  abc \n").value() == "abc"
    with pytest.raises(ApiError, match="cannot read the Kubernetes token file"):
        Token(str(tmp_path / "none")).value()
