"""Command line: `dkebpf run [flags]` (also as DataKit's `datakit-ebpf run`),
`dkebpf check`, `dkebpf bench`, `dkebpf netlog-filter`, `dkebpf install-datakit`,
`dkebpf linker`, `dkebpf version`. A DkebpfError (bad input, the kernel
refused) is one line on stderr (and in the log file, when there is one) and
its exit status, never a traceback. Any other exception is a bug (e.g.
LookupError/RuntimeError from misusing a BPF object): exit 70 (EX_SOFTWARE)
with the traceback in the log (--log, else stderr) and one line on stderr."""
import logging
import logging.handlers
import os
import sys

from . import __version__
from .errors import DkebpfError

USAGE = """usage: dkebpf run [flags]      collect (see dkebpf run --help)
       dkebpf check            what this kernel and these privileges can run
       dkebpf bench [flags]    what the collector costs here, per load (see dkebpf bench --help)
       dkebpf netlog-filter RULES [--match field=value ...]
                               check a netlog_blacklist rule, try it on a connection
       dkebpf install-datakit  put this collector in a DataKit's externals (see --help)
       dkebpf linker [flags]   link spans of many collectors into traces (see --help)
       dkebpf version"""
# DataKit never rotates its children's logs: ours stays under
# LOG_MAX_BYTES * (LOG_BACKUPS + 1)
LOG_MAX_BYTES = 32 << 20
LOG_BACKUPS = 2
# Read by numpy's OpenBLAS and by libarrow when they are loaded, so set
# before any command imports them; a user's own setting wins.
# - Arrow's C++ default pool serves what pa.set_memory_pool does not reach
#   (Acero's group-by, compute kernels' scratch): glibc's malloc gives freed
#   memory back (malloc_trim, the agent's mmap threshold), mimalloc keeps
#   ~20 MiB after a few group-bys and is no faster here
#   (perf/bench_arrow_pool.py).
# - OpenBLAS starts a thread per core at import, each with its own buffers;
#   the collector does no linear algebra.
LIBRARY_ENVIRONMENT = {"ARROW_DEFAULT_MEMORY_POOL": "system", "OPENBLAS_NUM_THREADS": "1"}


def setup_logging(path, level):
    if path:
        try:
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES,
                                                           backupCount=LOG_BACKUPS)
        except OSError as exc:
            from .errors import ConfigError
            raise ConfigError(f'invalid --log "{path}": cannot open it: {exc.strerror or exc}') from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dkebpf")
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False


def _logs_to_file():
    return any(isinstance(h, logging.FileHandler) for h in logging.getLogger("dkebpf").handlers)


def main(argv=None):
    for name, value in LIBRARY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    argv_is_ours = argv is None  # sys.argv[0] names the program only then
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
        if cmd == "install-datakit":
            from .install_datakit import main as install_main
            return install_main(rest)
        if cmd == "run":
            from .config import LAUNCHER_NAME, launcher_directory, load_config
            if "-h" in rest or "--help" in rest:
                from .config import build_run_parser
                build_run_parser().print_help()
                return 0
            program = sys.argv[0] if argv_is_ours else None
            home = launcher_directory(program)
            if home:  # started by DataKit: even a bad flag must reach the log file
                setup_logging(os.path.join(home, LAUNCHER_NAME + ".log"), "info")
            cfg = load_config(rest, program=program)
            setup_logging(cfg.log, cfg.log_level)
            for warning in cfg.warnings:
                logging.getLogger("dkebpf").warning("%s", warning)
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
