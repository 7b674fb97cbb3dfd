"""Started as <dir>/datakit-ebpf (by install-datakit's launcher), with no
standard output or error, as DataKit runs it: whatever stops the start
must be in <dir>/datakit-ebpf.log."""
import subprocess
import sys

from dkebpf.install_datakit import LAUNCHER, LAUNCHER_MARK


def launcher(tmp_path):
    path = tmp_path / "datakit-ebpf"
    path.write_text(LAUNCHER.format(python=sys.executable, mark=LAUNCHER_MARK, orig="datakit-ebpf.orig"))
    path.chmod(0o755)
    return path


def test_a_bad_flag_is_logged_beside_the_launcher(tmp_path):
    p = subprocess.run([str(launcher(tmp_path)), "run", "--interval", "soon"], env={},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 2
    log = (tmp_path / "datakit-ebpf.log").read_text()
    assert 'ERROR dkebpf: invalid --interval "soon": a Go duration' in log


def test_the_launcher_runs_the_cli(tmp_path):
    p = subprocess.run([str(launcher(tmp_path)), "version"], env={}, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("dkebpf ")
