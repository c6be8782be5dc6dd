#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine (as root) and shows Kuma's
# ExternalService page working through shunt: shunt's own control plane
# (shunt controlplane) serves the resources in examples/demo/resources,
# the agent (shunt run) captures a demo
# workload's traffic and answers its DNS, a proxy takes its configuration
# over xDS and originates TLS, and a ZoneEgress carries the external traffic
# once passthrough is off.
#
# Three network namespaces, created here and removed on exit (the machine's
# own network is not touched):
#   <prefix>-app   the workload, with shunt run and its proxy
#   <prefix>-net   the "internet": TLS servers posing as httpbin.org and
#                  example.com (certificates from a demo CA made here), and
#                  the workload's own resolver
#   <prefix>-egr   the ZoneEgress proxy
#
# The proxy is tests/standin/meshproxy, shunt's Envoy test double (driven,
# like Envoy, only by a bootstrap and the xDS it receives; never shipped):
# shunt run starts it for the workload with --envoy-binary, as it starts
# Envoy, and the egress runs it with its own bootstrap.
#   ENVOY=/path/to/envoy  run the real Envoy in both places instead (Envoy
#                  is not packaged for Debian: bring the binary)
#   DEMO_ONESHOT=1 show the demonstration, check every "Try:" line, and stop
#   DEMO_PREFIX=x  name the namespaces x-app, x-net, x-egr (default shunt-demo)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
"$top/scripts/deps.sh" >/dev/null
export PATH="/usr/local/go/bin:$PATH"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

echo "== building shunt and the proxy double"
mkdir -p build
CGO_ENABLED=0 go build -o build/shunt ./cmd/shunt
CGO_ENABLED=0 go build -o build/meshproxy ./tests/standin/meshproxy
shunt="$top/build/shunt"
proxy="${ENVOY:-$top/build/meshproxy}"

prefix=${DEMO_PREFIX:-shunt-demo}
app=$prefix-app
net=$prefix-net
egr=$prefix-egr
work=$(mktemp -d /tmp/shunt-demo.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  [ -e "/run/netns/$app" ] && ip netns exec "$app" "$shunt" uninstall --state-dir "$work/state" --log-level warn
  for n in "$app" "$net" "$egr"; do ip netns del "$n" 2>/dev/null; rm -rf "/etc/netns/$n"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for n in "$app" "$net" "$egr"; do ip netns del "$n" 2>/dev/null || true; done

echo "== creating the workload, internet and egress namespaces"
for n in "$app" "$net" "$egr"; do ip netns add "$n"; ip -n "$n" link set lo up; done
link() { # link NS_A DEV_A ADDR_A NS_B DEV_B ADDR_B
  ip -n "$1" link add "$2" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3/24" dev "$2"; ip -n "$4" addr add "$6/24" dev "$5"
  ip -n "$1" link set "$2" up; ip -n "$4" link set "$5" up
}
link "$app" demo0 10.200.0.1 "$net" demo1 10.200.0.2
link "$app" demo2 10.201.0.1 "$egr" demo3 10.201.0.2
link "$egr" demo4 10.202.0.1 "$net" demo5 10.202.0.2
ip -n "$app" route add default via 10.200.0.2
# The egress reaches the internet over its own link.
ip -n "$egr" route add 10.200.0.0/24 via 10.202.0.2

# The internet. A demo CA signs the servers' certificate; the ExternalService
# trusts it (tls.caCert), as it would trust a public CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=shunt demo CA" \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=demo servers" \
  -keyout "$work/srv.key" -out "$work/srv.csr" 2>/dev/null
printf 'subjectAltName=DNS:httpbin.org,DNS:example.com\nextendedKeyUsage=serverAuth\n' > "$work/srv.ext"
openssl x509 -req -in "$work/srv.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
  -extfile "$work/srv.ext" -out "$work/srv.crt" 2>/dev/null
chmod 644 "$work"/*.crt
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
  server {
    listen 10.200.0.2:443 ssl;
    server_name httpbin.org;
    ssl_certificate $work/srv.crt; ssl_certificate_key $work/srv.key;
    default_type application/json;
    location /get { return 200 '{"server": "httpbin.org (demo)", "sni": "\$ssl_server_name", "host": "\$host", "url": "https://\$host\$request_uri"}\n'; }
    location / { return 200 'httpbin.org (demo), sni=\$ssl_server_name\n'; }
  }
  server {
    listen 10.200.0.2:443 ssl;
    server_name example.com;
    ssl_certificate $work/srv.crt; ssl_certificate_key $work/srv.key;
    location / { return 200 'example.com (demo) over the application own TLS, sni=\$ssl_server_name\n'; }
  }
}
CONF
ip netns exec "$net" nginx -c "$work/nginx/nginx.conf" &
pids+=($!)
ip netns exec "$net" dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
  --listen-address=10.200.0.2,10.202.0.2 --address=/example.org/10.200.0.2 --address=/httpbin.org/10.200.0.2 \
  --address=/example.com/10.200.0.2 --user=root --pid-file= --log-facility=- 2>/dev/null &
pids+=($!)
mkdir -p "/etc/netns/$app" "/etc/netns/$egr"
printf 'nameserver 10.200.0.2\nsearch demo.svc.cluster.local\noptions ndots:5\n' > "/etc/netns/$app/resolv.conf"
printf 'nameserver 10.202.0.2\n' > "/etc/netns/$egr/resolv.conf"

# Resources: the page's httpbin (TLS originated by the proxy, trusting the
# demo CA), a mesh with mTLS (the builtin CA) and a ZoneEgress.
cp -r "$top/examples/demo/resources" "$work/resources"
ca_b64=$(base64 -w0 < "$work/ca.crt")
printf '    caCert:\n      inline: %s\n' "$ca_b64" >> "$work/resources/httpbin.yaml"

bootstrap() { # bootstrap FILE NODE_ID XDS_ADDRESS_JSON METADATA_JSON
  cat > "$1" <<JSON
{
  "node": {"id": "$2", "metadata": $4},
  "static_resources": {"clusters": [{
    "name": "ads_cluster", "type": "STATIC", "connect_timeout": "1s",
    "load_assignment": {"cluster_name": "ads_cluster", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": $3}}]}]},
    "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
      "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
      "explicit_http_config": {"http2_protocol_options": {}}}}
  }]},
  "dynamic_resources": {
    "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "ads_cluster"}}]},
    "lds_config": {"ads": {}, "resource_api_version": "V3"},
    "cds_config": {"ads": {}, "resource_api_version": "V3"}
  },
  "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}}
}
JSON
}

echo "== starting shunt controlplane (resources in examples/demo/resources) and shunt run"
# The control plane serves both proxies' nodes: the workload's through
# shunt run (over loopback) and the egress's over its link to the workload
# (that port is not captured). It is plain gRPC off loopback, which only the
# demo's egress namespace can reach.
ip netns exec "$app" "$shunt" controlplane --resources "$work/resources" --state-dir "$work/cp-state" \
  --listen 0.0.0.0:15680 --allow-unauthenticated > "$work/controlplane.log" 2>&1 &
pids+=($!)
# shunt run starts the workload's proxy itself (--envoy-binary), as the
# proxy's user, with a bootstrap whose ADS is shunt run's xDS socket.
run_args=(run --xds 127.0.0.1:15680 --state-dir "$work/state" --admin 127.0.0.1:15090
  --node-id demo-app --exclude-inbound-ports 15680 --cleanup-on-exit --envoy-binary "$proxy")
ip netns exec "$app" "$shunt" "${run_args[@]}" > "$work/shunt.log" 2>&1 &
shunt_pid=$!
pids+=($shunt_pid)
wait_for() { # wait_for WHAT LOG CMD...
  local what=$1 log=$2; shift 2
  for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$what did not happen; log:" >&2
  cat "$log" >&2
  exit 1
}
wait_for "shunt ready" "$work/shunt.log" ip netns exec "$app" curl -sf http://127.0.0.1:15090/readyz
# The proxy's output is in shunt's log, each line prefixed.
ln -sf "$work/shunt.log" "$work/proxy.log"
wait_for "the proxy to be live" "$work/proxy.log" ip netns exec "$app" sh -c 'curl -sf http://127.0.0.1:9901/ready | grep -q LIVE'
# The ZoneEgress proxy: node zoneegress-1, kuma-dp's egress metadata.
bootstrap "$work/egress-bootstrap.json" zoneegress-1 '{"socket_address": {"address": "10.201.0.1", "port_value": 15680}}' '{"dataplane.proxyType": "egress"}'
# A second Envoy on the machine: no hot restart (its shared memory would
# clash with the workload's).
ip netns exec "$egr" "$proxy" --config-path "$work/egress-bootstrap.json" --disable-hot-restart --log-level info > "$work/egress.log" 2>&1 &
pids+=($!)
wait_for "the egress to be live" "$work/egress.log" ip netns exec "$egr" sh -c 'curl -sf http://127.0.0.1:9901/ready | grep -q LIVE'

as_app() { ip netns exec "$app" setpriv --reuid=1000 --regid=1000 --clear-groups "$@"; }
# The proxy's last connection log line matching $2 (shunt's log wraps the
# workload proxy's lines: unwrap them).
last_conn() {
  sleep 0.3
  grep "$2" "$1" | tail -n 1 | sed -e 's/.*msg="envoy: //' -e 's/" component=envoy.*//' -e 's/^[0-9/]* [0-9:]* //'
}

echo
echo "== 1. mesh names resolve to VIPs, answered by shunt (dig httpbin.mesh, httpbin.org)"
as_app dig +short httpbin.mesh
as_app dig +short httpbin.org
echo "== 2. other names are forwarded to the workload's own resolver (dig example.org)"
as_app dig +short example.org
echo "== 3. curl -s http://httpbin.mesh/get: plain HTTP from the app, TLS originated by the proxy"
as_app curl -sS --max-time 5 http://httpbin.mesh/get
echo "   proxy: $(last_conn "$work/proxy.log" 'cluster=external:httpbin')"
echo "== 4. curl -s http://httpbin.org:443/get: the real name and port, through shunt's DNS"
as_app curl -sS --max-time 5 http://httpbin.org:443/get
echo "   proxy: $(last_conn "$work/proxy.log" 'cluster=external:httpbin')"
echo "== 5. passthrough is on: a name the mesh does not know leaves through the proxy (curl http://example.org/)"
as_app curl -sS --max-time 5 http://example.org/
echo "   proxy: $(last_conn "$work/proxy.log" 'cluster=outbound:passthrough')"

echo "== 6. passthrough off and routing.zoneEgress: example.com (kuma.io/protocol: tcp) through the ZoneEgress"
cat > "$work/resources/.mesh.yaml" <<RES
type: Mesh
name: default
networking:
  outbound:
    passthrough: false
routing:
  zoneEgress: true
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: ZoneEgress
name: zoneegress-1
networking:
  address: 10.201.0.2
  port: 10002
RES
mv "$work/resources/.mesh.yaml" "$work/resources/mesh.yaml"
cat > "$work/resources/.example.yaml" <<RES
type: ExternalService
mesh: default
name: example
tags:
  kuma.io/service: example
  kuma.io/protocol: tcp
networking:
  address: example.com:443
  tls:
    enabled: false
RES
mv "$work/resources/.example.yaml" "$work/resources/example.yaml"
wait_for "the egress to listen" "$work/egress.log" grep -q 'listening on tcp 10.201.0.2:10002' "$work/egress.log"
wait_for "the lockdown" "$work/shunt.log" sh -c "! ip netns exec '$app' curl -s --max-time 1 http://10.200.0.2/"
for _ in $(seq 1 50); do
  out=$(as_app curl -sS --max-time 2 --cacert "$work/ca.crt" https://example.com/ 2>&1) && break
  sleep 0.2
done
echo "$out"
echo "   proxy:  $(last_conn "$work/proxy.log" 'cluster=external:example')"
echo "   egress: $(last_conn "$work/egress.log" 'cluster=external:default:example')"
echo "   and http://httpbin.mesh/get now leaves through the egress, which originates the TLS:"
as_app curl -sS --max-time 5 http://httpbin.mesh/get
echo "   egress: $(last_conn "$work/egress.log" 'cluster=external:default:httpbin')"
echo "== 7. a direct connection to an internet address is refused at once (curl http://10.200.0.2/)"
start=$(date +%s%N)
if as_app curl -sS --max-time 3 http://10.200.0.2/ 2>&1; then echo "UNEXPECTED: reached the internet directly"; exit 1; fi
echo "   refused after $(( ($(date +%s%N) - start) / 1000000 )) ms"
echo "== 8. shunt status"
ip netns exec "$app" "$shunt" status --state-dir "$work/state" | sed -n 1,12p

tries=(
  "ip netns exec $app dig +short httpbin.mesh"
  "ip netns exec $app curl -s http://httpbin.mesh/get"
  "ip netns exec $app curl -s http://httpbin.org:443/get"
  "ip netns exec $app curl -s --cacert $work/ca.crt https://example.com/"
  "ip netns exec $app $shunt explain --state-dir $work/state --dst 10.200.0.2:80"
)
if [ "${DEMO_ONESHOT:-}" = 1 ]; then
  echo "== checking the Try: lines"
  for t in "${tries[@]}"; do
    echo "Try: $t"
    if ! out=$(eval "$t" 2>&1) || [ -z "$out" ]; then
      echo "FAILED: $t"; echo "$out"; exit 1
    fi
    echo "$out" | sed -n 1,3p
  done
  echo "== done"
  exit 0
fi
echo
echo "shunt is running in namespace $app (logs: $work/shunt.log, $work/proxy.log, $work/egress.log)."
for t in "${tries[@]}"; do echo "Try: $t"; done
echo "Press Ctrl-C to stop; everything is removed on exit."
wait "$shunt_pid"
