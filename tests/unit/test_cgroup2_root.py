"""kernel.cgroup2_root: where cgroup programs attach to reach every task,
read from mountinfo lines as hosts and containers have them."""
from dkebpf import kernel

HYBRID = """\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
25 22 0:23 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
"""
# a container's view: its own subtree bind-mounted (root is not "/"), and
# the whole hierarchy at a path with a space (mountinfo escapes it as \\040)
CONTAINER = """\
30 1 0:24 /kubepods/pod1/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw
31 1 0:24 / /host\\040root/cgroup rw - cgroup2 cgroup2 rw
"""


def test_the_hierarchys_root_on_a_hybrid_host(tmp_path):
    f = tmp_path / "mountinfo"
    f.write_text(HYBRID)
    assert kernel.cgroup2_root(str(f)) == "/sys/fs/cgroup/unified"


def test_a_subtree_bind_mount_is_not_the_root(tmp_path):
    f = tmp_path / "mountinfo"
    f.write_text(CONTAINER)
    assert kernel.cgroup2_root(str(f)) == "/host root/cgroup"
