"""Shared fixtures. Kernel and e2e tests need root and BPF: where this
machine cannot give them they skip with the reason, except under
DKEBPF_REQUIRE_BPF=1 (CI), where a skip would hide a failure and so fails."""
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
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel has no BTF (/sys/kernel/btf/vmlinux)"
    try:
        from dkebpf import _libbpf  # noqa: F401
    except ImportError as exc:
        return f"dkebpf extensions not built: {exc}"
    return None


@pytest.fixture(scope="session")
def bpf_ok():
    reason = bpf_unavailable_reason()
    if reason:
        if REQUIRE_BPF:
            pytest.fail(f"DKEBPF_REQUIRE_BPF=1 but BPF is unavailable: {reason}")
        pytest.skip(reason)
    from dkebpf import kernel
    kernel.ensure_mounts()
    return True
