"""Command line: `dkebpf run [flags]` (also as DataKit's `datakit-ebpf run`),
`dkebpf check`, `dkebpf bench`, `dkebpf netlog-filter`, `dkebpf linker`,
`dkebpf version`. A DkebpfError (bad input, the kernel refused) is one line
on stderr and its exit status, never a traceback. Any other exception is a
bug (e.g. LookupError/RuntimeError from misusing a BPF object): exit 70
(EX_SOFTWARE) with the traceback in the log (--log, else stderr) and one
line on stderr."""
import logging
import sys

from . import __version__
from .errors import DkebpfError

USAGE = """usage: dkebpf run [flags]      collect (see dkebpf run --help)
       dkebpf check            what this kernel and these privileges can run
       dkebpf bench [flags]    what the collector costs here, per load (see dkebpf bench --help)
       dkebpf netlog-filter RULES [--match field=value ...]
                               check a netlog_blacklist rule, try it on a connection
       dkebpf linker [flags]   link spans of many collectors into traces (see --help)
       dkebpf version"""


def setup_logging(path, level):
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dkebpf")
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False


def _logs_to_file():
    return any(isinstance(h, logging.FileHandler) for h in logging.getLogger("dkebpf").handlers)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "version" or cmd == "--version":
            print(f"dkebpf {__version__}")
            return 0
        if cmd == "check":
            from .check import run_check
            return run_check(sys.stdout)
        if cmd == "bench":
            from .bench import main as bench_main
            return bench_main(rest)
        if cmd == "netlog-filter":
            from .netlog.filter_cli import main as netlog_filter
            return netlog_filter(rest)
        if cmd == "run":
            from .config import load_config
            if "-h" in rest or "--help" in rest:
                from .config import build_run_parser
                build_run_parser().print_help()
                return 0
            cfg = load_config(rest)
            setup_logging(cfg.log, cfg.log_level)
            from .agent import Agent
            return Agent(cfg).run()
        if cmd == "linker":
            setup_logging(None, "info")
            from .linker.server import main as linker_main
            return linker_main(rest)
        sys.stderr.write(f"dkebpf: unknown command {cmd!r}\n{USAGE}\n")
        return 2
    except DkebpfError as exc:
        sys.stderr.write(f"dkebpf: error: {exc}\n")
        if _logs_to_file():  # also into --log (stderr already has it)
            logging.getLogger("dkebpf").error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: the traceback in the log, one line for the user
        summary = f"internal error: {type(exc).__name__}: {exc}"
        # without handlers (before --log is read, or `check`) logging's
        # last resort writes it to stderr
        logging.getLogger("dkebpf").exception(summary)
        if _logs_to_file():
            sys.stderr.write(f"dkebpf: {summary}\n")
        return 70  # EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
