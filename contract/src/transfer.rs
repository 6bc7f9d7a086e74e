//! What the transfer containers do for one job: written by `keyhole-runner` from the job
//! payload into the job's Secret (key [`PLAN_SECRET_KEY`]), read by `keyhole-broker transfer`.
//! It holds the job token (and, for the cache, pre-signed URLs), so it lives in the Secret,
//! is mounted only into the transfer containers, and never reaches argv, a URL or a log line.

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// Key of the plan in the per-job Secret.
pub const PLAN_SECRET_KEY: &str = "transfer.plan";
/// Where the plan's volume is mounted in the transfer containers.
pub const PLAN_DIR: &str = "/keyhole/transfer";
/// Scratch space of the transfer containers (an `emptyDir` of their own, on disk): archives on
/// their way, never in memory, never where the job could swap them.
pub const SCRATCH_DIR: &str = "/keyhole/scratch";
/// File name of the plan in [`PLAN_DIR`].
pub const PLAN_FILE: &str = "plan.json";
/// [`PLAN_FILE`] in [`PLAN_DIR`]: where the transfer containers read their plan.
pub const PLAN_PATH: &str = "/keyhole/transfer/plan.json";
/// Name of the container that downloads dependencies' artifacts and restores caches (a
/// preparation step, see [`crate::step_done_marker`]).
pub const FETCH_CONTAINER: &str = "keyhole-fetch";
/// Name of the container that uploads artifacts and saves caches once the script ended.
pub const STORE_CONTAINER: &str = "keyhole-store";
/// File in the runtime dir: the job script's exit code, written (atomically, by rename) after
/// `after_script`, when the job has something to store. The store container waits for it. A
/// job that writes it early or falsely only changes which of its own artifacts are uploaded:
/// the job's result comes from the build container's exit code.
pub const SCRIPT_STATUS_FILE: &str = "script-status";
/// Exit code of a store or fetch container whose transfer failed the job (an artifact that
/// could not be uploaded, a dependency that could not be downloaded).
pub const EXIT_TRANSFER_FAILED: i32 = 1;
/// Exit code of a transfer container whose plan could not be read (a runner bug).
pub const EXIT_BAD_PLAN: i32 = 3;

/// One job's transfers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// GitLab's base URL (`https://gitlab.example.com`), as the runner reaches it.
    pub gitlab_url: String,
    pub job_id: u64,
    #[serde(serialize_with = "expose")]
    pub job_token: SecretString,
    /// The project directory (`CI_PROJECT_DIR`): every path is relative to it.
    pub project_dir: String,
    /// Artifacts of earlier jobs to extract before the script, in payload order.
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    /// Artifacts to upload after the script, in payload order.
    #[serde(default)]
    pub artifacts: Vec<ArtifactUpload>,
    /// Compression of zip archives (`ARTIFACT_COMPRESSION_LEVEL`).
    #[serde(default)]
    pub compression: Option<String>,
    /// Caches to restore before the script and save after it, in payload order.
    #[serde(default)]
    pub caches: Vec<CachePlan>,
    /// Compression of cache archives (`CACHE_COMPRESSION_LEVEL`).
    #[serde(default)]
    pub cache_compression: Option<String>,
}

impl Plan {
    /// Whether anything runs before the script.
    pub fn fetches(&self) -> bool {
        !self.dependencies.is_empty() || self.caches.iter().any(|c| !c.restore.is_empty())
    }

    /// Whether anything runs after the script.
    pub fn stores(&self) -> bool {
        !self.artifacts.is_empty() || self.caches.iter().any(|c| c.save.is_some())
    }
}

/// One `cache:` entry: where to restore it from (its key first, then the fallback keys) and
/// where to save it, as pre-signed URLs of the cache store. The store's keys stay with the
/// runner; a URL opens one object, for one method, until it expires.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachePlan {
    /// The key, as the trace names it.
    pub key: String,
    pub paths: Vec<String>,
    /// `cache:untracked`: the files git does not track are cached too (see
    /// `keyhole_broker::transfer::untracked`).
    #[serde(default)]
    pub untracked: bool,
    pub when: When,
    /// `(key, GET URL)` in the order to try; empty for `policy: push`.
    #[serde(default)]
    pub restore: Vec<CacheSource>,
    /// PUT URL of the key's object; `None` for `policy: pull`.
    #[serde(default, serialize_with = "expose_option")]
    pub save: Option<SecretString>,
}

/// A key to restore a cache from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSource {
    pub key: String,
    #[serde(serialize_with = "expose")]
    pub url: SecretString,
}

/// A `dependencies[]` entry with an archive to download.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    pub id: u64,
    pub name: String,
    /// GitLab's `artifacts_file.filename` (for the trace).
    pub filename: String,
    pub size: u64,
    #[serde(serialize_with = "expose")]
    pub token: SecretString,
}

/// When an upload happens, relative to the script's result (`artifacts:when`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    OnSuccess,
    OnFailure,
    Always,
}

impl When {
    /// Whether to act after a script that ended with `exit_code`.
    pub fn applies(self, exit_code: i32) -> bool {
        match self {
            Self::OnSuccess => exit_code == 0,
            Self::OnFailure => exit_code != 0,
            Self::Always => true,
        }
    }
}

/// The archive format GitLab is told (`artifact_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Zip,
    Gzip,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zip => "zip",
            Self::Gzip => "gzip",
        }
    }
}

/// An `artifacts[]` entry of the payload: the archive or one report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactUpload {
    /// The archive's name (`artifacts:name`, default `artifacts`); the file is `<name>.zip`
    /// or `<name>.gz`.
    pub name: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `artifacts:untracked`: the files git does not track are archived too, `exclude`
    /// applying to them (see `keyhole_broker::transfer::untracked`).
    #[serde(default)]
    pub untracked: bool,
    pub when: When,
    /// `archive`, `junit`, `dotenv`, ...
    pub artifact_type: String,
    pub format: Format,
    /// `expire_in` as written in the job (`1 week`); empty: GitLab's default.
    #[serde(default)]
    pub expire_in: String,
}

fn expose_option<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(v) => s.serialize_some(v.expose_secret()),
        None => s.serialize_none(),
    }
}

fn expose<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose_secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_path_is_the_file_in_the_mounted_dir() {
        assert_eq!(PLAN_PATH, format!("{PLAN_DIR}/{PLAN_FILE}"));
    }

    #[test]
    fn when_follows_the_scripts_result() {
        assert!(When::OnSuccess.applies(0) && !When::OnSuccess.applies(1));
        assert!(!When::OnFailure.applies(0) && When::OnFailure.applies(2));
        assert!(When::Always.applies(0) && When::Always.applies(1));
    }

    #[test]
    fn the_plan_round_trips_and_its_debug_hides_the_tokens() {
        let plan = Plan {
            gitlab_url: "http://gitlab".into(),
            job_id: 7,
            job_token: SecretString::from("glcbt-secret-token"),
            project_dir: "/builds/p".into(),
            dependencies: vec![Dependency {
                id: 6,
                name: "build".into(),
                filename: "artifacts.zip".into(),
                size: 10,
                token: SecretString::from("glcbt-secret-token"),
            }],
            artifacts: vec![],
            compression: None,
            caches: vec![CachePlan {
                key: "deps".into(),
                paths: vec!["vendor/".into()],
                untracked: true,
                when: When::OnSuccess,
                restore: vec![CacheSource {
                    key: "deps".into(),
                    url: SecretString::from("http://s3/b/k?X-Amz-Signature=sig-of-get"),
                }],
                save: Some(SecretString::from(
                    "http://s3/b/k?X-Amz-Signature=sig-of-put",
                )),
            }],
            cache_compression: None,
        };
        let json = serde_json::to_string(&plan).unwrap();
        let back: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back.job_token.expose_secret(), "glcbt-secret-token");
        assert_eq!(
            back.dependencies[0].token.expose_secret(),
            "glcbt-secret-token"
        );
        assert_eq!(
            back.caches[0].save.as_ref().unwrap().expose_secret(),
            "http://s3/b/k?X-Amz-Signature=sig-of-put"
        );
        let debug = format!("{plan:?}");
        for secret in ["glcbt-secret-token", "sig-of-get", "sig-of-put"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(plan.fetches() && plan.stores());
        assert!(back.caches[0].untracked);
    }

    #[test]
    fn untracked_defaults_to_false_for_a_plan_written_without_it() {
        let artifact: ArtifactUpload = serde_json::from_value(serde_json::json!({
            "name": "artifacts", "paths": ["a"], "when": "on_success",
            "artifact_type": "archive", "format": "zip"
        }))
        .unwrap();
        assert!(!artifact.untracked);
        let cache: CachePlan = serde_json::from_value(serde_json::json!({
            "key": "k", "paths": [], "when": "always"
        }))
        .unwrap();
        assert!(!cache.untracked);
        let untracked: ArtifactUpload = serde_json::from_value(serde_json::json!({
            "name": "artifacts", "paths": [], "untracked": true, "when": "on_success",
            "artifact_type": "archive", "format": "zip"
        }))
        .unwrap();
        assert!(untracked.untracked);
    }
}
