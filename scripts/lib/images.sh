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

# A small job image: busybox (sh and coreutils-like applets) with a non-root user 1000.
busybox_rootfs() {
  local dir=$1
  mkdir -p "$dir"/{bin,etc,tmp,home/keyhole,builds}
  cp /bin/busybox "$dir/bin/busybox"
  local applet
  for applet in $("$dir/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$dir/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nkeyhole:x:1000:1000:keyhole:/home/keyhole:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nkeyhole:x:1000:\nnobody:x:65534:\n' >"$dir/etc/group"
  chmod 1777 "$dir/tmp"
  chown 1000:1000 "$dir/home/keyhole" "$dir/builds"
}

# The checkout image: busybox plus this machine's git and its HTTP helper (and their libraries),
# for the init container that clones a job's repository before the script runs.
git_rootfs() {
  local dir=$1
  busybox_rootfs "$dir"
  local file lib
  for file in /usr/bin/git /usr/lib/git-core/git-remote-http; do
    [[ -x $file ]] || fail_up "$file is missing: install git (apt-get install git)"
    mkdir -p "$dir$(dirname "$file")"
    cp -L "$file" "$dir$file"
    for lib in $(ldd "$file" | grep -o '/[^ ]*'); do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done
  done
  ln -sf git-remote-http "$dir/usr/lib/git-core/git-remote-https"
  ln -sf /usr/bin/git "$dir/usr/lib/git-core/git"
  mkdir -p "$dir/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
}

# An image whose entrypoint is a shell wrapper ending in `exec "$@"` (the shape of many
# official images' docker-entrypoint.sh): it marks the environment, then runs its arguments.
wrapper_rootfs() {
  local dir=$1
  busybox_rootfs "$dir"
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
  busybox_rootfs "$tmp/busybox"
  add_image keyhole.local/busybox:1 "$tmp/busybox" '["/bin/sh"]'
  git_rootfs "$tmp/git"
  add_image "$GIT_IMAGE" "$tmp/git" '["/usr/bin/git"]' 1000
  wrapper_rootfs "$tmp/wrapper"
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
  mkdir -p "$dir/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
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
