#!/usr/bin/env bash
# Soak: the demo setup (shunt run on its embedded control plane, capture in
# a workload namespace, the Envoy double subscribed through shunt's xDS
# socket) left running for DURATION seconds (default 900). Every INTERVAL
# seconds (default 30) it asks the agent's DNS for httpbin.mesh and reads
# the agent's reconnect counter and RSS; at the end it prints:
#   reconnects   streams to the control plane opened after the first (target 0)
#   rss drift    RSS at the end minus RSS after the first minute
#   dns failures samples where httpbin.mesh was not answered
# Everything runs in a network namespace the script creates and removes;
# processes it started are stopped by PID. Needs root, go, iptables, dig.
set -euo pipefail

DURATION=${DURATION:-900}
INTERVAL=${INTERVAL:-30}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/shunt-soak.XXXXXX)
chmod 755 "$WORK"
NS=shunt-soak-$$
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	ip netns del "$NS" 2>/dev/null
	rm -rf "/etc/netns/$NS" "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
go build -o "$WORK/shunt" ./cmd/shunt
go build -o "$WORK/meshproxy" ./tests/standin/meshproxy

ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "/etc/netns/$NS"
printf 'nameserver 127.0.0.1\n' > "/etc/netns/$NS/resolv.conf"
cp -r examples/demo/resources "$WORK/resources"
mkdir -p "$WORK/state"
chmod 755 "$WORK/state"

ip netns exec "$NS" "$WORK/shunt" run --resources "$WORK/resources" --state-dir "$WORK/state" \
	--node-id soak --admin 127.0.0.1:15090 --cleanup-on-exit > "$WORK/shunt.log" 2>&1 &
agent=$!
PIDS+=("$agent")
for _ in $(seq 1 100); do
	[ -S "$WORK/state/xds.sock" ] && break
	sleep 0.1
done
# The Envoy double, driven like Envoy by the bootstrap shunt makes for
# the node: ADS through shunt's socket.
"$WORK/shunt" envoy-bootstrap --node-id soak --state-dir "$WORK/state" -o yaml > "$WORK/envoy.yaml"
chmod 644 "$WORK/envoy.yaml"
ip netns exec "$NS" setpriv --reuid=5678 --regid=5678 --clear-groups "$WORK/meshproxy" \
	--config-path "$WORK/envoy.yaml" > "$WORK/proxy.log" 2>&1 &
PIDS+=("$!")

metric() {
	ip netns exec "$NS" curl -s http://127.0.0.1:15090/metrics | awk -v m="$1" '$1 == m { print $2 }'
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$agent/status"; }

for _ in $(seq 1 100); do
	ip netns exec "$NS" curl -sf http://127.0.0.1:15090/readyz > /dev/null 2>&1 && break
	sleep 0.1
done

start=$(date +%s)
failures=0
samples=0
rss_base=""
rss_max=0
echo "time_s reconnects rss_MB httpbin.mesh"
while :; do
	now=$(( $(date +%s) - start ))
	answer=$(ip netns exec "$NS" dig +short +tries=1 +time=1 @127.0.0.1 -p 15053 httpbin.mesh A || true)
	samples=$((samples + 1))
	[ -n "$answer" ] || failures=$((failures + 1))
	rss=$(rss_kb)
	[ "$rss" -gt "$rss_max" ] && rss_max=$rss
	if [ -z "$rss_base" ] && [ "$now" -ge 60 ]; then rss_base=$rss; fi
	echo "$now $(metric shunt_xds_reconnects_total) $((rss / 1024)) ${answer:-NONE}"
	[ "$now" -ge "$DURATION" ] && break
	sleep "$INTERVAL"
done
[ -n "$rss_base" ] || rss_base=$rss
reconnects=$(metric shunt_xds_reconnects_total)
echo
echo "duration      ${DURATION}s"
echo "reconnects    ${reconnects:-?} (target 0)"
echo "rss           $((rss_base / 1024)) MB after 1 min, $((rss / 1024)) MB at the end, $((rss_max / 1024)) MB peak"
echo "rss drift     $(( (rss - rss_base) / 1024 )) MB"
echo "dns failures  $failures of $samples samples"
echo "envoy NACKs  $(grep -c 'configuration rejected (NACK)' "$WORK/shunt.log" || true)"
grep -q "local proxy connected" "$WORK/shunt.log" || echo "the Envoy double never connected: $(tail -3 "$WORK/proxy.log")"
if grep -q "too_many_pings\|stream ended" "$WORK/shunt.log"; then
	echo "stream ends in the agent's log:"
	grep "too_many_pings\|stream ended" "$WORK/shunt.log" | head -5
fi
