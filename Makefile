# meterd: build, test, benchmark, fuzz.
#
# `make test` is the one command a newcomer types on a fresh machine, and the
# one CI runs (.ci/run): it installs what the tests need (test-deps), then
# runs go vet and every test. Nothing here needs the network beyond the Go
# module proxy (for the modules in go.mod), Debian's archive (apt-get) and
# npm's registry (chDB, for the current-engine test), each only for what is
# missing.

GO                  ?= go
FUZZTIME            ?= 30s
FUZZTIME_TEST       ?= 5000x
STATICCHECK_VERSION ?= v0.8.2

# -mod=readonly: a build never edits go.mod or go.sum behind your back; a
# missing requirement is an error to fix with `go mod tidy`. Any GOFLAGS of
# your own environment take the place of this default.
GOFLAGS ?= -mod=readonly
export GOFLAGS

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

.PHONY: build test test-deps test-packages race sim bench bench-quick bench-go fuzz lint clean image

## build: the binaries of cmd/... into bin/
build:
	$(GO) build -trimpath -o bin/ ./cmd/...

## image: the container image meterd:$(IMAGE_TAG) (k8s/Containerfile) with
## buildah, or podman when buildah is missing: a static build of cmd/meterd
## and the host's CA bundle into bin/image/, then an image FROM scratch
## (no network, no base image). Building works without a container runtime;
## running one needs a host that has it.
IMAGE_TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
image:
	mkdir -p bin/image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(IMAGE_TAG)" -o bin/image/meterd ./cmd/meterd
	cp $(CA_BUNDLE) bin/image/ca-certificates.crt
	@if command -v buildah >/dev/null; then \
	  buildah bud --isolation chroot -f k8s/Containerfile -t meterd:$(IMAGE_TAG) bin/image; \
	elif command -v podman >/dev/null; then \
	  podman build -f k8s/Containerfile -t meterd:$(IMAGE_TAG) bin/image; \
	else \
	  echo "make image: neither buildah nor podman is installed (apt-get install buildah)" >&2; exit 1; \
	fi

## test: install test dependencies, then lint (gofmt, vet, staticcheck), all tests, then every Fuzz
## target for FUZZTIME_TEST beyond its seed corpus (default 5000 inputs each;
## FUZZTIME_TEST=0 skips). A count, not a duration: Go 1.26's fuzzing
## coordinator can fail a target that found nothing with "context deadline
## exceeded" when a wall-clock -fuzztime ends on a loaded machine
## (golang/go#75804, fixed in Go 1.27); a count has no deadline to race.
test: test-deps
	$(MAKE) --no-print-directory lint
	METERD_CHDB_REQUIRED=1 METERD_CHDB_MODULES=$(CURDIR)/$(CHDB_DIR)/node_modules \
	  METERD_LAGO_REQUIRED=1 METERD_LAGO_MODULES=$(CURDIR)/$(LAGO_DIR)/node_modules \
	  $(GO) test -count=1 -timeout 20m ./...
	@if [ "$(FUZZTIME_TEST)" != 0 ]; then $(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME_TEST); fi

## sim: the crash simulation of balance/ (TestSimulatedCrashes) for SIM_RUNS
## seeds of SIM_EVENTS events each, 10^8 events by default (about 100
## minutes on 2 cores; make test runs one seed). Each run starts from a fresh
## in-memory file system, so memory stays that of one run. A failure prints
## its seed; METERD_SIM_SEED=<seed> replays it.
SIM_RUNS   ?= 100
SIM_EVENTS ?= 1000000
sim:
	$(GO) test -c -o bin/balance.test ./balance
	for i in $$(seq $(SIM_RUNS)); do \
	  METERD_SIM_EVENTS=$(SIM_EVENTS) bin/balance.test -test.run '^TestSimulatedCrashes$$' -test.count 1 -test.v 2>&1 | grep -E '^(---|ok|FAIL|panic)|sim_test' ; \
	done

## test-deps: what the tests need besides the source: Go; ClickHouse's
## clickhouse-server and clickhouse-client (Debian's packages, 18.16); and, for
## the baselines of bench/, redis-server and postgresql. The tests start
## private servers of each as plain processes, never the system services.
## Missing packages are installed with apt-get, as root or through sudo.
## With METERD_TEST_CLICKHOUSE=host:port (a server of your own), only
## clickhouse-client is needed. Quiet when everything is present. (A user's
## PATH often lacks /usr/sbin, where Debian puts clickhouse-server; Debian
## keeps PostgreSQL's server binaries under /usr/lib/postgresql/VERSION/bin.)
## And chDB (npm's chdb, a current ClickHouse as a library, driven by node)
## for the current-engine test of sink/, installed into CHDB_DIR with npm
## (node and npm from apt-get when missing). CHDB_DIR= skips it. And Lago's
## JavaScript client (npm's lago-javascript-client: its Go client is not on
## the module proxy) for the Lago door's test, into LAGO_DIR.
TEST_PACKAGES ?= clickhouse-server clickhouse-client redis-server postgresql
CHDB_DIR      ?= .cache/chdb
CHDB_VERSION  ?= 3.4.0
LAGO_DIR      ?= .cache/lago
LAGO_VERSION  ?= 1.53.0
test-deps: test-packages
	@if [ -n "$(CHDB_DIR)" ] && [ ! -e "$(CHDB_DIR)/node_modules/chdb/package.json" ]; then \
	  echo "make test-deps: installing chdb@$(CHDB_VERSION) into $(CHDB_DIR) (npm)"; \
	  mkdir -p "$(CHDB_DIR)"; \
	  npm install --prefix "$(CHDB_DIR)" --no-save --no-audit --no-fund --loglevel=error chdb@$(CHDB_VERSION) </dev/null; \
	fi
	@if [ -n "$(LAGO_DIR)" ] && [ ! -e "$(LAGO_DIR)/node_modules/lago-javascript-client/package.json" ]; then \
	  echo "make test-deps: installing lago-javascript-client@$(LAGO_VERSION) into $(LAGO_DIR) (npm)"; \
	  mkdir -p "$(LAGO_DIR)"; \
	  npm install --prefix "$(LAGO_DIR)" --no-save --no-audit --no-fund --loglevel=error lago-javascript-client@$(LAGO_VERSION) </dev/null; \
	fi

test-packages:
	@command -v $(GO) >/dev/null || { \
	  echo "make test-deps: '$(GO)' not found; install Go $$(sed -n 's/^go //p' go.mod) or newer (https://go.dev/doc/install)" >&2; \
	  exit 1; }
	@has() { case "$$1" in \
	  postgresql) compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ;; \
	  nodejs) command -v node >/dev/null ;; \
	  *) PATH="$$PATH:/usr/sbin:/usr/bin" command -v "$$1" >/dev/null ;; esac; }; \
	missing=; \
	pkgs="$(TEST_PACKAGES)"; \
	if [ -n "$(CHDB_DIR)$(LAGO_DIR)" ]; then pkgs="$$pkgs nodejs npm"; fi; \
	for pkg in $$pkgs; do \
	  if [ "$$pkg" = clickhouse-server ] && [ -n "$${METERD_TEST_CLICKHOUSE:-}" ]; then continue; fi; \
	  has "$$pkg" || missing="$$missing $$pkg"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	echo "make test-deps: installing$$missing (apt-get)"; \
	if ! command -v apt-get >/dev/null; then \
	  echo "make test-deps: no apt-get here: install$$missing yourself, or set METERD_TEST_CLICKHOUSE=host:port to a ClickHouse server" >&2; \
	  exit 1; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=; \
	elif command -v sudo >/dev/null; then sudo=sudo; \
	else echo "make test-deps: installing$$missing needs root: run 'apt-get install -y$$missing' as root (no sudo here)" >&2; exit 1; fi; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing </dev/null; \
	for pkg in $$missing; do \
	  has "$$pkg" || { echo "make test-deps: $$pkg still missing after apt-get install" >&2; exit 1; }; \
	done

## race: all tests under the race detector
race: test-deps
	$(GO) test -count=1 -race -timeout 40m ./...

## bench: the standard suite (cmd/meterbench): meterd, the no-op floor, and
## the Redis and PostgreSQL wallets, one at a time, in modes batch, single,
## hot and open, 20 s each (about 15 minutes). Writes bench/results/<date>/
## (JSON, table, plots), puts the table at the top of BENCHMARKS.md and the
## plot in bench/results/standard.{png,svg}. Installs redis-server and
## postgresql with apt-get when missing. MB_FLAGS adds meterbench flags.
MB_FLAGS ?=
bench: build
	@$(MAKE) --no-print-directory test-packages TEST_PACKAGES="redis-server postgresql" CHDB_DIR= LAGO_DIR=
	bin/meterbench --publish $(MB_FLAGS)

## bench-quick: the same suite in about two minutes (3 s per run, 1,000
## customers), into bench/results/<date>-quick/; BENCHMARKS.md is left as it
## is (MB_FLAGS=--publish to update it anyway)
bench-quick: build
	@$(MAKE) --no-print-directory test-packages TEST_PACKAGES="redis-server postgresql" CHDB_DIR= LAGO_DIR=
	bin/meterbench --suite quick $(MB_FLAGS)

## bench-go: every Go benchmark (go test -bench), with allocations
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## fuzz: each Fuzz target for FUZZTIME (default 30s); corpora of failures
## land in testdata/fuzz/ and are committed. A failure that says only
## "context deadline exceeded" and writes no input is golang/go#75804 (see
## test), not a finding.
fuzz:
	@targets=$$($(GO) test -list '^Fuzz' ./... | awk \
	  '/^Fuzz/ { names[n++] = $$1; next } /^ok/ { for (i = 0; i < n; i++) print $$2 " " names[i]; n = 0 }'); \
	if [ -z "$$targets" ]; then echo "make fuzz: no Fuzz targets"; exit 0; fi; \
	while read -r pkg name; do \
	  echo "== $$pkg $$name ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg"; \
	done <<< "$$targets"

## lint: formatting, vet, staticcheck (a pinned version, fetched as a Go module)
lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:" >&2; echo "$$unformatted" >&2; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

## clean: build outputs (never ./data)
clean:
	rm -rf bin/
	find . -name '*.test' -type f -delete
	rm -f coverage.out cpu.out mem.out
