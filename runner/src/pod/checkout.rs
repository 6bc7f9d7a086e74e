//! The checkout init container: clones the job's repository into `$CI_PROJECT_DIR` before the
//! script runs. It alone sees the job token (one file from the per-job Secret), so the token is
//! never in a URL, argv or env of any container, and never in the build container at all.

use keyhole_contract as contract;
use serde_json::{Value, json};

use crate::job::{GitStrategy, Job};

/// Name of the checkout init container.
pub const CHECKOUT_CONTAINER: &str = "keyhole-checkout";
/// Its private volume: the job token only.
pub const CHECKOUT_VOLUME: &str = "keyhole-checkout";
const CHECKOUT_DIR: &str = "/keyhole/checkout";

/// The shell the container runs. Output goes through the broker's log pipe (masked).
const SCRIPT: &str = r#"set -eu
exec >/keyhole/run/log 2>&1
printf '\033[36;1mFetching %s at %s\033[0;m\n' "$REPO_URL" "$CI_COMMIT_SHA"
mkdir -p "$CI_PROJECT_DIR"
cd "$CI_PROJECT_DIR"
git init -q .
git remote add origin "$REPO_URL"
set -- fetch -q --no-tags origin
if [ -n "${GIT_DEPTH:-}" ] && [ "$GIT_DEPTH" != 0 ]; then set -- "$@" --depth "$GIT_DEPTH"; fi
for spec in $GIT_REFSPECS; do set -- "$@" "$spec"; done
git -c credential.helper='!f() { echo username=gitlab-ci-token; printf "password=%s\n" "$(cat /keyhole/checkout/token)"; }; f' "$@"
git -c advice.detachedHead=false checkout -q -f "$CI_COMMIT_SHA"
printf '\033[36;1mChecked out %s\033[0;m\n' "$(git rev-parse --short HEAD)"
"#;

/// `(init container, volume)` for jobs that have a repository and a token, else `None`.
pub fn checkout(
    job: &Job,
    git_image: &str,
    pod_name: &str,
    project_dir: &str,
    security_context: &Value,
) -> Option<(Value, Value)> {
    if job.git.strategy == GitStrategy::None || job.token.is_none() {
        return None;
    }
    let repo_url = job.git.repo_url.as_ref()?;
    let refspecs = if job.git.refspecs.is_empty() {
        let kind = if job.git.ref_is_tag { "tags" } else { "heads" };
        format!(
            "+refs/{kind}/{r}:refs/remotes/origin/{r}",
            r = job.git.ref_name
        )
    } else {
        job.git.refspecs.join(" ")
    };
    let literal = super::env::literal_env_value;
    let env = json!([
        {"name": "REPO_URL", "value": literal(repo_url)},
        {"name": "CI_COMMIT_SHA", "value": literal(&job.git.sha)},
        {"name": "CI_PROJECT_DIR", "value": literal(project_dir)},
        {"name": "GIT_DEPTH", "value": job.git.depth.map(|d| d.to_string()).unwrap_or_default()},
        {"name": "GIT_REFSPECS", "value": literal(&refspecs)},
        {"name": "GIT_TERMINAL_PROMPT", "value": "0"},
        {"name": "HOME", "value": "/tmp"}
    ]);
    let container = json!({
        "name": CHECKOUT_CONTAINER,
        "image": git_image,
        "command": ["sh", "-c", literal(SCRIPT)],
        "env": env,
        "securityContext": security_context,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        "volumeMounts": [
            {"name": CHECKOUT_VOLUME, "mountPath": CHECKOUT_DIR, "readOnly": true},
            {"name": contract::RUNTIME_VOLUME, "mountPath": contract::RUNTIME_DIR},
            {"name": "builds", "mountPath": project_dir_root(project_dir)}
        ]
    });
    let volume = json!({"name": CHECKOUT_VOLUME, "projected": {"sources": [
        {"secret": {"name": pod_name, "items": [{"key": "var.CI_JOB_TOKEN", "path": "token"}]}}
    ]}});
    Some((container, volume))
}

/// The builds volume is mounted at the builds dir, the parent of every project dir.
pub(super) fn project_dir_root(project_dir: &str) -> String {
    let trimmed = project_dir.trim_end_matches('/');
    let mut parts = trimmed.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(""), Some(first)) => format!("/{first}"),
        _ => "/builds".into(),
    }
}
