//! Which `config.toml` keys Keyhole honours, and refusing the rest at start.
//!
//! A gitlab-runner config carried over often holds keys Keyhole does not implement
//! (`privileged`, `helper_image`, `[runners.cache]` …). Ignoring them would run jobs other than
//! the way the user asked, so the runner refuses to start and names each one with why.
//! A key that asks for nothing (`false`, `""`, `0`, an empty table, as `gitlab-runner register`
//! writes them) is accepted: honouring it and ignoring it are the same.

/// A key the runner will not start with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedKey {
    /// Where it is, e.g. `runners[0].kubernetes.privileged`.
    pub key: String,
    pub reason: &'static str,
}

impl std::fmt::Display for RefusedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

pub(crate) const TOP_KEYS: &[&str] = &[
    "concurrent",
    "check_interval",
    "listen_address",
    "log_format",
    "log_level",
    "shutdown_timeout",
    "runners",
];
pub(crate) const RUNNER_KEYS: &[&str] = &[
    "name",
    "url",
    "token",
    "executor",
    "limit",
    "output_limit",
    "builds_dir",
    "environment",
    "kubernetes",
    "keyhole",
    "cache",
];
pub(crate) const CACHE_KEYS: &[&str] = &["Type", "Path", "Shared", "s3"];
pub(crate) const CACHE_S3_KEYS: &[&str] = &[
    "ServerAddress",
    "AccessKey",
    "SecretKey",
    "BucketName",
    "BucketLocation",
    "Insecure",
    "AuthenticationType",
    "PathStyle",
];
pub(crate) const KUBERNETES_KEYS: &[&str] = &[
    "host",
    "namespace",
    "image",
    "service_account",
    "service_account_overwrite_allowed",
    "cpu_limit",
    "cpu_limit_overwrite_max_allowed",
    "cpu_request",
    "cpu_request_overwrite_max_allowed",
    "memory_limit",
    "memory_limit_overwrite_max_allowed",
    "memory_request",
    "memory_request_overwrite_max_allowed",
    "ephemeral_storage_limit",
    "ephemeral_storage_request",
    "service_cpu_limit",
    "service_cpu_request",
    "service_memory_limit",
    "service_memory_request",
    "helper_cpu_limit",
    "helper_cpu_request",
    "helper_memory_limit",
    "helper_memory_request",
    "allowed_images",
    "allowed_services",
    "allowed_users",
    "allowed_groups",
    "pull_policy",
    "allowed_pull_policies",
    "image_pull_secrets",
    "node_selector",
    "node_selector_overwrite_allowed",
    "node_tolerations",
    "pod_labels",
    "pod_labels_overwrite_allowed",
    "pod_annotations",
    "pod_annotations_overwrite_allowed",
    "pod_termination_grace_period_seconds",
    "priority_class_name",
    "runtime_class_name",
    "scheduler_name",
    "dns_policy",
    "wait_for_services_timeout",
    "poll_timeout",
    "retry_limit",
    "retry_backoff_max",
    "pod_security_context",
];
pub(crate) const POD_SECURITY_KEYS: &[&str] = &[
    "run_as_user",
    "run_as_group",
    "fs_group",
    "supplemental_groups",
    // Always on: job pods never run as root, so `true` is honoured and `false` asks nothing.
    "run_as_non_root",
];
pub(crate) const KEYHOLE_KEYS: &[&str] = &[
    "broker_image",
    "git_image",
    "journal_dir",
    "journal_secret",
    "vault_addr",
    "vault_allowed",
    "vault_namespace",
    "vault_ca_config_map",
    "vault_auth_mount",
    "vault_role",
    "vault_audience",
    "token_expiration_seconds",
    "kube_api",
    "service_account_rules",
    "log_rate_kib",
    "user_namespace_root",
];

/// Keys `gitlab-runner register` writes that describe the registration and ask nothing of
/// the runner: accepted whatever their value.
const METADATA_KEYS: &[&str] = &["id", "token_obtained_at", "token_expires_at"];

const CLUSTER_ACCESS: &str =
    "the runner uses its in-cluster ServiceAccount or KUBECONFIG; set `host` or KUBECONFIG instead";
const ONE_NAMESPACE: &str =
    "one jobs namespace per runner: the admission policy and RBAC are bound to it";
const RESTRICTED: &str = "job pods always pass PodSecurity `restricted`: no privilege, all capabilities dropped, fixed container security contexts (the user comes from `pod_security_context`)";
const NO_CAPS: &str = "Keyhole has no overwrite caps or limits of this kind; use `cpu_*`, `memory_*`, `ephemeral_storage_*`, `service_*` or `helper_*` limits";
const BROKER_HELPER: &str =
    "the broker replaces gitlab-runner's helper image: set `[runners.keyhole] broker_image`";
const WATCHED: &str = "Keyhole watches the pod instead of polling and cleans up on its own";
const NOT_YET: &str = "Keyhole does not implement it";
const MISSPELT: &str = "neither Keyhole nor gitlab-runner has this key; check its spelling against docs/configuration.md";

/// gitlab-runner's `[runners.kubernetes]` keys (its `KubernetesConfig`) Keyhole does not
/// implement; any other unknown key there is a misspelling.
const GITLAB_RUNNER_ONLY_KEYS: &[&str] = &[
    "context",
    "cert_file",
    "key_file",
    "ca_file",
    "bearer_token",
    "bearer_token_overwrite_allowed",
    "namespace_overwrite_allowed",
    "namespace_per_job",
    "privileged",
    "allow_privilege_escalation",
    "cap_add",
    "cap_drop",
    "init_permissions_container_security_context",
    "build_container_security_context",
    "helper_container_security_context",
    "service_container_security_context",
    "helper_image",
    "helper_image_flavor",
    "helper_image_autoset_arch_and_os",
    "cleanup_grace_period_seconds",
    "cleanup_resources_timeout",
    "poll_interval",
    "resource_availability_check_max_attempts",
    "print_pod_warning_events",
    "ephemeral_storage_limit_overwrite_max_allowed",
    "ephemeral_storage_request_overwrite_max_allowed",
    "service_cpu_limit_overwrite_max_allowed",
    "service_cpu_request_overwrite_max_allowed",
    "service_memory_limit_overwrite_max_allowed",
    "service_memory_request_overwrite_max_allowed",
    "service_ephemeral_storage_limit",
    "service_ephemeral_storage_limit_overwrite_max_allowed",
    "service_ephemeral_storage_request",
    "service_ephemeral_storage_request_overwrite_max_allowed",
    "helper_cpu_limit_overwrite_max_allowed",
    "helper_cpu_request_overwrite_max_allowed",
    "helper_memory_limit_overwrite_max_allowed",
    "helper_memory_request_overwrite_max_allowed",
    "helper_ephemeral_storage_limit",
    "helper_ephemeral_storage_limit_overwrite_max_allowed",
    "helper_ephemeral_storage_request",
    "helper_ephemeral_storage_request_overwrite_max_allowed",
    "pod_cpu_limit",
    "pod_cpu_limit_overwrite_max_allowed",
    "pod_cpu_request",
    "pod_cpu_request_overwrite_max_allowed",
    "pod_memory_limit",
    "pod_memory_limit_overwrite_max_allowed",
    "pod_memory_request",
    "pod_memory_request_overwrite_max_allowed",
    "node_tolerations_overwrite_allowed",
    "affinity",
    "use_service_account_image_pull_secrets",
    "retry_limits",
    "automount_service_account_token",
    "volumes",
    "host_aliases",
    "services",
    "suspend_pvc_size",
    "suspend_pvc_storage_class",
    "dns_config",
    "container_lifecycle",
    "pod_spec",
    "logs_base_dir",
    "scripts_base_dir",
    "pod_disruption_budget",
    "autoscaler",
];

/// Why Keyhole refuses a `[runners.kubernetes]` key.
fn kubernetes_reason(key: &str) -> &'static str {
    if !GITLAB_RUNNER_ONLY_KEYS.contains(&key) {
        return MISSPELT;
    }
    match key {
        "context"
        | "cert_file"
        | "key_file"
        | "ca_file"
        | "bearer_token"
        | "bearer_token_overwrite_allowed" => CLUSTER_ACCESS,
        "namespace_overwrite_allowed" | "namespace_per_job" => ONE_NAMESPACE,
        "privileged"
        | "allow_privilege_escalation"
        | "cap_add"
        | "cap_drop"
        | "init_permissions_container_security_context"
        | "build_container_security_context"
        | "helper_container_security_context"
        | "service_container_security_context" => RESTRICTED,
        "helper_image" | "helper_image_flavor" | "helper_image_autoset_arch_and_os" => {
            BROKER_HELPER
        }
        "cleanup_grace_period_seconds"
        | "cleanup_resources_timeout"
        | "poll_interval"
        | "resource_availability_check_max_attempts"
        | "print_pod_warning_events" => WATCHED,
        "automount_service_account_token" => {
            "the build container never gets a ServiceAccount token (the broker alone has one); jobs reach the API through `k8s:` references"
        }
        "volumes" | "pod_spec" | "container_lifecycle" | "logs_base_dir" | "scripts_base_dir" => {
            "the pod's volumes and layout are fixed so no secret can leak through them; mounts and patches are not implemented"
        }
        "services" => {
            "services come from the job's `services:`; runner-wide services are not implemented"
        }
        k if k.starts_with("pod_cpu_")
            || k.starts_with("pod_memory_")
            || k.contains("ephemeral_storage")
            || k.ends_with("_overwrite_max_allowed") =>
        {
            NO_CAPS
        }
        _ => NOT_YET,
    }
}

/// Why Keyhole refuses a key outside `[runners.kubernetes]`.
fn section_reason(key: &str) -> &'static str {
    match key {
        "gcs" | "azure" => {
            "Keyhole's cache store is S3 or any S3-compatible server (`Type = \"s3\"`); GCS and Azure are not implemented"
        }
        "MaxUploadedArchiveSize" => {
            "Keyhole does not cap cache archives; the store's own limits apply"
        }
        "shell" => "the job script runs with the image's POSIX `sh`; remove `shell`",
        "docker" | "ssh" | "parallels" | "virtualbox" | "machine" | "custom" | "autoscaler"
        | "instance" => "Keyhole runs jobs only as Kubernetes pods",
        "session_server" => "Keyhole has no interactive web terminal",
        "tls-ca-file" | "tls-cert-file" | "tls-key-file" => {
            "Keyhole trusts GitLab through the system's CA store"
        }
        _ => {
            "Keyhole does not implement this gitlab-runner setting, or it is misspelt (docs/configuration.md lists every key)"
        }
    }
}

/// True when a value asks for nothing: `false`, `""`, `0`, or an empty array or table (or a
/// table of such values), the shape `gitlab-runner register` writes for unset keys.
fn asks_nothing(value: &toml::Value) -> bool {
    match value {
        toml::Value::Boolean(b) => !b,
        toml::Value::String(s) => s.is_empty(),
        toml::Value::Integer(i) => *i == 0,
        toml::Value::Float(f) => *f == 0.0,
        toml::Value::Array(a) => a.is_empty(),
        toml::Value::Table(t) => t.values().all(asks_nothing),
        toml::Value::Datetime(_) => false,
    }
}

/// The keys of `table` outside `known` that ask for something, with `reason` for each.
fn refuse_in(
    table: &toml::Table,
    known: &[&str],
    prefix: &str,
    reason: fn(&str) -> &'static str,
    out: &mut Vec<RefusedKey>,
) {
    for (key, value) in table {
        if known.contains(&key.as_str()) || asks_nothing(value) {
            continue;
        }
        out.push(RefusedKey {
            key: format!("{prefix}{key}"),
            reason: reason(key),
        });
    }
}

/// Every key of a parsed `config.toml` the runner would not honour, in file order.
pub fn refused_keys(table: &toml::Table) -> Vec<RefusedKey> {
    let mut out = Vec::new();
    refuse_in(table, TOP_KEYS, "", section_reason, &mut out);
    let runners = table.get("runners").and_then(|r| r.as_array());
    for (i, runner) in runners.into_iter().flatten().enumerate() {
        let Some(runner) = runner.as_table() else {
            continue;
        };
        let prefix = format!("runners[{i}].");
        let runner_known: Vec<&str> = RUNNER_KEYS.iter().chain(METADATA_KEYS).copied().collect();
        refuse_in(runner, &runner_known, &prefix, section_reason, &mut out);
        if let Some(k) = runner.get("kubernetes").and_then(|k| k.as_table()) {
            let prefix = format!("{prefix}kubernetes.");
            refuse_in(k, KUBERNETES_KEYS, &prefix, kubernetes_reason, &mut out);
            if let Some(p) = k.get("pod_security_context").and_then(|p| p.as_table()) {
                let prefix = format!("{prefix}pod_security_context.");
                refuse_in(
                    p,
                    POD_SECURITY_KEYS,
                    &prefix,
                    |_| POD_SECURITY_ONLY,
                    &mut out,
                );
            }
        }
        if let Some(c) = runner.get("cache").and_then(|c| c.as_table()) {
            let prefix = format!("{prefix}cache.");
            refuse_in(c, CACHE_KEYS, &prefix, section_reason, &mut out);
            if let Some(s3) = c.get("s3").and_then(|s| s.as_table()) {
                let prefix = format!("{prefix}s3.");
                refuse_in(s3, CACHE_S3_KEYS, &prefix, s3_reason, &mut out);
            }
        }
        if let Some(k) = runner.get("keyhole").and_then(|k| k.as_table()) {
            let prefix = format!("{prefix}keyhole.");
            refuse_in(k, KEYHOLE_KEYS, &prefix, |_| UNKNOWN, &mut out);
        }
    }
    out
}

/// Why Keyhole refuses a `[runners.cache.s3]` key.
fn s3_reason(key: &str) -> &'static str {
    match key {
        "SessionToken" | "RoleARN" | "UploadRoleARN" | "AssumeRoleARN" => {
            "Keyhole signs cache URLs with an access key pair (AccessKey/SecretKey); temporary credentials and roles are not implemented"
        }
        "ServerSideEncryption" | "ServerSideEncryptionKeyID" | "DualStack" | "Accelerate" => {
            "Keyhole does not implement it; set it on the bucket instead where the store allows"
        }
        _ => MISSPELT,
    }
}

const POD_SECURITY_ONLY: &str = "Keyhole sets only run_as_user, run_as_group, fs_group and supplemental_groups (runAsNonRoot is always on)";
const UNKNOWN: &str =
    "not a `[runners.keyhole]` setting; check its spelling against docs/configuration.md";

/// The status docs/configuration.md gives a `[runners.kubernetes]` key: `supported` or the
/// reason it is refused. The docs table is checked against this.
pub fn kubernetes_key_status(key: &str) -> &'static str {
    if KUBERNETES_KEYS.contains(&key) {
        "supported"
    } else {
        kubernetes_reason(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIGURATION_MD: &str = include_str!("../../../docs/configuration.md");
    const TABLE_HEAD: &str = "| gitlab-runner key | Keyhole |\n| --- | --- |\n";

    fn documented_status(key: &str) -> String {
        match kubernetes_key_status(key) {
            "supported" => "supported (table above)".into(),
            reason => format!("refused at start: {reason}"),
        }
    }

    /// docs/configuration.md's table of gitlab-runner's `[runners.kubernetes]` keys says what
    /// the loader does with each, and lists every key Keyhole supports.
    #[test]
    fn the_docs_table_of_kubernetes_keys_matches_the_loader() {
        let start = CONFIGURATION_MD
            .find(TABLE_HEAD)
            .expect("docs/configuration.md has the gitlab-runner key table")
            + TABLE_HEAD.len();
        let rows: Vec<(&str, &str)> = CONFIGURATION_MD[start..]
            .lines()
            .take_while(|l| l.starts_with("| `"))
            .filter_map(|l| {
                let (key, status) = l.trim_start_matches("| `").split_once("` | ")?;
                Some((key, status.trim_end_matches(" |")))
            })
            .collect();
        let expected: String = rows
            .iter()
            .map(|(k, _)| format!("| `{k}` | {} |\n", documented_status(k)))
            .collect();
        for (key, status) in &rows {
            assert_ne!(
                kubernetes_key_status(key),
                MISSPELT,
                "`{key}` is in the docs table"
            );
            assert_eq!(
                *status,
                documented_status(key),
                "docs/configuration.md row `{key}`; the table should read:\n{expected}"
            );
        }
        for key in KUBERNETES_KEYS {
            assert!(
                rows.iter().any(|(k, _)| k == key),
                "docs/configuration.md's table lacks the supported key `{key}`"
            );
        }
    }

    #[test]
    fn only_values_that_ask_nothing_are_accepted() {
        let table: toml::Table = toml::from_str(
            "[[runners]]\n[runners.kubernetes]\nprivileged = false\nhelper_image = \"\"\npoll_interval = 0\ncap_add = []\n[runners.kubernetes.affinity]\n[runners.kubernetes.affinity.node_affinity]\n",
        )
        .unwrap();
        assert_eq!(refused_keys(&table), []);
        let table: toml::Table =
            toml::from_str("[[runners]]\n[runners.kubernetes]\nnamespce = \"x\"\n").unwrap();
        assert_eq!(refused_keys(&table)[0].reason, MISSPELT);
        let table: toml::Table = toml::from_str(
            "[[runners]]\n[runners.kubernetes]\npoll_interval = 3\ncap_drop = [\"ALL\"]\n[runners.kubernetes.affinity.node_affinity]\nx = 1\n",
        )
        .unwrap();
        let named: Vec<String> = refused_keys(&table).into_iter().map(|k| k.key).collect();
        assert_eq!(
            named,
            [
                "runners[0].kubernetes.affinity",
                "runners[0].kubernetes.cap_drop",
                "runners[0].kubernetes.poll_interval",
            ]
        );
    }
}
