#!/usr/bin/env bash
# gofmt, go mod tidy, go vet and staticcheck over the whole module; fails on
# any finding.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export PATH="/usr/local/go/bin:$PATH"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go mod tidy -diff
go vet ./...
# The lean build (init container, CNI plugin) compiles from the same package.
go vet -tags lean ./cmd/shunt
go vet -tags lean,initcontainer ./cmd/shunt ./redirect/engines
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags lean,initcontainer ./cmd/shunt ./redirect/engines
