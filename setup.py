"""Build: Cython extensions from ext/ and CO-RE BPF objects from bpf/.

Every ``bpf/*.bpf.c`` is compiled with clang (``-target bpf``) against the
committed ``bpf/vmlinux/x86/vmlinux.h`` and shipped inside the package as
``dkebpf/bpf/<name>.bpf.o``. ``DKEBPF_EXT=a,b`` limits which extensions are
built (handy while working on one of them).
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
DEBIAN_HINT = "install them with: apt-get install clang llvm libbpf-dev libelf-dev pkg-config"


def fail(msg):
    sys.stderr.write(f"dkebpf build error: {msg}\n")
    raise SystemExit(1)


def libbpf_flags():
    """Compile and link flags for libbpf, from pkg-config when present."""
    if not os.path.exists("/usr/include/bpf/libbpf.h"):
        fail(f"libbpf headers not found (/usr/include/bpf/libbpf.h); {DEBIAN_HINT}")
    try:
        libs = subprocess.check_output(["pkg-config", "--libs", "libbpf"], text=True).split()
    except (OSError, subprocess.CalledProcessError):
        libs = ["-lbpf", "-lelf", "-lz"]
    return [f[2:] for f in libs if f.startswith("-l")]


def openssl_libs():
    """The bench's HTTPS load links OpenSSL 3."""
    if not os.path.exists("/usr/include/openssl/ssl.h"):
        fail("OpenSSL headers not found (/usr/include/openssl/ssl.h); install them with: "
             "apt-get install libssl-dev")
    return ["ssl", "crypto"]


def compile_bpf(out_dir):
    clang = shutil.which(os.environ.get("CLANG", "clang"))
    if not clang:
        fail(f"clang not found, needed to compile the BPF programs; {DEBIAN_HINT}")
    if not os.path.exists("/usr/include/bpf/bpf_helpers.h"):
        fail(f"libbpf BPF headers not found (/usr/include/bpf/bpf_helpers.h); {DEBIAN_HINT}")
    os.makedirs(out_dir, exist_ok=True)
    bpf_dir = os.path.join(HERE, "bpf")
    for src in sorted(glob.glob(os.path.join(bpf_dir, "*.bpf.c"))):
        obj = os.path.join(out_dir, os.path.basename(src)[:-2] + ".o")
        deps = [src] + glob.glob(os.path.join(bpf_dir, "include", "*.h"))
        if os.path.exists(obj) and all(os.path.getmtime(obj) >= os.path.getmtime(d) for d in deps):
            continue
        cmd = [clang, "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall",
               "-Werror", "-I", bpf_dir, "-c", src, "-o", obj]
        print(" ".join(cmd))
        if subprocess.call(cmd) != 0:
            fail(f"clang failed on {os.path.relpath(src, HERE)}")
        # keep BTF (needed by CO-RE) but drop DWARF: 10x smaller objects
        strip = shutil.which("llvm-strip")
        if strip:
            subprocess.call([strip, "-g", obj])


class BuildPyWithBpf(build_py):
    def run(self):
        super().run()
        compile_bpf(os.path.join(self.build_lib, "dkebpf", "bpf"))
        if self.editable_mode:
            compile_bpf(os.path.join(HERE, "dkebpf", "bpf"))


def extensions():
    import numpy
    from Cython.Build import cythonize

    wanted = {w for w in os.environ.get("DKEBPF_EXT", "").split(",") if w}
    include = [os.path.join(HERE, "ext", "includes"), os.path.join(HERE, "bpf"), numpy.get_include()]
    exts = []
    for pyx in sorted(glob.glob(os.path.join("ext", "*.pyx"))):
        name = os.path.basename(pyx)[:-4]
        if wanted and name not in wanted:
            continue
        libs = libbpf_flags() if name == "libbpf" else openssl_libs() if name == "loadgen" else []
        exts.append(Extension(f"dkebpf._{name}", [pyx], include_dirs=include, libraries=libs,
                              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                              extra_compile_args=["-O2"]))
    return cythonize(exts, include_path=[os.path.join(HERE, "ext", "includes")],
                     compiler_directives={"language_level": 3, "boundscheck": False,
                                          "wraparound": False, "cdivision": True})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "bpf":
        compile_bpf(os.path.join(HERE, "dkebpf", "bpf"))
    else:
        setup(ext_modules=extensions(), cmdclass={"build_py": BuildPyWithBpf})
