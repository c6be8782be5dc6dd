#!/usr/bin/env bash
# fresh-debian.sh [COMMAND...]: runs COMMAND (default: .ci/run) in a clone of
# this repository inside a fresh, minimal Debian bookworm root, as a new
# machine would: nothing installed but the base system, so the README's two
# commands must install everything they need themselves. Needs root and
# debootstrap (apt-get install debootstrap).
#
#   scripts/fresh-debian.sh                                  # the test suite, as CI runs it
#   scripts/fresh-debian.sh env DEMO_ONESHOT=1 ./scripts/demo.sh
#
# The root lives in a temporary directory under WORK (default /var/tmp),
# removed afterwards. It runs in a mount namespace of its own, so /proc,
# /sys, /dev and the rest are mounted there only and go with it. ../shared,
# when it exists beside the repository, is mounted read-only beside the
# clone. Certificate authorities added to this machine
# (/usr/local/share/ca-certificates, as a proxy that inspects TLS needs)
# are given to the new root too, since its downloads go through the same
# network.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "fresh-debian.sh: run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "fresh-debian.sh: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }
[ $# -gt 0 ] || set -- env CI=true bash .ci/run

root=$(mktemp -d "${WORK:-/var/tmp}/shunt-fresh.XXXXXX")
trap 'rm -rf "$root" "$root.log"' EXIT
trap 'exit 130' INT TERM
# The new root's /, which every user (the proxy's too) must be able to enter.
chmod 0755 "$root"
echo "fresh-debian.sh: debootstrap bookworm into $root"
debootstrap --variant=minbase bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$root.log" 2>&1 ||
	{ cat "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
	mkdir -p "$root/usr/local/share/ca-certificates"
	cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/work"
git clone -q "$top" "$root/work/main"
shared=$(cd "$top/.." && pwd)/shared
[ -d "$shared" ] && mkdir -p "$root/work/shared"

cmd=$(printf '%q ' "$@")
unshare --mount --propagation private bash -c '
set -e
r=$1 shared=$2 cmd=$3
mount --bind "$r" "$r"   # "ip netns exec" remounts / and needs it to be a mount
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs tmpfs "$r/tmp"
if [ -d "$r/work/shared" ]; then mount --bind -o ro "$shared" "$r/work/shared"; fi
exec chroot "$r" /usr/bin/env -i HOME=/root TERM=dumb \
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	/bin/bash -c "cd /work/main && $cmd"
' fresh "$root" "$shared" "$cmd"
