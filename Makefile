# The user's verbs. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
SEEDS ?= 1000
THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: help build deps test readme-procedures soak sim bench experiment experiments lab-build analysis-build report compare ab baseline gate gate-baseline fuzz fmt clippy

help:
	@echo "make build                release binaries in target/release: replica, kv, paxos-tool, loadgen, sim"
	@echo "make test                 every test: unit, property, scenarios, simulator (1,300 seeds), planted bugs; a short soak and make ab"
	@echo "make soak SECONDS=N       replica processes under partitions, crashes and pauses, checked (default $(SOAK_SECONDS) s; REPLICAS=5, STORAGE=wal, BUG=name)"
	@echo "make sim SEEDS=N          simulate seeds 0..N-1 (default $(SEEDS)); SEED=s replays one seed with its trace"
	@echo "make bench                criterion benchmarks (core per command; storage per record)"
	@echo "make experiment NAME=x    run experiments/x.toml (release build); SET='load.clients=8 ...' overrides fields"
	@echo "make experiments          run every experiment in experiments/, one after the other"
	@echo "make report RUN=dir       analyse a run: bottleneck, where the time goes, plots (make experiment does it)"
	@echo "make ab BASE=rev NAME=x   A/B: build git revision rev beside the working tree, run x on both interleaved PAIRS times (default 2), one verdict"
	@echo "make compare NAME=x       latest run of x vs experiments/baselines/x.json (another sitting); or A=dir B=dir"
	@echo "make baseline NAME=x      save the latest run of x as experiments/baselines/x.json"
	@echo "make gate                 the regression gate (CI runs it after the tests); make gate-baseline refreshes it"
	@echo "make fuzz                 every fuzz target under libFuzzer, FUZZ_SECONDS each (default 60)"

# One build. Every verb builds one of two package sets, so each crate has
# one fingerprint per profile whichever verb ran first: DEV_BUILD (the
# test profile's binaries: system tests, the gate, analysis) and
# LAB_BUILD (release: experiments and the simulator). `cargo test
# --workspace` adds only the test targets and dev-dependencies to
# DEV_BUILD's crates (dev-dependencies add no feature to a shared crate),
# and the workspace gives tokio one feature set (Cargo.toml). Check with
# `RUSTC_BOOTSTRAP=1 cargo build ... --unit-graph -Z unstable-options`.
DEV_BUILD = $(CARGO) build -p engine -p loadgen -p analysis --bin replica --bin kv \
	--bin paxos-tool --bin loadgen --bin analysis --bin gate
LAB_BUILD = $(CARGO) build --release -p engine -p loadgen --features loadgen/profiling \
	--bin replica --bin kv --bin paxos-tool --bin loadgen --bin sim

# The system tests in tests/ start replica processes, `kv` and the
# experiment runner: build the binaries first.
test: deps
	$(DEV_BUILD)
	$(CARGO) test --workspace
	@$(MAKE) --no-print-directory readme-procedures

# README procedures that run whole programs outside `cargo test` (which
# holds the build directory's lock, so a test cannot build): a short
# soak, and an A/B of HEAD against itself, as the README gives them
# (shorter). Each asserts its one line.
readme-procedures:
	$(MAKE) --no-print-directory soak SECONDS=20 2>&1 | tee target/readme-soak.out
	grep -qE '^soak: [0-9]+ ops .*, linearizable$$' target/readme-soak.out
	$(MAKE) --no-print-directory ab BASE=HEAD NAME=smoke PAIRS=2 \
	  SET='load.warmup_s=0.3 load.duration_s=1' 2>&1 | tee target/readme-ab.out
	grep -qE '^2 pairs back to back\. ' target/readme-ab.out
	grep -q '^compare: experiments/results/smoke/ab-' target/readme-ab.out
	test -s "$$(sed -n 's/^compare: //p' target/readme-ab.out)"

# What the project needs beyond Rust: valgrind (the gate counts
# instructions with callgrind). Installed when missing.
deps:
	@command -v valgrind >/dev/null || { \
	  echo "installing valgrind (the gate's instruction counts)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq valgrind; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq valgrind; fi; }

# The soak: replica processes (the test profile's, with every contract
# assert on) behind a fault network, a KV workload, a nemesis; the history
# checked. It prints one line and exits non-zero unless linearizable. Built
# with DEV_BUILD in one invocation (see "One build": the soak's package
# built alone would give shared crates other features, and rebuild them).
SOAK_SECONDS ?= 120
soak:
	$(DEV_BUILD) -p system-tests --bin soak
	./target/debug/soak --seconds $(if $(SECONDS),$(SECONDS),$(SOAK_SECONDS)) \
	  $(if $(REPLICAS),--replicas $(REPLICAS)) $(if $(STORAGE),--storage $(STORAGE)) \
	  $(if $(SEED),--seed $(SEED)) $(if $(BUG),--plant-bug $(BUG))

# One seed prints its whole event trace; many seeds print the summary line.
sim: lab-build
ifdef SEED
	./target/release/sim --seed $(SEED) $(if $(BUG),--bug $(BUG))
else
	./target/release/sim --seeds $(SEEDS) --threads $(THREADS) $(if $(BUG),--bug $(BUG))
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
	@$(LAB_BUILD)

# The release binaries a user runs a cluster with (README: "Running a
# cluster"): the same build as the lab's.
build: lab-build

experiment:
ifndef NAME
	@echo "usage: make experiment NAME=x   where x is one of: $(EXPERIMENTS)" >&2
	@exit 2
endif
	@test -f experiments/$(NAME).toml || { echo "no experiments/$(NAME).toml; experiments: $(EXPERIMENTS)" >&2; exit 2; }
	@$(MAKE) --no-print-directory lab-build analysis-build
	./target/release/loadgen run experiments/$(NAME).toml $(foreach s,$(SET),--set $(s))
	./target/debug/analysis report "$$(./target/debug/analysis latest experiments/results $(NAME))"

experiments: lab-build analysis-build
	@for e in $(EXPERIMENTS); do ./target/release/loadgen run experiments/$$e.toml || exit $$?; \
	  ./target/debug/analysis report "$$(./target/debug/analysis latest experiments/results $$e)" || exit $$?; done

# Analysis (polars) is built once, in the dev profile that `make test`
# also builds: polars takes minutes to compile, twice would be twice that.
# A subset of DEV_BUILD with the same features (see "One build").
analysis-build:
	$(CARGO) build -p analysis --bin analysis

report: analysis-build
ifndef RUN
	@echo "usage: make report RUN=experiments/results/NAME/RUN-ID" >&2
	@exit 2
endif
	./target/debug/analysis report $(RUN)

compare: analysis-build
ifdef NAME
	@test -f experiments/baselines/$(NAME).json || { echo "no experiments/baselines/$(NAME).json: make baseline NAME=$(NAME) saves one" >&2; exit 2; }
	./target/debug/analysis compare experiments/baselines/$(NAME).json "$$(./target/debug/analysis latest experiments/results $(NAME))"
else ifdef B
	./target/debug/analysis compare $(A) $(B)
else
	@echo "usage: make compare NAME=x   (latest run of x vs its baseline)   or   make compare A=dir B=dir" >&2
	@exit 2
endif

# A/B against a git revision, in one sitting (experiments/ab.sh).
PAIRS ?= 2
ab:
ifndef BASE
	@echo "usage: make ab BASE=<git rev> NAME=<experiment> [PAIRS=2] [SET='field=value ...']" >&2
	@exit 2
endif
ifndef NAME
	@echo "usage: make ab BASE=<git rev> NAME=<experiment> [PAIRS=2] [SET='field=value ...']" >&2
	@exit 2
endif
	@$(MAKE) --no-print-directory analysis-build
	LAB_BUILD='$(LAB_BUILD)' bash experiments/ab.sh '$(BASE)' '$(NAME)' '$(PAIRS)' '$(SET)'

baseline: analysis-build
ifndef NAME
	@echo "usage: make baseline NAME=x" >&2
	@exit 2
endif
	./target/debug/analysis baseline "$$(./target/debug/analysis latest experiments/results $(NAME))" --out experiments/baselines/$(NAME).json

# The gate uses the dev binaries `make test` builds (the ratios are
# same-run ratios: the profile does not matter, but the baseline's
# instruction counts were taken with it). It builds DEV_BUILD, not a
# polars-free set: after `make test` (as in CI) that builds nothing.
gate: deps
	$(DEV_BUILD)
	./target/debug/gate check

gate-baseline: deps
	$(DEV_BUILD)
	./target/debug/gate save

# Fuzzing: engine::fuzz's targets under libFuzzer (the fuzz/ crate), each
# for FUZZ_SECONDS, coverage-guided (sancov instrumentation works on stable
# Rust; no sanitizer). New inputs go to fuzz/scratch/, crashes to
# fuzz/artifacts/; the committed seeds are fuzz/corpus/. `make test` runs
# the same targets briefly without libFuzzer (engine/tests/fuzz.rs).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = frames bodies values checkpoint wal nvm
# An explicit target keeps the instrumentation off build scripts.
FUZZ_TRIPLE ?= $(shell rustc -vV | sed -n 's/^host: //p')
FUZZ_BIN = fuzz/target/$(FUZZ_TRIPLE)/release
FUZZ_RUSTFLAGS = -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
	-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
	-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing

fuzz:
	cd fuzz && RUSTFLAGS="$(FUZZ_RUSTFLAGS)" $(CARGO) build --release --bins --target $(FUZZ_TRIPLE)
	@mkdir -p fuzz/artifacts
	@for t in $(FUZZ_TARGETS); do mkdir -p fuzz/scratch/$$t; \
	  echo "== fuzz target $$t: $(FUZZ_SECONDS) s"; \
	  if ! ./$(FUZZ_BIN)/$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 -timeout=10 \
	      -max_len=65536 -print_final_stats=1 -artifact_prefix=fuzz/artifacts/$$t- \
	      fuzz/scratch/$$t fuzz/corpus/$$t > fuzz/scratch/$$t.log 2>&1; then \
	    tail -40 fuzz/scratch/$$t.log; echo "fuzz target $$t FAILED: input in fuzz/artifacts/" >&2; exit 1; fi; \
	  grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" fuzz/scratch/$$t.log; \
	  grep -E "^Done [0-9]+ runs" fuzz/scratch/$$t.log; \
	done
