#!/usr/bin/env bash
# Vault and Kubernetes set-up for the broker-vault example: a job ServiceAccount, a KV v2 secret,
# a policy that reads only it, and a kubernetes-auth role bound to the ServiceAccount.
# Needs VAULT_ADDR/VAULT_TOKEN/KUBECONFIG (eval "$(scripts/testbed env)") and NAMESPACE.
set -euo pipefail
: "${NAMESPACE:?set NAMESPACE}"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n "$NAMESPACE" create serviceaccount app-deployer --dry-run=client -o yaml | kubectl apply -f - >/dev/null
vault kv put -mount=kv demo/db password="s3cr3t-demo-password-$(date +%s)" user=app >/dev/null
vault policy write demo-db - >/dev/null <<'HCL'
path "kv/data/demo/db" { capabilities = ["read"] }
HCL
vault write auth/kubernetes/role/demo-db \
  bound_service_account_names=app-deployer bound_service_account_namespaces="$NAMESPACE" \
  audience=vault token_policies=demo-db token_ttl=5m >/dev/null
