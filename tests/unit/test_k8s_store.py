"""The store under churn: names of deleted objects do not pile up, and what
remains still resolves after the string table is compacted."""
from dkebpf.enrich.k8s import store as st
from dkebpf.enrich.k8s.store import ClusterStore, ip_key, svc_key
from support import kube_apiserver as ks


def describe_ip(s, ip):
    row = s.pod_rows_by_ip([ip_key(ip)])[0]
    return s.describe([row])[0][:5] if row >= 0 else None


def test_cronjob_churn_keeps_the_string_table_bounded():
    s = ClusterStore()
    rs = ks.replica_set("web-5d8f9", "shop", deployment="web")
    web = ks.pod("web-5d8f9-x1", "shop", "n1", "10.244.1.5", owner=ks.owned_by(rs))
    svc = ks.service("web", "shop", "10.96.0.10", [(80, "TCP", 8080)])
    s.replace("ReplicaSet", "", [[rs]])
    s.replace("Pod", "remote", [[web]])
    s.replace("Service", "", [[svc]])
    s.replace("EndpointSlice", "", [[ks.endpoint_slice(svc, [web], [(8080, "TCP")])]])
    sizes = []
    for i in range(3 * st.COMPACT_AFTER_DELETIONS // 2):
        # a CronJob run: a Job with a new name, its pod, then both gone
        job = ks.job(f"report-{i}", "ops", cronjob="report")
        pod = ks.pod(f"report-{i}-q", "ops", "n1", "10.244.9.9", owner=ks.owned_by(job))
        s.apply("Job", "", "ADDED", job)
        s.apply("Pod", "remote", "ADDED", pod)
        if i % 1000 == 0:
            assert describe_ip(s, "10.244.9.9") == ("ops", f"report-{i}-q", "", "report", "cronjob")
        s.apply("Pod", "remote", "DELETED", pod)
        s.apply("Job", "", "DELETED", job)
        sizes.append(len(s.strings.strs))
    assert max(sizes) < st.COMPACT_AFTER_DELETIONS + 100
    assert describe_ip(s, "10.244.1.5") == ("shop", "web-5d8f9-x1", "web", "web", "deployment")
    assert s.services_by_addr([svc_key("10.96.0.10", 80, 6)]) == [("shop", "web")]
    assert describe_ip(s, "10.244.9.9") is None
    # interned names still dedupe after compaction: one "shop", one "ops"
    assert s.strings.strs.count("shop") == 1 and s.strings.strs.count("ops") <= 1
