#!/usr/bin/env bash
# Print the home of a JDK that can run Keycloak 26 (Java 21 or newer): CXG_JAVA_HOME if set,
# else the newest JDK under /usr/lib/jvm (a Temurin one, on the machines this is developed on).
# Exits 1, saying what it looked at, when there is none.
set -euo pipefail
MIN=21

major() {  # the feature version in a JDK's release file: JAVA_VERSION="25.0.3" -> 25
    sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$1/release" 2>/dev/null
}

if [[ -n "${CXG_JAVA_HOME:-}" ]]; then
    v=$(major "$CXG_JAVA_HOME")
    if [[ -x "$CXG_JAVA_HOME/bin/java" && -n "$v" && "$v" -ge $MIN ]]; then
        echo "$CXG_JAVA_HOME"
        exit 0
    fi
    echo "CXG_JAVA_HOME=$CXG_JAVA_HOME is not a JDK $MIN+ (release file says '${v:-nothing}')" >&2
    exit 1
fi
best="" best_v=0
for home in /usr/lib/jvm/*/; do
    home=${home%/}
    [[ -L "$home" || ! -x "$home/bin/java" ]] && continue
    v=$(major "$home")
    if [[ -n "$v" && "$v" -gt "$best_v" ]]; then best=$home best_v=$v; fi
done
if [[ "$best_v" -ge $MIN ]]; then
    echo "$best"
    exit 0
fi
echo "no JDK $MIN+ under /usr/lib/jvm (newest: ${best:-none}); Keycloak 26 needs one: install a Temurin JDK there or set CXG_JAVA_HOME" >&2
exit 1
