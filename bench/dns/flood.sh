#!/usr/bin/env bash
# A cache-busting UDP flood against `shunt dns` (and Unbound, for
# reference), on this machine: while bench/dns/dnsflood sends queries for
# unique names (each goes upstream, to a local bind9) at RATE q/s for DUR
# seconds, a second dnsflood asks for a table name every 2 ms, one query at
# a time, and reports how many were answered within 10 ms; shunt's peak RSS
# (VmHWM) is read from /proc at the end. Targets (issue 13.6): >= 99 % of
# table queries answered within 10 ms, peak RSS < 120 MB.
# Every server listens on 127.0.0.1 only; everything started here is
# stopped by PID on exit. Needs: unbound, bind9 (named), go.
#
# Knobs: DUR (default 20), RATE (default 50000), SOCKETS (flood sockets,
# default 8), SERVER_CPUS / CLIENT_CPUS as in run.sh (default 0 and 1),
# BASELINE=REV also measures shunt built from that git revision (e.g.
# BASELINE=main), for a before/after in the same run.
set -euo pipefail

DUR=${DUR:-20}
RATE=${RATE:-50000}
SOCKETS=${SOCKETS:-8}
SERVER_CPUS=${SERVER_CPUS-0}
CLIENT_CPUS=${CLIENT_CPUS-1}
BASELINE=${BASELINE:-}
SRV=()
CLI=()
if [ -n "$SERVER_CPUS" ]; then SRV=(taskset -c "$SERVER_CPUS"); fi
if [ -n "$CLIENT_CPUS" ]; then CLI=(taskset -c "$CLIENT_CPUS"); fi

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/shunt-dnsflood.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

BASE=$((30000 + RANDOM % 10000))
SHUNT=$BASE UNBOUND=$((BASE + 1)) NAMED=$((BASE + 2)) OLD=$((BASE + 3))

echo "building..."
(cd "$ROOT" && go build -o "$WORK/shunt" ./cmd/shunt && go build -o "$WORK/dnsflood" ./bench/dns/dnsflood)
if [ -n "$BASELINE" ]; then
	mkdir "$WORK/old"
	(cd "$ROOT" && git archive "$BASELINE" | tar -x -C "$WORK/old")
	(cd "$WORK/old" && go build -o "$WORK/shunt-old" ./cmd/shunt)
fi

echo "httpbin.mesh: [240.0.0.1]" > "$WORK/table.yaml"
cat > "$WORK/flood.test.zone" <<ZONE
\$TTL 3600
@ IN SOA ns.flood.test. hostmaster.flood.test. 1 3600 600 86400 60
@ IN NS ns
ns IN A 127.0.0.1
ZONE
cat > "$WORK/named.conf" <<CONF
options {
	directory "$WORK";
	pid-file none;
	listen-on port $NAMED { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	rate-limit { responses-per-second 0; };
	session-keyfile "$WORK/session.key";
	managed-keys-directory "$WORK";
};
controls { };
zone "flood.test" { type primary; file "$WORK/flood.test.zone"; };
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
  local-zone: "mesh." static
  local-data: "httpbin.mesh. 30 IN A 240.0.0.1"
forward-zone:
  name: "flood.test."
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
start shunt "${SRV[@]}" "$WORK/shunt" dns --resolv-conf "" --upstream-mark 0 --log-level warn \
	--listen 127.0.0.1:$SHUNT --table "$WORK/table.yaml" --upstream 127.0.0.1:$NAMED
start unbound "${SRV[@]}" unbound -d -c "$WORK/unbound.conf"
if [ -n "$BASELINE" ]; then
	start old "${SRV[@]}" "$WORK/shunt-old" dns --resolv-conf "" --upstream-mark 0 --log-level warn \
		--listen 127.0.0.1:$OLD --table "$WORK/table.yaml" --upstream 127.0.0.1:$NAMED
fi

wait_for() { # port name
	for _ in $(seq 100); do
		if dig +short +time=1 +tries=1 -p "$1" @127.0.0.1 "$2" 2>/dev/null | grep -q .; then return 0; fi
		sleep 0.1
	done
	echo "server on port $1 did not answer $2; logs in $WORK" >&2
	tail -5 "$WORK"/*.log >&2
	exit 1
}
wait_for $NAMED ns.flood.test
wait_for $SHUNT httpbin.mesh
wait_for $UNBOUND httpbin.mesh
if [ -n "$BASELINE" ]; then wait_for $OLD httpbin.mesh; fi

rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
hwm_mb() { awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

# run NAME PORT PID: the flood and the probe at once; prints both reports.
run() {
	local before
	before=$(rss_mb "$3")
	"${CLI[@]}" "$WORK/dnsflood" -mode flood -server 127.0.0.1:$2 -dur "${DUR}s" -rate "$RATE" -sockets "$SOCKETS" >"$WORK/flood-$1.txt" &
	local fl=$!
	sleep 0.5 # the flood is on before the first probe
	"${CLI[@]}" "$WORK/dnsflood" -mode probe -server 127.0.0.1:$2 -dur "$((DUR - 1))s" -name httpbin.mesh >"$WORK/probe-$1.txt"
	wait $fl
	printf "%-10s %s\n%-10s %s\n%-10s RSS before %s MB, after %s MB, peak (VmHWM) %s MB\n" \
		"$1" "$(cat "$WORK/flood-$1.txt")" "" "$(cat "$WORK/probe-$1.txt")" "" "$before" "$(rss_mb "$3")" "$(hwm_mb "$3")"
}

echo
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); servers on CPUs ${SERVER_CPUS:-any}, load generators on CPUs ${CLIENT_CPUS:-any}"
echo "flood: $RATE q/s of unique names from $SOCKETS sockets for ${DUR}s; probe: httpbin.mesh A every 2 ms"
run shunt $SHUNT "${PID_OF[shunt]}"
run unbound $UNBOUND "${PID_OF[unbound]}"
if [ -n "$BASELINE" ]; then run "$BASELINE" $OLD "${PID_OF[old]}"; fi
