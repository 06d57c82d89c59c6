# podnic — build, test and demo. Run `make setup` once on a fresh machine
# (as root); `make test` runs it for you.

GO       ?= go
CLANG    ?= clang-19
BIN      := bin
GOBIN    := $(shell $(GO) env GOPATH)/bin
PKGS     := ./...
CSOURCES := $(wildcard bpf/*.c bpf/lib/*.h)

.PHONY: deploy-manifests all setup generate check-generate build test test-unit e2e lint format bench demo demo-down demo-lite demo-lite-down bench-wrk clean

all: build

setup:
	./scripts/setup.sh

# Regenerates the BPF object and its Go bindings with the pinned clang-19.
generate:
	$(GO) generate ./bpf/

# Fails when the committed generated files differ from a fresh generation.
check-generate: generate
	@git diff --exit-code --stat -- bpf/ || { echo "generated files are stale: run 'make generate' and commit" >&2; exit 1; }

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ $$(ls -d ./cni/cmd/*/ ./nodeagent/cmd/*/ 2>/dev/null)

# deploy/podnic.yaml and deploy/podnic-agent-rbac.yaml: the chart
# deploy/helm/podnic's defaults rendered (test/deploy checks they are).
deploy-manifests:
	scripts/deploy-manifests.sh

# The test command (README, CI): setup, generated files, lint, all tests.
test: setup check-generate lint
	$(GO) test -count=1 -p 1 -timeout 40m $(PKGS)

test-unit:
	$(GO) test -count=1 -short $(PKGS)

# The end-to-end scenarios on the node in a box (root; part of `make test`).
e2e: setup
	$(GO) test -count=1 -timeout 20m -v -run 'TestScenarios|TestPodsOwnENIsAndReachAClusterIP|TestAgentAsDaemonSet' ./test/nodebox/

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting" >&2; exit 1; }
	$(GO) vet $(PKGS)
	$(GOBIN)/golangci-lint run $(PKGS)
	clang-format-19 --dry-run -Werror $(CSOURCES)

format:
	gofmt -w $$(git ls-files '*.go')
	clang-format-19 -i $(CSOURCES)

bench:
	$(GO) test -run '^$$' -bench . -benchtime 200000x ./bpf/

# The wrk comparison against kube-proxy (docs/bench.md); BENCH_WRK_FLAGS=-quick for ~2 min.
bench-wrk: setup
	./scripts/bench-wrk.sh $(BENCH_WRK_FLAGS)

# The node in a box: a real single-node cluster with podnic.
demo: setup build
	./scripts/demo.sh

demo-down:
	./scripts/demo.sh down

# The same datapath in two network namespaces, without Kubernetes.
demo-lite: setup build
	./scripts/demo-lite.sh

demo-lite-down:
	./scripts/demo-lite.sh down

clean:
	rm -rf $(BIN)
