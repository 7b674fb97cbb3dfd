"""install-datakit's refusals and --uninstall (the install itself, from a
real wheel, is tests/e2e/test_datakit_launch.py)."""
import io
import sys

import pytest

from dkebpf.errors import ConfigError, DkebpfError
from dkebpf.install_datakit import LAUNCHER, LAUNCHER_MARK, main


def datakit_dir(tmp_path, launcher_text):
    externals = tmp_path / "externals"
    externals.mkdir()
    (externals / "datakit-ebpf").write_text(launcher_text)
    return externals


def test_bad_arguments_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match='invalid --datakit-dir "/nonexistent": no such directory'):
        main(["--datakit-dir", "/nonexistent"])
    with pytest.raises(ConfigError, match="not given, and this command does not run from a wheel"):
        main(["--datakit-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match=f'invalid --wheel "{tmp_path}/x.tar.gz": not a .whl file'):
        main(["--datakit-dir", str(tmp_path), "--wheel", f"{tmp_path}/x.tar.gz"])


def test_uninstall_leaves_a_collector_it_did_not_install(tmp_path):
    externals = datakit_dir(tmp_path, "#!/bin/sh\necho original\n")
    with pytest.raises(DkebpfError, match="was not installed by dkebpf; leaving it as it is"):
        main(["--datakit-dir", str(tmp_path), "--uninstall"])
    assert (externals / "datakit-ebpf").read_text() == "#!/bin/sh\necho original\n"


def test_uninstall_restores_the_original_and_removes_the_environment(tmp_path):
    externals = datakit_dir(tmp_path, LAUNCHER.format(python=sys.executable, mark=LAUNCHER_MARK,
                                                      orig="datakit-ebpf.orig"))
    (externals / "datakit-ebpf.orig").write_text("original\n")
    (externals / "dkebpf" / "bin").mkdir(parents=True)
    out = io.StringIO()
    assert main(["--datakit-dir", str(tmp_path), "--uninstall"], out=out) == 0
    assert (externals / "datakit-ebpf").read_text() == "original\n"
    assert sorted(p.name for p in externals.iterdir()) == ["datakit-ebpf"]
    assert "restored the original collector" in out.getvalue()
