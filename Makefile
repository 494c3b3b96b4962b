# commerce-stack: the two commands of the README, and the pieces behind them.
#
#   make up     run the shop on this machine (infrastructure + services)
#   make test   start whatever infrastructure is missing, then run every test
#
# Build outputs and downloaded infrastructure live outside the clone, keyed by
# version, so a second run (or CI on the same machine) does not rebuild them.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

export CARGO_TARGET_DIR ?= $(HOME)/.cache/commerce-stack/target
# Loopback ports, credentials and paths of the local infrastructure.
INFRA_ENV := source e2e/infra.env
CARGO := cargo
CARGO_FLAGS := --locked

.PHONY: help up down status infra test lint fmt generate check-generated build

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# A debug build: it shares the artifacts `make build`/`make test` leave in
# CARGO_TARGET_DIR, while a release build would compile everything again.
up: infra ## run the shop on this machine (Ctrl-C stops it)
	$(INFRA_ENV) && $(CARGO) run $(CARGO_FLAGS) -p commerce -- local up -f manifests/examples/local.yaml

down: ## stop everything 'make up' or 'make test' started
	bash e2e/scripts/infra.sh down

status: ## show the local infrastructure
	bash e2e/scripts/infra.sh status

infra: ## start Postgres, Redis, Kafka and the Kubernetes control plane if absent
	bash e2e/scripts/infra.sh up

build: ## build every crate
	$(CARGO) build $(CARGO_FLAGS) --workspace --all-targets

fmt: ## format the code
	$(CARGO) fmt --all

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

generate: ## regenerate CRDs and other generated files from the Rust types
	$(CARGO) run $(CARGO_FLAGS) --quiet -p commerce-operator -- crd > crds/commerce-stack.yaml
	mkdir -p charts/commerce-operator/crds
	cp crds/commerce-stack.yaml charts/commerce-operator/crds/commerce-stack.yaml

check-generated: generate ## fail if generated files differ from what is committed
	@git diff --exit-code -- crds charts manifests || { echo "generated files are stale: run 'make generate' and commit" >&2; exit 1; }

test: infra lint check-generated ## start missing infrastructure, then run every test
	# The end-to-end tests start the `commerce` and `commerce-operator` binaries
	# as processes; build them first so no test races a stale binary.
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins
	$(INFRA_ENV) && $(CARGO) test $(CARGO_FLAGS) --workspace --all-targets
	$(INFRA_ENV) && $(CARGO) test $(CARGO_FLAGS) --workspace --doc
