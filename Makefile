# Entry points for a fresh Debian 12 machine (root, Rust and make present).
# Every target installs Erlang/Elixir from Debian first when they are missing.
SHELL := /bin/bash
export LANG ?= C.UTF-8
export LC_ALL ?= C.UTF-8
export ERL_AFLAGS ?= +pc unicode
# One cargo target directory for cargo's own commands and `mix compile` (which
# otherwise builds under _build/<env>/native), so building the NIF reuses what
# `cargo test` compiled and MIX_ENVs share it. test/path_dep/run.sh unsets it.
export CARGO_TARGET_DIR ?= $(CURDIR)/target
# The cargo profile of the test targets (see Cargo.toml); `make build`,
# `demo` and `bench` build the shipped `release` library.
TEST_PROFILE := quick-release

.PHONY: all setup setup-brokers build demo test test-rust test-elixir compile-test test-elixir-suite test-elixir-shared test-elixir-alone test-repeat lint test-path-dep bench bench-quick bench-fixed-cost bench-brokers soak fuzz clean

all: test

# Erlang/OTP 25 and Elixir 1.14 from Debian; no hex package is ever fetched.
setup:
	@if ! command -v mix >/dev/null 2>&1 || ! command -v erl >/dev/null 2>&1; then \
	  echo "==> installing Erlang/Elixir from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq elixir erlang-dev erlang-nox >/dev/null; \
	fi
	@command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
	@cargo clippy --version >/dev/null 2>&1 || rustup component add clippy rustfmt

# Redis, PostgreSQL and RabbitMQ with their CLI clients, for the tests only:
# they run private instances (test/brokers/ctl.sh), so Debian's default
# services are installed without being started. YGG_SKIP_BROKERS=1 skips it.
setup-brokers:
	@if [ "$${YGG_SKIP_BROKERS:-}" != 1 ]; then bash test/brokers/install.sh; fi

build: setup
	mix compile

# The main job: subscribe, publish, show what arrives and throughput against the baselines.
demo: build
	mix run bench/demo.exs

# Lint and the test build of the NIF first; then the Rust tests and the
# path-dependency check (mostly compiling) run beside the shared Elixir run
# (mostly waiting on brokers and timers), and the tests that need the machine
# to themselves run once those are done: CI on a fresh 2-core machine stays
# under 20 minutes. Each job's output is printed whole when it ends.
test: setup lint compile-test
	$(MAKE) --no-print-directory -j3 --output-sync=recurse test-rust test-elixir-shared test-path-dep
	$(MAKE) --no-print-directory test-elixir-alone

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --profile $(TEST_PROFILE) -- -D warnings
	cargo clippy -p yggdrasil_nif --no-default-features --profile $(TEST_PROFILE) -- -D warnings
	cargo clippy -p yggdrasil_nif --features test-hooks --profile $(TEST_PROFILE) -- -D warnings
	mix format --check-formatted

test-rust: setup setup-brokers
	cargo test --workspace --profile $(TEST_PROFILE)

# Two runs. The second has the VM, and in `make test` the machine, to itself:
# - tag :global_counts (fuzz, soak): they compare the engine's global counts
#   with a baseline, so no other test's processes may come and go;
# - tag :whole_machine (the floods): their bound on the VM's memory holds only
#   while the subscribers get the CPU (a starved subscriber holds more
#   messages at once, and its heap grows with them).
MIX_TEST := YGGDRASIL_CARGO_PROFILE=$(TEST_PROFILE) MIX_ENV=test mix test
# The floods need brokers: ARGS that name a broker tag (`--exclude brokers`,
# `--exclude=redis`, ...) leave them out here too, where an --only would
# otherwise win over the exclusion.
BROKER_TAGS := brokers redis postgres rabbitmq
MIX_TEST_ALONE = $(MIX_TEST) --only global_counts $(if $(strip $(foreach tag,$(BROKER_TAGS),$(findstring $(tag),$(ARGS)))),,--only whole_machine)

compile-test: setup setup-brokers
	YGGDRASIL_CARGO_PROFILE=$(TEST_PROFILE) MIX_ENV=test mix compile --warnings-as-errors

test-elixir: compile-test
	$(MAKE) --no-print-directory test-elixir-suite

test-elixir-suite: test-elixir-shared
	$(MAKE) --no-print-directory test-elixir-alone

test-elixir-shared: setup setup-brokers
	$(MIX_TEST) $(ARGS)

test-elixir-alone: setup setup-brokers
	$(MIX_TEST_ALONE) $(ARGS)

# The Elixir suite (both runs) N times, each with a new random seed, stopping
# at the first failure and saying its seed: `make test-repeat N=5`. ARGS go to
# every `mix test` (e.g. ARGS="--exclude brokers" without broker servers).
N ?= 5
test-repeat: setup setup-brokers
	YGGDRASIL_CARGO_PROFILE=$(TEST_PROFILE) MIX_ENV=test mix compile --warnings-as-errors
	@for run in $$(seq 1 $(N)); do \
	  seed=$$(( (RANDOM << 15 | RANDOM) % 1000000 )); \
	  echo "==> run $$run of $(N): seed $$seed"; \
	  $(MIX_TEST) --seed $$seed $(ARGS) && \
	  $(MIX_TEST_ALONE) --seed $$seed $(ARGS) || \
	  { echo "==> run $$run of $(N) FAILED with seed $$seed"; exit 1; }; \
	done; echo "==> $(N) runs passed"

# Uses this checkout as a `path:` dependency of a throwaway project.
test-path-dep: setup
	bash test/path_dep/run.sh

bench: build
	MIX_ENV=prod mix run bench/run.exs

bench-quick: build
	MIX_ENV=prod mix run bench/run.exs --quick

# One publish's fixed cost beside its floors: needs the floor NIFs, which only
# the test and bench builds have (MIX_ENV=bench builds the release profile).
bench-fixed-cost: setup
	MIX_ENV=bench mix run bench/fixed_cost.exs

# The brokers scenario alone, against private Redis/PostgreSQL/RabbitMQ servers
# (a broker whose server is not installed is skipped with a note).
bench-brokers: build
	MIX_ENV=prod mix run bench/run.exs --only brokers

# Full-size churn soak, 100k-subscriber crowd and measured limits (a few
# minutes, ~2 GB of RAM); `make test` runs them at reduced size.
soak: setup
	YGGDRASIL_CARGO_PROFILE=$(TEST_PROFILE) MIX_ENV=test YGG_SOAK=full mix test --only global_counts test/soak_test.exs

# Many more random calls into every NIF and public function than `make test`
# runs; YGG_FUZZ_SEED=<n> reproduces a run.
fuzz: setup
	YGGDRASIL_CARGO_PROFILE=$(TEST_PROFILE) MIX_ENV=test YGG_FUZZ=full mix test --only global_counts test/fuzz_test.exs

clean:
	rm -rf _build target priv/native/libyggdrasil_nif.*
