# Shared settings for scripts/testbed: pinned versions, cache and state locations, logging.
# Sourced, never run. Every version here keys a cache directory, so bumping one rebuilds only that part.

KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.2.9}
# Vault: the Go proxy here resolves tags only (no commit pseudo-versions), so OpenBao (untagged
# module path) is out, and Vault must build against a published sdk tag instead of its in-tree
# copy. Tried: 1.21.4 (sdk 0.21/0.25.1: PkiCertificateCounter, ActivationFunc missing), 1.20.0
# (sdk 0.18/0.19: Download vs IsPQC split), 1.19.5 with its own sdk 0.15.2 (PluginTier
# missing). 1.19.5 with sdk v0.17.0 compiles.
VAULT_VERSION=${VAULT_VERSION:-v1.19.5}
VAULT_SDK_VERSION=${VAULT_SDK_VERSION:-v0.17.0}
# Debian bookworm's runc 1.1.5 cannot start containers for containerd 2.2 on this kernel
# ("can't get final child's PID from pipe"), so runc is built too (cgo, seccomp).
RUNC_VERSION=${RUNC_VERSION:-v1.3.7}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
# Redis for Vault's built-in redis-database-plugin (dynamic secrets with leases): Debian
# bookworm's build of this upstream version, unpacked into the cache rather than installed (no
# service, no postinst). The newest Debian revision of it is taken, since security fixes arrive
# as new revisions and old ones leave the mirror.
REDIS_VERSION=${REDIS_VERSION:-7.0.15}
# The private OCI registry pods pull from with an image pull Secret: Debian bookworm's
# docker-registry (distribution) of this upstream version, unpacked like Redis. Its Debian
# revisions (e.g. 2.8.2+ds1-1) share the cache entry, the newest one on the mirror is taken.
REGISTRY_VERSION=${REGISTRY_VERSION:-2.8.2}
# The S3 object store for GitLab CI cache (pre-signed SigV4 URLs, path-style): Versity's S3
# gateway (versitygw, Apache-2.0) with its posix backend, buckets as directories under the bed's
# state. Chosen because it verifies SigV4 for real, in headers, in pre-signed query strings and
# in signed chunked uploads, and refuses unsigned or wrongly signed requests, and it builds from
# the Go module proxy with no replace directives. gofakes3 v1.2.0 (the smallest Go S3 server
# there) checks no signatures at all; MinIO and SeaweedFS have no version the proxy lists;
# rclone's `serve s3` drags in every rclone backend.
S3_VERSION=${S3_VERSION:-v1.8.0}
PAUSE_IMAGE=${PAUSE_IMAGE:-registry.k8s.io/pause:3.10}
# The checkout image (busybox + git); the runner's default git_image.
GIT_IMAGE=${GIT_IMAGE:-keyhole.local/git:2}

# Builds survive `down` and new clones: they live outside the work tree, keyed by version.
KEYHOLE_CACHE=${KEYHOLE_CACHE:-/var/cache/keyhole-testbed}
# Running state (PKI, data dirs, pids, logs) of one bed; `down` removes it.
KEYHOLE_TESTBED_DIR=${KEYHOLE_TESTBED_DIR:-/var/lib/keyhole-testbed}
# The file `up` leaves in KEYHOLE_TESTBED_DIR: `down` removes no directory without it.
BED_MARKER=.keyhole-testbed

export GOMODCACHE="$KEYHOLE_CACHE/go/mod"
export GOCACHE="$KEYHOLE_CACHE/go/build"
export GOFLAGS="-mod=mod"
export GOTOOLCHAIN=local

log() { printf '\033[1mtestbed:\033[0m %s\n' "$*" >&2; }
die() {
  printf '\033[1;31mtestbed: error:\033[0m %s\n' "$*" >&2
  exit 1
}
