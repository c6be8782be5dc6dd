#!/usr/bin/env bash
# rootfs.sh SHUNT_BINARY DEST [NAME=BINARY...]: lays out an image's file
# system in DEST from a Debian (bookworm) system: the static shunt binary as
# /usr/local/bin/shunt, each further binary as /usr/local/bin/NAME (the
# init container's shunt-ebpf, the node agent's shunt-cni), the iptables
# programs (nft and legacy) with exactly the shared libraries and xtables
# modules they load, and nothing else: no shell, no package manager.
set -euo pipefail

usage="usage: rootfs.sh SHUNT_BINARY DEST [NAME=BINARY...]"
bin=${1:?$usage}
dest=${2:?$usage}
shift 2
multiarch=$(gcc -print-multiarch 2>/dev/null || dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
xtdir=/usr/lib/$multiarch/xtables

for f in /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi "$xtdir"; do
	[ -e "$f" ] || { echo "rootfs.sh: $f missing: apt-get install iptables" >&2; exit 1; }
done

mkdir -p "$dest"/usr/{bin,sbin,lib/"$multiarch",lib64} "$dest"/etc/shunt "$dest"/run "$dest"/tmp "$dest"/proc "$dest"/sys "$dest"/dev
chmod 1777 "$dest/tmp"
# Debian is merged-/usr: the libraries' recorded paths under /lib resolve.
for d in lib lib64 sbin bin; do ln -sfn usr/$d "$dest/$d"; done

mkdir -p "$dest/usr/local/bin"
install -m 0755 "$bin" "$dest/usr/local/bin/shunt"
for extra in "$@"; do
	case $extra in
	?*=?*) install -m 0755 "${extra#*=}" "$dest/usr/local/bin/${extra%%=*}" ;;
	*) echo "rootfs.sh: $extra: want NAME=BINARY" >&2; exit 1 ;;
	esac
done

install -m 0755 /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi "$dest/usr/sbin/"
for fam in iptables ip6tables; do
	for b in nft legacy; do
		for suffix in "" -save -restore; do
			ln -sfn "xtables-$b-multi" "$dest/usr/sbin/$fam-$b$suffix"
		done
	done
	# The plain names follow Debian's default, nft.
	for suffix in "" -save -restore; do
		ln -sfn "xtables-nft-multi" "$dest/usr/sbin/$fam$suffix"
	done
done
mkdir -p "$dest$xtdir"
cp -a "$xtdir"/. "$dest$xtdir/"

# Every shared object the programs and modules need, at the path the
# dynamic loader looks for it, as a plain file.
libs() {
	ldd "$@" 2>/dev/null | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}'
}
objs=(/usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi "$xtdir"/*.so)
libs "${objs[@]}" | sort -u | while read -r lib; do
	target="$dest/usr${lib#/usr}"
	case $lib in
	/lib/*|/lib64/*) target="$dest/usr$lib" ;;
	esac
	mkdir -p "$(dirname "$target")"
	cp -L "$lib" "$target"
done

# Files the programs read: protocol names for "-p tcp", and users for a
# proxy uid given by name.
cp /etc/protocols "$dest/etc/protocols" 2>/dev/null || printf 'tcp 6 TCP\nudp 17 UDP\n' >"$dest/etc/protocols"
printf 'root:x:0:0:root:/:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/:/usr/sbin/nologin\n' >"$dest/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$dest/etc/group"
# An empty configuration: SHUNT_CONFIG points here, and a ConfigMap mounted
# on /etc/shunt replaces it.
: >"$dest/etc/shunt/capture.yaml"
