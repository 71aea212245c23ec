# meterd: build, test, benchmark, fuzz.
#
# `make test` is the one command a newcomer types on a fresh machine, and the
# one CI runs (.ci/run): it installs what the tests need (test-deps), then
# runs go vet and every test. Nothing here needs the network beyond the Go
# module proxy (for the modules in go.mod).

GO                  ?= go
FUZZTIME            ?= 30s
STATICCHECK_VERSION ?= v0.8.2

# -mod=readonly: a build never edits go.mod or go.sum behind your back; a
# missing requirement is an error to fix with `go mod tidy`. Any GOFLAGS of
# your own environment take the place of this default.
GOFLAGS ?= -mod=readonly
export GOFLAGS

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

.PHONY: build test test-deps race bench fuzz lint clean

## build: the binaries of cmd/... into bin/
build:
	$(GO) build -trimpath -o bin/ ./cmd/...

## test: install test dependencies, then go vet and all tests
test: test-deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

## test-deps: what the tests need besides the source. Today only Go;
## the integration tests will add a ClickHouse server here.
test-deps:
	@command -v $(GO) >/dev/null || { \
	  echo "make test-deps: '$(GO)' not found; install Go $$(sed -n 's/^go //p' go.mod) or newer (https://go.dev/doc/install)" >&2; \
	  exit 1; }
	@$(GO) version

## race: all tests under the race detector
race: test-deps
	$(GO) test -count=1 -race -timeout 40m ./...

## bench: every benchmark, with allocations
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## fuzz: each Fuzz target for FUZZTIME (default 30s); corpora of failures
## land in testdata/fuzz/ and are committed
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
