#!/usr/bin/env bash
# Builds the example's image, offline from Debian's packages (no registry):
# PyTorch 1.13 and NumPy from bookworm, plus the gradpool Python package
# installed with pip from this checkout. Writes an OCI archive, compressed
# with gzip for transfer (podman loads it as it is):
#
#   examples/container-torch/build-image.sh OUT.oci.tar.gz
#
# Needs mmdebstrap, podman and about 2 GB of free disk; takes about two
# minutes. The same inputs give an image that trains the same bytes, but
# the archive's digest changes from build to build: a job pins the digest
# of the archive it uploads.
set -euo pipefail
out=${1:?usage: build-image.sh OUT.oci.tar.gz}
repo=$(cd "$(dirname "$0")/../.." && pwd)
trap 'rm -f "$out.partial.$$"; podman rmi -f "localhost/gradpool-build:$$" >/dev/null 2>&1 || true' EXIT
export SOURCE_DATE_EPOCH=1700000000
# The root filesystem streams into podman and the image out of it, so the
# build needs no room for intermediate archives. mmdebstrap ends a failed
# run by sending SIGHUP to its whole process group: in a session of its own
# (setsid), that group is itself, not whoever started this script.
setsid mmdebstrap --quiet --variant=apt \
    --include=python3-torch,python3-numpy,python3-pip \
    --customize-hook="copy-in $repo/python /tmp" \
    --customize-hook='chroot "$1" pip install --quiet --root-user-action=ignore --no-index --no-deps --no-build-isolation --break-system-packages /tmp/python' \
    --customize-hook='rm -rf "$1/tmp/python" "$1/var/cache/apt" "$1/var/lib/apt/lists"' \
    bookworm - |
    podman import --quiet - "localhost/gradpool-build:$$" >/dev/null
podman save --quiet --format oci-archive "localhost/gradpool-build:$$" |
    gzip -1 -n > "$out.partial.$$"
mv "$out.partial.$$" "$out"
echo "$out: $(du -h "$out" | cut -f1), sha256 $(sha256sum "$out" | cut -d' ' -f1)"
