# Root filesystems assembled from this machine's Debian packages, shared by the test bed's
# images (scripts/lib/images.sh) and the checkout image of scripts/build-images. Sourced, never
# run. Each function prints what is missing and returns 1; the caller decides how to fail.

# busybox_rootfs DIR: busybox (sh and coreutils-like applets, statically linked in Debian) with
# a non-root user 1000 and writable /tmp, /home/keyhole and /builds.
busybox_rootfs() {
  local dir=$1
  [[ -x /bin/busybox ]] || { echo "/bin/busybox is missing: install busybox (apt-get install busybox)" >&2; return 1; }
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

# git_rootfs DIR: busybox plus this machine's git and its HTTP helper (and the shared libraries
# they load) and the CA bundle: what the checkout init container needs to clone a job's
# repository (`sh` runs the checkout script, git fetches over HTTPS).
git_rootfs() {
  local dir=$1
  busybox_rootfs "$dir" || return 1
  local file lib
  for file in /usr/bin/git /usr/lib/git-core/git-remote-http; do
    [[ -x $file ]] || { echo "$file is missing: install git (apt-get install git)" >&2; return 1; }
    mkdir -p "$dir$(dirname "$file")"
    cp -L "$file" "$dir$file"
    for lib in $(ldd "$file" | grep -o '/[^ ]*'); do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done
  done
  ln -sf git-remote-http "$dir/usr/lib/git-core/git-remote-https"
  ln -sf /usr/bin/git "$dir/usr/lib/git-core/git"
  ca_bundle "$dir"
}

# ca_bundle DIR: the system CA bundle at the path rustls' platform verifier and git read.
ca_bundle() {
  local dir=$1 bundle=/etc/ssl/certs/ca-certificates.crt
  [[ -s $bundle ]] || { echo "$bundle is missing: install ca-certificates" >&2; return 1; }
  mkdir -p "$dir/etc/ssl/certs"
  cp "$bundle" "$dir/etc/ssl/certs/"
}
