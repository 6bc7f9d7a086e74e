//! The job model: one CI job, whatever its origin. A GitLab job payload
//! ([`crate::gitlab::payload`]) and a job of a local `.gitlab-ci.yml` ([`crate::pipeline`]) both
//! become a [`Job`], so the pod builder and the executor have one input to handle.
//!
//! Values that may be secret (the job token, non-public variables) are [`SecretString`]s: they
//! reach the per-job Kubernetes Secret and nothing else, and no `Debug` prints them.

use std::time::Duration;

use secrecy::SecretString;

/// One CI job, ready to be turned into a pod. `Debug` shows names, never values: variables
/// and the token are secrecy types, and `gitlab_secrets` is shown by its keys only (a secrets
/// provider's entry may carry credentials).
#[derive(Clone)]
pub struct Job {
    /// GitLab's job id; local jobs (`keyhole-runner exec`) get a process-unique number.
    pub id: u64,
    pub name: String,
    pub stage: String,
    pub project: Project,
    pub git: GitCheckout,
    /// The build container's image; `None` uses the runner's default image.
    pub image: Option<Image>,
    pub services: Vec<Service>,
    /// Every job variable, predefined `CI_*` ones included, in GitLab's order (later wins).
    pub variables: Vec<Variable>,
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    pub after_script: Vec<String>,
    /// The job's timeout; `None` uses the runner's default.
    pub timeout: Option<Duration>,
    /// GitLab `secrets:` entries as GitLab sent them (JSON), converted and validated by the
    /// runner with `crate::secrets::from_gitlab_secrets`.
    pub gitlab_secrets: Option<serde_json::Value>,
    /// The CI job token; `None` for local jobs.
    pub token: Option<SecretString>,
    /// The job's `id_tokens:` as declared (GitLab sends the minted JWTs as variables). Kept for
    /// local jobs, which have no GitLab to mint them, so `exec` can say which tokens the job
    /// expects; empty for GitLab jobs.
    pub id_tokens: Vec<IdTokenRequest>,
    /// The registry logins GitLab sends with the job (`credentials[]` of type `registry`: the
    /// job token for GitLab's own registry); see [`crate::registry_auth`].
    pub registry_credentials: Vec<RegistryCredential>,
    /// Files moved in and out of the job: artifacts to upload, dependencies' artifacts to
    /// download, caches. Empty for local jobs (GitLab stores artifacts).
    pub transfers: Transfers,
}

/// A job's `artifacts:`, `dependencies:`/`needs:` and `cache:` as GitLab sends them (see
/// [`keyhole_contract::transfer`], which the transfer containers act on).
#[derive(Debug, Clone, Default)]
pub struct Transfers {
    pub artifacts: Vec<keyhole_contract::transfer::ArtifactUpload>,
    pub dependencies: Vec<keyhole_contract::transfer::Dependency>,
    pub caches: Vec<CacheEntry>,
    /// Keys of a local job (`exec`) that move files between jobs (`artifacts`, `cache`,
    /// `needs`, ...): a job run alone has nowhere to move them, and the trace says so.
    pub left_out: Vec<String>,
}

/// A `cache[]` entry of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub key: String,
    pub paths: Vec<String>,
    pub untracked: bool,
    /// `pull`, `push` or `pull-push`.
    pub policy: String,
    /// When the cache is saved, after the script.
    pub when: keyhole_contract::transfer::When,
    pub fallback_keys: Vec<String>,
}

/// A `credentials[]` entry of the job payload (`type: registry`).
#[derive(Clone)]
pub struct RegistryCredential {
    /// The registry host, e.g. `registry.gitlab.example.com`.
    pub registry: String,
    pub username: String,
    pub password: SecretString,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// One `id_tokens:` entry: the variable GitLab would put a JWT in, and the JWT's audiences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTokenRequest {
    /// The variable name (`VAULT_ID_TOKEN`).
    pub name: String,
    /// `aud:`, one or more audiences.
    pub aud: Vec<String>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret_names: Vec<&String> = self
            .gitlab_secrets
            .as_ref()
            .and_then(|s| s.as_object())
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("stage", &self.stage)
            .field("project", &self.project)
            .field("git", &self.git)
            .field("image", &self.image)
            .field("services", &self.services)
            .field("variables", &self.variables)
            .field("before_script", &self.before_script)
            .field("script", &self.script)
            .field("after_script", &self.after_script)
            .field("timeout", &self.timeout)
            .field("gitlab_secrets", &secret_names)
            .field("token", &self.token)
            .field("id_tokens", &self.id_tokens)
            .field("transfers", &self.transfers)
            .finish()
    }
}

/// The project a job belongs to: the identity that service-account rules match on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Project {
    pub id: u64,
    /// `group/subgroup/project`, from GitLab's job info (`job_info.project_full_path`) or, for
    /// `exec`, the operator's `--project`. Never from a job variable such as `CI_PROJECT_PATH`,
    /// which the job can set itself; `None` when GitLab did not send it.
    pub path: Option<String>,
}

/// What to check out and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitCheckout {
    /// Repository URL without credentials (the job token travels separately).
    pub repo_url: Option<String>,
    pub sha: String,
    /// Branch or tag name.
    pub ref_name: String,
    pub ref_is_tag: bool,
    pub protected: bool,
    pub refspecs: Vec<String>,
    /// `GIT_DEPTH`; `None` or `Some(0)` is a full clone.
    pub depth: Option<u32>,
    pub strategy: GitStrategy,
}

/// GitLab's `GIT_STRATEGY`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GitStrategy {
    /// No checkout: the job works in an empty project directory.
    None,
    /// Fetch into the existing directory (in a fresh pod, same as clone).
    #[default]
    Fetch,
    Clone,
}

/// A container image and how GitLab says to start it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    /// `image:entrypoint`: `Some(vec![])` clears the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// `image:pull_policy`: `always`, `if-not-present`, `never`.
    pub pull_policy: Vec<String>,
    /// `image:kubernetes:user` (`executor_opts.kubernetes.user`): `uid` or `uid:gid`, as
    /// written (expanded like the name); the pod builder checks it.
    pub user: Option<String>,
}

/// A `services:` entry: a container beside the build container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    pub image: Image,
    /// `alias`; GitLab accepts several, comma- or space-separated.
    pub aliases: Vec<String>,
    pub command: Option<Vec<String>>,
    pub variables: Vec<(String, String)>,
    /// `ports:` numbers. The job's script waits until one of them (or the service's
    /// `HEALTHCHECK_TCP_PORT`) accepts connections; see [`crate::pod`]'s service readiness.
    pub ports: Vec<u16>,
}

/// A job variable as GitLab sends it.
#[derive(Debug, Clone)]
pub struct Variable {
    pub key: String,
    pub value: SecretString,
    /// Predefined, non-sensitive (`CI_*` and `variables:` of the YAML). Public variables may be
    /// put in the pod spec; all others travel in the per-job Secret.
    pub public: bool,
    pub masked: bool,
    /// A file variable: the job sees a path whose file holds the value.
    pub file: bool,
    /// `raw`: no `$VAR` expansion.
    pub raw: bool,
}

impl Variable {
    /// A public, plain variable (the shape of `variables:` in a `.gitlab-ci.yml`).
    pub fn public(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: SecretString::from(value.into()),
            public: true,
            masked: false,
            file: false,
            raw: false,
        }
    }
}

impl Job {
    /// The last value of a public variable, for settings like `GIT_STRATEGY` that GitLab reads
    /// from variables.
    pub fn public_variable(&self, key: &str) -> Option<&str> {
        use secrecy::ExposeSecret;
        self.variables
            .iter()
            .rev()
            .find(|v| v.public && v.key == key)
            .map(|v| v.value.expose_secret())
    }

    /// `CI_DEBUG_TRACE` is on (its last value, public or not, read as gitlab-runner reads
    /// booleans): the script traces every command (`set -x`) after a warning that the trace
    /// may print secrets.
    pub fn debug_trace(&self) -> bool {
        use secrecy::ExposeSecret;
        self.variables
            .iter()
            .rev()
            .find(|v| v.key == "CI_DEBUG_TRACE")
            .is_some_and(|v| go_bool(v.value.expose_secret()))
    }
}

/// Go's `strconv.ParseBool` on the lowercased value, then `ParseInt(value) == 1`: how
/// gitlab-runner reads boolean variables such as `CI_DEBUG_TRACE`.
pub fn go_bool(value: &str) -> bool {
    match value.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => true,
        "0" | "f" | "false" => false,
        _ => value.parse::<i32>() == Ok(1),
    }
}
