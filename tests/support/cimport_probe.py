"""Builds tests/unit/cimport/cimport_probe.pyx, a test-only Cython module
that reaches the C-level functions of the package through its .pxd files
(ext/includes) and the headers shared with the BPF programs (bpf/include),
the way a new Cython module would, and imports it."""
import importlib.util
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYX = os.path.join(ROOT, "tests", "unit", "cimport", "cimport_probe.pyx")


def build(out):
    """Cython and the C compiler into the directory out (a pathlib.Path);
    the imported module."""
    setup = textwrap.dedent(f"""
        from setuptools import Extension, setup
        from Cython.Build import cythonize
        ext = Extension("cimport_probe", [{PYX!r}],
                        include_dirs=[{os.path.join(ROOT, "ext", "includes")!r}, {os.path.join(ROOT, "bpf")!r}])
        setup(ext_modules=cythonize([ext], include_path=[{os.path.join(ROOT, "ext", "includes")!r}],
                                    build_dir={str(out / "c")!r},
                                    compiler_directives={{"language_level": 3}}),
              script_args=["build_ext", "--build-lib", {str(out)!r}, "--build-temp", {str(out / "tmp")!r}])
    """)
    r = subprocess.run([sys.executable, "-c", setup], cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    path = next(str(out / f) for f in os.listdir(out) if f.startswith("cimport_probe") and f.endswith(".so"))
    spec = importlib.util.spec_from_file_location("cimport_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
