#!/bin/sh
# Records istiod's real xDS responses (listeners, clusters, endpoints and the
# NDS NameTable) into tests/fixtures/istio/, for xdsclient's unit tests
# (xdsclient/istio_fixtures_test.go). It runs the real istiod
# (../shared/tools/istiod-pilot-discovery-eed52ebb66ad.xz, or $ISTIOD)
# without Kubernetes, in a network namespace of its own, so it needs root.
# The VIPs and versions istiod allocates differ between runs; the tests read
# only the structure.
set -eu
cd "$(dirname "$0")/.."
out="$PWD/tests/fixtures/istio"
SHUNT_RECORD_ISTIO="$out" go test -count=1 -run '^TestRecordFixtures$' -v ./tests/istio
echo "recorded into $out"
