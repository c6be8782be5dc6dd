#!/usr/bin/env bash
# Installs everything shunt's build, tests, benchmarks and demo need on a
# fresh Debian machine, as root: Debian packages and the Go toolchain that
# go.mod asks for. Safe to run again: it only adds what is missing.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)

packages=(
  # build
  ca-certificates curl unzip make git gcc libc6-dev
  # capture: both iptables variants, namespaces, users; nft is only the
  # tests' checker of the nftables engine's table (shunt never runs it)
  iptables nftables iproute2 util-linux procps kmod
  # eBPF: regenerating the objects, inspecting what is attached
  clang llvm bpftool libbpf-dev linux-libc-dev
  # proxies, servers and clients the tests drive
  haproxy nginx openssl socat
  bind9 bind9-utils dnsutils knot-dnsutils unbound dnsperf dnsmasq-base
  # the real kuma-cp and istiod of ../shared/tools come xz-compressed
  xz-utils
  # deployment: CNI reference plugins, OCI image tools, unit verification
  containernetworking-plugins umoci skopeo systemd
  # the benchmarks' PNG plots (SHUNT_BENCH_PLOTS)
  gnuplot-nox
)

if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Installing servers must not start them: tests start their own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Go toolchain go.mod names, from the Go module proxy when the machine
# has none (or an older one).
want=$(awk '$1 == "go" {print $2; exit}' "$top/go.mod")
have_go() {
  local g
  for g in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go; do
    [ -x "$g" ] || continue
    local v
    v=$("$g" env GOVERSION 2>/dev/null | sed 's/^go//')
    if [ -n "$v" ] && [ "$(printf '%s\n%s\n' "$want" "$v" | sort -V | head -n1)" = "$want" ]; then
      echo "$g"
      return 0
    fi
  done
  return 1
}
if ! gobin=$(have_go); then
  echo "deps.sh: fetching Go $want from the module proxy"
  tmp=$(mktemp -d)
  curl -fsSL -o "$tmp/go.zip" "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go${want}.linux-$(dpkg --print-architecture).zip"
  unzip -q "$tmp/go.zip" -d "$tmp"
  rm -rf /usr/local/go
  mv "$tmp/golang.org/toolchain@v0.0.1-go${want}.linux-$(dpkg --print-architecture)" /usr/local/go
  chmod +x /usr/local/go/bin/* /usr/local/go/pkg/tool/*/* 2>/dev/null || true
  rm -rf "$tmp"
  gobin=/usr/local/go/bin/go
fi
echo "deps.sh: using $("$gobin" version) at $gobin"
