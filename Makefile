# Collective: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build release demo demo-down test unit integration lint bench fuzz deny chaos prereqs clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

prereqs:
	@scripts/prereqs.sh

## demo: build in release mode, start a local cluster, store, list, read back and verify a file
demo: prereqs release
	@scripts/demo.sh

demo-down:
	@target/release/collective dev down --dir demo

## test: unit tests and the multi-process integration tests
test: prereqs
	$(CARGO) build --bins
	$(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## bench: release build, local cluster (1 coordinator, 3 nodes, R=2), figures in target/bench/results.json
bench: prereqs release
	@python3 scripts/bench.py

## deny: licenses, duplicate versions, sources and (when reachable) advisories of every dependency
deny:
	@scripts/deny.sh

## chaos: the long forms of the fault tests (gossip with 50 coordinators and 500 nodes; 1,000 operations under kill -9; 10 minutes of a slow, lossy link)
chaos:
	COLLECTIVE_SCALE_MEMBERS=50 $(CARGO) test -p collective-gossip --test scale -- --nocapture
	COLLECTIVE_CRASH_OPS=1000 $(CARGO) test --test crash -- --nocapture
	COLLECTIVE_NETEM_SECS=600 $(CARGO) test --test netfaults -- --nocapture

## fuzz: every parser of outside input under libFuzzer, FUZZ_SECONDS (default 60) per target
fuzz:
	@scripts/fuzz.sh

clean:
	$(CARGO) clean
