#!/usr/bin/env bash
# Kubernetes set-up for the k8s-secret example: the Secret registry-credentials, a ServiceAccount
# registry-reader that may `get` that one Secret, and keyhole-job that may not. Needs KUBECONFIG
# and NAMESPACE; REGISTRY_TOKEN sets the value (default: random).
set -euo pipefail
: "${NAMESPACE:?set NAMESPACE}"
token=${REGISTRY_TOKEN:-reg-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')}
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n "$NAMESPACE" create serviceaccount registry-reader --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NAMESPACE" create serviceaccount keyhole-job --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NAMESPACE" create secret generic registry-credentials --from-literal=token="$token" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NAMESPACE" create role read-registry-credentials --verb=get --resource=secrets \
  --resource-name=registry-credentials --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NAMESPACE" create rolebinding registry-reader --role=read-registry-credentials \
  --serviceaccount="$NAMESPACE:registry-reader" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
