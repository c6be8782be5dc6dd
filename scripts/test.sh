#!/usr/bin/env bash
# Runs shunt's whole test suite on a fresh Debian machine, as root: installs
# what it needs, checks formatting, vet and staticcheck, then runs every test
# (the concurrent packages under the race detector). The privileged tests
# create their own network namespaces and cgroups and remove them.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
"$top/scripts/deps.sh"
export PATH="/usr/local/go/bin:$PATH"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CI="${CI:-true}"

echo "== lint"
"$top/scripts/lint.sh"

# Packages whose goroutines share state run under the race detector.
race=(./dnsproxy/... ./xdsclient/... ./xdsproxy/... ./controlplane/... ./agent/... ./redirect/... ./envoy/... ./rulewatch/...)
status=0
echo "== go test -race ${race[*]}"
go test -race -count=1 -timeout 15m "${race[@]}" || status=1

echo "== go test (everything else)"
module=$(go list -m)
mapfile -t rest < <(go list ./... | grep -v -E "^$module/(dnsproxy|xdsclient|xdsproxy|controlplane|agent|redirect|envoy|rulewatch)(/|\$)")
go test -count=1 -p 2 -timeout 20m "${rest[@]}" || status=1

# A module of its own, so that shunt never depends on istio.io/istio: the
# NameTable decoder against Istio's generated type.
echo "== tests/istio-nds (Istio's generated NameTable)"
(cd tests/istio-nds && go mod tidy -diff && go vet ./... && go test -count=1 ./...) || status=1

if [ "$status" -ne 0 ]; then
  echo "== FAILED: see the FAIL lines above" >&2
fi
exit "$status"
