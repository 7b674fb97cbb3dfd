"""Errors: the kernel's refusals are KernelError (an OSError keeping the
errno, the privilege hint where privileges are missing); a bug exits 70
with its traceback in the log."""
import errno
import logging

import pytest

from dkebpf import cli
from dkebpf.errors import PRIVILEGE_HINT, DkebpfError, KernelError, kernel_error


def test_kernel_error_is_an_oserror_with_the_errno():
    exc = kernel_error("load BPF object x.bpf.o", -errno.EINVAL, "libbpf: R1 invalid mem access")
    assert isinstance(exc, KernelError) and isinstance(exc, OSError) and isinstance(exc, DkebpfError)
    assert exc.errno == errno.EINVAL
    assert str(exc) == ("load BPF object x.bpf.o: Invalid argument (errno 22)\n"
                        "libbpf: R1 invalid mem access")
    assert PRIVILEGE_HINT not in str(exc)


def test_privilege_hint_on_eperm():
    exc = kernel_error("attach on_send", errno.EPERM)
    assert str(exc) == f"attach on_send: Operation not permitted (errno 1); {PRIVILEGE_HINT}"


@pytest.mark.parametrize("bug", [LookupError("tls.bpf.o has no map 'nope'"),
                                 RuntimeError("BPF object netflow.bpf.o is closed")])
def test_a_bug_exits_70_with_the_traceback_in_the_log(monkeypatch, tmp_path, capsys, bug):
    def run_check(out):
        raise bug
    monkeypatch.setattr("dkebpf.check.run_check", run_check)
    log = tmp_path / "dkebpf.log"
    cli.setup_logging(str(log), "info")
    try:
        assert cli.main(["check"]) == 70
    finally:
        logging.getLogger("dkebpf").handlers[:] = []
    text = log.read_text()
    assert f"internal error: {type(bug).__name__}: {bug}" in text
    assert "Traceback (most recent call last)" in text and "in run_check" in text
    assert capsys.readouterr().err == f"dkebpf: internal error: {type(bug).__name__}: {bug}\n"


def test_a_kernel_refusal_is_one_line_without_traceback(monkeypatch, capsys):
    def run_check(out):
        raise kernel_error("load BPF object netflow.bpf.o", errno.EPERM)
    monkeypatch.setattr("dkebpf.check.run_check", run_check)
    assert cli.main(["check"]) == 1
    err = capsys.readouterr().err
    assert err == f"dkebpf: error: load BPF object netflow.bpf.o: Operation not permitted (errno 1); " \
                  f"{PRIVILEGE_HINT}\n"
