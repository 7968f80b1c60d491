#!/usr/bin/env bash
# Make the stand-in for the official `python:3.11-slim-bookworm` image and print its name.
#
# Why: the Dockerfiles under docker/ start FROM the official Python image (their BASE build
# argument), which lives in a container registry; this machine reaches package registries only.
# So the images the tests run are built FROM this stand-in instead: Debian bookworm's minbase made
# by debootstrap from the host's own Debian mirror, plus Debian's python3 (3.11) with venv and
# pip, and what else of the official image the Dockerfiles use. Same Debian release, same Python
# minor, different provenance (Debian's python3.11 package, not python.org's build under
# /usr/local): see docker/README.md.
#
# Cached: the image carries a label with the hash of this script, and is rebuilt only when the
# script changes (or the image is gone). A rebuild changes the base's id, which invalidates the
# layer caches of every image built FROM it.
#
# Usage: scripts/build-base-image.sh      (root: debootstrap and podman's storage need it)
set -euo pipefail

IMAGE=localhost/cxg-base/python:3.11-slim-bookworm-debootstrap
LABEL=cxg-on-k8s.base-recipe
recipe=$(sha256sum "$0" | cut -c1-16)

have=$(podman image inspect --format "{{ index .Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true)
if [[ "$have" == "$recipe" ]]; then
    echo "$IMAGE"
    exit 0
fi

# The mirror apt on this host uses for bookworm, so that debootstrap goes where apt goes (and no
# mirror's name is written here); without one, debootstrap's own default mirror.
mirror=$(apt-cache policy | awk '$3 == "bookworm/main" { print $2; exit }')

rootfs=$(mktemp -d /var/tmp/cxg-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm minbase into $rootfs (about a minute)" >&2
# python3-pip's Recommends (a compiler, python3-dev) stay out: debootstrap installs Depends only,
# and the official slim image has no compiler either. netbase (/etc/services, /etc/protocols) and
# tzdata are in the official image too.
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,netbase,tzdata \
    bookworm "$rootfs" ${mirror:+"$mirror"} >&2

# The official image's interpreter is /usr/local/bin/python(3); the Dockerfiles call `python`.
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python3"
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
# Debian marks its Python as externally managed (PEP 668); the official image's is not, and pip
# may install into it there.
rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
# Where scripts/build-images.sh mounts the host's pip configuration during a build: a bind mount
# needs its target to exist, or it leaves an empty file of that name in the layer it ran in.
touch "$rootfs/etc/pip.conf"
# The official image ships no package lists and no downloaded .debs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
# Nor documentation, manual pages or translations (Debian's slim images leave them out, keeping
# the copyright files); the dpkg rule keeps them out of packages a Dockerfile installs later.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/cxg-slim" <<'RULES'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
RULES
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

# The official image's environment and default command.
tar -C "$rootfs" --numeric-owner -c . | podman import \
    --change "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "LABEL $LABEL=$recipe" \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
echo "$IMAGE"
