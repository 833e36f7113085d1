# Portcullis — the two commands are `make demo` and `make test`; both install missing Debian
# packages first (scripts/install-deps.sh) and need only a Rust toolchain already installed.
# Everything builds into the one cargo target dir (./target, or $CARGO_TARGET_DIR).

CARGO ?= cargo
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

DEPS := scripts/install-deps.sh

.PHONY: help deps saml-idp-env build demo test fmt clippy check bench clean

help:
	@echo 'make demo    install missing packages, then run the demo (portcullis demo)'
	@echo 'make test    install missing packages and the SAML IdP venv, then fmt check, clippy, all tests, policy check'
	@echo 'make build   cargo build (debug)'
	@echo 'make bench   install nginx + wrk + llvm, release and profile-guided builds, gateway vs backend vs nginx (bench/run.sh)'
	@echo 'make deps | saml-idp-env | fmt | clippy | check | clean'

deps:
	CARGO='$(CARGO)' bash $(DEPS)

# The Python venv of the test SAML IdP (tests/saml/idp.py: pinned pysaml2, lxml, freezegun);
# a no-op once made. Needs python3 with venv, hence deps first.
saml-idp-env: deps
	bash scripts/saml-idp-env.sh

build:
	$(CARGO) build

demo: deps
	$(CARGO) run -- demo

# Cheapest first: formatting, then lints, then the (long) build and run of every test, then
# validation of every shipped policy through the CLI (`check` below).
test: saml-idp-env
	CARGO='$(CARGO)' bash $(DEPS) --lint
	@# No test runs the bench and build scripts (make bench does); their syntax is checked here,
	@# and the bench's statistics (medians, verdicts, the ratio's interval) on fixed inputs.
	for f in scripts/*.sh bench/run.sh; do bash -n "$$f"; done
	bash bench/run.sh --self-test
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --no-fail-fast
	$(MAKE) --no-print-directory check

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

# demo/portcullis.toml names the dev certificates, which a fresh clone does not have
# (certs-dev/ is git-ignored): make them first, exactly as `portcullis demo` would.
DEV_CERTS := certs-dev/ca.crt certs-dev/acme.localhost.crt certs-dev/acme.localhost.key \
	certs-dev/globex.localhost.crt certs-dev/globex.localhost.key

check:
	@for f in $(DEV_CERTS); do \
		if [ ! -f "$$f" ]; then $(CARGO) run -q -- dev-certs --out certs-dev; break; fi; \
	done
	$(CARGO) run -q -- check --config demo/portcullis.toml

# The gateway under test is the profile-guided build (scripts/pgo-build.sh, trained on the
# benchmark's own traffic); the echo backend and the other commands are the ordinary release build.
bench:
	CARGO='$(CARGO)' bash $(DEPS) --bench
	$(CARGO) build --release
	gw=$$(CARGO='$(CARGO)' bash scripts/pgo-build.sh) && PORTCULLIS_GATEWAY_BIN="$$gw" bash bench/run.sh

clean:
	$(CARGO) clean
