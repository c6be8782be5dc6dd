#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine (as root) and runs shunt's
# agent on its embedded default: shunt's own control plane serves the
# resources in examples/demo/resources, and the agent captures a demo
# workload's traffic, answers its DNS and follows resource changes live.
#
# Everything happens in two network namespaces the script creates (a
# workload "shunt-demo-app" and an "internet" host "shunt-demo-net") and
# removes on exit; the machine's own network is not touched.
#
#   DEMO_ONESHOT=1  show the demonstration and stop, instead of running until Ctrl-C
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
"$top/scripts/deps.sh"
export PATH="/usr/local/go/bin:$PATH"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

echo "== building shunt"
mkdir -p build
CGO_ENABLED=0 go build -o build/shunt ./cmd/shunt
shunt="$top/build/shunt"

app=shunt-demo-app
net=shunt-demo-net
work=$(mktemp -d /tmp/shunt-demo.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  [ -e /run/netns/$app ] && ip netns exec $app "$shunt" uninstall --state-dir "$work/state" --log-level warn
  ip netns del $app 2>/dev/null
  ip netns del $net 2>/dev/null
  rm -rf "/etc/netns/$app" "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup_stale() { ip netns del $app 2>/dev/null || true; ip netns del $net 2>/dev/null || true; }
cleanup_stale

echo "== creating the workload and internet namespaces"
ip netns add $app
ip netns add $net
ip -n $app link set lo up
ip -n $net link set lo up
ip -n $app link add demo0 type veth peer name demo1 netns $net
ip -n $app addr add 10.200.0.1/24 dev demo0
ip -n $net addr add 10.200.0.2/24 dev demo1
ip -n $app link set demo0 up
ip -n $net link set demo1 up

# The internet: a web server and the workload's own resolver, which knows
# example.org.
mkdir -p "$work/www" "$work/nginx"
echo "hello from example.org" > "$work/www/index.html"
cat > "$work/nginx/nginx.conf" <<CONF
daemon off;
pid $work/nginx/nginx.pid;
error_log stderr;
events {}
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server { listen 10.200.0.2:80; root $work/www; }
}
CONF
ip netns exec $net nginx -c "$work/nginx/nginx.conf" &
pids+=($!)
ip netns exec $net dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
  --listen-address=10.200.0.2 --address=/example.org/10.200.0.2 --user=root --pid-file= --log-facility=- 2>/dev/null &
pids+=($!)
mkdir -p /etc/netns/$app
printf 'nameserver 10.200.0.2\nsearch demo.svc.cluster.local\noptions ndots:5\n' > /etc/netns/$app/resolv.conf

# The proxy stand-in: Envoy would take its configuration from the embedded
# control plane (through shunt run's xDS socket); HAProxy forwards each captured
# connection to its original destination and logs it.
cat > "$work/haproxy.cfg" <<CONF
global
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  timeout connect 3s
  timeout client 30s
  timeout server 30s
  log-format "proxy: %ci:%cp -> %si:%sp"
frontend outbound
  bind 127.0.0.1:15001
  default_backend original_destination
backend original_destination
  server s 0.0.0.0:0
CONF
ip netns exec $app setpriv --reuid=5678 --regid=5678 --clear-groups haproxy -f "$work/haproxy.cfg" -db > "$work/proxy.log" 2>&1 &
pids+=($!)

echo "== starting shunt run (embedded control plane, resources in examples/demo/resources)"
cp -r "$top/examples/demo/resources" "$work/resources"
ip netns exec $app "$shunt" run --resources "$work/resources" --state-dir "$work/state" \
  --admin 127.0.0.1:15090 --node-id demo-app --cleanup-on-exit > "$work/shunt.log" 2>&1 &
shunt_pid=$!
pids+=($shunt_pid)
for _ in $(seq 1 100); do
  ip netns exec $app curl -sf http://127.0.0.1:15090/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
if ! ip netns exec $app curl -sf http://127.0.0.1:15090/readyz >/dev/null; then
  echo "shunt did not become ready; its log:" >&2
  cat "$work/shunt.log" >&2
  exit 1
fi

as_app() { ip netns exec $app setpriv --reuid=1000 --regid=1000 --clear-groups "$@"; }

echo
echo "== 1. mesh names resolve to VIPs, answered by shunt (dig httpbin.mesh, httpbin.org)"
as_app dig +short httpbin.mesh
as_app dig +short httpbin.org
echo "== 2. other names are forwarded to the workload's own resolver (dig example.org)"
as_app dig +short example.org
echo "== 3. the workload's connection is captured and passes through the proxy (curl http://example.org/)"
as_app curl -sS --max-time 5 http://example.org/
sleep 0.3
grep 'proxy:' "$work/proxy.log" | tail -n 1
echo "== 4. a new ExternalService resolves within a second"
cat > "$work/resources/example.yaml" <<RES
type: ExternalService
mesh: default
name: example
tags:
  kuma.io/service: example
  kuma.io/protocol: tcp
networking:
  address: example.org:80
RES
for _ in $(seq 1 20); do
  ans=$(as_app dig +short example.mesh)
  [ -n "$ans" ] && break
  sleep 0.1
done
echo "example.mesh -> ${ans:-<no answer>}"
echo "== 5. shunt status"
ip netns exec $app "$shunt" status --state-dir "$work/state" | head -n 12
echo "== 6. the agent's snapshot (admin endpoint /snapshot)"
ip netns exec $app curl -s http://127.0.0.1:15090/snapshot | head -c 600; echo

if [ "${DEMO_ONESHOT:-}" = 1 ]; then
  echo "== done"
  exit 0
fi
echo
echo "shunt is running in namespace $app (log: $work/shunt.log). Try:"
echo "  ip netns exec $app dig httpbin.mesh"
echo "  ip netns exec $app curl http://example.org/"
echo "  ip netns exec $app $shunt explain --state-dir $work/state --dst 10.200.0.2:80"
echo "Press Ctrl-C to stop; everything is removed on exit."
wait "$shunt_pid"
