"""conf/kubernetes.yaml grants exactly the API calls the collector makes,
and gives the DaemonSet what the enrichment reads (host pids, node name)."""
from pathlib import Path

import yaml

from dkebpf.enrich.k8s import resources

MANIFEST = Path(__file__).resolve().parents[2] / "conf" / "kubernetes.yaml"


def docs():
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def test_rbac_is_exactly_list_and_watch_of_what_is_watched():
    granted = {(g, r, v) for rule in docs()["ClusterRole"]["rules"]
               for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    used = set()
    for _, _, path, _ in resources("n"):
        parts = path.strip("/").split("/")  # api/v1/pods, apis/<group>/<version>/<resource>
        group = "" if parts[0] == "api" else parts[1]
        used |= {(group, parts[-1], "list"), (group, parts[-1], "watch")}
    assert granted == used


def test_daemonset_sees_host_pids_and_knows_its_node():
    d = docs()
    spec = d["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["hostPID"] and spec["hostNetwork"] and spec["serviceAccountName"] == "dkebpf"
    c = spec["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert not c["securityContext"]["privileged"]
    assert "SYS_ADMIN" not in c["securityContext"]["capabilities"]["add"]
    binding = d["ClusterRoleBinding"]
    assert binding["subjects"][0]["name"] == d["ServiceAccount"]["metadata"]["name"]
