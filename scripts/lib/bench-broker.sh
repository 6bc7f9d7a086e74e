# P1/P2: keyhole-broker against Vault Agent, both on this machine against the bed's Vault,
# both logging in with the same ServiceAccount token and reading the same 20 KV v2 secrets.
# Time is measured from just before exec to the mtime of the last file written (the broker's
# ready marker; the agent's 20th template), so neither side's shutdown counts.
set -euo pipefail
scripts/testbed status >/dev/null || { echo "test bed not up: run scripts/testbed up" >&2; exit 1; }
eval "$(scripts/testbed env)"
if [[ ! -x /usr/bin/time ]]; then
  # GNU time measures each run's peak RSS (P2). Installed in the open, never silently.
  ((EUID == 0)) || { echo "bench: needs GNU time (/usr/bin/time): apt-get install time" >&2; exit 1; }
  echo "bench: installing GNU time for the peak RSS figures (apt-get install time)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y time >&2 || { echo "bench: apt-get install time failed" >&2; exit 1; }
fi
RUNS=${RUNS:-5}
ns=keyhole-bench
work=$(mktemp -d /dev/shm/keyhole-bench.XXXXXX)
trap 'rm -rf "$work"; kubectl delete ns "$ns" --wait=false >/dev/null 2>&1 || true' EXIT

# A previous run's namespace may still be terminating (it is deleted without waiting).
for _ in $(seq 240); do
  phase=$(kubectl get ns "$ns" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [[ $phase == Active ]] && break
  [[ -z $phase ]] && { kubectl create ns "$ns" >/dev/null 2>&1 || true; }
  sleep 0.5
done
kubectl -n "$ns" create serviceaccount bench >/dev/null 2>&1 || true
vault policy write keyhole-bench - >/dev/null <<HCL
path "kv/data/bench/*" { capabilities = ["read"] }
HCL
vault write auth/kubernetes/role/keyhole-bench bound_service_account_names=bench \
  bound_service_account_namespaces="$ns" audience=vault token_policies=keyhole-bench token_ttl=300s >/dev/null
annotations=$work/inputs/annotations
mkdir -p "$work/inputs" "$work/agent-out"
: >"$annotations"
templates=""
for i in $(seq -w 1 20); do
  vault kv put -mount=kv "bench/s$i" value="bench-value-$i-$RANDOM$RANDOM" >/dev/null
  echo "secrets.keyhole.dev/S$i=\"vault:kv/bench/s$i?engine=kv-v2#value\"" >>"$annotations"
  templates+="template {
  contents = \"{{ with secret \\\"kv/data/bench/s$i\\\" }}{{ .Data.data.value }}{{ end }}\"
  destination = \"$work/agent-out/S$i\"
}
"
done
kubectl -n "$ns" create token bench --audience vault --duration 30m >"$work/inputs/token"
cat >"$work/agent.hcl" <<HCL
vault { address = "$VAULT_ADDR" }
exit_after_auth = true
auto_auth {
  method "kubernetes" {
    mount_path = "auth/kubernetes"
    config = { role = "keyhole-bench", token_path = "$work/inputs/token" }
  }
}
template_config { exit_on_retry_failure = true }
$templates
HCL

now_ns() { date +%s%N; }
mtime_ns() { stat -c %.9Y "$1" | tr -d .; }

keyhole_run() {
  local out=$work/k-secrets run=$work/k-run
  rm -rf "$out" "$run"; mkdir -p "$out" "$run"
  local start; start=$(now_ns)
  KEYHOLE_VAULT_ADDR=$VAULT_ADDR KEYHOLE_VAULT_ROLE=keyhole-bench \
    /usr/bin/time -f '%M' -o "$work/k-rss" "${BROKER_BIN:-target/broker/keyhole-broker}" run \
    --inputs-dir "$work/inputs" --secrets-dir "$out" --runtime-dir "$run" 2>"$work/k-log" &
  local pid=$!
  while [[ ! -e $out/.ready ]]; do
    kill -0 $pid 2>/dev/null || { cat "$work/k-log" >&2; exit 1; }
    sleep 0.001
  done
  local done_ns; done_ns=$(mtime_ns "$out/.ready")
  pkill -TERM -P $pid 2>/dev/null || true; wait $pid || true
  echo "$(( (done_ns - start) / 1000 )) $(cat "$work/k-rss")"
}

agent_run() {
  rm -rf "$work/agent-out"; mkdir -p "$work/agent-out"
  local start; start=$(now_ns)
  /usr/bin/time -f '%M' -o "$work/a-rss" vault agent -config="$work/agent.hcl" -log-level=error >"$work/a-log" 2>&1 ||
    { cat "$work/a-log" >&2; exit 1; }
  local last=0 f t
  for f in "$work"/agent-out/*; do t=$(mtime_ns "$f"); ((t > last)) && last=$t; done
  [[ $(ls "$work/agent-out" | wc -l) == 20 ]] || { echo "agent rendered $(ls "$work/agent-out" | wc -l)/20" >&2; exit 1; }
  echo "$(( (last - start) / 1000 )) $(cat "$work/a-rss")"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
k_us=(); k_rss=(); a_us=(); a_rss=()
# measured NAME OUTPUT: a run's "<microseconds> <KiB>", or the bench stops saying which run failed
# (a figure from a failed run would be empty or wrong, never printed).
measured() {
  [[ $2 =~ ^[0-9]+\ [0-9]+$ ]] || { echo "bench: a $1 run measured nothing (got '$2'); see the errors above" >&2; exit 1; }
}
for _ in $(seq "$RUNS"); do
  # Command substitution, not `< <(...)`: a failing run fails the bench.
  result=$(keyhole_run); measured keyhole-broker "$result"
  read -r us rss <<<"$result"; k_us+=("$us"); k_rss+=("$rss")
  result=$(agent_run); measured "Vault Agent" "$result"
  read -r us rss <<<"$result"; a_us+=("$us"); a_rss+=("$rss")
done
k_ms=$(printf '%s\n' "${k_us[@]}" | median); a_ms=$(printf '%s\n' "${a_us[@]}" | median)
k_kib=$(printf '%s\n' "${k_rss[@]}" | median); a_kib=$(printf '%s\n' "${a_rss[@]}" | median)
awk -v k="$k_ms" -v a="$a_ms" -v n="$RUNS" 'BEGIN {printf "P1 keyhole_ms=%.1f agent_ms=%.1f ratio=%.3f runs=%d (median)\n", k/1000, a/1000, k/a, n}'
awk -v k="$k_kib" -v a="$a_kib" -v n="$RUNS" 'BEGIN {printf "P2 keyhole_kib=%d agent_kib=%d ratio=%.3f runs=%d (median)\n", k, a, k/a, n}'
