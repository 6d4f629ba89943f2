# The user's verbs. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
SEEDS ?= 1000
THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: help test sim bench experiment experiments lab-build compare gate fuzz fmt clippy

help:
	@echo "make test                 every test: unit, property, scenarios, simulator (500+ seeds), planted bugs"
	@echo "make sim SEEDS=N          simulate seeds 0..N-1 (default $(SEEDS)); SEED=s replays one seed with its trace"
	@echo "make bench                criterion benchmarks (core per command; storage per record)"
	@echo "make experiment NAME=x    run experiments/x.toml (release build); SET='load.clients=8 ...' overrides fields"
	@echo "make experiments          run every experiment in experiments/, one after the other"

# The system tests in tests/ start replica processes and the experiment
# runner: build the binaries first.
test:
	$(CARGO) build -p engine -p loadgen --bin replica --bin loadgen
	$(CARGO) test --workspace

# One seed prints its whole event trace; many seeds print the summary line.
sim:
ifdef SEED
	$(CARGO) run --release --quiet --bin sim -- --seed $(SEED) $(if $(BUG),--bug $(BUG))
else
	$(CARGO) run --release --quiet --bin sim -- --seeds $(SEEDS) --threads $(THREADS) $(if $(BUG),--bug $(BUG))
endif

bench:
	$(CARGO) bench -p engine

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The lab. Experiments run release binaries, with pprof for `[profile]`.
EXPERIMENTS = $(sort $(basename $(notdir $(wildcard experiments/*.toml))))

lab-build:
	$(CARGO) build --release -p engine -p loadgen --bin replica --bin loadgen --features loadgen/profiling

experiment:
ifndef NAME
	@echo "usage: make experiment NAME=x   where x is one of: $(EXPERIMENTS)" >&2
	@exit 2
endif
	@test -f experiments/$(NAME).toml || { echo "no experiments/$(NAME).toml; experiments: $(EXPERIMENTS)" >&2; exit 2; }
	@$(MAKE) --no-print-directory lab-build
	./target/release/loadgen run experiments/$(NAME).toml $(foreach s,$(SET),--set $(s))

experiments: lab-build
	@for e in $(EXPERIMENTS); do ./target/release/loadgen run experiments/$$e.toml || exit $$?; done

# Analysis, comparison, the gate and fuzzing arrive with their own issues:
# say so plainly instead of pretending.
compare gate fuzz:
	@echo "make $@: not available yet - analysis, comparison and the gate (lab part 2) and fuzzing arrive with their own issues." >&2
	@echo "Available now: make test, make sim, make bench, make experiment NAME=x." >&2
	@exit 2
