#!/bin/sh
# Regenerate vmlinux.h from the running kernel's BTF (Debian: apt-get install bpftool).
# CO-RE relocates field offsets at load time, so one header serves all kernels
# with BTF; regenerate only to use types or members it lacks.
set -eu
cd "$(dirname "$0")"
bpftool btf dump file "${1:-/sys/kernel/btf/vmlinux}" format c > x86/vmlinux.h
echo "wrote $(pwd)/x86/vmlinux.h"
