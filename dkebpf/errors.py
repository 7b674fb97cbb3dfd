"""Project exceptions. Each carries a message a user can act on; the CLI
prints it on one line and exits non-zero, never with a traceback.

A bug in the collector (a map or program asked for that its object does not
declare, an object used after close) is not one of these: it raises
LookupError or RuntimeError, which the CLI reports as an internal error
(exit 70, traceback in the log)."""
import errno as _errno
import os


class DkebpfError(Exception):
    """Base of every error the collector reports to its user."""

    exit_code = 1


class ConfigError(DkebpfError):
    """An option has a value that is not allowed. The message names the
    option, the value and what is allowed."""

    exit_code = 2


class BuildError(DkebpfError):
    """The package was installed without its compiled parts."""


class KernelError(DkebpfError, OSError):
    """The kernel refused something (load, attach, map operation, socket);
    ``errno`` is the kernel's, the message names the operation and the
    object. Made by kernel_error()."""

    def __init__(self, message, errno=0):
        OSError.__init__(self, errno, message)

    def __str__(self):
        return self.strerror


class UnsupportedError(DkebpfError):
    """A plugin or feature this build or this kernel cannot run."""

    exit_code = 3


PRIVILEGE_HINT = ("run as root (or with CAP_BPF and CAP_PERFMON for BPF programs, CAP_NET_RAW for "
                  "packet sockets, CAP_NET_ADMIN for conntrack)")


def kernel_error(what, err, detail=""):
    """The one errno -> exception converter: KernelError('<what>: <errno
    text> (errno N)'), with the privilege hint when the kernel said EPERM
    (or EACCES to a process that is not root: for root EACCES is the
    verifier's or an LSM's verdict, not missing privileges), then detail
    (e.g. libbpf's last log lines) on lines of its own."""
    err = abs(int(err or 0)) or _errno.EINVAL
    msg = f"{what}: {os.strerror(err)} (errno {err})"
    if err == _errno.EPERM or (err == _errno.EACCES and os.geteuid() != 0):
        msg += f"; {PRIVILEGE_HINT}"
    if detail:
        msg += "\n" + detail
    return KernelError(msg, err)


class FilterError(ConfigError):
    """A netlog_blacklist rule that does not lex, parse or type-check. The
    message has the position, the rule line and a caret under the problem;
    ``line``/``col`` (1-based) and ``reason`` are kept for callers."""

    def __init__(self, message, line, col, reason):
        super().__init__(message)
        self.line, self.col, self.reason = line, col, reason
