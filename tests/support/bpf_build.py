"""Test-only BPF programs (tests/kernel/*.bpf.c), compiled the way setup.py
compiles the product's (CO-RE, the repository's bpf/ headers) so that a
test program shares the product's headers, not a copy of them."""
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BPF_DIR = os.path.join(REPO, "bpf")
KERNEL_TESTS = os.path.join(REPO, "tests", "kernel")


def compile_test_bpf(name, out_dir):
    """tests/kernel/<name>.bpf.c compiled into out_dir; returns the object's path."""
    obj = os.path.join(str(out_dir), f"{name}.bpf.o")
    subprocess.check_call(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror",
                           "-I", BPF_DIR, "-c", os.path.join(KERNEL_TESTS, f"{name}.bpf.c"), "-o", obj])
    return obj
