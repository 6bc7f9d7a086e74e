#!/usr/bin/env bash
# Vault set-up for the gitlab-secrets example: a KV v2 secret, a policy reading it, and a JWT-auth
# role bound to GitLab ID-token claims (project acme/app, protected refs only). The bed's jwt auth
# trusts the key in $KEYHOLE_JWT_SIGNING_KEY (your GitLab's JWKS in production: see docs/vault.md).
# Needs VAULT_ADDR/VAULT_TOKEN/KUBECONFIG and NAMESPACE.
set -euo pipefail
: "${NAMESPACE:?set NAMESPACE}"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n "$NAMESPACE" create serviceaccount keyhole-job --dry-run=client -o yaml | kubectl apply -f - >/dev/null
vault kv put -mount=kv examples/gitlab-secrets/db password="gl-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')" >/dev/null
vault policy write acme-app-deploy - >/dev/null <<'HCL'
path "kv/data/examples/gitlab-secrets/*" { capabilities = ["read"] }
path "sys/internal/ui/mounts/kv" { capabilities = ["read"] }
HCL
vault write auth/jwt/role/acme-app-deploy - >/dev/null <<'JSON'
{"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["https://vault.keyhole.test"],
 "bound_claims": {"project_path": "acme/app", "ref_protected": "true"},
 "token_policies": ["acme-app-deploy"], "token_ttl": "10m"}
JSON
