"""The named feature probes (dkebpf/features.py) on the real kernel: each
kernel feature is found on a kernel at least as new as its minimum, and a
probe can say no."""
import pytest

from dkebpf import features

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("name", sorted(features.FEATURES))
def test_probe_finds_what_this_kernel_has(bpf_ok, name):
    f = features.feature(name)
    if f.min_kernel is None:  # not a kernel feature: the probe must agree with the file system
        from dkebpf.plugins.tls_probes import libssl_in_dirs
        assert (features.missing(name) is None) == bool(libssl_in_dirs("/"))
        return
    if features.kernel_version() < f.min_kernel:
        pytest.skip(f"kernel older than {f.min_kernel}: {name} may be missing")
    assert features.missing(name) is None, f"{name}: {features.missing(name)}"


def test_a_btf_probe_can_say_no(bpf_ok):
    probe = features._btf_has("bpf_no_such_kfunc", "never added")
    assert probe() == "the kernel's BTF has no bpf_no_such_kfunc: never added"
    assert b"bpf_rdonly_cast" in features.btf_names()
