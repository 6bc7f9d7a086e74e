# `scripts/testbed up|down|status|env`: starts and stops the bed's processes, each recorded by pid.
source "$(dirname "${BASH_SOURCE[0]}")/audit.sh"

NODE_NAME=keyhole-node
# The bed's own bridge: the node address, the pod gateway and the only place pods can reach.
# Nothing is routed or NATed beyond it.
BRIDGE=kh0
# A fixed (locally administered) MAC for the bridge. Without one, Linux gives a bridge the
# lowest MAC among its ports, so it changed whenever a pod's veth came or went, and running
# pods kept sending to the old gateway MAC until their ARP entry expired: requests to Vault
# from a broker stalled for seconds whenever other pods started or stopped.
BRIDGE_MAC=02:6b:68:00:00:01
NODE_IP=10.213.0.1
POD_SUBNET=10.213.0.0/24
SERVICE_RANGE=10.96.0.0/24
SERVICE_IP=10.96.0.1
APISERVER_URL="https://$NODE_IP:6443"
ETCD_URL=http://127.0.0.1:23790
VAULT_PORT=8200
# Vault over TLS (the bed's PKI), on loopback and the bridge: for brokers given a CA bundle.
VAULT_TLS_PORT=8201
# Redis for Vault's database secrets engine; on the bridge too, so job pods can use the
# credentials they get.
REDIS_PORT=16379
# The private OCI registry (TLS with the bed's PKI, htpasswd auth): on the bridge only, where
# containerd pulls for pods; nothing else needs it.
REGISTRY="$NODE_IP:5000"
REGISTRY_USER=keyhole
# The busybox job image pushed there at `up` and removed from containerd's store, so a pod that
# names it pulls it for real, with credentials (an image pull Secret).
PRIVATE_IMAGE="$REGISTRY/private/busybox:1"
# The S3 object store (versitygw, posix backend) for GitLab CI cache: plain HTTP on the bridge
# only, where job pods use the pre-signed URLs the runner hands them (path-style, SigV4). One
# bucket, one access key pair generated at `up`.
S3_ADDR="$NODE_IP:9000"
S3_ENDPOINT="http://$S3_ADDR"
S3_BUCKET=keyhole-cache
S3_REGION=us-east-1
RUN_DIR=/run/keyhole-testbed

bin_dir() { echo "$KEYHOLE_TESTBED_DIR/bin"; }
pid_file() { echo "$KEYHOLE_TESTBED_DIR/pids/$1.pid"; }
log_file() { echo "$KEYHOLE_TESTBED_DIR/logs/$1.log"; }

pid_alive() { [[ -f $(pid_file "$1") ]] && kill -0 "$(cat "$(pid_file "$1")")" 2>/dev/null; }

# start NAME CMD...: runs CMD in the background, records its pid, logs to logs/NAME.log.
start() {
  local name=$1
  shift
  if pid_alive "$name"; then
    log "$name already running (pid $(cat "$(pid_file "$name")"))"
    return 0
  fi
  setsid "$@" >"$(log_file "$name")" 2>&1 </dev/null &
  echo $! >"$(pid_file "$name")"
}

# wait_for NAME SECONDS CHECK...: polls CHECK until it succeeds; on timeout names the part and its log.
wait_for() {
  local name=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$name"; then
      tail -n 20 "$(log_file "$name")" >&2 || true
      fail_up "$name exited during start-up; its log is $(log_file "$name")"
    fi
    ((SECONDS < deadline)) || fail_up "$name did not become ready within ${limit}s; its log is $(log_file "$name")"
    sleep 0.5
  done
  log "$name ready"
}

fail_up() {
  printf '\033[1;31mtestbed: error:\033[0m %s\n' "$*" >&2
  echo "testbed: stopping what this 'up' started; try 'scripts/testbed build' if a binary is missing, or read the log above" >&2
  cmd_down >/dev/null 2>&1 || true
  exit 1
}

link_binaries() {
  local b
  b=$(bin_dir)
  mkdir -p "$b"
  local part
  for part in "etcd-$ETCD_VERSION" "kubernetes-$KUBERNETES_VERSION" "containerd-$CONTAINERD_VERSION" "runc-$RUNC_VERSION" \
    "helm-$HELM_VERSION" "vault-$VAULT_VERSION-sdk$VAULT_SDK_VERSION" "redis-$REDIS_VERSION" "registry-$REGISTRY_VERSION" \
    "s3-$S3_VERSION"; do
    [[ -f $KEYHOLE_CACHE/bin/$part/.complete ]] || die "$part is not built; run 'scripts/testbed build' first"
    ln -sf "$KEYHOLE_CACHE/bin/$part"/* "$b/"
  done
}

ctr_k8s() { "$(bin_dir)/ctr" --address "$RUN_DIR/containerd.sock" -n k8s.io "$@"; }
kubectl_admin() { "$(bin_dir)/kubectl" --kubeconfig "$KEYHOLE_TESTBED_DIR/admin.kubeconfig" "$@"; }
vault_admin() { VAULT_ADDR="http://127.0.0.1:$VAULT_PORT" VAULT_TOKEN="$(cat "$KEYHOLE_TESTBED_DIR/vault-root-token")" "$(bin_dir)/vault" "$@"; }

pin_bridge_mac() {
  [[ $(cat "/sys/class/net/$BRIDGE/address") == "$BRIDGE_MAC" ]] || ip link set "$BRIDGE" address "$BRIDGE_MAC"
}

setup_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge || fail_up "cannot create bridge $BRIDGE (needs root and the bridge module)"
    echo "$BRIDGE" >"$KEYHOLE_TESTBED_DIR/created-bridge"
  fi
  pin_bridge_mac
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  mkdir -p "$KEYHOLE_TESTBED_DIR/cni/net.d" "$KEYHOLE_TESTBED_DIR/cni/ipam"
  # No ipMasq, no default route: pods reach only the bridge subnet (this node and each other).
  cat >"$KEYHOLE_TESTBED_DIR/cni/net.d/10-keyhole.conflist" <<JSON
{"cniVersion":"1.0.0","name":"keyhole","plugins":[
 {"type":"bridge","bridge":"$BRIDGE","isGateway":true,"ipMasq":false,"hairpinMode":true,
  "ipam":{"type":"host-local","dataDir":"$KEYHOLE_TESTBED_DIR/cni/ipam",
          "ranges":[[{"subnet":"$POD_SUBNET","rangeStart":"10.213.0.10","gateway":"$NODE_IP"}]]}},
 {"type":"loopback"}]}
JSON
  : >"$KEYHOLE_TESTBED_DIR/resolv.conf"
}

start_etcd() {
  start etcd "$(bin_dir)/etcd" --name keyhole --data-dir "$KEYHOLE_TESTBED_DIR/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster keyhole=http://127.0.0.1:23800 --unsafe-no-fsync=true --log-level warn
  wait_for etcd 60 curl -fsS "$ETCD_URL/readyz"
}

# UserNamespacesPodSecurityStandards (alpha, off by default): PodSecurity `restricted` then admits
# uid 0 in a pod with its own user namespace (hostUsers: false), which is how Keyhole runs root
# jobs (`user_namespace_root`); without it such pods fail admission, as a cluster without the gate
# would refuse them.
start_apiserver() {
  local p=$KEYHOLE_TESTBED_DIR/pki
  start kube-apiserver "$(bin_dir)/kube-apiserver" \
    --feature-gates=UserNamespacesPodSecurityStandards=true \
    --etcd-servers="$ETCD_URL" --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" --client-ca-file="$p/ca.crt" \
    --authorization-mode=Node,RBAC --anonymous-auth=true \
    --service-account-issuer="$APISERVER_URL" --service-account-key-file="$p/sa.pub" \
    --service-account-signing-key-file="$p/sa.key" --api-audiences="$APISERVER_URL" \
    --service-cluster-ip-range="$SERVICE_RANGE" --enable-admission-plugins=NodeRestriction \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$p/apiserver-kubelet-client.key" --allow-privileged=true \
    --kubelet-preferred-address-types=InternalIP \
    --enable-priority-and-fairness=false --profiling=false --v=1 $(apiserver_audit_flags)
  wait_for kube-apiserver 120 curl -fsS --cacert "$p/ca.crt" "$APISERVER_URL/readyz"
}

start_controllers() {
  local d=$KEYHOLE_TESTBED_DIR p=$KEYHOLE_TESTBED_DIR/pki
  start kube-controller-manager "$(bin_dir)/kube-controller-manager" \
    --kubeconfig="$d/controller-manager.kubeconfig" --authentication-kubeconfig="$d/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$d/controller-manager.kubeconfig" --service-account-private-key-file="$p/sa.key" \
    --root-ca-file="$p/ca.crt" --use-service-account-credentials=true --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=10257 --controllers='*,-cloud-node-lifecycle' --v=1
  start kube-scheduler "$(bin_dir)/kube-scheduler" --kubeconfig="$d/scheduler.kubeconfig" \
    --authentication-kubeconfig="$d/scheduler.kubeconfig" --authorization-kubeconfig="$d/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259 --v=1
  wait_for kube-controller-manager 90 curl -fsSk https://127.0.0.1:10257/healthz
  wait_for kube-scheduler 90 curl -fsSk https://127.0.0.1:10259/healthz
}

start_containerd() {
  local d=$KEYHOLE_TESTBED_DIR
  mkdir -p "$RUN_DIR" "$d/containerd"
  cat >"$d/containerd.toml" <<TOML
version = 3
root = "$d/containerd"
state = "$RUN_DIR/containerd"
[grpc]
  address = "$RUN_DIR/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "$PAUSE_IMAGE"
[plugins.'io.containerd.cri.v1.images'.registry]
  # Per-registry hosts.toml files (read at each pull): the bed's registry and the CA it trusts.
  config_path = "$d/registry-hosts"
[plugins.'io.containerd.cri.v1.runtime']
  # This machine's root lacks CAP_SYS_RESOURCE, so the kubelet's negative oom_score_adj for
  # sandboxes (-998) cannot be set; clamp to containerd's own value instead.
  restrict_oom_score_adj = true
[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = "$(bin_dir)/runc"
  Root = "$RUN_DIR/runc"
  SystemdCgroup = false
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "$d/cni/net.d"
TOML
  # The bed's registry speaks TLS with a certificate of the bed's CA, which containerd trusts for
  # that host only. Credentials are not here: pods bring them as image pull Secrets.
  mkdir -p "$d/registry-hosts/$REGISTRY"
  cat >"$d/registry-hosts/$REGISTRY/hosts.toml" <<TOML
server = "https://$REGISTRY"
ca = "$d/pki/ca.crt"
TOML
  start containerd env PATH="$(bin_dir):$PATH" "$(bin_dir)/containerd" --config "$d/containerd.toml"
  wait_for containerd 60 "$(bin_dir)/ctr" --address "$RUN_DIR/containerd.sock" version
}

start_kubelet() {
  local d=$KEYHOLE_TESTBED_DIR
  mkdir -p "$d/kubelet" "$d/pod-logs"
  cat >"$d/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$RUN_DIR/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $d/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
resolvConf: $d/resolv.conf
podLogsDir: $d/pod-logs
rotateCertificates: false
serverTLSBootstrap: false
evictionHard: {memory.available: "200Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 60
YAML
  start kubelet "$(bin_dir)/kubelet" --config="$d/kubelet.yaml" --kubeconfig="$d/kubelet.kubeconfig" \
    --root-dir="$d/kubelet" --cert-dir="$d/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  wait_for kubelet 90 curl -fsS http://127.0.0.1:10248/healthz
  wait_for kubelet 90 node_ready
}

node_ready() {
  [[ $(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

start_vault() {
  local d=$KEYHOLE_TESTBED_DIR
  head -c 24 /dev/urandom | base64 | tr -d '+/=' >"$d/vault-root-token"
  chmod 600 "$d/vault-root-token"
  # Second listener on the bridge so broker pods reach Vault; the first (dev) one is loopback.
  # Two more serve TLS with the bed's PKI (pki/vault.crt names 127.0.0.1 and the node's IP).
  cat >"$d/vault-listener.hcl" <<HCL
listener "tcp" {
  address = "$NODE_IP:$VAULT_PORT"
  tls_disable = true
}
listener "tcp" {
  address = "127.0.0.1:$VAULT_TLS_PORT"
  tls_cert_file = "$d/pki/vault.crt"
  tls_key_file = "$d/pki/vault.key"
}
listener "tcp" {
  address = "$NODE_IP:$VAULT_TLS_PORT"
  tls_cert_file = "$d/pki/vault.crt"
  tls_key_file = "$d/pki/vault.key"
}
HCL
  start vault "$(bin_dir)/vault" server -dev -dev-root-token-id="$(cat "$d/vault-root-token")" \
    -dev-listen-address="127.0.0.1:$VAULT_PORT" -config="$d/vault-listener.hcl" -log-level=warn
  wait_for vault 60 curl -fsS "http://127.0.0.1:$VAULT_PORT/v1/sys/health"
}

configure_vault() {
  local d=$KEYHOLE_TESTBED_DIR
  vault_admin secrets enable -path=kv -version=2 kv >/dev/null
  vault_admin secrets enable -path=kv1 -version=1 kv >/dev/null
  # Vault's token reviewer: an SA allowed to call TokenReview.
  kubectl_admin -n kube-system create serviceaccount vault-auth >/dev/null
  kubectl_admin create clusterrolebinding vault-auth-delegator --clusterrole=system:auth-delegator \
    --serviceaccount=kube-system:vault-auth >/dev/null
  local reviewer
  reviewer=$(kubectl_admin -n kube-system create token vault-auth --duration=48h)
  vault_admin auth enable kubernetes >/dev/null
  vault_admin write auth/kubernetes/config kubernetes_host="$APISERVER_URL" \
    kubernetes_ca_cert=@"$d/pki/ca.crt" token_reviewer_jwt="$reviewer" disable_local_ca_jwt=true >/dev/null
  vault_admin auth enable jwt >/dev/null
  vault_admin write auth/jwt/config jwt_validation_pubkeys=@"$d/pki/jwt-signing.pub" \
    bound_issuer="$JWT_ISSUER" >/dev/null
  # Every request and response, values HMAC'd (Vault's default): tests read which paths a
  # broker asked for (docs/testbed.md).
  vault_admin audit enable file file_path="$d/logs/vault-audit.log" >/dev/null
  log "vault configured: kv (v2), kv1 (v1), secret (v2), auth kubernetes + jwt, file audit device"
}

JWT_ISSUER=https://gitlab.keyhole.test

redis_cli_admin() {
  REDISCLI_AUTH="$(cat "$KEYHOLE_TESTBED_DIR/redis-password")" "$(bin_dir)/redis-cli" -h 127.0.0.1 -p "$REDIS_PORT" "$@"
}
redis_ping() { [[ $(redis_cli_admin ping) == PONG ]]; }

# Redis with a generated admin password (the `default` user), in memory only. The password is
# in a 0600 config file, never on a command line.
start_redis() {
  local d=$KEYHOLE_TESTBED_DIR
  if [[ ! -s $d/redis-password ]]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '+/=\n' >"$d/redis-password")
  fi
  mkdir -p "$d/redis"
  (
    umask 077
    cat >"$d/redis.conf" <<CONF
bind 127.0.0.1 $NODE_IP
port $REDIS_PORT
protected-mode yes
requirepass $(cat "$d/redis-password")
save ""
appendonly no
dir $d/redis
CONF
  )
  start redis "$(bin_dir)/redis-server" "$d/redis.conf"
  wait_for redis 30 redis_ping
}

# curl -K - reads the credentials from stdin, so the password is never on a command line.
registry_curl() {
  printf 'user = "%s:%s"\n' "$REGISTRY_USER" "$(cat "$KEYHOLE_TESTBED_DIR/registry-password")" |
    curl -fsS -o /dev/null --cacert "$KEYHOLE_TESTBED_DIR/pki/ca.crt" -K - "$@"
}
registry_ready() { registry_curl "https://$REGISTRY/v2/"; }

# The private registry: TLS with the bed's PKI, one htpasswd user ($REGISTRY_USER) whose password
# is generated at `up` (bcrypt in the htpasswd file; the registry accepts no other hash), images
# on disk under the bed's state. Listens on the bridge address only.
start_registry() {
  local d=$KEYHOLE_TESTBED_DIR
  if [[ ! -s $d/registry-password ]]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '+/=\n' >"$d/registry-password")
  fi
  # -i: the password comes from stdin, never from the command line.
  (umask 077 && htpasswd -niB "$REGISTRY_USER" <"$d/registry-password" >"$d/registry-htpasswd") ||
    fail_up "htpasswd failed; run 'scripts/testbed build' (it installs apache2-utils)"
  mkdir -p "$d/registry"
  (
    umask 077
    cat >"$d/registry.yml" <<YAML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $d/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY
  secret: $(head -c 24 /dev/urandom | base64 | tr -d '+/=\n')
  tls:
    certificate: $d/pki/registry.crt
    key: $d/pki/registry.key
auth:
  htpasswd:
    realm: keyhole-testbed
    path: $d/registry-htpasswd
YAML
  )
  start registry "$(bin_dir)/registry" serve "$d/registry.yml"
  wait_for registry 30 registry_ready
}

# Pushes the busybox job image as $PRIVATE_IMAGE, then removes that name from containerd, so
# only a pull with credentials brings it back (the blobs stay, shared with the local image, so
# the pull is quick). The credentials go in a throwaway hosts dir (registry_hosts_with_login).
push_private_image() {
  local hosts
  hosts=$(registry_hosts_with_login)
  local ok=0
  ctr_k8s images tag --force keyhole.local/busybox:1 "$PRIVATE_IMAGE" >>"$(log_file images)" 2>&1 &&
    ctr_k8s images push --hosts-dir "$hosts" "$PRIVATE_IMAGE" >>"$(log_file images)" 2>&1 &&
    ctr_k8s images rm "$PRIVATE_IMAGE" >>"$(log_file images)" 2>&1 && ok=1
  rm -rf "$hosts"
  ((ok)) || fail_up "pushing $PRIVATE_IMAGE to the registry failed; see $(log_file images) and $(log_file registry)"
  log "image $PRIVATE_IMAGE pushed to the registry (and removed from containerd's store)"
}

# s3_curl ARGS...: a bodiless request signed with the bed's S3 key pair (SigV4, service s3); the
# keys come from stdin (-K -), never from the command line. This curl (7.88) does not send the
# x-amz-content-sha256 header S3 requires, so it is given: the SHA-256 of an empty body.
s3_curl() {
  local d=$KEYHOLE_TESTBED_DIR
  printf 'user = "%s:%s"\naws-sigv4 = "aws:amz:%s:s3"\n' "$(cat "$d/s3-access-key")" "$(cat "$d/s3-secret-key")" "$S3_REGION" |
    curl -fsS -o /dev/null -K - \
      -H 'x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' "$@"
}
# ListBuckets answers 200 only to a request signed with the root key pair.
s3_ready() { s3_curl "$S3_ENDPOINT/"; }

# The S3 store: versitygw's posix backend (buckets are directories under $d/s3, object metadata
# in xattrs), its root account the only one: an access key and a secret key generated at the first
# `up` into 0600 files. versitygw takes them from its environment (ROOT_ACCESS_KEY_ID,
# ROOT_SECRET_ACCESS_KEY), never from its command line; other VGW_* settings this shell may hold
# are dropped so only the flags below apply. Listens on the bridge address only, plain HTTP.
start_s3() {
  local d=$KEYHOLE_TESTBED_DIR
  if [[ ! -s $d/s3-access-key || ! -s $d/s3-secret-key ]]; then
    (
      umask 077
      # An AWS-style access key id (20 upper-case letters and digits) and a 40-character secret.
      printf 'KH%s' "$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Z0-9' | head -c 18)" >"$d/s3-access-key"
      head -c 64 /dev/urandom | base64 | tr -d '+/=\n' | head -c 40 >"$d/s3-secret-key"
    )
  fi
  mkdir -p "$d/s3"
  (
    unset LOGFILE WEBHOOK ROOT_ACCESS_KEY ROOT_SECRET_KEY
    while read -r var; do unset "$var"; done < <(compgen -e | grep '^VGW_' || true)
    ROOT_ACCESS_KEY_ID=$(cat "$d/s3-access-key")
    ROOT_SECRET_ACCESS_KEY=$(cat "$d/s3-secret-key")
    export ROOT_ACCESS_KEY_ID ROOT_SECRET_ACCESS_KEY
    start s3 "$(bin_dir)/versitygw" --port "$S3_ADDR" --region "$S3_REGION" \
      --access-log "$(log_file s3-access)" posix "$d/s3"
  )
  wait_for s3 30 s3_ready
  # HEAD answers 200 once the bucket exists (a kept bed); else it is made with PUT.
  if ! s3_curl -I "$S3_ENDPOINT/$S3_BUCKET" >/dev/null 2>&1; then
    s3_curl -X PUT "$S3_ENDPOINT/$S3_BUCKET" || fail_up "creating bucket $S3_BUCKET failed; see $(log_file s3)"
  fi
  log "s3 store at $S3_ENDPOINT, bucket $S3_BUCKET"
}

# Vault's database engine at database/ on that Redis, with a role whose users live seconds
# (default_ttl 6s, max_ttl 60s), so tests see renewals and expiry within a job.
configure_database() {
  local d=$KEYHOLE_TESTBED_DIR
  vault_admin secrets list -format=json | jq -e '."database/"' >/dev/null 2>&1 ||
    vault_admin secrets enable database >/dev/null
  vault_admin write database/config/redis plugin_name=redis-database-plugin host=127.0.0.1 \
    port="$REDIS_PORT" tls=false username=default password=@"$d/redis-password" allowed_roles='*' >/dev/null
  vault_admin write database/roles/short-lived db_name=redis \
    creation_statements='["~*", "+@read", "+ping"]' default_ttl=6s max_ttl=60s >/dev/null
  log "vault configured: database/ (redis at 127.0.0.1:$REDIS_PORT), role short-lived (ttl 6s, max 60s)"
}

write_env() {
  local d=$KEYHOLE_TESTBED_DIR
  cat >"$d/env" <<ENV
export KEYHOLE_TESTBED_DIR=$d
export KUBECONFIG=$d/admin.kubeconfig
export VAULT_ADDR=http://127.0.0.1:$VAULT_PORT
export VAULT_TOKEN=$(cat "$d/vault-root-token")
export KEYHOLE_VAULT_POD_ADDR=http://$NODE_IP:$VAULT_PORT
export KEYHOLE_VAULT_TLS_ADDR=https://127.0.0.1:$VAULT_TLS_PORT
export KEYHOLE_VAULT_TLS_POD_ADDR=https://$NODE_IP:$VAULT_TLS_PORT
export KEYHOLE_VAULT_CA_FILE=$d/pki/ca.crt
export KEYHOLE_VAULT_AUDIT_LOG=$d/logs/vault-audit.log
export KEYHOLE_APISERVER_URL=$APISERVER_URL
export KEYHOLE_JWT_ISSUER=$JWT_ISSUER
export KEYHOLE_JWT_SIGNING_KEY=$d/pki/jwt-signing.key
export KEYHOLE_NODE_NAME=$NODE_NAME
export KEYHOLE_REDIS_ADDR=127.0.0.1:$REDIS_PORT
export KEYHOLE_REDIS_POD_ADDR=$NODE_IP:$REDIS_PORT
export KEYHOLE_REDIS_PASSWORD_FILE=$d/redis-password
export KEYHOLE_REGISTRY=$REGISTRY
export KEYHOLE_REGISTRY_USER=$REGISTRY_USER
export KEYHOLE_REGISTRY_PASSWORD_FILE=$d/registry-password
export KEYHOLE_PRIVATE_IMAGE=$PRIVATE_IMAGE
export PATH=$d/bin:\$PATH
ENV
  # Before the S3 store runs (Redis added in place to an older bed), its lines wait for the next write.
  [[ -s $d/s3-access-key ]] || return 0
  cat >>"$d/env" <<ENV
export KEYHOLE_S3_ENDPOINT=$S3_ENDPOINT
export KEYHOLE_S3_BUCKET=$S3_BUCKET
export KEYHOLE_S3_REGION=$S3_REGION
export KEYHOLE_S3_ACCESS_KEY=$(cat "$d/s3-access-key")
export KEYHOLE_S3_SECRET_KEY_FILE=$d/s3-secret-key
ENV
}

cmd_up() {
  [[ $(id -u) == 0 ]] || die "the test bed needs root (kubelet, containerd, bridge)"
  if [[ -f $KEYHOLE_TESTBED_DIR/env ]] && core_status >/dev/null 2>&1; then
    # Beds started before these were fixed get them in place.
    pin_bridge_mac
    if ! { pid_alive redis && redis_ping >/dev/null 2>&1; }; then
      # A bed started before Redis was part of it: add Redis without disturbing the rest.
      log "adding redis to the running bed"
      link_binaries
      start_redis
      configure_database
      write_env
    fi
    if ! { pid_alive s3 && s3_ready >/dev/null 2>&1; }; then
      # A bed started before the S3 store was part of it (or whose store died): (re)start it in
      # place; its bucket and objects under $KEYHOLE_TESTBED_DIR/s3 are kept.
      log "adding the s3 store to the running bed"
      link_binaries
      stop_pid s3
      start_s3
      write_env
    fi
    if pid_alive registry && registry_ready >/dev/null 2>&1; then
      log "already up; 'scripts/testbed env' prints its settings"
      return 0
    fi
    # containerd reads where registry settings live (config_path) only when it starts, so a bed
    # started before the registry was part of it cannot get it in place: start it afresh.
    log "the running bed has no working registry: restarting it"
  fi
  refuse_foreign_dir "$KEYHOLE_TESTBED_DIR"
  cmd_down >/dev/null 2>&1 || true
  local t0=$SECONDS
  mkdir -p "$KEYHOLE_TESTBED_DIR"/{pids,logs}
  # What `down` checks before it removes the directory: it removes only a bed's own state.
  touch "$KEYHOLE_TESTBED_DIR/$BED_MARKER"
  link_binaries
  generate_pki
  write_kubeconfig "$KEYHOLE_TESTBED_DIR/admin.kubeconfig" admin
  write_kubeconfig "$KEYHOLE_TESTBED_DIR/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$KEYHOLE_TESTBED_DIR/scheduler.kubeconfig" scheduler
  write_kubeconfig "$KEYHOLE_TESTBED_DIR/kubelet.kubeconfig" kubelet
  setup_network
  start_etcd
  start_apiserver
  start_controllers
  start_containerd
  import_images
  start_registry
  push_private_image
  start_kubelet
  start_vault
  configure_vault
  start_redis
  configure_database
  start_s3
  write_env
  log "up in $((SECONDS - t0))s; run: eval \"\$(scripts/testbed env)\""
}

# restart PART [SECONDS]: stops one part of a running bed by its pid, waits SECONDS (default 0)
# and starts it again with the same settings; for fault tests (an apiserver or kubelet restart
# in the middle of a job). Parts whose state would be lost (etcd, Vault's dev server) are not
# offered.
cmd_restart() {
  local part=${1:-} pause=${2:-0}
  [[ $(id -u) == 0 ]] || die "the test bed needs root"
  [[ $pause =~ ^[0-9]+$ ]] || die "restart: SECONDS must be a whole number (got '$pause')"
  core_status >/dev/null 2>&1 || die "restart: the bed is not up; run 'scripts/testbed up'"
  case $part in
  kube-apiserver) stop_pid kube-apiserver; sleep "$pause"; start_apiserver ;;
  kubelet) stop_pid kubelet; sleep "$pause"; start_kubelet ;;
  *) die "restart: PART is kube-apiserver or kubelet (got '$part')" ;;
  esac
  log "$part restarted"
}

stop_pid() { # name
  local f
  f=$(pid_file "$1")
  [[ -f $f ]] || return 0
  local pid
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Containers the bed's containerd started: kill their tasks, then any shim still serving our socket.
stop_containers() {
  local ctr=("$(bin_dir)/ctr" --address "$RUN_DIR/containerd.sock" -n k8s.io)
  if pid_alive containerd; then
    local t
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s KILL "$t" >/dev/null 2>&1 || true; done
  fi
}

stop_shims() {
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q "containerd-shim-runc-v2.*$RUN_DIR/containerd.sock"; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
}

unmount_under() { # dir: unmounts every mount below it, deepest first
  local dir=$1
  awk -v d="$dir" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

# is_bed_dir DIR: DIR is a bed's state: `up` left its marker there (or, from before the marker,
# its pids/ and admin.kubeconfig). `up` and `down` write into and remove no other directory.
is_bed_dir() {
  [[ -f $1/$BED_MARKER ]] || [[ -d $1/pids && -f $1/admin.kubeconfig ]]
}

refuse_foreign_dir() {
  [[ ! -e $1 ]] || is_bed_dir "$1" ||
    die "$1 is not a test bed's state (no $BED_MARKER): not using or removing it; point KEYHOLE_TESTBED_DIR at a new or a bed's directory"
}

cmd_down() {
  local d=$KEYHOLE_TESTBED_DIR
  [[ -d $d ]] || return 0
  refuse_foreign_dir "$d"
  if pid_alive kube-apiserver && pid_alive kubelet; then
    # Let the kubelet tear pods down through CRI so their network namespaces and mounts go too.
    kubectl_admin delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)) && [[ -n $("$(bin_dir)/ctr" --address "$RUN_DIR/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null) ]]; do
      sleep 0.5
    done
  fi
  stop_pid vault
  stop_pid redis
  stop_pid registry
  stop_pid s3
  stop_pid kubelet
  stop_containers
  stop_pid kube-scheduler
  stop_pid kube-controller-manager
  stop_pid kube-apiserver
  stop_pid etcd
  stop_pid containerd
  stop_shims
  unmount_under "$d/"
  unmount_under "$RUN_DIR/"
  if [[ -f $d/created-bridge ]]; then ip link del "$(cat "$d/created-bridge")" 2>/dev/null || true; fi
  rm -rf "$d" "$RUN_DIR"
  log "down"
}

# Every part but Redis, the registry and the S3 store: what `up` needs running to add Redis or
# the S3 store to a bed in place.
core_status() { cmd_status --core; }

cmd_status() {
  local d=$KEYHOLE_TESTBED_DIR p=$KEYHOLE_TESTBED_DIR/pki ok=0
  check() {
    local name=$1
    shift
    if pid_alive "$name" && "$@" >/dev/null 2>&1; then echo "$name: up (pid $(cat "$(pid_file "$name")"))"; else
      echo "$name: DOWN (log: $(log_file "$name"))"
      ok=1
    fi
  }
  [[ -f $d/env ]] || { echo "test bed not up: run 'scripts/testbed up'"; return 1; }
  check etcd curl -fsS "$ETCD_URL/readyz"
  check kube-apiserver curl -fsS --cacert "$p/ca.crt" "$APISERVER_URL/readyz"
  check kube-controller-manager curl -fsSk https://127.0.0.1:10257/healthz
  check kube-scheduler curl -fsSk https://127.0.0.1:10259/healthz
  check containerd "$(bin_dir)/ctr" --address "$RUN_DIR/containerd.sock" version
  check kubelet node_ready
  check vault curl -fsS "http://127.0.0.1:$VAULT_PORT/v1/sys/health"
  [[ ${1:-} == --core ]] || check redis redis_ping
  [[ ${1:-} == --core ]] || check registry registry_ready
  [[ ${1:-} == --core ]] || check s3 s3_ready
  return $ok
}

cmd_env() {
  [[ -f $KEYHOLE_TESTBED_DIR/env ]] || die "test bed not up: run 'scripts/testbed up'"
  cat "$KEYHOLE_TESTBED_DIR/env"
}
