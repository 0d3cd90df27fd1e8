# DG Do dispatch. The two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BUILD  := build/engine
HOST   ?= 127.0.0.1
PORT   ?= 8765
DEMO   ?= 20

.PHONY: all run test test-engine test-python deps engine venv lint bench-engine clean

all: engine venv

run: engine venv
	$(BIN)/dgdo run --host $(HOST) --port $(PORT) --demo $(DEMO)

test: engine venv bench-deps
	ctest --test-dir $(BUILD) --output-on-failure -j2
	$(BIN)/ruff check sidecar tests bench
	$(BIN)/python -m pytest

test-engine: engine
	ctest --test-dir $(BUILD) --output-on-failure -j2

test-python: engine venv
	$(BIN)/python -m pytest

deps: build/.deps
build/.deps: scripts/install-deps.sh
	./scripts/install-deps.sh
	@mkdir -p build && touch $@

engine: deps
	cmake -S engine -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j2

venv: $(VENV)/.installed
$(VENV)/.installed: build/.deps pyproject.toml setup.py sidecar/ring/_build.py include/dgdo/ring.h include/dgdo/events.h include/dgdo/control.h
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff check sidecar tests bench

clean:
	rm -rf build $(VENV) sidecar/ring/_dgdo_ring*.so

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
$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

bench-latency: engine bench-deps
	$(BIN)/python bench/latency/run.py $(ARGS)

build/bench/ring_bench: bench/ring/ring_bench.cpp include/dgdo/ring.h
	@mkdir -p build/bench
	$(CXX) -std=c++20 -O2 -Wall -Wextra -I include -o $@ bench/ring/ring_bench.cpp -lrt -pthread

bench-ring: build/bench/ring_bench venv
	build/bench/ring_bench $(ARGS)
	$(BIN)/python bench/ring/py_bench.py $(ARGS)

# Protocol micro-benchmark (bench/protocol): codec µs per message JSON vs msgpack, and driver_location
# ingest per sidecar core against the real stack. ARGS=--smoke for a ~10 s check.
.PHONY: bench-protocol
bench-protocol: engine venv
	$(BIN)/python bench/protocol/bench_codec.py $(ARGS)

# Admin feed (bench/admin): 10,000 drivers sending 1 position/s over the public protocol; the messages and
# bytes per second one dashboard receives, and the sidecar's CPU with 0, 1 and 4 admins. ARGS=--smoke for ~30 s.
.PHONY: bench-admin
bench-admin: engine venv
	$(BIN)/python bench/admin/run.py $(ARGS)
