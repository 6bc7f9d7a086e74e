# The kube-apiserver's audit log on the bed: one JSON line (level Metadata: who, verb, resource,
# status; never a body) per request of a client other than the control plane and the kubelet,
# so `scripts/bench runner P8` can count the requests a runner makes per job under its own
# user. Rotated at APISERVER_AUDIT_MAX_MIB with APISERVER_AUDIT_BACKUPS old files kept (named
# apiserver-audit-<time>.log beside it), so a busy bed holds at most about 4 x 20 MiB of it.

APISERVER_AUDIT_LOG=$KEYHOLE_TESTBED_DIR/logs/apiserver-audit.log
APISERVER_AUDIT_MAX_MIB=20
APISERVER_AUDIT_BACKUPS=3

# Writes the audit policy and prints the kube-apiserver flags that use it, one per line.
apiserver_audit_flags() {
  local policy=$KEYHOLE_TESTBED_DIR/audit-policy.yaml
  mkdir -p "$(dirname "$APISERVER_AUDIT_LOG")"
  # Not logged: the bed's own control plane and nodes (most of the traffic, none of it a
  # runner's) and health checks. RequestReceived is left out, so a request is one line (a watch
  # two: ResponseStarted and ResponseComplete, same auditID).
  cat >"$policy" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  users: ["system:apiserver", "system:kube-scheduler", "system:kube-controller-manager", "system:kube-proxy"]
- level: None
  userGroups: ["system:nodes", "system:serviceaccounts:kube-system"]
- level: None
  nonResourceURLs: ["/healthz*", "/readyz*", "/livez*"]
- level: Metadata
YAML
  printf '%s\n' --audit-policy-file="$policy" --audit-log-path="$APISERVER_AUDIT_LOG" \
    --audit-log-format=json --audit-log-maxsize="$APISERVER_AUDIT_MAX_MIB" \
    --audit-log-maxbackup="$APISERVER_AUDIT_BACKUPS" --audit-log-maxage=2
}
