#!/bin/bash
# The kubectl way of bootstrapping a user, as OnDemand's old hook scripts do
# it (k8s-bootstrap-ondemand.sh + set-k8s-creds.sh), written here from their
# description for the benchmark: templated manifests through `kubectl apply`,
# the pull secret through `kubectl create --dry-run=client | kubectl apply`,
# `kubectl patch` of the ServiceAccount, and `kubectl config set-credentials`
# run as the user (tokens on its command line, as the old script did).
#
# usage: kubectl-hook.sh USERNAME HOOK_ENV [--cluster-only]
set -euo pipefail
ONDEMAND_USERNAME="$1"
HOOK_ENV="$2"
# shellcheck disable=SC1090
source "$HOOK_ENV"
KUBECTL="${KUBECTL:-kubectl}"
NAMESPACE="${NAMESPACE_PREFIX}${ONDEMAND_USERNAME}"
TIMESTAMP=$(date +%s)
TMPFILE=$(mktemp "/tmp/k8-ondemand-bootstrap-${ONDEMAND_USERNAME}.XXXXXX")
cat > "$TMPFILE" <<YAML
---
apiVersion: v1
kind: Namespace
metadata:
  name: "$NAMESPACE"
  labels:
    app.kubernetes.io/name: open-ondemand
  annotations:
    openondemand.org/last-hook-execution: "$TIMESTAMP"
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  namespace: $NAMESPACE
  name: deny-from-other-namespaces
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
    - ipBlock:
        cidr: $NETWORK_POLICY_ALLOW_CIDR
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  namespace: "$NAMESPACE"
  name: "$ONDEMAND_USERNAME-ood-initializer"
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: ood-initializer
subjects:
- kind: ServiceAccount
  name: default
  namespace: "$NAMESPACE"
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  namespace: "$NAMESPACE"
  name: "$ONDEMAND_USERNAME-ood-user"
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: ood-user
subjects:
- kind: User
  name: "$ONDEMAND_USERNAME"
YAML
if [ "${USE_JOB_POD_REAPER:-}" = "true" ]; then
  cat >> "$TMPFILE" <<YAML
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: "$ONDEMAND_USERNAME-job-pod-reaper-rolebinding"
  namespace: "$NAMESPACE"
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: job-pod-reaper
subjects:
- kind: ServiceAccount
  name: job-pod-reaper
  namespace: job-pod-reaper
YAML
fi
"$KUBECTL" apply -f "$TMPFILE" >/dev/null
rm -f "$TMPFILE"
if [ -n "${IMAGE_PULL_SECRET:-}" ]; then
  "$KUBECTL" create secret generic "$IMAGE_PULL_SECRET" \
    --from-file=.dockerconfigjson="$REGISTRY_DOCKER_CONFIG_JSON" \
    --type=kubernetes.io/dockerconfigjson -n "$NAMESPACE" \
    -o yaml --dry-run=client | "$KUBECTL" apply -f- >/dev/null
  "$KUBECTL" patch serviceaccount default -n "$NAMESPACE" \
    -p "{\"imagePullSecrets\": [{\"name\": \"${IMAGE_PULL_SECRET}\"}]}" >/dev/null
fi
[ "${3:-}" = "--cluster-only" ] && exit 0
# As the user, from a directory every user may enter (the caller's may be
# root's own, such as a checkout under /root).
cd /
runuser -u "$ONDEMAND_USERNAME" -- env -u KUBECONFIG HOME="$(getent passwd "$ONDEMAND_USERNAME" | cut -d: -f6)" \
  "$KUBECTL" config set-credentials "${K8S_USERNAME_PREFIX:-}$ONDEMAND_USERNAME" \
  --auth-provider=oidc \
  --auth-provider-arg=idp-issuer-url="$IDP_ISSUER_URL" \
  --auth-provider-arg=client-id="$CLIENT_ID" \
  --auth-provider-arg=client-secret="$CLIENT_SECRET" \
  --auth-provider-arg=refresh-token="${OOD_OIDC_REFRESH_TOKEN:-}" \
  --auth-provider-arg=id-token="${OOD_OIDC_ACCESS_TOKEN:-}" >/dev/null
