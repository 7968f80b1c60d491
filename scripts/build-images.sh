#!/usr/bin/env bash
# Build the project's images with podman and export each as an OCI archive; print what was done.
#
#   cxg-on-k8s:0.1.0       docker/operator/Dockerfile         the operator and the viewer pod's
#                                                             fetch/save containers
#   cellxgene:1.3.0-slim   docker/cellxgene/Dockerfile.slim   the default viewer
#   aws-cli:1.46.3         docker/aws-cli/Dockerfile          the proof of concept's init container
#                                                             (embedded-form pods)
#
# The Dockerfiles are built as they are, FROM the debootstrap stand-in for the official Python
# image (scripts/build-base-image.sh) passed as their BASE build argument: no container registry
# is reachable here. Layer caches make a rebuild of an unchanged image take seconds.
#
# Names: podman calls `-t cellxgene:1.3.0-slim` localhost/cellxgene:1.3.0-slim, while a pod asking
# for `cellxgene:1.3.0-slim` makes the kubelet look for docker.io/library/cellxgene:1.3.0-slim
# (Docker's normalisation, which containerd's CRI applies). Each image gets both names, and its
# archive carries the docker.io/library one, so that after
#   ctr -n k8s.io images import ARCHIVE
# the settings' default image names (CXG_CELLXGENE_IMAGE, CXG_USERDATA_IMAGE) find it.
#
# Output: $CACHE/images/NAME_TAG.tar (re-exported only when the image's id changes) and
# $CACHE/images/images.txt, one "docker.io/library/NAME:TAG<TAB>ARCHIVE" line per image, which
# the dev cluster's real node imports from. Timings and sizes go to stderr.
#
# Usage: scripts/build-images.sh      (root: podman's storage, debootstrap)
# Env:   XDG_CACHE_HOME (default ~/.cache) picks where the archives go.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="${XDG_CACHE_HOME:-$HOME/.cache}/cxg-on-k8s/images"
say() { printf '%s\n' "$*" >&2; }

# name:tag  Dockerfile  context. The tags are the defaults of cxg_on_k8s.settings (and the PoC's
# aws-cli image of manifests.POC_AWS_CLI_IMAGE); tests/test_images.py checks that they agree.
images=(
    "cxg-on-k8s:0.1.0      docker/operator/Dockerfile        ."
    "cellxgene:1.3.0-slim  docker/cellxgene/Dockerfile.slim  docker/cellxgene"
    "aws-cli:1.46.3        docker/aws-cli/Dockerfile         docker/aws-cli"
)

"$root/scripts/apt-install-missing.sh" podman runc debootstrap

# runc, because crun refuses cgroup v1 "hybrid" hosts such as this VM; explicit rlimits, because
# podman's defaults are above what the VM lets a process raise (setrlimit fails without them).
podman=(podman --runtime /usr/sbin/runc)
limits=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)

start=$SECONDS
base=$("$root/scripts/build-base-image.sh")
say "base $base: $((SECONDS - start)) s"

# pip inside the build reaches the package index the way this host's pip does: the host's pip
# configuration (files and PIP_* variables, merged as pip merges them) becomes a pip.conf mounted
# at /etc/pip.conf, and the CA bundle it names is mounted over the image's own bundle (the pip.conf
# then names that path). Both targets exist in the base image, so the mounts leave nothing behind
# in a layer (a bind mount onto a missing path would leave an empty file there); other options
# naming files of this host (find-links, client-cert) cannot be carried over and are left out.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
host_python="$root/.venv/bin/python"
[[ -x "$host_python" ]] || host_python=python3
image_bundle=/etc/ssl/certs/ca-certificates.crt
host_bundle=$("$host_python" -m pip config list | "$host_python" -c '
import ast, configparser, os, sys
pip_conf, image_bundle = sys.argv[1:]
conf = configparser.ConfigParser(interpolation=None)
bundle = ""
for line in sys.stdin:
    key, _, value = line.rstrip("\n").partition("=")
    section, _, option = key.rpartition(".")
    section = "global" if section == ":env:" else section  # PIP_* variables apply to every command
    value = ast.literal_eval(value)
    if option == "cert":
        bundle, value = value, image_bundle
    elif any(os.path.isabs(word) for word in value.split()):
        print(f"pip option {option}={value} names a file of this host: left out", file=sys.stderr)
        continue
    if not conf.has_section(section):
        conf.add_section(section)
    conf.set(section, option, value)  # pip lists in precedence order: the last one wins
with open(pip_conf, "w") as f:
    conf.write(f)
print(bundle)
' "$work/pip.conf" "$image_bundle")
mounts=(-v "$work/pip.conf:/etc/pip.conf:ro")
if [[ -n "$host_bundle" ]]; then
    mounts+=(-v "$host_bundle:$image_bundle:ro")
fi

mkdir -p "$out"
index="$work/images.txt"
: >"$index"
for entry in "${images[@]}"; do
    read -r name dockerfile context <<<"$entry"
    ref="docker.io/library/$name"
    t=$SECONDS
    "${podman[@]}" build --pull=never --network=host "${limits[@]}" "${mounts[@]}" \
        --build-arg "BASE=$base" -f "$root/$dockerfile" \
        -t "localhost/$name" -t "$ref" "$root/$context" >"$work/build.log" 2>&1 \
        || { cat "$work/build.log" >&2; say "building $name failed"; exit 1; }
    built=$((SECONDS - t))
    id=$("${podman[@]}" image inspect --format '{{.Id}}' "$ref")
    size=$("${podman[@]}" image inspect --format '{{.Size}}' "$ref")
    archive="$out/${name/:/_}.tar"
    t=$SECONDS
    if [[ ! -f "$archive" || "$(cat "$archive.id" 2>/dev/null)" != "$id" ]]; then
        rm -f "$archive.id" "$archive.part"
        "${podman[@]}" save --quiet --format oci-archive -o "$archive.part" "$ref" >/dev/null
        mv "$archive.part" "$archive"
        echo "$id" >"$archive.id"
        exported="exported in $((SECONDS - t)) s"
    else
        exported="archive unchanged"
    fi
    say "$name: build $built s, $((size / 1000000)) MB, ${id:0:12}, $exported"
    printf '%s\t%s\n' "$ref" "$archive" >>"$index"
done
mv "$index" "$out/images.txt"
say "images: $((SECONDS - start)) s in all; archives listed in $out/images.txt"
