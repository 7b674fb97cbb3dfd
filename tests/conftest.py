"""Shared fixtures and the ``requires`` marker. Kernel and e2e tests need
root and BPF: where this machine cannot give them they skip with the
reason, except under DKEBPF_REQUIRE_BPF=1 (CI), where a skip would hide a
failure and so fails.

``@pytest.mark.requires("cgroup2", ...)`` names feature probes of
dkebpf/features.py (the same ones `dkebpf check` runs). A missing feature
skips the test; it fails instead under DKEBPF_REQUIRE_BPF=1, or when the
running kernel is at least the feature's minimum kernel -- there the probe
or the kernel's configuration is wrong, and a skip would hide it."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # tests/support and tests/reference as packages
    sys.path.insert(0, HERE)

REQUIRE_BPF = os.environ.get("DKEBPF_REQUIRE_BPF") == "1"


def bpf_unavailable_reason():
    if os.geteuid() != 0:
        return "needs root"
    from dkebpf import features
    btf = features.missing("btf")
    if btf:
        return btf
    try:
        from dkebpf import _libbpf  # noqa: F401
    except ImportError as exc:
        return f"dkebpf extensions not built: {exc}"
    return None


def _skip_or_fail(reason):
    if REQUIRE_BPF:
        pytest.fail(f"DKEBPF_REQUIRE_BPF=1 but {reason}")
    pytest.skip(reason)


def require_features(*names):
    """Skip or fail (see the module's comment) unless the host has every
    named feature; root and BPF come first, as every probe assumes them."""
    from dkebpf import features
    reason = bpf_unavailable_reason()
    if reason:
        _skip_or_fail(reason)
    for name in names:
        why = features.missing(name)  # a name that is no probe raises LookupError: a test bug
        if why is None:
            continue
        need = features.feature(name).min_kernel
        if need is not None and features.kernel_version() >= need:
            pytest.fail(f"kernel {os.uname().release} is at least {need[0]}.{need[1]}, which has "
                        f"{name}, but: {why}")
        _skip_or_fail(f"{name}: {why}")


def pytest_configure(config):
    config.addinivalue_line("markers", "requires(*features): needs these dkebpf.features probes "
                                       "(skip where missing; fail under DKEBPF_REQUIRE_BPF=1 or on "
                                       "a kernel at least the feature's minimum)")


def pytest_runtest_setup(item):
    names = [n for mark in item.iter_markers("requires") for n in mark.args]
    if names:
        require_features(*names)


@pytest.fixture(scope="session")
def bpf_ok():
    reason = bpf_unavailable_reason()
    if reason:
        _skip_or_fail(reason)
    from dkebpf import kernel
    kernel.ensure_mounts()
    return True
