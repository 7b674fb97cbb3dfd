"""bpf-netlog with a real containerd as its --container-endpoints: Debian's
containerd (CRI plugin, runc) started by the test under its own directory
(tests/support/containerd.py) runs pod web-0 (namespace shop) whose
container web is busybox's httpd, and pod idle-1 with no container; the
test moves its veth's peer end into web-0's network namespace. Traffic from
the host end to the httpd: the l4 and l7 logs of that interface carry the
names containerd's CRI gives (no Kubernetes API here), asked through the
collector's own CRI client; `dkebpf check`'s line says the CRI answered."""
import os
import subprocess
import time
import urllib.request
import uuid

import pytest

from dkebpf.enrich.containers import ContainerRuntimes, check_line
from dkebpf.plugins import requirements
from support import containerd
from support.traffic import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.requires(*requirements(("bpf-netlog",)))]

PORT = 8080


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


def test_pod_and_container_names_from_containerds_cri(collector, receiver, tmp_path):
    why = containerd.missing()
    if why:   # the Makefile's packages: a machine without them is not set up
        pytest.fail(why)
    tag = uuid.uuid4().hex[:6]
    host, peer, dummies = f"dch{tag}", f"dcp{tag}", (f"dcd{tag}", f"dce{tag}")
    n = 220 + os.getpid() % 30
    host_ip, peer_ip = f"10.213.{n}.1", f"10.213.{n}.2"
    try:
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
        sh("ip", "addr", "add", f"{host_ip}/24", "dev", host)
        sh("ip", "link", "set", host, "up")
        for d in dummies:   # no dummy driver in this kernel: veth pairs, one end unused in the host
            sh("ip", "link", "add", d, "type", "veth", "peer", "name", d + "x")
        with containerd.Containerd(tmp_path / "containerd") as rt:
            _, ids, pid = rt.run_pod("web-0", "shop", dummies[0],
                                     {"web": ["/bin/httpd", "-f", "-p", str(PORT), "-h", "/www"]})
            _, _, idle_pid = rt.run_pod("idle-1", "shop", dummies[1], {})
            containerd.move_into(pid, peer, f"{peer_ip}/24")
            host_root = tmp_path / "host"
            os.makedirs(host_root / "var/run/containerd")
            os.symlink(rt.socket, host_root / "var/run/containerd/containerd.sock")
            line = check_line((), str(host_root))
            runtimes = ContainerRuntimes([f"unix://{rt.socket}"])
            runtimes.refresh()
            names, stats = runtimes.by_netns, dict(runtimes.stats)
            web_netns, idle_netns = (os.stat(f"/proc/{p}/ns/net").st_ino for p in (pid, idle_pid))
            collector.start("--netlog-log", "--netlog-interfaces", f"^{peer}$",
                            "--container-endpoints", f"unix://{rt.socket}", enabled="bpf-netlog")
            assert wait_until(lambda: f"capturing on {peer}" in collector.log_text(), 15), collector.log_text()
            time.sleep(1)   # the runtime thread's first answer (it asks at start)
            for i in range(3):
                url = f"http://{peer_ip}:{PORT}/index.html?{i}"
                assert urllib.request.urlopen(url, timeout=5).read() == b"ok from the pod\n"
            time.sleep(3)   # one interval (2 s) flushes them
            assert collector.stop() == 0
            runtime_log = rt.log_text()
    finally:
        for d in (host, *(d + "x" for d in dummies)):
            subprocess.run(["ip", "link", "del", d], capture_output=True)

    assert line == ("container endpoints: unix:///var/run/containerd/containerd.sock answers the CRI (containerd "
                    "1.6.20~ds1, runtime.v1: 2 pods, 1 running containers)"), line
    log = collector.log_text()
    assert "Traceback" not in log and "does not answer" not in log, log
    assert ids["web"] and "RunPodSandbox" in runtime_log
    records = [r.point for r in receiver.records if r.point.measurement in ("bpf_net_l4_log", "bpf_net_l7_log")
               and r.point.tags.get("nic_name") == peer]
    assert {p.measurement for p in records} == {"bpf_net_l4_log", "bpf_net_l7_log"}, records
    assert len([p for p in records if p.measurement == "bpf_net_l7_log"]) == 3
    for p in records:
        assert (p.tags.get("k8s_namespace"), p.tags.get("k8s_pod_name"), p.tags.get("k8s_container_name")) == \
            ("shop", "web-0", "web"), p.tags
        assert p.tags["src_ip"] == peer_ip and p.tags["src_port"] == str(PORT), p.tags
    # the same client in this process: idle-1 (no container) named by its sandbox, no container name
    assert names[web_netns] == {"k8s_namespace": "shop", "k8s_pod_name": "web-0", "k8s_container_name": "web"}
    assert names[idle_netns] == {"k8s_namespace": "shop", "k8s_pod_name": "idle-1"}
    assert stats == {"runtime_queries": 1, "runtime_errors": 0, "runtime_containers": 2}
