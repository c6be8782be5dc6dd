#!/bin/sh
# Records kuma-cp's real xDS responses into tests/fixtures/kuma/, for
# xdsclient's unit tests (xdsclient/kuma_fixtures_test.go). It runs the
# real kuma-cp (../shared/tools/kuma-cp-2.14.3.xz, or $KUMA_CP) in a network
# namespace of its own, so it needs root. The VIPs and versions kuma-cp
# allocates differ between runs; the tests read only the structure.
set -eu
cd "$(dirname "$0")/.."
out="$PWD/tests/fixtures/kuma"
SHUNT_RECORD_KUMA="$out" go test -count=1 -run '^TestRecordFixtures$' -v ./tests/kuma
echo "recorded into $out"
