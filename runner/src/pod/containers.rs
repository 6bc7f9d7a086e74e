//! The build container and the service containers: images checked against the runner's
//! allow-lists, pull policies, entrypoints, all under the `restricted` hardening.

use std::collections::BTreeMap;

use keyhole_broker::contract;
use serde_json::{Value, json};

use super::build::PodError;
use super::env::env_list;
use super::resources::service_resources;
use crate::config::{KubernetesConfig, RunnerConfig};
use crate::job::{Image, Job};

/// PodSecurity `restricted`'s container-level demands.
pub(super) fn restricted() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": true,
        "seccompProfile": {"type": "RuntimeDefault"}
    })
}

/// The first of the job's pull policies, if the runner allows it, as Kubernetes spells it.
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

/// The build container's image: the job's, else the runner's default; checked against
/// `allowed_images`.
pub(super) fn build_image(job: &Job, k: &KubernetesConfig) -> Result<Image, PodError> {
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
    Ok(image)
}

/// The build container: runs the generated script with the job's public env, reads the
/// secrets volume read-only.
pub(super) fn build_container(
    image: &Image,
    runner: &RunnerConfig,
    script: String,
    public_env: &BTreeMap<String, String>,
    resources: Value,
) -> Result<Value, PodError> {
    let k = &runner.kubernetes;
    let policies = if image.pull_policy.is_empty() {
        &k.pull_policy.0
    } else {
        &image.pull_policy
    };
    let image_pull_policy = pull_policy(policies, &k.allowed_pull_policies)?;
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
        "env": env_list(public_env),
        "resources": resources,
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
    Ok(build)
}

/// The service containers and every alias they answer to (the pod's `hostAliases` point
/// them at localhost: a pod shares one network namespace).
pub(super) fn service_containers(
    job: &Job,
    k: &KubernetesConfig,
    public_env: &BTreeMap<String, String>,
) -> Result<(Vec<Value>, Vec<String>), PodError> {
    let mut containers = Vec::new();
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
            "resources": service_resources(k),
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
    Ok((containers, host_aliases))
}
