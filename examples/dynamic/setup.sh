#!/usr/bin/env bash
# Vault and Kubernetes set-up for the dynamic example: the job ServiceAccount cache-user and a
# kubernetes-auth role of the same name whose policy may read database/creds/short-lived (the bed's
# Redis role, 6 s TTL), renew and revoke its leases. Needs VAULT_ADDR/VAULT_TOKEN/KUBECONFIG and
# NAMESPACE.
set -euo pipefail
: "${NAMESPACE:?set NAMESPACE}"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n "$NAMESPACE" create serviceaccount cache-user --dry-run=client -o yaml | kubectl apply -f - >/dev/null
vault policy write cache-user - >/dev/null <<'HCL'
path "database/creds/short-lived" { capabilities = ["read"] }
path "sys/internal/ui/mounts/database" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
HCL
vault write auth/kubernetes/role/cache-user \
  bound_service_account_names=cache-user bound_service_account_namespaces="$NAMESPACE" \
  audience=vault token_policies=cache-user token_ttl=10m >/dev/null
