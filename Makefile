# Every target works from a fresh clone: `make install` builds .venv from constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

.PHONY: all install test test-deps lint format demo bench chart-lint image image-test image-multiarch image-multiarch-test clean lock receiver receiver-test

all: lint test

# pip -qq: errors only (a fresh install is pages of output otherwise); the progress line says what runs.
$(STAMP): pyproject.toml constraints.txt
	@echo "make install: $(VENV) with coredump-shipper and its test tools, pinned by constraints.txt (1-3 min the first time)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -qq --disable-pip-version-check --upgrade pip
	@$(BIN)/pip install -qq --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Everything the suite needs beyond the venv (Debian packages, helm, the API server build, a plain
# core_pattern): tests/setup.sh installs what is missing as root, says what to run otherwise, and
# takes well under a second when all is there. One `part` line there per need.
test-deps: $(STAMP)
	@tests/setup.sh

test: test-deps
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check coredump_shipper testkit tests bench docker tools
	$(BIN)/ruff format --check coredump_shipper testkit tests bench docker tools
	$(BIN)/ruff check e2e/tests
	$(BIN)/ruff format --check e2e/tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format coredump_shipper testkit tests bench docker tools
	$(BIN)/ruff check --fix coredump_shipper testkit tests bench docker tools
	$(BIN)/ruff format e2e/tests
	$(BIN)/ruff check --fix e2e/tests

demo: $(STAMP)
	$(PY) -m testkit.demo

# The AWS CLI v1 pins its own botocore: it gets a venv of its own (with py-spy for bench.studies.profile).
BENCH_VENV := .cache/bench-venv
$(BENCH_VENV)/.installed: bench/requirements-awscli.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements-awscli.txt
	touch $@

# The core-storm rows race the original script, which needs inotifywait (Debian: inotify-tools); the
# HTTPS rows go through haproxy (Debian: haproxy), a TLS terminator that is not the bottleneck.
bench: $(STAMP) $(BENCH_VENV)/.installed
	{ command -v inotifywait && { command -v haproxy || test -x /usr/sbin/haproxy; }; } >/dev/null || \
	  { as_root=$$([ "$$(id -u)" -eq 0 ] || echo sudo); $$as_root apt-get update -qq && \
	    $$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends inotify-tools haproxy >/dev/null; }
	$(PY) -m bench.run $(BENCH_ARGS)

# The core_pattern pipe helper: a static Go binary (standard library only), for amd64 and arm64.
# Caches stay in .cache and nothing is fetched: the build works offline and never writes to $HOME.
GO ?= go
GO_ENV := GOCACHE=$(CURDIR)/.cache/go-build GOPATH=$(CURDIR)/.cache/gopath GOPROXY=off GOTOOLCHAIN=local GOFLAGS= CGO_ENABLED=0
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' coredump_shipper/__init__.py)
RECEIVER_SRC := receiver/go.mod $(filter-out %_test.go,$(wildcard receiver/*.go)) coredump_shipper/__init__.py
RECEIVER_FLAGS := -trimpath -ldflags "-s -w -X main.version=$(VERSION)"

build/coredump-receive: $(RECEIVER_SRC)
	cd receiver && $(GO_ENV) GOARCH=amd64 $(GO) build $(RECEIVER_FLAGS) -o ../$@ .

build/coredump-receive-arm64: $(RECEIVER_SRC)
	cd receiver && $(GO_ENV) GOARCH=arm64 $(GO) build $(RECEIVER_FLAGS) -o ../$@ .

receiver: build/coredump-receive build/coredump-receive-arm64

# The arm64 build's tests run under user-mode emulation (Debian's qemu-user-static): arm64 nodes
# get a receiver whose own tests have run, not only one that was compiled.
QEMU_ARM64 ?= qemu-aarch64-static
receiver-test:
	cd receiver && $(GO_ENV) $(GO) vet . && $(GO_ENV) $(GO) test -count=1 .
	cd receiver && $(GO_ENV) GOARCH=arm64 $(GO) vet . && \
	  $(GO_ENV) GOARCH=arm64 $(GO) test -count=1 -exec $(QEMU_ARM64) . | sed 's/^ok /ok (arm64, emulated) /'

chart-lint: $(STAMP)
	charts/tools/lint.sh

image: $(STAMP)
	docker/ci-image.sh build

image-test: $(STAMP)
	docker/ci-image.sh test

# linux/amd64 + linux/arm64 in one manifest list (localhost/coredump-shipper:ci-multiarch), the arm64
# half under qemu-user-static through binfmt_misc (root); -test then runs the arm64 entry through
# testkit/imagesmoke.py --arch arm64. Times and caches: docs/platforms.md.
image-multiarch: $(STAMP)
	docker/ci-image.sh multiarch

image-multiarch-test: $(STAMP)
	docker/ci-image.sh multiarch-test

# The chart and the image on a real single-node Kubernetes, scenarios in e2e/tests (e2e/run.sh).
# Not part of `make test`: it needs root and ~1 GiB of memory, and the first run builds the cluster
# binaries (e2e/cluster/build.sh, ~12-16 min, cached in /var/cache/coredump-shipper for later runs).
.PHONY: e2e
e2e: $(STAMP)
	e2e/run.sh

lock:
	rm -rf /tmp/cds-lock && $(PYTHON) -m venv /tmp/cds-lock
	/tmp/cds-lock/bin/pip install --quiet -e '.[dev]'
	( echo '# Exact versions for every install (make install, .ci/run, the image). Regenerate with: make lock'; \
	  /tmp/cds-lock/bin/pip freeze --exclude-editable | grep -v '^coredump' ) > constraints.txt

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
