# `scripts/testbed build`: builds every third-party part from pinned Go modules through wrapper
# modules generated here (never committed), caching each under $KEYHOLE_CACHE/bin/<part>-<version>.

# build_part NAME VERSION FUNC [KEY]: runs FUNC VERSION OUT in a fresh wrapper dir unless the
# cached output $KEYHOLE_CACHE/bin/NAME-KEY exists (KEY defaults to VERSION).
build_part() {
  local name=$1 version=$2 func=$3 key=${4:-$2}
  local out="$KEYHOLE_CACHE/bin/$name-$key"
  if [[ -f "$out/.complete" ]]; then
    log "$name $version: cached in $out"
    return 0
  fi
  local work="$KEYHOLE_CACHE/wrappers/$name-$key" logf="$KEYHOLE_CACHE/logs/build-$name-$key.log"
  rm -rf "$work" "$out"
  mkdir -p "$work" "$out" "$(dirname "$logf")"
  log "$name $version: building (log: $logf)"
  local start=$SECONDS
  # The subshell's own errexit must apply, so it may not run in an `if`/`||` context.
  local rc
  set +e
  (
    set -e
    cd "$work"
    "$func" "$version" "$out"
  ) >"$logf" 2>&1
  rc=$?
  set -e
  if ((rc != 0)); then
    tail -n 25 "$logf" >&2
    rm -rf "$out"
    die "building $name $version failed; full log: $logf. Check that the Go module proxy serves it (go list -m), then rerun 'scripts/testbed build'."
  fi
  touch "$out/.complete"
  log "$name $version: built in $((SECONDS - start))s"
}

wrapper_init() {
  printf 'module local.test/%s\n\ngo %s\n' "$1" "${2:-1.24.0}" >go.mod
  [[ -n "${3:-}" ]] && printf 'godebug default=%s\n' "$3" >>go.mod
  return 0
}

build_etcd() {
  local v=$1 out=$2
  wrapper_init etcdbin
  go get -tool "go.etcd.io/etcd/server/v3@$v" "go.etcd.io/etcd/etcdctl/v3@$v"
  go mod tidy
  CGO_ENABLED=0 go build -trimpath -o "$out/etcd" go.etcd.io/etcd/server/v3
  CGO_ENABLED=0 go build -trimpath -o "$out/etcdctl" go.etcd.io/etcd/etcdctl/v3
}

build_kubernetes() {
  local v=$1 out=$2 minor
  minor=$(cut -d. -f2 <<<"$v")
  wrapper_init k8sbins 1.24.0 go1.24
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | jq -r .GoMod)
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local dirs;
  # a consumer pins each to the published v0.MINOR.PATCH tag instead.
  sed -n 's|^\s*\(k8s.io/[^ ]*\) => ./staging/.*|\1|p' "$gomod" | while read -r m; do
    go mod edit -replace="$m=$m@v0.${v#v1.}"
  done
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
  local pkgs=()
  for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  go get -tool "${pkgs[@]/%/@$v}"
  go mod tidy
  local ldf="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldf" -o "$out/" "${pkgs[@]}"
}

build_containerd() {
  local v=$1 out=$2
  wrapper_init ctrdbin 1.24.0
  local pkgs=(github.com/containerd/containerd/v2/cmd/containerd
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
    github.com/containerd/containerd/v2/cmd/ctr)
  go get -tool "${pkgs[@]/%/@$v}"
  go mod tidy
  CGO_ENABLED=0 go build -trimpath -tags no_btrfs \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$v" -o "$out/" "${pkgs[@]}"
}

build_runc() {
  local v=$1 out=$2
  wrapper_init runcbin 1.23.0
  go get -tool "github.com/opencontainers/runc@$v"
  go mod tidy
  # nsexec is C, so cgo is mandatory; seccomp is what RuntimeDefault profiles need.
  CGO_ENABLED=1 go build -trimpath -tags seccomp \
    -ldflags "-s -w -X main.version=${v#v}" -o "$out/runc" github.com/opencontainers/runc
}

build_vault() {
  local v=$1 out=$2
  wrapper_init vaultbin 1.24.0
  # Vault's own go.mod replaces api/sdk with in-tree copies; a wrapper uses published tags instead.
  go mod edit -replace=github.com/ma314smith/signedxml@v1.1.1=github.com/moov-io/signedxml@v1.1.1
  go mod edit -replace=github.com/99designs/keyring=github.com/Jeffail/keyring@v1.2.3
  # Some of Vault's plugin module versions are missing from the checksum database (404), so
  # this build alone skips it; the module proxy still serves and hashes every zip.
  export GOSUMDB=off
  go get -tool "github.com/hashicorp/vault@$v"
  go get "github.com/hashicorp/vault/sdk@$VAULT_SDK_VERSION"
  go mod tidy
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/hashicorp/vault/version.Version=${v#v}" \
    -o "$out/vault" github.com/hashicorp/vault
}

build_helm() {
  local v=$1 out=$2
  wrapper_init helmbin 1.24.0
  go get -tool "helm.sh/helm/v3/cmd/helm@$v"
  go mod tidy
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$v" \
    -o "$out/helm" helm.sh/helm/v3/cmd/helm
}

# Redis from Debian's packages, unpacked (apt-get download + dpkg -x) into the cache: no
# service is installed or started, and its libraries are found through a wrapper script.
build_redis() {
  local v=$1 out=$2 debver
  debian_version() { apt-cache madison redis-tools | awk -v v="$v" '$3 ~ ("^[0-9]+:" v "-") {print $3; exit}'; }
  debver=$(debian_version)
  if [[ -z $debver ]]; then
    apt-get update -qq
    debver=$(debian_version)
  fi
  [[ -n $debver ]] || { echo "no Debian build of redis $v on this machine's mirrors (apt-cache madison redis-tools)" >&2; exit 1; }
  # apt-get download writes as the _apt user when it can; a private dir it may enter avoids a warning.
  chmod 755 .
  apt-get download "redis-tools=$debver" "redis-server=$debver" libjemalloc2 liblzf1
  local deb
  for deb in ./*.deb; do dpkg -x "$deb" "$out/.root"; done
  local libdir
  libdir=$(dirname "$(find "$out/.root/usr/lib" -name 'libjemalloc.so.2' | head -n1)")
  local tool
  for tool in redis-server redis-cli; do
    cat >"$out/$tool" <<SH
#!/bin/sh
# Debian's $tool $debver, unpacked by 'scripts/testbed build': run it with its own libraries.
LD_LIBRARY_PATH="$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$out/.root/usr/bin/$tool" "\$@"
SH
    chmod 755 "$out/$tool"
  done
  if LD_LIBRARY_PATH=$libdir ldd "$out/.root/usr/bin/redis-check-rdb" | grep 'not found'; then
    echo "redis needs libraries this machine lacks (above); install them with apt-get" >&2
    exit 1
  fi
  "$out/redis-server" --version | grep "v=$v " >/dev/null || { echo "unpacked redis-server is not $v" >&2; exit 1; }
}

# The OCI registry (distribution) from Debian's docker-registry package, unpacked like Redis: the
# package's postinst (a system user, a systemd service on :5000) never runs, `up` starts the
# binary with its own config, by pid. It is a Go binary needing only libc.
build_registry() {
  local v=$1 out=$2 debver
  debian_version() { apt-cache madison docker-registry | awk -v v="$v" '$3 ~ ("^([0-9]+:)?" v "[+-]") {print $3; exit}'; }
  debver=$(debian_version)
  if [[ -z $debver ]]; then
    apt-get update -qq
    debver=$(debian_version)
  fi
  [[ -n $debver ]] || { echo "no Debian build of docker-registry $v on this machine's mirrors (apt-cache madison docker-registry)" >&2; exit 1; }
  chmod 755 .
  apt-get download "docker-registry=$debver"
  dpkg -x ./docker-registry_*.deb "$out/.root"
  ln -s .root/usr/bin/docker-registry "$out/registry"
  if ldd "$out/registry" 2>&1 | grep 'not found'; then
    echo "the registry needs libraries this machine lacks (above); install them with apt-get" >&2
    exit 1
  fi
  # Prints e.g. "github.com/docker/distribution 2.8.2+ds1".
  "$out/registry" --version | grep -E " v?$v([+~ ]|\$)" >/dev/null || { echo "unpacked registry is not $v" >&2; exit 1; }
}

# The S3 store (versitygw, see common.sh): one static binary, `versitygw posix DIR` at `up`.
# Its plugin and RDMA/GPU commands are separate main packages (and cgo), not built here.
build_s3() {
  local v=$1 out=$2
  wrapper_init s3bin 1.25.0
  go get -tool "github.com/versity/versitygw/cmd/versitygw@$v"
  go mod tidy
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.Version=$v -X main.Build=$v -X main.BuildTime=1970-01-01T00:00:00Z" \
    -o "$out/versitygw" github.com/versity/versitygw/cmd/versitygw
  "$out/versitygw" --version | grep "$v" >/dev/null || { echo "built versitygw does not report $v" >&2; exit 1; }
}

# Debian packages the bed needs: libseccomp for building runc, CNI plugins, busybox for the job
# image, gcc for the pause binary, openssl for the PKI, apache2-utils for htpasswd (the registry's
# htpasswd auth accepts bcrypt entries only, which openssl cannot make).
APT_PACKAGES=(libseccomp-dev pkg-config containernetworking-plugins iptables busybox-static openssl jq git ca-certificates iproute2 procps curl gcc libc6-dev apache2-utils)

install_debian_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq >/dev/null || die "apt-get update failed; check the machine reaches Debian's mirror"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
}

# The parts `scripts/testbed build [PART]` knows.
BUILD_PARTS=(etcd kubernetes containerd runc helm vault redis registry s3)

cmd_build() {
  local only=${1:-all}
  [[ $only == all || " ${BUILD_PARTS[*]} " == *" $only "* ]] ||
    die "unknown part '$only': scripts/testbed build [$(IFS='|' && echo "${BUILD_PARTS[*]}")]"
  install_debian_packages
  [[ $only == all || $only == etcd ]] && build_part etcd "$ETCD_VERSION" build_etcd
  [[ $only == all || $only == kubernetes ]] && build_part kubernetes "$KUBERNETES_VERSION" build_kubernetes
  [[ $only == all || $only == containerd ]] && build_part containerd "$CONTAINERD_VERSION" build_containerd
  [[ $only == all || $only == runc ]] && build_part runc "$RUNC_VERSION" build_runc
  [[ $only == all || $only == helm ]] && build_part helm "$HELM_VERSION" build_helm
  [[ $only == all || $only == vault ]] && build_part vault "$VAULT_VERSION" build_vault "$VAULT_VERSION-sdk$VAULT_SDK_VERSION"
  [[ $only == all || $only == redis ]] && build_part redis "$REDIS_VERSION" build_redis
  [[ $only == all || $only == registry ]] && build_part registry "$REGISTRY_VERSION" build_registry
  [[ $only == all || $only == s3 ]] && build_part s3 "$S3_VERSION" build_s3
  log "build complete: binaries under $KEYHOLE_CACHE/bin"
}
