//! Job → pod and per-job Secret, as a pure function (snapshot-tested; `keyhole-runner render`
//! prints its output). The pod passes PodSecurity `restricted`; only the broker gets a
//! ServiceAccount token, through its own projected volume; the build container sees the
//! secrets volume read-only and nothing else of the broker's.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use keyhole_broker::contract;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::quantity::resolve_override;
use crate::config::RunnerConfig;
use crate::job::{Image, Job};
use crate::script::{ScriptOptions, build_script};
use crate::secrets::{JobSecrets, VaultMethod, annotation_value};

/// Label on every pod and Secret the runner makes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "keyhole-runner";
/// Label carrying the runner's name, so a runner reaps only its own orphans.
pub const RUNNER_LABEL: &str = "keyhole.dev/runner";
/// Label carrying the job id.
pub const JOB_ID_LABEL: &str = "keyhole.dev/job-id";

/// Default timeout when neither the job nor GitLab sets one (gitlab-runner's default).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// GitLab's `after_script` timeout.
pub const AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the builder needs beyond the job and the runner's config, decided by the caller.
#[derive(Debug, Clone)]
pub struct PodRequest<'a> {
    pub job: &'a Job,
    pub runner: &'a RunnerConfig,
    /// `kh-<job id>-<random>`; the per-job Secret gets the same name (the admission policy in
    /// `deploy/` allows a job pod to mount only the Secret named like itself).
    pub pod_name: String,
    pub service_account: String,
    pub secrets: &'a JobSecrets,
    /// The per-job Secret's log-end token ([`contract::INPUT_LOG_END_KEY`]), fresh per job
    /// ([`log_end_token`]); a parameter so that the builder stays pure.
    pub log_end_token: SecretString,
}

/// The objects one job needs. The Secret gets its ownerReference (the pod) at creation.
#[derive(Debug, Clone)]
pub struct JobObjects {
    pub pod: Pod,
    pub secret: Secret,
    /// What the broker's log-end markers carry (in the Secret too): the executor stops
    /// following the log once it has seen them.
    pub log_end_token: SecretString,
}

/// A job that cannot become a pod, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PodError(pub String);

fn restricted() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": true,
        "seccompProfile": {"type": "RuntimeDefault"}
    })
}

fn pull_policy(policies: &[String], allowed: &[String]) -> Result<Option<&'static str>, PodError> {
    let Some(first) = policies.first() else {
        return Ok(None);
    };
    if !allowed.is_empty() && !allowed.iter().any(|a| a == first) {
        return Err(PodError(format!(
            "pull_policy {first:?} is not allowed by this runner (allowed: {})",
            allowed.join(", ")
        )));
    }
    match first.as_str() {
        "always" => Ok(Some("Always")),
        "if-not-present" => Ok(Some("IfNotPresent")),
        "never" => Ok(Some("Never")),
        other => Err(PodError(format!(
            "pull_policy {other:?} is not one of always, if-not-present, never"
        ))),
    }
}

/// gitlab-runner's `allowed_images` patterns: `*` matches within a path segment, `**` across.
pub fn image_allowed(image: &str, patterns: &[String]) -> bool {
    if patterns.is_empty() {
        return true;
    }
    patterns.iter().any(|p| {
        let mut re = String::from("^");
        let mut chars = p.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    re.push_str(".*");
                }
                '*' => re.push_str("[^/]*"),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        regex::Regex::new(&re).is_ok_and(|r| r.is_match(image))
    })
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A label value from free text (the runner's name), as Kubernetes allows.
pub fn label_value(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn resources(pairs: &[(&str, Option<String>)]) -> Value {
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    for (key, value) in pairs {
        if let Some(v) = value {
            let (kind, resource) = key.split_once('.').unwrap_or(("requests", key));
            let target = if kind == "limits" {
                &mut limits
            } else {
                &mut requests
            };
            target.insert(resource.to_string(), json!(v));
        }
    }
    let mut out = serde_json::Map::new();
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        out.insert("limits".into(), Value::Object(limits));
    }
    Value::Object(out)
}

fn env_list(vars: &BTreeMap<String, String>) -> Value {
    Value::Array(
        vars.iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect(),
    )
}

/// Builds the pod and the per-job Secret.
pub fn build_job_objects(req: &PodRequest<'_>) -> Result<JobObjects, PodError> {
    let job = req.job;
    let runner = req.runner;
    let k = &runner.kubernetes;
    let ns = &k.namespace;
    let var = |key: &str| job.public_variable(key);

    // Build container image.
    let image = job.image.clone().unwrap_or_else(|| Image {
        name: k.image.clone(),
        ..Image::default()
    });
    if !image_allowed(&image.name, &k.allowed_images) {
        return Err(PodError(format!(
            "image {:?} is not allowed by this runner (allowed_images: {})",
            image.name,
            k.allowed_images.join(", ")
        )));
    }
    let policies = if image.pull_policy.is_empty() {
        &k.pull_policy.0
    } else {
        &image.pull_policy
    };
    let image_pull_policy = pull_policy(policies, &k.allowed_pull_policies)?;

    // Resources, with the job's capped overrides.
    let over = |key: &str, configured: &Option<String>, max: &Option<String>| {
        resolve_override(key, configured.as_deref(), max.as_deref(), var(key)).map_err(PodError)
    };
    let build_resources = resources(&[
        (
            "requests.cpu",
            over(
                "KUBERNETES_CPU_REQUEST",
                &k.cpu_request,
                &k.cpu_request_overwrite_max_allowed,
            )?,
        ),
        (
            "limits.cpu",
            over(
                "KUBERNETES_CPU_LIMIT",
                &k.cpu_limit,
                &k.cpu_limit_overwrite_max_allowed,
            )?,
        ),
        (
            "requests.memory",
            over(
                "KUBERNETES_MEMORY_REQUEST",
                &k.memory_request,
                &k.memory_request_overwrite_max_allowed,
            )?,
        ),
        (
            "limits.memory",
            over(
                "KUBERNETES_MEMORY_LIMIT",
                &k.memory_limit,
                &k.memory_limit_overwrite_max_allowed,
            )?,
        ),
        (
            "requests.ephemeral-storage",
            k.ephemeral_storage_request.clone(),
        ),
        (
            "limits.ephemeral-storage",
            k.ephemeral_storage_limit.clone(),
        ),
    ]);
    let broker_resources = resources(&[
        (
            "requests.cpu",
            k.helper_cpu_request.clone().or(Some("10m".into())),
        ),
        ("limits.cpu", k.helper_cpu_limit.clone()),
        (
            "requests.memory",
            k.helper_memory_request.clone().or(Some("16Mi".into())),
        ),
        (
            "limits.memory",
            k.helper_memory_limit.clone().or(Some("64Mi".into())),
        ),
    ]);
    let service_resources = resources(&[
        ("requests.cpu", k.service_cpu_request.clone()),
        ("limits.cpu", k.service_cpu_limit.clone()),
        ("requests.memory", k.service_memory_request.clone()),
        ("limits.memory", k.service_memory_limit.clone()),
    ]);

    // Variables: public ones in the pod spec; everything else only in the per-job Secret.
    let project_dir = var("CI_PROJECT_DIR")
        .map(str::to_string)
        .unwrap_or_else(|| {
            // GitLab always sends CI_PROJECT_DIR; without a project path, the id still
            // gives the job a directory of its own.
            let project = match &job.project.path {
                Some(path) => path.clone(),
                None => format!("project-{}", job.project.id),
            };
            format!("{}/{project}", runner.builds_dir.trim_end_matches('/'))
        });
    let mut public_env: BTreeMap<String, String> = BTreeMap::new();
    let mut secret_data: BTreeMap<String, ByteString> = BTreeMap::new();
    for entry in &runner.environment {
        if let Some((key, value)) = entry.split_once('=') {
            public_env.insert(key.into(), value.into());
        }
    }
    for v in &job.variables {
        if v.key
            .starts_with(keyhole_broker::reference::KEYHOLE_VARIABLE_PREFIX)
        {
            continue; // references: the broker resolves them; the value is a location.
        }
        if v.public && !v.file && !v.masked {
            public_env.insert(v.key.clone(), v.value.expose_secret().to_string());
        } else {
            public_env.remove(&v.key);
            let prefix = if v.file { "file." } else { "var." };
            secret_data.insert(
                format!("{prefix}{}", v.key),
                ByteString(v.value.expose_secret().as_bytes().to_vec()),
            );
        }
    }
    if let Some(token) = &job.token {
        secret_data.insert(
            "var.CI_JOB_TOKEN".into(),
            ByteString(token.expose_secret().as_bytes().to_vec()),
        );
    }
    secret_data.insert(
        contract::INPUT_LOG_END_KEY.into(),
        ByteString(req.log_end_token.expose_secret().as_bytes().to_vec()),
    );
    public_env.insert("CI_PROJECT_DIR".into(), project_dir.clone());
    public_env.insert("CI_BUILDS_DIR".into(), runner.builds_dir.clone());
    for key in secret_data.keys() {
        let name = key.split_once('.').map_or(key.as_str(), |(_, n)| n);
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(PodError(format!(
                "variable {name:?} cannot be delivered: a masked or file variable's name may use only letters, digits, '_', '.' and '-'"
            )));
        }
    }

    // Labels and annotations (names and locations only).
    let mut labels: BTreeMap<String, String> = k.pod_labels.clone();
    let mut annotations: BTreeMap<String, String> = k.pod_annotations.clone();
    for v in &job.variables {
        let (map, prefix, allowed) = if v.key.starts_with("KUBERNETES_POD_LABELS_") {
            (
                &mut labels,
                "KUBERNETES_POD_LABELS_",
                &k.pod_labels_overwrite_allowed,
            )
        } else if v.key.starts_with("KUBERNETES_POD_ANNOTATIONS_") {
            (
                &mut annotations,
                "KUBERNETES_POD_ANNOTATIONS_",
                &k.pod_annotations_overwrite_allowed,
            )
        } else {
            continue;
        };
        if !v.public {
            continue;
        }
        let Some(allowed) = allowed else { continue };
        let Some((key, value)) = v.value.expose_secret().split_once('=') else {
            return Err(PodError(format!("{} must be KEY=VALUE", v.key)));
        };
        let re = regex::Regex::new(&format!("^(?:{allowed})$"))
            .map_err(|e| PodError(format!("runner regex {allowed:?}: {e}")))?;
        if !re.is_match(key) || key.contains("keyhole.dev") || key.starts_with(prefix) {
            return Err(PodError(format!(
                "{}: {key:?} may not be set by jobs on this runner",
                v.key
            )));
        }
        map.insert(key.into(), value.into());
    }
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(RUNNER_LABEL.into(), label_value(&runner.name));
    labels.insert(JOB_ID_LABEL.into(), job.id.to_string());
    if let Some(path) = &job.project.path {
        annotations.insert("keyhole.dev/project".into(), path.clone());
    }
    annotations.insert("keyhole.dev/job-name".into(), job.name.clone());
    for r in &req.secrets.references {
        annotations.insert(
            format!(
                "{}{}",
                contract::REFERENCE_ANNOTATION_PREFIX,
                r.name.as_str()
            ),
            annotation_value(r),
        );
    }

    // The broker.
    let security = &k.pod_security_context;
    let mut broker_env: BTreeMap<String, String> = BTreeMap::new();
    broker_env.insert("KEYHOLE_NAMESPACE".into(), ns.clone());
    broker_env.insert("KEYHOLE_FILE_GID".into(), security.fs_group.to_string());
    // The broker cuts and paces the log where it is made (see docs/runner.md, "Big logs").
    broker_env.insert(
        "KEYHOLE_LOG_LIMIT_KIB".into(),
        runner.output_limit.to_string(),
    );
    broker_env.insert(
        "KEYHOLE_LOG_RATE_KIB".into(),
        runner.keyhole.log_rate_kib.to_string(),
    );
    if let Some(v) = &req.secrets.vault {
        broker_env.insert("KEYHOLE_VAULT_ADDR".into(), v.addr.clone());
        broker_env.insert("KEYHOLE_VAULT_AUTH_MOUNT".into(), v.auth_mount.clone());
        broker_env.insert("KEYHOLE_VAULT_ROLE".into(), v.role.clone());
        if let Some(n) = &v.namespace {
            broker_env.insert("KEYHOLE_VAULT_NAMESPACE".into(), n.clone());
        }
        if let VaultMethod::Jwt { id_token_variable } = &v.method {
            broker_env.insert("KEYHOLE_VAULT_AUTH_METHOD".into(), "jwt".into());
            broker_env.insert("KEYHOLE_VAULT_JWT_INPUT".into(), id_token_variable.clone());
        }
        // The broker's own check of where its token may go: the runner's allow-list, not just
        // the address it was given.
        broker_env.insert("KEYHOLE_VAULT_ALLOWED".into(), v.allowed.join(","));
        if runner.keyhole.vault_ca_config_map.is_some() {
            broker_env.insert(
                "KEYHOLE_VAULT_CA_FILE".into(),
                format!("{}/{}", contract::INPUTS_DIR, contract::INPUT_VAULT_CA),
            );
        }
    }
    if req.secrets.uses_kubernetes {
        broker_env.insert("KEYHOLE_KUBE_API".into(), runner.keyhole.kube_api.clone());
        broker_env.insert(
            "KEYHOLE_KUBE_CA_FILE".into(),
            format!("{}/kube-ca.crt", contract::INPUTS_DIR),
        );
    }
    let expiry = runner.keyhole.token_expiration_seconds.max(600);
    let mut sources = vec![
        json!({"serviceAccountToken": {"audience": runner.keyhole.vault_audience, "expirationSeconds": expiry, "path": contract::INPUT_SA_TOKEN}}),
        json!({"downwardAPI": {"items": [{"path": contract::INPUT_ANNOTATIONS, "fieldRef": {"fieldPath": "metadata.annotations"}}]}}),
        json!({"secret": {"name": req.pod_name, "items": secret_data.keys().map(|key| json!({"key": key, "path": format!("{}/{key}", contract::INPUT_JOB_SECRET_DIR)})).collect::<Vec<_>>()}}),
    ];
    if let (Some(_), Some(ca)) = (&req.secrets.vault, &runner.keyhole.vault_ca_config_map) {
        sources.push(json!({"configMap": {"name": ca, "items": [{"key": "ca.crt", "path": contract::INPUT_VAULT_CA}]}}));
    }
    if req.secrets.uses_kubernetes {
        sources.insert(1, json!({"serviceAccountToken": {"expirationSeconds": expiry, "path": contract::INPUT_KUBE_TOKEN}}));
        sources.insert(2, json!({"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "kube-ca.crt"}]}}));
    }
    let broker_image = Image {
        name: runner.keyhole.broker_image.clone(),
        ..Image::default()
    };
    let broker = json!({
        "name": contract::BROKER_CONTAINER,
        "image": broker_image.name,
        "restartPolicy": "Always",
        "args": ["run"],
        "env": env_list(&broker_env),
        "resources": broker_resources,
        "startupProbe": {
            "exec": {"command": ["/usr/local/bin/keyhole-broker", "ready"]},
            "periodSeconds": 1,
            "failureThreshold": 600
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "volumeMounts": [
            {"name": contract::INPUTS_VOLUME, "mountPath": contract::INPUTS_DIR, "readOnly": true},
            {"name": contract::SECRETS_VOLUME, "mountPath": contract::SECRETS_DIR},
            {"name": contract::RUNTIME_VOLUME, "mountPath": contract::RUNTIME_DIR}
        ]
    });

    // The build container.
    let script = build_script(
        &job.before_script,
        &job.script,
        &job.after_script,
        &ScriptOptions {
            project_dir: project_dir.clone(),
            after_script_timeout: AFTER_SCRIPT_TIMEOUT,
            file_secrets: req
                .secrets
                .references
                .iter()
                .filter(|r| r.file)
                .map(|r| r.name.as_str().to_string())
                .collect(),
        },
    );
    let (command, args) = match &image.entrypoint {
        Some(entrypoint) if !entrypoint.is_empty() => {
            (json!(entrypoint), json!(["sh", "-c", script]))
        }
        _ => (json!(["sh", "-c", script]), Value::Null),
    };
    let mut build = json!({
        "name": contract::BUILD_CONTAINER,
        "image": image.name,
        "command": command,
        "workingDir": runner.builds_dir,
        "env": env_list(&public_env),
        "resources": build_resources,
        "securityContext": restricted(),
        "volumeMounts": [
            {"name": contract::SECRETS_VOLUME, "mountPath": contract::SECRETS_DIR, "readOnly": true},
            {"name": contract::RUNTIME_VOLUME, "mountPath": contract::RUNTIME_DIR},
            {"name": "builds", "mountPath": runner.builds_dir}
        ]
    });
    if !args.is_null() {
        build["args"] = args;
    }
    if let Some(p) = image_pull_policy {
        build["imagePullPolicy"] = json!(p);
    }

    // Services.
    let mut containers = vec![build];
    let mut used_names: Vec<String> = vec![contract::BUILD_CONTAINER.into()];
    let mut host_aliases: Vec<String> = Vec::new();
    for (i, service) in job.services.iter().enumerate() {
        if !image_allowed(&service.image.name, &k.allowed_services) {
            return Err(PodError(format!(
                "service image {:?} is not allowed by this runner (allowed_services: {})",
                service.image.name,
                k.allowed_services.join(", ")
            )));
        }
        let name = service
            .aliases
            .iter()
            .find(|a| dns_label(a) && !used_names.contains(a))
            .cloned()
            .unwrap_or_else(|| format!("svc-{i}"));
        used_names.push(name.clone());
        host_aliases.extend(service.aliases.iter().cloned());
        let mut env = public_env.clone();
        env.extend(service.variables.iter().cloned());
        let mut c = json!({
            "name": name,
            "image": service.image.name,
            "env": env_list(&env),
            "resources": service_resources,
            "securityContext": restricted(),
        });
        if let Some(e) = &service.image.entrypoint {
            c["command"] = json!(e);
        }
        if let Some(cmd) = &service.command {
            c["args"] = json!(cmd);
        }
        if let Some(p) = pull_policy(&service.image.pull_policy, &k.allowed_pull_policies)? {
            c["imagePullPolicy"] = json!(p);
        }
        containers.push(c);
    }

    let mut init_containers = vec![broker];
    let mut volumes = vec![
        json!({"name": contract::INPUTS_VOLUME, "projected": {"sources": sources}}),
        json!({"name": contract::SECRETS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
        json!({"name": contract::RUNTIME_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        json!({"name": "builds", "emptyDir": {}}),
    ];
    if let Some((container, volume)) = super::checkout::checkout(
        job,
        &runner.keyhole.git_image,
        &req.pod_name,
        &project_dir,
        &restricted(),
    ) {
        init_containers.push(container);
        volumes.push(volume);
    }

    let timeout = job.timeout.unwrap_or(DEFAULT_JOB_TIMEOUT);
    let grace = k
        .pod_termination_grace_period_seconds
        .unwrap_or(AFTER_SCRIPT_TIMEOUT.as_secs() as i64 + 30);
    let mut spec = json!({
        "restartPolicy": "Never",
        "serviceAccountName": req.service_account,
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": grace,
        "activeDeadlineSeconds": timeout.as_secs() + 60,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": security.run_as_user,
            "runAsGroup": security.run_as_group,
            "fsGroup": security.fs_group,
            "supplementalGroups": security.supplemental_groups,
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "initContainers": init_containers,
        "containers": containers,
        "volumes": volumes
    });
    if !host_aliases.is_empty() {
        spec["hostAliases"] = json!([{"ip": "127.0.0.1", "hostnames": host_aliases}]);
    }
    if !k.node_selector.is_empty() {
        spec["nodeSelector"] = json!(k.node_selector);
    }
    if !k.node_tolerations.is_empty() {
        spec["tolerations"] = Value::Array(
            k.node_tolerations
                .iter()
                .map(|(kv, effect)| match kv.split_once('=') {
                    Some((key, value)) => {
                        json!({"key": key, "operator": "Equal", "value": value, "effect": effect})
                    }
                    None => json!({"key": kv, "operator": "Exists", "effect": effect}),
                })
                .collect(),
        );
    }
    if !k.image_pull_secrets.is_empty() {
        spec["imagePullSecrets"] = Value::Array(
            k.image_pull_secrets
                .iter()
                .map(|n| json!({"name": n}))
                .collect(),
        );
    }
    for (field, value) in [
        ("priorityClassName", &k.priority_class_name),
        ("runtimeClassName", &k.runtime_class_name),
        ("schedulerName", &k.scheduler_name),
        ("dnsPolicy", &k.dns_policy),
    ] {
        if let Some(v) = value {
            spec[field] = json!(v);
        }
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": req.pod_name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": spec
    }))
    .map_err(|e| PodError(format!("internal error building the pod: {e}")))?;
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(req.pod_name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        immutable: Some(true),
        data: Some(secret_data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    Ok(JobObjects {
        pod,
        secret,
        log_end_token: req.log_end_token.clone(),
    })
}
