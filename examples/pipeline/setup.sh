#!/usr/bin/env bash
# Kubernetes set-up for the pipeline example: a PodSecurity-restricted namespace and the default job
# ServiceAccount (no permissions). Needs KUBECONFIG and NAMESPACE.
set -euo pipefail
: "${NAMESPACE:?set NAMESPACE}"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n "$NAMESPACE" create serviceaccount keyhole-job --dry-run=client -o yaml | kubectl apply -f - >/dev/null
