#!/usr/bin/env bash
# Compare `shunt dns` with Unbound and dnsmasq under dnsperf, on this
# machine, in one run:
#   1. table answers: 10,000 names answered locally (shunt's table, Unbound
#      local-data with 2 threads and so-reuseport, dnsmasq addn-hosts);
#   2. forwarded names with a warm cache: 10,000 names of a bind9 zone,
#      through shunt and through Unbound forwarding to the same bind9.
# First QPS flat out; then the tails: p99 and p99.9 latency at fixed
# offered rates (20k and 50k q/s), shunt and Unbound back to back for each
# scenario and rate, repeated three times, with each server's CPU time per
# answered query (utime + stime from /proc/PID/stat over the run); it
# prints the shunt/Unbound ratios per run and their median and spread.
# Every server listens on 127.0.0.1 only; everything started here is
# stopped by PID on exit. Needs: dnsperf, unbound, dnsmasq, bind9 (named), go.
#
# Knobs: DUR (seconds per measured run, default 10), CLIENTS (dnsperf -c,
# default 16), THREADS (dnsperf -T, default 2), OUTSTANDING (dnsperf -q,
# default 500), RATES (queries/s offered for the latency runs, default
# "20000 50000"), LATDUR (seconds per latency run, default 5), REPEAT (how
# many times the latency runs are repeated, default 3),
# SERVER_CPUS (taskset list every server under test runs on, default 0) and
# CLIENT_CPUS (dnsperf and the bind9 upstream, default 1): with the servers
# and the load generator on separate cores, each server gets the same CPU
# and none competes with dnsperf for it. Set both empty to not pin.
# BASELINE=REV also runs shunt built from that git revision (e.g.
# BASELINE=main) in every latency run, next to the others, and prints its
# ratios to Unbound too: a before/after measured on the same machine at
# the same time.
# KERNEL_ANSWERS=1 runs shunt with --kernel-answers: the whole run then
# takes place in a network namespace of its own (the answerer is a tc
# program on lo), created here and removed on exit.
# Besides each server's own CPU per query, every latency run reports the
# server's and dnsperf's together ("+client"): a query answered in the
# kernel costs the server nothing and is paid in the client's system
# calls instead, so only the sum compares like with like.
set -euo pipefail

if [ "${KERNEL_ANSWERS:-}" = 1 ] && [ -z "${SHUNT_BENCH_NETNS:-}" ]; then
	ns=shunt-dnsbench-$$
	ip netns add "$ns"
	trap 'ip netns del "$ns"' EXIT
	ip netns exec "$ns" ip link set lo up
	SHUNT_BENCH_NETNS=$ns ip netns exec "$ns" "$0" "$@"
	exit
fi

DUR=${DUR:-10}
CLIENTS=${CLIENTS:-16}
THREADS=${THREADS:-2}
OUTSTANDING=${OUTSTANDING:-500}
RATES=${RATES:-20000 50000}
BASELINE=${BASELINE:-}
LATDUR=${LATDUR:-5}
REPEAT=${REPEAT:-3}
SERVER_CPUS=${SERVER_CPUS-0}
CLIENT_CPUS=${CLIENT_CPUS-1}
SRV=()
CLI=()
if [ -n "$SERVER_CPUS" ]; then SRV=(taskset -c "$SERVER_CPUS"); fi
if [ -n "$CLIENT_CPUS" ]; then CLI=(taskset -c "$CLIENT_CPUS"); fi
N=10000

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/shunt-dnsbench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

BASE=$((20000 + RANDOM % 10000))
SHUNT=$BASE UNBOUND=$((BASE + 1)) DNSMASQ=$((BASE + 2)) NAMED=$((BASE + 3)) OLD=$((BASE + 4))

echo "building shunt..."
SHUNT_CMD=()
if (cd "$ROOT" && go build -o "$WORK/shunt" ./cmd/shunt) >"$WORK/build.log" 2>&1; then
	SHUNT_CMD=("$WORK/shunt" dns --resolv-conf "" --upstream-mark 0 --log-level warn)
	if [ "${KERNEL_ANSWERS:-}" = 1 ]; then SHUNT_CMD+=(--kernel-answers); fi
else
	# A tree where another package is mid-change may not build the command;
	# measure the same server through the small stand-in rather than not at all, and say so.
	echo "cmd/shunt does not build (see below); measuring dnsproxy through bench/dns/dnsserve" >&2
	head -3 "$WORK/build.log" >&2
	(cd "$ROOT" && go build -o "$WORK/dnsserve" ./bench/dns/dnsserve)
	SHUNT_CMD=("$WORK/dnsserve")
fi

if [ -n "$BASELINE" ]; then
	echo "building shunt at $BASELINE..."
	mkdir "$WORK/old"
	(cd "$ROOT" && git archive "$BASELINE" | tar -x -C "$WORK/old")
	(cd "$WORK/old" && go build -o "$WORK/shunt-old" ./cmd/shunt)
fi

# Names: table names svc-I.bench.mesh -> 240.0.X.Y, forwarded names
# host-I.fwd.test -> 198.18.X.Y.
awk -v n=$N -v w="$WORK" 'BEGIN {
	for (i = 0; i < n; i++) {
		a = "240.0." int(i / 256) "." (i % 256)
		b = "198.18." int(i / 256) "." (i % 256)
		printf "svc-%d.bench.mesh: [%s]\n", i, a > (w "/table.yaml")
		printf "  local-data: \"svc-%d.bench.mesh. 30 IN A %s\"\n", i, a > (w "/unbound-local.conf")
		printf "%s svc-%d.bench.mesh\n", a, i > (w "/hosts")
		printf "svc-%d.bench.mesh A\n", i > (w "/q-table.txt")
		printf "host-%d IN A %s\n", i, b > (w "/fwd-records")
		printf "host-%d.fwd.test A\n", i > (w "/q-fwd.txt")
	}
}'

cat > "$WORK/fwd.test.zone" <<ZONE
\$TTL 3600
@ IN SOA ns.fwd.test. hostmaster.fwd.test. 1 3600 600 86400 60
@ IN NS ns
ns IN A 127.0.0.1
ZONE
cat "$WORK/fwd-records" >> "$WORK/fwd.test.zone"
cat > "$WORK/named.conf" <<CONF
options {
	directory "$WORK";
	pid-file none;
	listen-on port $NAMED { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	session-keyfile "$WORK/session.key";
	managed-keys-directory "$WORK";
};
controls { };
zone "fwd.test" { type primary; file "$WORK/fwd.test.zone"; };
CONF

cat > "$WORK/unbound.conf" <<CONF
server:
  interface: 127.0.0.1@$UNBOUND
  port: $UNBOUND
  num-threads: 2
  so-reuseport: yes
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$WORK"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: no
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  msg-cache-size: 64m
  rrset-cache-size: 128m
  local-zone: "bench.mesh." static
  include: "$WORK/unbound-local.conf"
forward-zone:
  name: "fwd.test."
  forward-addr: 127.0.0.1@$NAMED
CONF

declare -A PID_OF
start() { # name, command...
	local name=$1
	shift
	"$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=($!)
	PID_OF[$name]=$!
}

start named "${CLI[@]}" /usr/sbin/named -g -n 1 -c "$WORK/named.conf"
start unbound "${SRV[@]}" unbound -d -c "$WORK/unbound.conf"
start dnsmasq "${SRV[@]}" dnsmasq -k --port=$DNSMASQ --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
	--addn-hosts="$WORK/hosts" --pid-file= --cache-size=10000 --local-ttl=30 --user=root
start shunt "${SRV[@]}" "${SHUNT_CMD[@]}" --listen 127.0.0.1:$SHUNT --table "$WORK/table.yaml" --upstream 127.0.0.1:$NAMED \
	--cache-size 20000
if [ -n "$BASELINE" ]; then
	start old "${SRV[@]}" "$WORK/shunt-old" dns --resolv-conf "" --upstream-mark 0 --log-level warn \
		--listen 127.0.0.1:$OLD --table "$WORK/table.yaml" --upstream 127.0.0.1:$NAMED --cache-size 20000
fi

wait_for() { # port name want
	for _ in $(seq 100); do
		if dig +short +time=1 +tries=1 -p "$1" @127.0.0.1 "$2" 2>/dev/null | grep -q "$3"; then return 0; fi
		sleep 0.1
	done
	echo "server on port $1 did not answer $2; logs in $WORK" >&2
	tail -5 "$WORK"/*.log >&2
	exit 1
}
wait_for $NAMED host-1.fwd.test 198.18.0.1
wait_for $SHUNT svc-1.bench.mesh 240.0.0.1
wait_for $UNBOUND svc-1.bench.mesh 240.0.0.1
wait_for $DNSMASQ svc-1.bench.mesh 240.0.0.1
if [ -n "$BASELINE" ]; then wait_for $OLD svc-1.bench.mesh 240.0.0.1; fi

# qps NAME PORT QUERYFILE: prints "QPS LOST%", flat out.
qps() {
	local out="$WORK/perf-$1.txt"
	"${CLI[@]}" dnsperf -s 127.0.0.1 -p "$2" -d "$3" -l "$DUR" -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING" >"$out" 2>&1 || true
	awk '/Queries per second/ {q = $4} /Queries lost/ {gsub(/[()%]/, "", $4); l = $4} END {printf "%.0f %s\n", q, l}' "$out"
}

# lat NAME PORT QUERYFILE RATE PID: prints "P99_MS P999_MS CPU_US_PER_QUERY
# LOST% CPU_US_PER_QUERY_WITH_CLIENT" at a fixed offered RATE: every
# answer's latency from dnsperf -v, the server's CPU time (utime + stime of
# every thread, from /proc/PID/stat) over the run divided by the queries it
# answered, and the same with dnsperf's CPU time (bash's `times` for the
# subshell that ran it) added.
lat() {
	local out="$WORK/lat-$1-$4.txt" t0 t1 client
	t0=$(awk '{print $14 + $15}' "/proc/$5/stat")
	client=$( { "${CLI[@]}" dnsperf -s 127.0.0.1 -p "$2" -d "$3" -l "$LATDUR" -c "$CLIENTS" -T "$THREADS" -Q "$4" -v >"$out" 2>&1 || true; times; } |
		tail -1 | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); s += p[1] * 60 + p[2] } print s }')
	t1=$(awk '{print $14 + $15}' "/proc/$5/stat")
	local done lost
	done=$(awk '/Queries completed/ {print $3}' "$out")
	lost=$(awk '/Queries lost/ {gsub(/[()%]/, "", $4); print $4}' "$out")
	awk '/^> / {print $NF}' "$out" | sort -g | awk -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v done="${done:-0}" -v lost="${lost:-n/a}" -v client="$client" '
		{a[NR] = $1}
		END {
			if (!NR) { print "n/a n/a n/a " lost " n/a"; exit }
			printf "%.3f %.3f %.2f %s %.2f\n", a[int(NR * 0.99)] * 1000, a[int(NR * 0.999)] * 1000,
				(done > 0 ? ticks / hz * 1e6 / done : 0), lost, (done > 0 ? (ticks / hz + client) * 1e6 / done : 0)
		}'
}

row() { printf "%-28s %12s %8s\n" "$@"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

echo
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); servers on CPUs ${SERVER_CPUS:-any}, dnsperf on CPUs ${CLIENT_CPUS:-any}"
echo "cores: $(nproc); dnsperf -c $CLIENTS -T $THREADS -q $OUTSTANDING -l $DUR flat out; latency at ${RATES// /, } q/s, ${LATDUR}s each, $REPEAT runs"
row "flat out: scenario / server" "QPS" "lost %"

read -r s_q s_l < <(qps shunt-table $SHUNT "$WORK/q-table.txt")
read -r u_q u_l < <(qps unbound-table $UNBOUND "$WORK/q-table.txt")
read -r d_q d_l < <(qps dnsmasq-table $DNSMASQ "$WORK/q-table.txt")
row "table: shunt" "$s_q" "$s_l"
row "table: unbound local-data" "$u_q" "$u_l"
row "table: dnsmasq" "$d_q" "$d_l"

# Warm both caches with every forwarded name before measuring.
for port in $SHUNT $UNBOUND ${BASELINE:+$OLD}; do
	"${CLI[@]}" dnsperf -s 127.0.0.1 -p $port -d "$WORK/q-fwd.txt" -n 1 -c 4 -q 100 >/dev/null 2>&1 || true
done
read -r sf_q sf_l < <(qps shunt-fwd $SHUNT "$WORK/q-fwd.txt")
read -r uf_q uf_l < <(qps unbound-fwd $UNBOUND "$WORK/q-fwd.txt")
row "forwarded (warm): shunt" "$sf_q" "$sf_l"
row "forwarded (warm): unbound" "$uf_q" "$uf_l"
echo "ratios (QPS): table shunt/unbound $(ratio "$s_q" "$u_q"), shunt/dnsmasq $(ratio "$s_q" "$d_q"); forwarded shunt/unbound $(ratio "$sf_q" "$uf_q")"

# Tails: every run measures shunt and Unbound back to back for each
# scenario and rate, so both see the same machine; ratios are per run.
echo
printf "%-4s %-9s %6s  %-24s %-24s %-22s %-22s\n" run scenario "q/s" "p99 ms shunt/unbound" "p99.9 ms shunt/unbound" "CPU us/q shunt/unbound" "+client us/q"
RES="$WORK/tails.txt"
: >"$RES"
for run in $(seq "$REPEAT"); do
	for sc in table fwd; do
		for rate in $RATES; do
			read -r sp sp9 sc_cpu sl sc_all < <(lat "shunt-$sc" $SHUNT "$WORK/q-$sc.txt" "$rate" "${PID_OF[shunt]}")
			read -r up up9 uc_cpu ul uc_all < <(lat "unbound-$sc" $UNBOUND "$WORK/q-$sc.txt" "$rate" "${PID_OF[unbound]}")
			printf "%-4s %-9s %6s  %-24s %-24s %-22s %-22s\n" "$run" "$sc" "$rate" "$sp / $up" "$sp9 / $up9" "$sc_cpu / $uc_cpu" "$sc_all / $uc_all"
			echo "$sc $rate $(ratio "$sp" "$up") $(ratio "$sp9" "$up9") $(ratio "$sc_cpu" "$uc_cpu") $(ratio "$sc_all" "$uc_all")" >>"$RES"
			if [ -n "$BASELINE" ]; then
				read -r bp bp9 bc_cpu bl bc_all < <(lat "old-$sc" $OLD "$WORK/q-$sc.txt" "$rate" "${PID_OF[old]}")
				printf "%-4s %-9s %6s  %-24s %-24s %-22s %-22s\n" "" "$BASELINE" "" "$bp" "$bp9" "$bc_cpu" "$bc_all"
				echo "$BASELINE-$sc $rate $(ratio "$bp" "$up") $(ratio "$bp9" "$up9") $(ratio "$bc_cpu" "$uc_cpu") $(ratio "$bc_all" "$uc_all")" >>"$RES"
			fi
		done
	done
done
echo
echo "shunt/unbound ratios over $REPEAT runs (lower is better; targets: p99 and p99.9 <= 1, CPU <= 0.7): median [min-max]"
for sc in table fwd ${BASELINE:+$BASELINE-table $BASELINE-fwd}; do
	for rate in $RATES; do
		printf "%-14s %6s q/s:" "$sc" "$rate"
		for col in 3 4 5 6; do
			name=$( [ $col = 3 ] && echo p99 || { [ $col = 4 ] && echo p99.9 || { [ $col = 5 ] && echo CPU || echo CPU+client; }; })
			awk -v sc=$sc -v r=$rate -v c=$col '$1 == sc && $2 == r && $c != "n/a" {print $c}' "$RES" | sort -g |
				awk -v n="$name" '{a[NR] = $1} END {if (NR) printf "  %s %.2f [%.2f-%.2f]", n, a[int((NR + 1) / 2)], a[1], a[NR]; else printf "  %s n/a", n}'
		done
		echo
	done
done

echo
echo "table of 100,000 names (go test -bench):"
(cd "$ROOT" && go test -run '^$' -bench 'TableLoad100k|TableAnswer' -benchtime 5x ./dnsproxy | grep Benchmark)
