#!/usr/bin/env bash
# build.sh [OUTPUT]: builds one of shunt's two images as an OCI archive
# without a container engine: static shunt binaries and iptables from this
# Debian system, laid out by rootfs.sh, packed into one layer with umoci and
# archived with skopeo. SHUNT_IMAGE chooses which:
#
#   init (default)  the init container, build/shunt-init.oci.tar: entrypoint
#                   `shunt install` (the init container's build, without the
#                   eBPF engine and the CNI plugin), the lean build beside it
#                   as shunt-ebpf;
#   node            the DaemonSet's node agent, build/shunt-node.oci.tar:
#                   entrypoint `shunt node` (the full build), the lean build
#                   beside it as shunt-cni, which the agent installs as the
#                   CNI plugin.
#
# Load or push it with skopeo, e.g.
#   skopeo copy oci-archive:build/shunt-init.oci.tar docker://REGISTRY/shunt-init:TAG
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
kind=${SHUNT_IMAGE:-init}
case $kind in
init | node) ;;
*) echo "build.sh: SHUNT_IMAGE=$kind: want init or node" >&2; exit 1 ;;
esac
out=${1:-$repo/build/shunt-$kind.oci.tar}
tag=${SHUNT_IMAGE_TAG:-latest}
for tool in umoci skopeo go; do
	command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (apt-get install umoci skopeo)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

version=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)
build() { # build OUTPUT TAGS
	(cd "$repo" && CGO_ENABLED=0 go build -trimpath -tags "$2" -ldflags "-s -w -X main.version=$version" -o "$1" ./cmd/shunt)
}
if [ "$kind" = init ]; then
	# The entrypoint is the init container's build (no eBPF engine, no
	# CNI plugin: docs/deploy.md, "The lean build"); the lean build, with
	# the eBPF engine, goes beside it.
	build "$work/shunt" lean,initcontainer
	build "$work/shunt-ebpf" lean
	extras=("shunt-ebpf=$work/shunt-ebpf")
	cmd=install
	description="shunt traffic capture init container"
else
	build "$work/shunt" ""
	build "$work/shunt-cni" lean
	extras=("shunt-cni=$work/shunt-cni")
	cmd=node
	description="shunt node agent and CNI plugin"
fi

umoci init --layout "$work/oci"
umoci new --image "$work/oci:$tag"
umoci unpack --image "$work/oci:$tag" "$work/bundle" >/dev/null
"$here/rootfs.sh" "$work/shunt" "$work/bundle/rootfs" "${extras[@]}"
umoci repack --image "$work/oci:$tag" --history.created_by "shunt init-container/build.sh" "$work/bundle" >/dev/null
umoci config --image "$work/oci:$tag" \
	--config.entrypoint /usr/local/bin/shunt \
	--config.cmd "$cmd" \
	--config.env SHUNT_CONFIG=/etc/shunt/capture.yaml \
	--config.env PATH=/usr/local/bin:/usr/sbin:/usr/bin \
	--config.user 0:0 \
	--config.workingdir / \
	--config.label org.opencontainers.image.title="shunt-$kind" \
	--config.label org.opencontainers.image.version="$version" \
	--config.label org.opencontainers.image.description="$description" \
	--history.created_by "shunt init-container/build.sh: entrypoint"
umoci gc --layout "$work/oci"

mkdir -p "$(dirname "$out")"
rm -f "$out"
skopeo copy --quiet "oci:$work/oci:$tag" "oci-archive:$out:shunt-$kind:$tag"
echo "built $out ($(du -h "$out" | cut -f1))"
