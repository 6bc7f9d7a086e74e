//! The runner's settings, in gitlab-runner's `config.toml` shape so users can carry their
//! `[[runners]]` / `[runners.kubernetes]` sections over. Keyhole's own settings live under
//! `[runners.keyhole]`.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Jobs run at once across all runners (gitlab-runner's `concurrent`).
    pub concurrent: usize,
    /// Seconds between job requests when GitLab has none (the long poll makes this rare).
    pub check_interval: u64,
    /// Address of the health (`/healthz`, `/readyz`) and metrics (`/metrics`) endpoints.
    pub listen_address: Option<String>,
    pub log_format: LogFormat,
    pub log_level: Option<String>,
    /// Seconds running jobs get to finish after SIGTERM before they are aborted.
    pub shutdown_timeout: u64,
    pub runners: Vec<RunnerConfig>,
    /// This process's instance id (`KEYHOLE_INSTANCE`, which the chart sets to the pod's UID);
    /// not a file key. Unset: a random one per process. See `crate::instance`.
    #[serde(skip)]
    pub instance: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            concurrent: 1,
            check_interval: 3,
            listen_address: None,
            log_format: LogFormat::Text,
            log_level: None,
            shutdown_timeout: 300,
            runners: Vec::new(),
            instance: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One `[[runners]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RunnerConfig {
    pub name: String,
    /// GitLab's URL, e.g. `https://gitlab.example.com`.
    pub url: String,
    /// The runner authentication token (`glrt-…`); `KEYHOLE_RUNNER_TOKEN` overrides it.
    pub token: Option<SecretString>,
    /// Must be `kubernetes`; the only executor Keyhole has.
    pub executor: String,
    /// Jobs this runner takes at once (0: only `concurrent` limits).
    pub limit: usize,
    /// Trace size limit in KiB (gitlab-runner's `output_limit`); the rest is cut with a note.
    pub output_limit: u64,
    pub builds_dir: String,
    /// `KEY=VALUE` variables added to every job.
    pub environment: Vec<String>,
    pub kubernetes: KubernetesConfig,
    pub keyhole: KeyholeConfig,
    /// `[runners.cache]`: where jobs' `cache:` goes; `None`: no cache store (jobs with
    /// `cache:` run without one, with a warning).
    pub cache: Option<CacheConfig>,
}

/// `[runners.cache]` as gitlab-runner documents it, S3 only (any S3-compatible server).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    /// Must be `s3`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// A prefix for every object name.
    #[serde(rename = "Path")]
    pub path: String,
    /// Share the cache between runners: object names leave out `runner/<short token>/`.
    #[serde(rename = "Shared")]
    pub shared: bool,
    #[serde(rename = "s3")]
    pub s3: S3CacheConfig,
}

impl CacheConfig {
    /// Nothing set: the empty section `gitlab-runner register` writes.
    pub fn is_unset(&self) -> bool {
        let s3 = &self.s3;
        self.kind.is_empty()
            && self.path.is_empty()
            && s3.server_address.is_empty()
            && s3.bucket_name.is_empty()
            && s3.access_key.is_none()
            && s3.secret_key.is_none()
    }
}

/// `[runners.cache.s3]`. The keys stay with the runner: job pods get pre-signed URLs for their
/// own objects only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct S3CacheConfig {
    /// `host[:port]`, without a scheme (`Insecure` picks http).
    #[serde(rename = "ServerAddress")]
    pub server_address: String,
    /// `CACHE_S3_ACCESS_KEY` overrides it.
    #[serde(rename = "AccessKey")]
    pub access_key: Option<SecretString>,
    /// `CACHE_S3_SECRET_KEY` overrides it.
    #[serde(rename = "SecretKey")]
    pub secret_key: Option<SecretString>,
    #[serde(rename = "BucketName")]
    pub bucket_name: String,
    /// The region signatures are made for; `us-east-1` when empty.
    #[serde(rename = "BucketLocation")]
    pub bucket_location: String,
    /// Plain HTTP to the server.
    #[serde(rename = "Insecure")]
    pub insecure: bool,
    /// `access-key` (the default) only.
    #[serde(rename = "AuthenticationType")]
    pub authentication_type: String,
    /// Path-style URLs (`server/bucket/key`); `false`: virtual-host style
    /// (`bucket.server/key`). Default: path style, which every S3-compatible server takes.
    #[serde(rename = "PathStyle")]
    pub path_style: Option<bool>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            name: "keyhole".into(),
            url: String::new(),
            token: None,
            executor: "kubernetes".into(),
            limit: 0,
            output_limit: 4096,
            builds_dir: "/builds".into(),
            environment: Vec::new(),
            kubernetes: KubernetesConfig::default(),
            keyhole: KeyholeConfig::default(),
            cache: None,
        }
    }
}

/// A resource quantity setting and the cap on what a job may ask for through its variable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quantity {
    pub value: Option<String>,
    pub overwrite_max_allowed: Option<String>,
}

/// `[runners.kubernetes]`: the keys of gitlab-runner's Kubernetes executor that apply to
/// Keyhole. Keys it does not support are listed in one warning at load time.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KubernetesConfig {
    /// API server URL; empty: in-cluster config, else the kubeconfig.
    pub host: Option<String>,
    pub namespace: String,
    /// Image for jobs that name none.
    pub image: String,
    /// Default job ServiceAccount (rules in `[runners.keyhole]` pick others).
    pub service_account: String,
    /// Regex a job's `KUBERNETES_SERVICE_ACCOUNT_OVERWRITE` must match; unset: no overwrite.
    pub service_account_overwrite_allowed: Option<String>,
    pub cpu_limit: Option<String>,
    pub cpu_limit_overwrite_max_allowed: Option<String>,
    pub cpu_request: Option<String>,
    pub cpu_request_overwrite_max_allowed: Option<String>,
    pub memory_limit: Option<String>,
    pub memory_limit_overwrite_max_allowed: Option<String>,
    pub memory_request: Option<String>,
    pub memory_request_overwrite_max_allowed: Option<String>,
    pub ephemeral_storage_limit: Option<String>,
    pub ephemeral_storage_request: Option<String>,
    pub service_cpu_limit: Option<String>,
    pub service_cpu_request: Option<String>,
    pub service_memory_limit: Option<String>,
    pub service_memory_request: Option<String>,
    /// The broker sidecar's resources (gitlab-runner's helper container).
    pub helper_cpu_limit: Option<String>,
    pub helper_cpu_request: Option<String>,
    pub helper_memory_limit: Option<String>,
    pub helper_memory_request: Option<String>,
    pub allowed_images: Vec<String>,
    pub allowed_services: Vec<String>,
    /// uids (and gids) a job's `image: {kubernetes: {user}}` may ask for; empty: any non-root.
    pub allowed_users: Vec<String>,
    pub allowed_groups: Vec<String>,
    pub pull_policy: StringOrList,
    pub allowed_pull_policies: Vec<String>,
    pub image_pull_secrets: Vec<String>,
    pub node_selector: BTreeMap<String, String>,
    pub node_selector_overwrite_allowed: Option<String>,
    /// `key=value: effect` pairs as in gitlab-runner (`"key=value" = "NoSchedule"`).
    pub node_tolerations: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
    pub pod_labels_overwrite_allowed: Option<String>,
    pub pod_annotations: BTreeMap<String, String>,
    pub pod_annotations_overwrite_allowed: Option<String>,
    pub pod_termination_grace_period_seconds: Option<i64>,
    pub priority_class_name: Option<String>,
    pub runtime_class_name: Option<String>,
    pub scheduler_name: Option<String>,
    pub dns_policy: Option<String>,
    /// Seconds to wait for a pod to start before failing the job.
    pub poll_timeout: u64,
    /// Seconds the job's script waits for its services' ports (`HEALTHCHECK_TCP_PORT` or
    /// `ports:`) before it starts anyway with a warning; 0 means the default, 30, as in
    /// gitlab-runner.
    pub wait_for_services_timeout: u64,
    /// Retries of a Kubernetes API call that failed for a passing reason (gitlab-runner's
    /// `retry_limit`, default 5).
    pub retry_limit: u32,
    /// The longest wait between those retries, in milliseconds (gitlab-runner's
    /// `retry_backoff_max`, default 2000).
    pub retry_backoff_max: u64,
    pub pod_security_context: PodSecurityContext,
}

impl KubernetesConfig {
    /// [`Self::wait_for_services_timeout`] with 0 read as gitlab-runner's default.
    pub fn services_timeout_secs(&self) -> u64 {
        match self.wait_for_services_timeout {
            0 => 30,
            n => n,
        }
    }
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            host: None,
            namespace: "default".into(),
            image: "keyhole.local/busybox:1".into(),
            service_account: "keyhole-job".into(),
            service_account_overwrite_allowed: None,
            cpu_limit: None,
            cpu_limit_overwrite_max_allowed: None,
            cpu_request: None,
            cpu_request_overwrite_max_allowed: None,
            memory_limit: None,
            memory_limit_overwrite_max_allowed: None,
            memory_request: None,
            memory_request_overwrite_max_allowed: None,
            ephemeral_storage_limit: None,
            ephemeral_storage_request: None,
            service_cpu_limit: None,
            service_cpu_request: None,
            service_memory_limit: None,
            service_memory_request: None,
            helper_cpu_limit: None,
            helper_cpu_request: None,
            helper_memory_limit: None,
            helper_memory_request: None,
            allowed_images: Vec::new(),
            allowed_services: Vec::new(),
            allowed_users: Vec::new(),
            allowed_groups: Vec::new(),
            pull_policy: StringOrList::default(),
            allowed_pull_policies: Vec::new(),
            image_pull_secrets: Vec::new(),
            node_selector: BTreeMap::new(),
            node_selector_overwrite_allowed: None,
            node_tolerations: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
            pod_labels_overwrite_allowed: None,
            pod_annotations: BTreeMap::new(),
            pod_annotations_overwrite_allowed: None,
            pod_termination_grace_period_seconds: None,
            priority_class_name: None,
            runtime_class_name: None,
            scheduler_name: None,
            dns_policy: None,
            poll_timeout: 180,
            wait_for_services_timeout: 30,
            retry_limit: 5,
            retry_backoff_max: 2000,
            pod_security_context: PodSecurityContext::default(),
        }
    }
}

/// gitlab-runner accepts `pull_policy = "always"` and `pull_policy = ["always", ...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "StringOrListRepr")]
pub struct StringOrList(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrListRepr {
    One(String),
    Many(Vec<String>),
}

impl From<StringOrListRepr> for StringOrList {
    fn from(r: StringOrListRepr) -> Self {
        match r {
            StringOrListRepr::One(s) => Self(vec![s]),
            StringOrListRepr::Many(v) => Self(v),
        }
    }
}

/// The job pod's user and groups. `run_as_non_root` is always on (PodSecurity `restricted`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PodSecurityContext {
    pub run_as_user: i64,
    pub run_as_group: i64,
    pub fs_group: i64,
    pub supplemental_groups: Vec<i64>,
}

impl Default for PodSecurityContext {
    fn default() -> Self {
        Self {
            run_as_user: 1000,
            run_as_group: 1000,
            fs_group: 1000,
            supplemental_groups: Vec::new(),
        }
    }
}

/// `[runners.keyhole]`: the broker and who may read what.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KeyholeConfig {
    pub broker_image: String,
    /// Where the runner journals its running jobs (memory-backed volume; see docs/runner.md).
    pub journal_dir: String,
    /// `namespace/name` of a Secret that holds the journal instead of `journal_dir`, so that
    /// the next pod of a Deployment reports the jobs of a pod that died (the chart sets it).
    pub journal_secret: Option<String>,
    /// Image of the container that checks out the job's repository (needs `sh` and `git`).
    pub git_image: String,
    /// Vault address the broker uses for `vault:` references; unset: `vault:` fails the job.
    pub vault_addr: Option<String>,
    /// Vault addresses a job's GitLab `secrets:` may name; the broker sends its token nowhere
    /// else. Defaults to `vault_addr`.
    pub vault_allowed: Vec<String>,
    pub vault_namespace: Option<String>,
    /// ConfigMap in the jobs namespace whose key `ca.crt` holds the PEM bundle that signs
    /// Vault's certificate (a private CA). Projected into the broker's inputs only; with it the
    /// broker trusts exactly that bundle. Unset: the broker image's system roots.
    pub vault_ca_config_map: Option<String>,
    pub vault_auth_mount: String,
    /// Vault role for kubernetes auth; unset: the job's ServiceAccount name.
    pub vault_role: Option<String>,
    /// Audience of the broker's projected ServiceAccount token (the Vault role's `audience`).
    pub vault_audience: String,
    /// Lifetime of that token, in seconds (the kubelet rotates it).
    pub token_expiration_seconds: i64,
    /// Kubernetes API URL as seen from job pods, for `k8s:` references.
    pub kube_api: String,
    /// Which ServiceAccount a job runs as; first match wins, else `kubernetes.service_account`.
    pub service_account_rules: Vec<ServiceAccountRule>,
    /// How fast the broker passes a job's output to the container log past its first 8 MiB,
    /// in KiB/s (0: unpaced): faster than the kubelet streams it, a log above
    /// `containerLogMaxSize` rotates under the follower and loses lines.
    pub log_rate_kib: u64,
    /// Whether job containers may run as root inside a user namespace (`hostUsers: false`):
    /// uid 0 in the container, an unprivileged uid on the node.
    pub user_namespace_root: UserNamespaceRoot,
}

impl Default for KeyholeConfig {
    fn default() -> Self {
        Self {
            broker_image: "keyhole.local/broker:dev".into(),
            git_image: "keyhole.local/git:2".into(),
            journal_dir: "/var/lib/keyhole-runner/jobs".into(),
            journal_secret: None,
            vault_addr: None,
            vault_allowed: Vec::new(),
            vault_namespace: None,
            vault_ca_config_map: None,
            vault_auth_mount: "kubernetes".into(),
            vault_role: None,
            vault_audience: keyhole_contract::VAULT_AUDIENCE.into(),
            token_expiration_seconds: 600,
            kube_api: "https://kubernetes.default.svc".into(),
            service_account_rules: Vec::new(),
            log_rate_kib: 4096,
            user_namespace_root: UserNamespaceRoot::Off,
        }
    }
}

/// Maps a job identity (project path, protected ref, ref name) to a ServiceAccount.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountRule {
    /// Exact project path, e.g. `acme/app`.
    pub project: Option<String>,
    /// Regex over the project path (anchored), e.g. `acme/.*`.
    pub project_regex: Option<String>,
    /// Only protected refs (`true`) or only unprotected ones (`false`).
    pub protected: Option<bool>,
    /// Regex over the ref name (anchored), e.g. `main|release-.*`.
    pub ref_regex: Option<String>,
    pub service_account: String,
}

/// `[runners.keyhole] user_namespace_root`: root in jobs without root on the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserNamespaceRoot {
    /// Job pods share the node's user ids; uid 0 is refused (PodSecurity `restricted`).
    #[default]
    Off,
    /// Job pods get their own user namespace, and a job may ask for uid 0 with
    /// `image: {kubernetes: {user: "0"}}` (within `allowed_users` when that is set).
    Allowed,
    /// As `allowed`, and the build container runs as uid 0 unless the job asks for a user.
    Always,
}
