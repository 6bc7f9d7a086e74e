# Local images without a registry: a root filesystem directory becomes a single-layer
# docker-archive, imported into containerd's k8s.io namespace. Pods use them with
# imagePullPolicy IfNotPresent/Never. Adding an image is one line in import_images.

# add_image REF ROOTFS_DIR ENTRYPOINT_JSON [USER]
add_image() {
  local ref=$1 rootfs=$2 entrypoint=$3 user=${4:-}
  local work
  work=$(mktemp -d "$KEYHOLE_TESTBED_DIR/image.XXXXXX")
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
  local diff config_sha
  diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  jq -cn --arg diff "sha256:$diff" --argjson ep "$entrypoint" --arg user "$user" '{
    architecture: "amd64", os: "linux",
    config: {Entrypoint: $ep, User: $user, Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
    rootfs: {type: "layers", diff_ids: [$diff]}}' >"$work/config.json"
  config_sha=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  mv "$work/config.json" "$work/$config_sha.json"
  jq -cn --arg c "$config_sha.json" --arg ref "$ref" '[{Config: $c, RepoTags: [$ref], Layers: ["layer.tar"]}]' \
    >"$work/manifest.json"
  tar -C "$work" -cf "$work.tar" manifest.json "$config_sha.json" layer.tar
  local ctr=("$(bin_dir)/ctr" --address "$RUN_DIR/containerd.sock" -n k8s.io)
  if ! "${ctr[@]}" images import --platform linux/amd64 "$work.tar" >>"$(log_file images)" 2>&1 &&
    ! "${ctr[@]}" images import --local --platform linux/amd64 "$work.tar" >>"$(log_file images)" 2>&1; then
    rm -rf "$work" "$work.tar"
    fail_up "importing image $ref into containerd failed; see $(log_file images)"
  fi
  rm -rf "$work" "$work.tar"
  log "image $ref imported"
}

pause_rootfs() {
  local dir=$1
  mkdir -p "$dir"
  gcc -static -O2 -o "$dir/pause" "$HERE/lib/pause.c" || fail_up "compiling the pause binary failed (needs gcc, libc6-dev)"
}

# An image whose entrypoint is a shell wrapper ending in `exec "$@"` (the shape of many
# official images' docker-entrypoint.sh): it marks the environment, then runs its arguments.
wrapper_rootfs() {
  local dir=$1
  busybox_rootfs "$dir" || return 1
  mkdir -p "$dir/usr/local/bin"
  printf '#!/bin/sh\nexport WRAPPED_BY_ENTRYPOINT=yes\nexec "$@"\n' >"$dir/usr/local/bin/entry.sh"
  chmod 0755 "$dir/usr/local/bin/entry.sh"
}

import_images() {
  : >"$(log_file images)"
  local tmp
  tmp=$(mktemp -d "$KEYHOLE_TESTBED_DIR/rootfs.XXXXXX")
  pause_rootfs "$tmp/pause"
  add_image "$PAUSE_IMAGE" "$tmp/pause" '["/pause"]' 65535
  busybox_rootfs "$tmp/busybox" || fail_up "building the busybox image failed"
  add_image keyhole.local/busybox:1 "$tmp/busybox" '["/bin/sh"]'
  git_rootfs "$tmp/git" || fail_up "building the checkout image failed"
  add_image "$GIT_IMAGE" "$tmp/git" '["/usr/bin/git"]' 1000
  wrapper_rootfs "$tmp/wrapper" || fail_up "building the wrapper image failed"
  add_image keyhole.local/wrapper:1 "$tmp/wrapper" '["/usr/local/bin/entry.sh"]'
  rm -rf "$tmp"
}

# An image holding one dynamically linked binary and the shared libraries it needs (no shell),
# e.g. the broker: `scripts/testbed image keyhole.local/broker:dev target/broker/keyhole-broker`.
binary_rootfs() { # dir binary
  local dir=$1 binary=$2
  mkdir -p "$dir/usr/local/bin" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  cp "$binary" "$dir/usr/local/bin/"
  # TLS clients (rustls' platform verifier) want the system CA bundle even when given a CA.
  ca_bundle "$dir" || die "the image needs the system CA bundle"
  local lib
  for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
}

cmd_image() {
  local ref=${1:?usage: scripts/testbed image REF BINARY} binary=${2:?usage: scripts/testbed image REF BINARY}
  [[ -x $binary ]] || die "$binary is not an executable; build it first (cargo build --release)"
  pid_alive containerd || die "test bed not up: run 'scripts/testbed up'"
  local tmp
  tmp=$(mktemp -d "$KEYHOLE_TESTBED_DIR/rootfs.XXXXXX")
  binary_rootfs "$tmp" "$binary"
  add_image "$ref" "$tmp" "[\"/usr/local/bin/$(basename "$binary")\"]" 1000
  rm -rf "$tmp"
}

# registry_hosts_with_login: a throwaway containerd hosts dir (printed) for the bed's registry
# whose requests carry the bed's login as a static Authorization header, read by ctr from a 0600
# file rather than taken from its command line (--user). The caller removes it.
registry_hosts_with_login() {
  local d=$KEYHOLE_TESTBED_DIR hosts
  hosts=$(mktemp -d "$d/registry-hosts.XXXXXX")
  (
    umask 077
    mkdir -p "$hosts/$REGISTRY"
    cat >"$hosts/$REGISTRY/hosts.toml" <<TOML
server = "https://$REGISTRY"
ca = "$d/pki/ca.crt"
[header]
  Authorization = "Basic $(printf '%s:%s' "$REGISTRY_USER" "$(cat "$d/registry-password")" | base64 -w0)"
TOML
  )
  echo "$hosts"
}

# `scripts/testbed registry-login DIR`: what a client outside the bed needs to push to the bed's
# registry: DIR/auth.json (containers-auth.json with the bed's login, 0600) and DIR/certs/ca.crt
# (the bed's CA). Prints the registry's address, e.g. for
# `scripts/build-images --push "$(scripts/testbed registry-login DIR)/keyhole" --authfile DIR/auth.json --cert-dir DIR/certs`.
cmd_registry_login() {
  local dir=${1:?usage: scripts/testbed registry-login DIR}
  pid_alive registry || die "the bed's registry is not running: run 'scripts/testbed up'"
  mkdir -p "$dir/certs"
  cp "$KEYHOLE_TESTBED_DIR/pki/ca.crt" "$dir/certs/ca.crt"
  local auth
  auth=$(printf '%s:%s' "$REGISTRY_USER" "$(cat "$KEYHOLE_TESTBED_DIR/registry-password")" | base64 -w0)
  (umask 077 && jq -n --arg r "$REGISTRY" --arg a "$auth" '{auths: {($r): {auth: $a}}}' >"$dir/auth.json")
  echo "$REGISTRY"
}

# `scripts/testbed pull REF [ALIAS...]`: containerd pulls REF from the bed's registry (TLS, with
# the bed's login) and tags it as each ALIAS, e.g. the images scripts/build-images pushed there
# under the names the tests use (keyhole.local/broker:dev).
cmd_pull() {
  local ref=${1:?usage: scripts/testbed pull REF [ALIAS...]}
  shift
  [[ $ref == "$REGISTRY"/* ]] || die "$ref is not in the bed's registry ($REGISTRY)"
  pid_alive containerd || die "test bed not up: run 'scripts/testbed up'"
  local hosts ok=0 alias
  hosts=$(registry_hosts_with_login)
  ctr_k8s images pull --hosts-dir "$hosts" --platform linux/amd64 "$ref" >>"$(log_file images)" 2>&1 && ok=1
  rm -rf "$hosts"
  ((ok)) || die "pulling $ref from the bed's registry failed; see $(log_file images)"
  for alias in "$@"; do
    ctr_k8s images tag --force "$ref" "$alias" >>"$(log_file images)" 2>&1 || die "tagging $ref as $alias failed"
  done
  log "image $ref pulled from the bed's registry${*:+ (as $*)}"
}
