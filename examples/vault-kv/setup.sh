#!/usr/bin/env bash
# Vault and Kubernetes set-up for the vault-kv example: the job ServiceAccount app-deployer, two
# KV v2 secrets, a policy that reads only them, and a kubernetes-auth role of the same name bound
# to that ServiceAccount. Needs VAULT_ADDR/VAULT_TOKEN/KUBECONFIG (eval "$(scripts/testbed env)")
# and NAMESPACE.
set -euo pipefail
: "${NAMESPACE:?set NAMESPACE}"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n "$NAMESPACE" create serviceaccount app-deployer --dry-run=client -o yaml | kubectl apply -f - >/dev/null
vault kv put -mount=kv examples/vault-kv/db password="db-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')" >/dev/null
vault kv put -mount=kv examples/vault-kv/api key="api-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')" >/dev/null
vault policy write app-deployer - >/dev/null <<'HCL'
path "kv/data/examples/vault-kv/*" { capabilities = ["read"] }
path "sys/internal/ui/mounts/kv" { capabilities = ["read"] }
HCL
vault write auth/kubernetes/role/app-deployer \
  bound_service_account_names=app-deployer bound_service_account_namespaces="$NAMESPACE" \
  audience=vault token_policies=app-deployer token_ttl=10m >/dev/null
