//! The checkout container: clones the job's repository into `$CI_PROJECT_DIR` while the build
//! container starts; the script waits for its marker (see [`contract::step_done_marker`]). It alone sees the job token (one file from the per-job Secret), so the token is
//! never in a URL, argv or env of any container, and never in the build container at all.

use k8s_openapi::api::core::v1::{
    Container, ProjectedVolumeSource, SecretProjection, SecurityContext, Volume, VolumeProjection,
};
use keyhole_contract as contract;

use super::parts::{env_var, key_to_path, mount, read_only_mount};
use super::resources::resources;
use crate::job::{GitStrategy, Job};

/// Name of the checkout container.
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
: >"$DONE_MARKER"
"#;

/// `(container, volume)` for jobs that have a repository and a token, else `None`.
pub fn checkout(
    job: &Job,
    git_image: &str,
    pod_name: &str,
    project_dir: &str,
    security_context: &SecurityContext,
) -> Option<(Container, Volume)> {
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
    let env = vec![
        env_var("REPO_URL", literal(repo_url)),
        env_var("CI_COMMIT_SHA", literal(&job.git.sha)),
        env_var("CI_PROJECT_DIR", literal(project_dir)),
        env_var(
            "GIT_DEPTH",
            job.git.depth.map(|d| d.to_string()).unwrap_or_default(),
        ),
        env_var("GIT_REFSPECS", literal(&refspecs)),
        env_var("GIT_TERMINAL_PROMPT", "0"),
        env_var("HOME", "/tmp"),
        env_var(
            "DONE_MARKER",
            format!(
                "{}/{}",
                contract::RUNTIME_DIR,
                contract::step_done_marker(CHECKOUT_CONTAINER)
            ),
        ),
    ];
    let container = Container {
        name: CHECKOUT_CONTAINER.into(),
        image: Some(git_image.into()),
        command: Some(vec!["sh".into(), "-c".into(), literal(SCRIPT)]),
        env: Some(env),
        security_context: Some(security_context.clone()),
        resources: Some(resources(&[
            ("requests.cpu", Some("10m".into())),
            ("requests.memory", Some("32Mi".into())),
        ])),
        volume_mounts: Some(vec![
            read_only_mount(CHECKOUT_VOLUME, CHECKOUT_DIR),
            mount(contract::RUNTIME_VOLUME, contract::RUNTIME_DIR),
            mount("builds", &project_dir_root(project_dir)),
        ]),
        ..Default::default()
    };
    Some((container, token_volume(pod_name)))
}

/// The checkout's own volume: the job token from the per-job Secret, nothing else of it.
fn token_volume(pod_name: &str) -> Volume {
    Volume {
        name: CHECKOUT_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                secret: Some(SecretProjection {
                    name: pod_name.into(),
                    items: Some(vec![key_to_path("var.CI_JOB_TOKEN", "token")]),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
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
