# DG Do dispatch. The two commands: `make run` and `make test`.
# The interpreter the venvs are made from: the distribution's /usr/bin/python3 when it is 3.11 or newer
# (Debian and Ubuntu build it with PGO and LTO: the sidecar's per-message Python takes ~16-30 % less CPU
# than on a plain source build, README "Which Python"), else the first python3 on PATH.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
            && echo /usr/bin/python3 || echo python3)
endif
VENV   := .venv
BIN    := $(VENV)/bin
BUILD  := build/engine
HOST   ?= 127.0.0.1
PORT   ?= 8765
DEMO   ?= 20
# wss:// instead of ws://: `make dev-cert run TLS_CERT=build/dev-tls/cert.pem TLS_KEY=build/dev-tls/key.pem`
TLS_CERT ?=
TLS_KEY  ?=

PREFIX ?= /opt/dgdo
# Where the installed units look for the install (`make install PREFIX=/opt/dgdo-0.2.0` next to a
# /opt/dgdo symlink keeps them pointing at the symlink: README "Upgrade and rollback").
UNIT_PREFIX ?= /opt/dgdo
# Every pip install is pinned by constraints.txt (make constraints regenerates it).
PIP    := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: all run test test-engine test-python deps engine venv dev-venv lint bench-engine clean install constraints

# The production build: the engine and a venv with the runtime dependencies only.
all: engine venv

# CONFIG=path/to/dgdo.toml: every setting from that file instead (docs/dgdo.toml lists them), HOST,
# PORT and DEMO included.
CONFIG ?=
run: engine venv
	$(BIN)/dgdo run $(if $(CONFIG),--config $(CONFIG),--host $(HOST) --port $(PORT) --demo $(DEMO)) $(if $(TLS_CERT),--tls-cert $(TLS_CERT) --tls-key $(TLS_KEY))

# A self-signed certificate for localhost, 127.0.0.1 and ::1 (development only: README "TLS").
.PHONY: dev-cert
dev-cert: venv
	$(BIN)/python -c "from sidecar.shell.tls import self_signed; print(*self_signed('build/dev-tls'))"

# Tests need the dev extra (pytest, ruff, ...): installed here, never by `make all`/`make venv`.
test: engine dev-venv bench-deps
	ctest --test-dir $(BUILD) --output-on-failure -j2
	$(BIN)/ruff check sidecar dgdo_apps tests bench
	$(BIN)/python -m pytest

test-engine: engine
	ctest --test-dir $(BUILD) --output-on-failure -j2

test-python: engine dev-venv
	$(BIN)/python -m pytest

deps: build/.deps
build/.deps: scripts/install-deps.sh
	PYTHON=$(PYTHON) ./scripts/install-deps.sh
	@mkdir -p build && touch $@
build/.deps-build: scripts/install-deps.sh
	PYTHON=$(PYTHON) ./scripts/install-deps.sh --build
	@mkdir -p build && touch $@

engine: deps
	cmake -S engine -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j2

venv: $(VENV)/.installed
$(VENV)/.installed: build/.deps pyproject.toml setup.py constraints.txt sidecar/engine/ring/_build.py include/dgdo/ring.h include/dgdo/events.h include/dgdo/control.h
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

dev-venv: $(VENV)/.dev-installed
$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

lint: dev-venv
	$(BIN)/ruff check sidecar dgdo_apps tests bench

clean:
	rm -rf build dist $(VENV) sidecar/engine/ring/_dgdo_ring*.so

# A production install into PREFIX (README "Bare-metal install"): PREFIX is a venv holding the
# runtime dependencies only (pinned) and dgdo built as a wheel, not an editable checkout; bin/
# holds dgdo and dgdo-engine side by side; share/dgdo the systemd units, the sysusers file and the
# reference config file (docs/dgdo.toml). Built apart from `make engine`, without the engine's
# tests, so that the host needs the build's packages only (install-deps.sh --build): no GoogleTest,
# browser, nginx or promtool. A PREFIX that is a symlink is the live install the units run
# (README "Upgrade and rollback"): refused, not rewritten under the running processes.
INSTALL_BUILD := build/engine-install
install: build/.deps-build
	@if [ -L "$(PREFIX)" ]; then echo "make install: $(PREFIX) is a symlink, the install the units run;" \
	  "install the new version beside it (PREFIX=$(PREFIX)-VERSION) and switch the link" >&2; exit 1; fi
	cmake -S engine -B $(INSTALL_BUILD) -DCMAKE_BUILD_TYPE=Release -DDGDO_BUILD_TESTS=OFF
	cmake --build $(INSTALL_BUILD) -j2
	test -x $(PREFIX)/bin/python || $(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/python -m pip install -q -c constraints.txt --upgrade pip
	rm -rf build/lib.* build/temp.* build/bdist.*  # setuptools' in-tree build: no stale module gets in
	$(PREFIX)/bin/python -m pip install -q -c constraints.txt .
	cmake --install $(INSTALL_BUILD) --prefix $(PREFIX)
	install -d $(PREFIX)/share/dgdo/systemd
	for f in systemd/*; do sed 's|/opt/dgdo|$(UNIT_PREFIX)|g' $$f > $(PREFIX)/share/dgdo/systemd/$$(basename $$f); done
	install -m 0644 docs/dgdo.toml $(PREFIX)/share/dgdo/dgdo.toml  # the reference: every setting, its default
	$(PREFIX)/bin/dgdo --version
	$(PREFIX)/bin/dgdo-engine --version

# Pins what `make venv`, `make test` and `make install` install: the versions in .venv now.
constraints: dev-venv bench-deps
	{ sed -n '/^#/p' constraints.txt; $(BIN)/python -m pip freeze --all --exclude-editable | grep -v -E '^(setuptools|wheel)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# Engine benchmarks (bench/engine): hot paths at 100k drivers; greedy vs batched matching.
.PHONY: bench-sim
bench-engine: engine
	$(BUILD)/dgdo-engine-bench
	$(BUILD)/dgdo-journal-bench

bench-sim: engine
	$(BUILD)/dgdo-matching-sim

# ---- benchmarks (bench/): see README "Benchmarks". ARGS=--quick | --smoke for shorter runs.
ARGS ?=
.PHONY: bench-latency bench-ring bench-deps
bench-deps: $(VENV)/.bench-installed
$(VENV)/.bench-installed: $(VENV)/.dev-installed pyproject.toml
	$(PIP) -e '.[dev,bench]'
	touch $@

# run.py: engine commit -> app per feed; passenger_path.py: a driver's position -> its passenger,
# through the whole stack, beside a bare picows relay and a FastAPI relay.
bench-latency: engine bench-deps
	$(BIN)/python bench/latency/run.py $(ARGS)
	$(BIN)/python bench/latency/passenger_path.py $(ARGS)

build/bench/ring_bench: bench/ring/ring_bench.cpp include/dgdo/ring.h
	@mkdir -p build/bench
	$(CXX) -std=c++20 -O2 -Wall -Wextra -I include -o $@ bench/ring/ring_bench.cpp -lrt -pthread

bench-ring: build/bench/ring_bench dev-venv
	build/bench/ring_bench $(ARGS)
	$(BIN)/python bench/ring/py_bench.py $(ARGS)

# Protocol micro-benchmark (bench/protocol): codec µs per message JSON vs msgpack, and driver_location
# ingest per sidecar core against the real stack. ARGS=--smoke for a ~10 s check. The ingest path's
# Python alone, without sockets: bench/protocol/ingest_cost.py [--instructions] [--root DIR].
.PHONY: bench-protocol
bench-protocol: engine dev-venv
	$(BIN)/python bench/protocol/bench_codec.py $(ARGS)

# Push throughput (bench/push): messages the sidecar writes per CPU-second for N = 100, 1000, 5000
# passengers fed through the rings, beside a bare picows send loop. ARGS=--quick | --smoke.
.PHONY: bench-push bench-conns
bench-push: engine bench-deps
	$(BIN)/python bench/push/bench_push.py $(ARGS)

# Memory per idle connection (bench/conns): sidecar RSS with 10,000 idle connections, per connection,
# beside a bare picows server. ARGS=--smoke | --n N.
bench-conns: engine venv
	$(BIN)/python bench/conns/bench_conns.py $(ARGS)

# Admin feed (bench/admin): 10,000 drivers sending 1 position/s over the public protocol; the messages and
# bytes per second one dashboard receives, and the sidecar's CPU with 0, 1 and 4 admins. ARGS=--smoke for ~30 s.
.PHONY: bench-admin
bench-admin: engine dev-venv
	$(BIN)/python bench/admin/run.py $(ARGS)

# What TLS in the sidecar costs (bench/tls): connect → welcome time, sidecar CPU and memory per connection,
# push messages per sidecar CPU-second, plain ws:// beside wss:// (ECDSA and RSA). ARGS=--quick | --smoke.
.PHONY: bench-tls
bench-tls: engine bench-deps
	$(BIN)/python bench/tls/bench_tls.py $(ARGS)
