"""`dkebpf install-datakit`: make this collector the one DataKit starts.

DataKit runs ``<datakit-dir>/externals/datakit-ebpf run <flags>``. This
installs, under ``<datakit-dir>/externals/``:

- ``dkebpf/``: a Python environment of its own holding the dkebpf wheel
  (built by ``make wheel``: libbpf, libelf and zlib inside, no compiler or
  -dev package needed on the node);
- ``datakit-ebpf``: a launcher, that environment's Python running dkebpf's
  command line, so the collector sees itself started as datakit-ebpf (log
  and pidfile beside it);
- ``datakit-ebpf.orig``: the original binary, kept.

``--uninstall`` puts the original back and removes the environment. A new
environment is built beside the old one and swapped in at the end: a failed
install leaves the running setup as it was. The wheel comes from
``--wheel``, else from the wheel this command runs from
(``PYTHONPATH=dkebpf-....whl python3 -m dkebpf install-datakit``)."""
import os
import shutil
import subprocess
import sys

from .config import LAUNCHER_NAME, ConfigArgumentParser
from .errors import ConfigError, DkebpfError

DEFAULT_DATAKIT_DIR = "/usr/local/datakit"
ENV_DIR = "dkebpf"
LAUNCHER_MARK = "# dkebpf launcher"
LAUNCHER = """#!{python} -I
{mark}, installed by `dkebpf install-datakit`; DataKit starts it as datakit-ebpf.
# `dkebpf install-datakit --uninstall` puts the original ({orig}) back.
import sys

from dkebpf.cli import main

sys.exit(main())
"""


def build_parser():
    p = ConfigArgumentParser(prog="dkebpf install-datakit",
                             description="Install this collector as DataKit's datakit-ebpf "
                                         "(the original is kept as datakit-ebpf.orig).")
    p.add_argument("--datakit-dir", default=DEFAULT_DATAKIT_DIR, metavar="DIR",
                   help=f"DataKit's install directory (default {DEFAULT_DATAKIT_DIR})")
    p.add_argument("--wheel", metavar="FILE",
                   help="the dkebpf wheel to install (default: the wheel this command runs from)")
    p.add_argument("--uninstall", action="store_true",
                   help="put the original datakit-ebpf back and remove dkebpf's environment")
    return p


def running_wheel():
    """The .whl file this package is imported from, if it is one."""
    here = os.path.abspath(__file__)
    head, sep, _ = here.partition(".whl" + os.sep)
    return head + ".whl" if sep and os.path.isfile(head + ".whl") else None


def main(argv, out=sys.stdout):
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.datakit_dir):
        raise ConfigError(f'invalid --datakit-dir "{args.datakit_dir}": no such directory')
    externals = os.path.join(os.path.abspath(args.datakit_dir), "externals")
    if args.uninstall:
        uninstall(externals, out)
        return 0
    wheel = args.wheel or running_wheel()
    if not wheel:
        raise ConfigError("invalid --wheel: not given, and this command does not run from a wheel; "
                          "give --wheel dist/dkebpf-....whl (make wheel builds it)")
    if not (wheel.endswith(".whl") and os.path.isfile(wheel)):
        raise ConfigError(f'invalid --wheel "{wheel}": not a .whl file')
    install(externals, os.path.abspath(wheel), out)
    return 0


def _run(cmd, what):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = " ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
        raise DkebpfError(f"{what} failed (exit {p.returncode}): {tail}")
    return p.stdout


def is_our_launcher(path):
    try:
        with open(path, "rb") as f:
            return LAUNCHER_MARK.encode() in f.read(512)
    except OSError:
        return False


def install(externals, wheel, out):
    os.makedirs(externals, exist_ok=True)
    env = os.path.join(externals, ENV_DIR)
    launcher = os.path.join(externals, LAUNCHER_NAME)
    orig = launcher + ".orig"
    new_env = env + ".new"
    shutil.rmtree(new_env, ignore_errors=True)
    try:
        _run([sys.executable, "-m", "venv", new_env],
             "creating a Python environment (on Debian/Ubuntu: apt-get install python3-venv)")
        python = os.path.join(new_env, "bin", "python")
        _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel],
             f"installing {os.path.basename(wheel)}")
        version = _run([python, "-I", "-m", "dkebpf", "version"], "running the installed collector").strip()
    except BaseException:
        shutil.rmtree(new_env, ignore_errors=True)
        raise
    # swap the environment in; the launcher names its final path
    old_env = env + ".old"
    shutil.rmtree(old_env, ignore_errors=True)
    if os.path.exists(env):
        os.replace(env, old_env)
    os.replace(new_env, env)
    shutil.rmtree(old_env, ignore_errors=True)
    if os.path.lexists(launcher) and not is_our_launcher(launcher) and not os.path.lexists(orig):
        os.replace(launcher, orig)
        out.write(f"kept the original collector as {orig}\n")
    tmp = launcher + ".tmp"
    with open(tmp, "w") as f:
        f.write(LAUNCHER.format(python=os.path.join(env, "bin", "python"), mark=LAUNCHER_MARK,
                                orig=os.path.basename(orig)))
    os.chmod(tmp, 0o755)
    os.replace(tmp, launcher)
    out.write(f"installed {version} as {launcher} (environment {env}); restart DataKit to use it\n")


def uninstall(externals, out):
    env = os.path.join(externals, ENV_DIR)
    launcher = os.path.join(externals, LAUNCHER_NAME)
    orig = launcher + ".orig"
    if os.path.lexists(launcher) and not is_our_launcher(launcher):
        raise DkebpfError(f"{launcher} was not installed by dkebpf; leaving it as it is")
    if os.path.lexists(orig):
        os.replace(orig, launcher)
        out.write(f"restored the original collector {launcher}\n")
    elif os.path.lexists(launcher):
        os.unlink(launcher)
        out.write(f"removed {launcher} (there was no original to restore)\n")
    if os.path.isdir(env):
        shutil.rmtree(env)
        out.write(f"removed {env}\n")
