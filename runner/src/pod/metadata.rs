//! The job pod's labels and annotations: the runner's, the job's allowed overrides
//! (`KUBERNETES_POD_LABELS_*`, `KUBERNETES_POD_ANNOTATIONS_*`), and Keyhole's own, which carry
//! names and secret locations only, never a value.

use std::collections::BTreeMap;

use keyhole_contract as contract;
use secrecy::ExposeSecret;

use super::error::PodError;
use crate::config::RunnerConfig;
use crate::job::Job;
use crate::secrets::{JobSecrets, annotation_value};

/// Label on every pod and Secret the runner makes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "keyhole-runner";
/// Label carrying the runner's name, so a runner reaps only its own orphans.
pub const RUNNER_LABEL: &str = "keyhole.dev/runner";
/// Label carrying the job id.
pub const JOB_ID_LABEL: &str = "keyhole.dev/job-id";

/// `(labels, annotations)` of the pod (the per-job Secret gets the same labels).
pub(super) type Metadata = (BTreeMap<String, String>, BTreeMap<String, String>);

/// Builds the pod's labels and annotations.
pub(super) fn pod_metadata(
    job: &Job,
    runner: &RunnerConfig,
    secrets: &JobSecrets,
    instance: Option<&str>,
) -> Result<Metadata, PodError> {
    let k = &runner.kubernetes;
    let mut labels: BTreeMap<String, String> = k.pod_labels.clone();
    let mut annotations: BTreeMap<String, String> = k.pod_annotations.clone();
    apply_job_overrides(job, runner, &mut labels, &mut annotations)?;
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(RUNNER_LABEL.into(), label_value(&runner.name));
    labels.insert(JOB_ID_LABEL.into(), job.id.to_string());
    if let Some(id) = instance {
        labels.insert(crate::instance::INSTANCE_LABEL.into(), id.into());
    }
    if let Some(path) = &job.project.path {
        annotations.insert("keyhole.dev/project".into(), path.clone());
    }
    annotations.insert("keyhole.dev/job-name".into(), job.name.clone());
    for r in &secrets.references {
        annotations.insert(
            format!(
                "{}{}",
                contract::REFERENCE_ANNOTATION_PREFIX,
                r.name.as_str()
            ),
            annotation_value(r),
        );
    }
    Ok((labels, annotations))
}

/// The job's `KUBERNETES_POD_LABELS_*` / `KUBERNETES_POD_ANNOTATIONS_*` variables, each allowed
/// only by the runner's `pod_*_overwrite_allowed` regex and never for Keyhole's own keys.
fn apply_job_overrides(
    job: &Job,
    runner: &RunnerConfig,
    labels: &mut BTreeMap<String, String>,
    annotations: &mut BTreeMap<String, String>,
) -> Result<(), PodError> {
    let k = &runner.kubernetes;
    for v in &job.variables {
        let (map, prefix, allowed) = if v.key.starts_with("KUBERNETES_POD_LABELS_") {
            (
                &mut *labels,
                "KUBERNETES_POD_LABELS_",
                &k.pod_labels_overwrite_allowed,
            )
        } else if v.key.starts_with("KUBERNETES_POD_ANNOTATIONS_") {
            (
                &mut *annotations,
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
            return Err(PodError::OverrideNotKeyValue {
                variable: v.key.clone(),
            });
        };
        let re = regex::Regex::new(&format!("^(?:{allowed})$")).map_err(|e| {
            PodError::OverrideRegex {
                regex: allowed.clone(),
                error: e.to_string(),
            }
        })?;
        if !re.is_match(key) || key.contains("keyhole.dev") || key.starts_with(prefix) {
            return Err(PodError::OverrideNotAllowed {
                variable: v.key.clone(),
                key: key.into(),
            });
        }
        map.insert(key.into(), value.into());
    }
    Ok(())
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
