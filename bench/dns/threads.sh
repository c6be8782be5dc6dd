#!/usr/bin/env bash
# Where a table answer's CPU goes, thread by thread: runs bench/dns/dnsserve
# (built from this tree, or from each git revision given) with 10,000 table
# names, offers it a fixed rate with dnsperf for a few seconds and prints,
# for every thread of the server, the CPU time and the voluntary and
# involuntary context switches over the run, then the CPU per answered
# query and the p99 / p99.9 latency. Which thread is which (the socket
# reader, the runtime's sysmon, the netpoller's) is not in /proc: a profile
# of the server (perf record -g -p PID; sort by pid) names them. Revisions
# are measured in turn, ROUNDS times, so that each sees the same machine.
#
#   bench/dns/threads.sh [REV...]     # default: the working tree
#
# Knobs: RATE (q/s, default 20000), LATDUR (seconds, default 5), ROUNDS
# (default 1), SERVER_CPUS (taskset list for the server, default 0; empty
# to not pin), CLIENT_CPUS (dnsperf, default 1), GOMAXPROCS (passed to the
# server when set). Everything started here is stopped by PID on exit.
set -euo pipefail

RATE=${RATE:-20000}
LATDUR=${LATDUR:-5}
ROUNDS=${ROUNDS:-1}
SERVER_CPUS=${SERVER_CPUS-0}
CLIENT_CPUS=${CLIENT_CPUS-1}
SRV=()
CLI=()
if [ -n "$SERVER_CPUS" ]; then SRV=(taskset -c "$SERVER_CPUS"); fi
if [ -n "$CLIENT_CPUS" ]; then CLI=(taskset -c "$CLIENT_CPUS"); fi

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/shunt-dnsthreads.XXXXXX)
PID=
cleanup() {
	if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

REVS=("$@")
if [ ${#REVS[@]} -eq 0 ]; then REVS=(tree); fi
for rev in "${REVS[@]}"; do
	echo "building dnsserve at $rev..."
	if [ "$rev" = tree ]; then
		(cd "$ROOT" && go build -o "$WORK/dnsserve-$rev" ./bench/dns/dnsserve)
	else
		mkdir "$WORK/src-$rev"
		(cd "$ROOT" && git archive "$rev" | tar -x -C "$WORK/src-$rev")
		(cd "$WORK/src-$rev" && go build -o "$WORK/dnsserve-$rev" ./bench/dns/dnsserve)
	fi
done

awk -v n=10000 -v w="$WORK" 'BEGIN {
	for (i = 0; i < n; i++) {
		printf "svc-%d.bench.mesh: [240.0.%d.%d]\n", i, int(i / 256), i % 256 > (w "/table.yaml")
		printf "svc-%d.bench.mesh A\n", i > (w "/q.txt")
	}
}'

# snap PID: one line per thread: tid, utime+stime ticks, voluntary and
# involuntary switches.
snap() {
	for t in /proc/"$1"/task/*; do
		echo "$(basename "$t") $(awk '{print $14 + $15}' "$t/stat") $(awk '/^voluntary/ {v = $2} /^nonvoluntary/ {n = $2} END {print v, n}' "$t/status")"
	done | sort
}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg); server on CPUs ${SERVER_CPUS:-any}, dnsperf on CPUs ${CLIENT_CPUS:-any}; $RATE q/s for ${LATDUR}s"
for round in $(seq "$ROUNDS"); do
	for rev in "${REVS[@]}"; do
		port=$((30000 + RANDOM % 5000))
		"${SRV[@]}" "$WORK/dnsserve-$rev" -listen 127.0.0.1:$port -table "$WORK/table.yaml" -upstream 127.0.0.1:9 >"$WORK/srv.log" 2>&1 &
		PID=$!
		for _ in $(seq 100); do
			if dig +short +time=1 +tries=1 -p $port @127.0.0.1 svc-1.bench.mesh 2>/dev/null | grep -q 240.0.0.1; then break; fi
			sleep 0.1
		done
		snap $PID >"$WORK/s0"
		"${CLI[@]}" dnsperf -s 127.0.0.1 -p $port -d "$WORK/q.txt" -l "$LATDUR" -c 16 -T 2 -Q "$RATE" -v >"$WORK/perf.txt" 2>&1 || true
		snap $PID >"$WORK/s1"
		kill $PID
		wait $PID 2>/dev/null || true
		PID=
		done=$(awk '/Queries completed/ {print $3}' "$WORK/perf.txt")
		tails=$(awk '/^> / {print $NF}' "$WORK/perf.txt" | sort -g |
			awk '{a[NR] = $1} END {if (NR) printf "p99 %.3f ms, p99.9 %.3f ms", a[int(NR * 0.99)] * 1000, a[int(NR * 0.999)] * 1000}')
		echo "round $round, $rev:"
		join -a2 "$WORK/s0" "$WORK/s1" | awk -v d="${done:-0}" -v hz="$(getconf CLK_TCK)" -v tails="$tails" '
			NF == 7 {t = $5 - $2; v = $6 - $3; n = $7 - $4}
			NF == 4 {t = $2; v = $3; n = $4}
			{T += t; V += v; N += n; if (t > 0 || v > 100) printf "  thread %-8s CPU %6.0f ms  switches %6d voluntary %6d involuntary\n", $1, t / hz * 1000, v, n}
			END {printf "  all: %.2f us per query (%d answered), %d voluntary + %d involuntary switches; %s\n", (d > 0 ? T / hz * 1e6 / d : 0), d, V, N, tails}'
	done
done
