# Shared settings for tests/cluster/{build,up,down}. Sourced, not executed.
#
# Everything the local cluster needs is pinned here: the Kubernetes release
# (the same one Cargo.toml's k8s-openapi feature names), the loopback ports,
# and where built binaries are cached between runs.

set -euo pipefail

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$CLUSTER_DIR/../.." && pwd)"
STATE_DIR="$CLUSTER_DIR/.state"

K8S_VERSION="v1.37.2"

# Built binaries live outside the repo's tracked files and survive `down`.
CACHE_DIR="${OOD_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ood-k8s-bootstrap}"

# Loopback ports, below the ephemeral range; override if they clash.
ETCD_PORT="${OOD_TEST_ETCD_PORT:-22379}"
ETCD_PEER_PORT="${OOD_TEST_ETCD_PEER_PORT:-22380}"
APISERVER_PORT="${OOD_TEST_APISERVER_PORT:-16443}"
# The second cluster (several clusters): its own API server, CA and etcd prefix.
APISERVER2_PORT="${OOD_TEST_APISERVER2_PORT:-16444}"
KCM_PORT="${OOD_TEST_KCM_PORT:-10357}"
DEX_PORT="${OOD_TEST_DEX_PORT:-15556}"
KEYCLOAK_PORT="${OOD_TEST_KEYCLOAK_PORT:-18443}"

# Lifetime of the IdP's ID and access tokens: short, so the tests watch real
# expiry and refresh happen (a test's own token use lasts a few seconds).
OIDC_TOKEN_TTL="${OOD_TEST_OIDC_TOKEN_TTL:-20s}"

# Keycloak, the IdP most OnDemand sites run, from Maven Central
# (org.keycloak:keycloak-quarkus-dist); it runs on Java >= 17. Its access
# tokens live KEYCLOAK_TOKEN_TTL seconds (half a minute: tests see expiry and
# refresh; the refresh margins scale with a token's lifetime).
KEYCLOAK_VERSION="${OOD_TEST_KEYCLOAK_VERSION:-26.7.3}"
KEYCLOAK_TOKEN_TTL="${OOD_TEST_KEYCLOAK_TOKEN_TTL:-30}"
# Build-time options baked into the cached copy by `kc.sh build`, so each
# start skips Quarkus' minute-long re-augmentation (`start --optimized`).
# The H2 file database is seeded once in the cache and copied fresh for
# each cluster (see keycloak/fetch).
KEYCLOAK_BUILD_OPTS=(--db=dev-file --health-enabled=false --metrics-enabled=false)

export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# A key that changes whenever anything that goes into the binaries changes.
build_key() {
    cat "$CLUSTER_DIR"/go/kube/go.mod "$CLUSTER_DIR"/go/kube/go.sum \
        "$CLUSTER_DIR"/go/kube/etcd/main.go \
        "$CLUSTER_DIR"/go/dex/go.mod "$CLUSTER_DIR"/go/dex/go.sum "$CLUSTER_DIR"/go/dex/main.go \
        "$CLUSTER_DIR"/build \
        | { cat; go version; echo "$K8S_VERSION"; } | sha256sum | cut -c1-16
}

bin_dir() { echo "$CACHE_DIR/bin-$(build_key)"; }

# The cached, pre-built Keycloak: keyed by version, build options and the
# recipe that made it.
keycloak_dir() {
    local key
    key="$({ printf '%s\n' "${KEYCLOAK_BUILD_OPTS[@]}"; cat "$CLUSTER_DIR/keycloak/fetch"; } \
        | sha256sum | cut -c1-8)"
    echo "$CACHE_DIR/keycloak-$KEYCLOAK_VERSION-$key"
}

# The Java Keycloak runs on: OOD_TEST_JAVA_HOME, else JAVA_HOME, else the
# `java` on PATH; it must be 17 or newer.
keycloak_java_home() {
    local home="${OOD_TEST_JAVA_HOME:-${JAVA_HOME:-}}" java major
    if [[ -z "$home" ]]; then
        java="$(command -v java)" || die "no Java found for Keycloak: install a JDK >= 17 (.ci/run installs default-jre-headless) or set OOD_TEST_JAVA_HOME"
        home="$(dirname "$(dirname "$(readlink -f "$java")")")"
    fi
    [[ -x "$home/bin/java" ]] || die "$home/bin/java not found (OOD_TEST_JAVA_HOME / JAVA_HOME)"
    major="$("$home/bin/java" -version 2>&1 | sed -n '1s/.*version "\([0-9]*\).*/\1/p')"
    [[ "$major" =~ ^[0-9]+$ ]] && ((major >= 17)) \
        || die "Keycloak $KEYCLOAK_VERSION needs Java >= 17; $home/bin/java is version '${major:-unknown}'"
    echo "$home"
}

# The JVM settings of every kc.sh run, exported: that Java; C1 only (no C2
# JIT), which halves a start on 2 busy cores; a modest heap, as other
# clusters share the machine.
keycloak_jvm_env() {
    local home
    home="$(keycloak_java_home)"
    export JAVA_HOME="$home" JAVA_OPTS_KC_HEAP="-Xms64m -Xmx768m"
    export JAVA_OPTS_APPEND="-XX:TieredStopAtLevel=1"
}

# True while the process recorded in .state/NAME.pid is alive.
alive() {
    local pidfile="$STATE_DIR/$1.pid"
    [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}
