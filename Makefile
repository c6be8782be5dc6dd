# shunt — see README.md. Every target runs as root on Debian.
GO      ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN     := build/shunt
export GOFLAGS ?= -buildvcs=false

.PHONY: all deps build test lint bench demo generate image clean

all: build

## deps: install the Debian packages and the Go toolchain everything needs (idempotent)
deps:
	./scripts/deps.sh

## build: the shunt binary, static, in build/
## build/shunt-cni is the lean build (-tags lean): install, uninstall, status,
## explain, version and the CNI plugin, without the agent's dependencies, for
## the CNI plugin, which starts once per pod; build/shunt-init is the init
## container's build (-tags lean,initcontainer): the same without the CNI
## plugin and the eBPF engine.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN) ./cmd/shunt
	CGO_ENABLED=0 $(GO) build -trimpath -tags lean -ldflags "-s -w -X main.version=$(VERSION)" -o build/shunt-cni ./cmd/shunt
	CGO_ENABLED=0 $(GO) build -trimpath -tags lean,initcontainer -ldflags "-s -w -X main.version=$(VERSION)" -o build/shunt-init ./cmd/shunt

## test: the whole suite, as CI runs it (needs root)
test:
	./scripts/test.sh

## lint: gofmt, go vet, staticcheck
lint:
	./scripts/lint.sh

## bench: benchmarks that compare shunt with its peers in the same run (needs root)
bench: deps
	$(GO) test -run XXX -bench . -benchtime 20x ./bench/install
	$(GO) test -run XXX -bench . -benchmem ./dnsproxy ./controlplane
	./bench/dns/run.sh
	SHUNT_BENCH=1 $(GO) test -run TestCompare -v -timeout 15m ./bench/capture
	$(GO) test -run X -bench . -benchtime 20x ./bench/nftables
	SHUNT_BENCH=1 $(GO) test -run TestStartup -v -timeout 30m ./bench/startup
	SHUNT_BENCH=1 $(GO) test -run 'TestCNIShare|TestNodeScale' -v -timeout 15m ./bench/cniscale

## demo: set everything up and run shunt on its embedded default (needs root)
demo:
	./scripts/demo.sh

## generate: rebuild the eBPF objects from bpf/ (needs clang, libbpf-dev)
generate:
	$(GO) generate ./redirect/ebpf/...

## image: the OCI archives of the init container and of the DaemonSet's node
## agent, build/shunt-init.oci.tar and build/shunt-node.oci.tar (no container
## engine needed)
image:
	SHUNT_IMAGE=init bash init-container/build.sh build/shunt-init.oci.tar
	SHUNT_IMAGE=node bash init-container/build.sh build/shunt-node.oci.tar

clean:
	rm -rf build
