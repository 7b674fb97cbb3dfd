"""Project exceptions. Each carries a message a user can act on; the CLI
prints it on one line and exits non-zero, never with a traceback."""


class DkebpfError(Exception):
    """Base of every error the collector reports to its user."""

    exit_code = 1


class ConfigError(DkebpfError):
    """An option has a value that is not allowed. The message names the
    option, the value and what is allowed."""

    exit_code = 2


class BuildError(DkebpfError):
    """The package was installed without its compiled parts."""


class KernelError(DkebpfError):
    """The kernel refused something (load, attach, map operation); the
    message carries the operation, the object and the errno text."""

    def __init__(self, message, errno=0):
        super().__init__(message)
        self.errno = errno


class UnsupportedError(DkebpfError):
    """A plugin or feature this build or this kernel cannot run."""

    exit_code = 3


class FilterError(ConfigError):
    """A netlog_blacklist rule that does not lex, parse or type-check. The
    message has the position, the rule line and a caret under the problem;
    ``line``/``col`` (1-based) and ``reason`` are kept for callers."""

    def __init__(self, message, line, col, reason):
        super().__init__(message)
        self.line, self.col, self.reason = line, col, reason
