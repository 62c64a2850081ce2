# Shared settings for tests/cluster/node/{build,images,up,down}. Sourced.
#
# The node: kubelet, kube-scheduler and kube-proxy of the same Kubernetes
# release as the control plane, containerd + runc, the standard CNI plugins
# and kube-router's NetworkPolicy firewall, every one built from its Go
# module (see build). Its network never leaves the machine: a bridge of the
# harness's own carries the node's address and the pods' (NODE_CIDR below),
# with no route or NAT to anywhere else.

source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

NODE_DIR="$CLUSTER_DIR/node"
NODE_STATE="$STATE_DIR/node"

CONTAINERD_VERSION="v2.4.2"
RUNC_VERSION="v1.5.3"
CNI_PLUGINS_VERSION="v1.10.0"
# The only kube-router v2 release the Go module proxy serves (go list -m
# -versions github.com/cloudnativelabs/kube-router/v2): v2.2+ are "not
# available" there.
KUBE_ROUTER_VERSION="v2.1.0"
# The image registry for the pull-secret tests (htpasswd, TLS, loopback).
REGISTRY_VERSION="v3.1.2"

# The harness's own network: a bridge, the node's InternalIP on it (also the
# pods' gateway and the source of the host's own connections to pods) and the
# pods' range, host-local IPAM. Nothing routes this range off the machine.
NODE_BRIDGE="${OOD_TEST_NODE_BRIDGE:-ood-br0}"
NODE_CIDR="${OOD_TEST_NODE_CIDR:-10.213.0.0/24}"
NODE_IP="${OOD_TEST_NODE_IP:-10.213.0.1}"
NODE_NAME="${OOD_TEST_NODE_NAME:-ood-node-1}"
# The web node: a network namespace of the harness's own on the bridge
# (WEB_NODE_NETNS, entered with nsenter --net=...). The host itself (the
# node, NODE_IP) is always let through by kube-router to the pods on it, as
# NetworkPolicy lets a node reach its own pods; connections from this
# namespace are what NETWORK_POLICY_ALLOW_CIDR decides. Pod addresses start
# at .10 of NODE_CIDR: .2-.9 are the harness's.
WEB_NODE_IP="${OOD_TEST_WEB_NODE_IP:-10.213.0.2}"
POD_RANGE_START="${OOD_TEST_POD_RANGE_START:-10.213.0.10}"
# The apiserver's --service-cluster-ip-range (tests/cluster/up).
SERVICE_CIDR="10.96.0.0/16"
NODE_PORT_RANGE="30000-32767"

# Ports of the node's daemons (on the node address or loopback; kube-router's
# health and metrics ports are off, containerd's streaming port is a random
# loopback one), away
# from the upstream defaults so a second setup on this machine does not clash.
KUBELET_PORT="${OOD_TEST_KUBELET_PORT:-21250}"
KUBELET_HEALTHZ_PORT="${OOD_TEST_KUBELET_HEALTHZ_PORT:-21248}"
SCHEDULER_PORT="${OOD_TEST_SCHEDULER_PORT:-21259}"
KUBE_PROXY_HEALTHZ_PORT="${OOD_TEST_KUBE_PROXY_HEALTHZ_PORT:-21256}"
KUBE_PROXY_METRICS_PORT="${OOD_TEST_KUBE_PROXY_METRICS_PORT:-21249}"

# The workload image (Debian's busybox-static) and the pause image, both
# built locally (images) and imported into containerd; never pulled.
TEST_IMAGE="localhost/ood-test/busybox:1"
PAUSE_IMAGE="localhost/ood-test/pause:1"
# The private image's repository and tag in the local registry
# (PRIVATE_IMAGE=127.0.0.1:REGISTRY_PORT/PRIVATE_IMAGE_NAME).
PRIVATE_IMAGE_NAME="ood-test/private:1"
REGISTRY_PORT="${OOD_TEST_REGISTRY_PORT:-21500}"
REGISTRY_USER="ood-puller"

nlog() { printf '[node] %s\n' "$*" >&2; }
ndie() { printf '[node] ERROR: %s\n' "$*" >&2; exit 1; }

# A key that changes whenever anything that goes into the node's binaries
# changes.
node_build_key() {
    cat "$NODE_DIR"/go/kube/go.mod "$NODE_DIR"/go/kube/go.sum "$NODE_DIR"/build \
        | { cat; go version; echo "$K8S_VERSION $CONTAINERD_VERSION $RUNC_VERSION $CNI_PLUGINS_VERSION $KUBE_ROUTER_VERSION $REGISTRY_VERSION"; } \
        | sha256sum | cut -c1-16
}
node_bin_dir() { echo "$CACHE_DIR/node-bin-$(node_build_key)"; }

# The images' key: the recipe, and the Debian package it unpacks.
images_dir() {
    local key
    key="$({ cat "$NODE_DIR/images" "$NODE_DIR/oci-archive.py"; echo "$PAUSE_IMAGE $TEST_IMAGE $PRIVATE_IMAGE_NAME"; } | sha256sum | cut -c1-16)"
    echo "$CACHE_DIR/node-images-$key"
}

node_alive() {
    local pidfile="$NODE_STATE/$1.pid"
    [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# The host's firewall as ./up records it before it starts and ./down compares
# with at its end: per table, the chains other than the built-in ones, the
# built-in chains' policies other than ACCEPT, and every rule (no counters).
# A table the node's components loaded stays loaded once empty (iptables-nft
# keeps its built-in chains, ACCEPT, no rules): that is not a difference.
fw_save() {
    "$1-save" | awk '
        /^\*/ { t = substr($0, 2) }
        /^:/ { c = substr($1, 2)
               if (c ~ /^(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING)$/) {
                   if ($2 != "ACCEPT") print t " policy " c " " $2
               } else print t " chain " c }
        /^-A / { print t " " $0 }'
}
