#!/usr/bin/env bash
# build.sh [OUTPUT]: builds the init container image as an OCI archive
# (default build/shunt-init.oci.tar) without a container engine: a static
# shunt binary and iptables from this Debian system, laid out by rootfs.sh,
# packed into one layer with umoci and archived with skopeo.
#
# Load or push it with skopeo, e.g.
#   skopeo copy oci-archive:build/shunt-init.oci.tar docker://REGISTRY/shunt-init:TAG
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:-$repo/build/shunt-init.oci.tar}
tag=${SHUNT_IMAGE_TAG:-latest}
for tool in umoci skopeo go; do
	command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (apt-get install umoci skopeo)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

version=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)
# The entrypoint is the init container's build (no eBPF engine, no CNI
# plugin: docs/deploy.md, "The lean build"); the lean build, with the eBPF
# engine, goes beside it as shunt-ebpf.
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -tags lean,initcontainer -ldflags "-s -w" -o "$work/shunt" ./cmd/shunt)
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -tags lean -ldflags "-s -w" -o "$work/shunt-ebpf" ./cmd/shunt)

umoci init --layout "$work/oci"
umoci new --image "$work/oci:$tag"
umoci unpack --image "$work/oci:$tag" "$work/bundle" >/dev/null
"$here/rootfs.sh" "$work/shunt" "$work/bundle/rootfs" "$work/shunt-ebpf"
umoci repack --image "$work/oci:$tag" --history.created_by "shunt init-container/build.sh" "$work/bundle" >/dev/null
umoci config --image "$work/oci:$tag" \
	--config.entrypoint /usr/local/bin/shunt \
	--config.cmd install \
	--config.env SHUNT_CONFIG=/etc/shunt/capture.yaml \
	--config.env PATH=/usr/local/bin:/usr/sbin:/usr/bin \
	--config.user 0:0 \
	--config.workingdir / \
	--config.label org.opencontainers.image.title=shunt-init \
	--config.label org.opencontainers.image.version="$version" \
	--config.label org.opencontainers.image.description="shunt traffic capture init container" \
	--history.created_by "shunt init-container/build.sh: entrypoint"
umoci gc --layout "$work/oci"

mkdir -p "$(dirname "$out")"
rm -f "$out"
skopeo copy --quiet "oci:$work/oci:$tag" "oci-archive:$out:shunt-init:$tag"
echo "built $out ($(du -h "$out" | cut -f1))"
