"""The Kubernetes enrich step on a batch's tag columns: pid -> pod through
the cgroup, IP -> pod, ClusterIP:port/proto -> service, DNAT -> pod,
workloads, labels, N/A and sub_source."""
import pyarrow as pa

from dkebpf.enrich.k8s import K8sEnrichment
from support import kube_apiserver as ks

NODE = "node-a"
CID_WEB = "a1" * 32
CID_WEB_SIDECAR = "b2" * 32
CID_HOSTNET = "c3" * 32


def fake_proc(tmp_path, pids):
    for pid, cgroup in pids.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(cgroup)
    return str(tmp_path)


def containerd_path(pod, cid):
    uid = pod["metadata"]["uid"].replace("-", "_")
    return (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/"
            f"cri-containerd-{cid}.scope\n")


def setup(tmp_path):
    rs = ks.replica_set("web-5d8f9", "shop", deployment="web")
    web = ks.pod("web-5d8f9-x1", "shop", NODE, "10.244.1.5", owner=ks.owned_by(rs),
                 labels={"app": "web", "tier": "front"}, container_ids=[CID_WEB, CID_WEB_SIDECAR])
    agent = ks.pod("node-agent-7", "kube-system", NODE, "192.0.2.10", host_network=True,
                   owner=("DaemonSet", "node-agent", "u1"), container_ids=[CID_HOSTNET])
    db = ks.pod("db-0", "shop", "node-b", "10.244.2.9", owner=("StatefulSet", "db", "u2"))
    cli = ks.pod("client-1", "other", "node-b", "10.244.2.7")
    svc = ks.service("db", "shop", "10.96.0.10", [(5432, "TCP", 5432)])
    web_svc = ks.service("web", "shop", "10.96.0.20", [(80, "TCP", 8080)])
    proc = fake_proc(tmp_path, {
        100: containerd_path(web, CID_WEB),
        101: containerd_path(web, CID_WEB_SIDECAR),   # another container of the pod, any process
        400: containerd_path(agent, CID_HOSTNET),
        200: "0::/system.slice/sshd.service\n",
    })
    e = K8sEnrichment(None, NODE, host_proc=proc, label_keys=("app", "missing"),
                      label_prefix="k8s_workload_label_")
    st = e.store
    st.replace("Pod", "local", [[web, agent]])
    st.replace("Pod", "remote", [[db, cli]])
    st.replace("Service", "", [[svc, web_svc]])
    st.replace("EndpointSlice", "", [[ks.endpoint_slice(svc, [db], [(5432, "TCP")]),
                                      ks.endpoint_slice(web_svc, [web], [(8080, "TCP")])]])
    st.replace("ReplicaSet", "", [[rs]])
    return e


def columns(rows):
    keys = ["pid", "src_ip", "src_port", "dst_ip", "dst_port", "transport", "direction",
            "dst_nat_ip", "dst_nat_port"]
    return {k: pa.array([r.get(k) for r in rows], pa.string()) for k in keys}


def test_both_sides_through_pid_ip_dnat_and_service(tmp_path):
    e = setup(tmp_path)
    rows = [
        # web's process to the db service's ClusterIP, DNATed to db-0
        dict(pid="100", src_ip="10.244.1.5", src_port="*", dst_ip="10.96.0.10", dst_port="5432",
             transport="tcp", direction="outgoing", dst_nat_ip="10.244.2.9", dst_nat_port="5432"),
        # the sidecar, a process the runtime never reported as the pod's init
        dict(pid="101", src_ip="10.244.1.5", src_port="*", dst_ip="10.244.2.7", dst_port="9000",
             transport="tcp", direction="outgoing"),
        # a host process to the ClusterIP, no conntrack: the service, no pod
        dict(pid="200", src_ip="192.0.2.10", src_port="*", dst_ip="10.96.0.10", dst_port="5432",
             transport="tcp", direction="outgoing"),
        # nothing Kubernetes at all
        dict(pid="200", src_ip="192.0.2.10", src_port="*", dst_ip="127.0.0.1", dst_port="53",
             transport="udp", direction="outgoing"),
        # incoming to web from client-1: the client is the remote side
        dict(pid="100", src_ip="10.244.1.5", src_port="8080", dst_ip="10.244.2.7", dst_port="*",
             transport="tcp", direction="incoming"),
        # a host-network pod: found by its pid though its IP is the node's
        dict(pid="400", src_ip="192.0.2.10", src_port="*", dst_ip="10.96.0.20", dst_port="80",
             transport="TCP", direction="outgoing"),
        # the same port on UDP is not the service
        dict(pid="200", src_ip="192.0.2.10", src_port="*", dst_ip="10.96.0.10", dst_port="5432",
             transport="udp", direction="outgoing"),
    ]
    cols = e.add_tags(columns(rows))
    assert set(e.tag_names()) <= set(cols)
    got = [{k: cols[k][i].as_py() for k in e.tag_names()} for i in range(len(rows))]

    r = got[0]
    assert (r["src_k8s_namespace"], r["src_k8s_pod_name"], r["src_k8s_service_name"]) == ("shop", "web-5d8f9-x1", "web")
    assert (r["src_k8s_deployment_name"], r["src_k8s_workload_name"], r["src_k8s_workload_type"]) == \
        ("web", "web", "deployment")
    assert (r["dst_k8s_namespace"], r["dst_k8s_pod_name"], r["dst_k8s_service_name"]) == ("shop", "db-0", "db")
    assert (r["dst_k8s_workload_name"], r["dst_k8s_workload_type"]) == ("db", "statefulset")
    assert r["client_k8s_pod_name"] == "web-5d8f9-x1" and r["server_k8s_pod_name"] == "db-0"
    assert r["sub_source"] == "K8s"
    assert r["k8s_workload_label_app"] == "web" and r["k8s_workload_label_missing"] is None

    r = got[1]
    assert r["src_k8s_pod_name"] == "web-5d8f9-x1"
    assert (r["dst_k8s_pod_name"], r["dst_k8s_service_name"], r["dst_k8s_workload_type"]) == ("client-1", "N/A", "pod")

    r = got[2]
    assert {r[f"src_{t}"] for t in ("k8s_namespace", "k8s_pod_name", "k8s_workload_name")} == {"N/A"}
    assert (r["dst_k8s_namespace"], r["dst_k8s_pod_name"], r["dst_k8s_service_name"],
            r["dst_k8s_workload_name"]) == ("shop", "N/A", "db", "N/A")
    assert r["sub_source"] == "K8s" and r["k8s_workload_label_app"] is None

    assert all(v is None for v in got[3].values())

    r = got[4]
    assert r["client_k8s_pod_name"] == "client-1" and r["server_k8s_pod_name"] == "web-5d8f9-x1"
    assert r["server_k8s_workload_name"] == "web"

    r = got[5]
    assert (r["src_k8s_pod_name"], r["src_k8s_workload_type"], r["dst_k8s_service_name"]) == \
        ("node-agent-7", "daemonset", "web")
    # a host process shares the node IP with the host-network pod but is not in it
    assert got[2]["src_k8s_pod_name"] == "N/A"

    assert got[6]["sub_source"] is None
    c = e.counters()
    assert c["lookups_hit"] == 9 and c["lookups_missed"] == 5


def test_dnsflow_shape_without_pid_or_client_server(tmp_path):
    e = setup(tmp_path)
    cols = {k: pa.array(v, pa.string()) for k, v in {
        "src_ip": ["10.244.1.5", "192.0.2.10"], "src_port": ["*", "*"],
        "dst_ip": ["10.244.2.7", "127.0.0.53"], "dst_port": ["53", "53"],
        "transport": ["udp", "udp"], "direction": ["outgoing", "outgoing"]}.items()}
    e.add_tags(cols, client_server=False)
    assert "client_k8s_pod_name" not in cols
    assert cols["src_k8s_pod_name"].to_pylist() == ["web-5d8f9-x1", None]
    assert cols["dst_k8s_pod_name"].to_pylist() == ["client-1", None]
    assert cols["sub_source"].to_pylist() == ["K8s", None]


def test_empty_batch(tmp_path):
    e = setup(tmp_path)
    cols = e.add_tags(columns([]))
    assert all(len(cols[t]) == 0 for t in e.tag_names())
