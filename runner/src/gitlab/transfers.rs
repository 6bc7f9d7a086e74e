//! The payload's `artifacts[]`, `dependencies[]` and `cache[]`: what the job's transfer
//! containers upload, download and restore. What Keyhole cannot honour is refused by name,
//! never dropped.

use keyhole_contract::transfer::{ArtifactUpload, Dependency, Format, When};
use secrecy::SecretString;

use super::error::PayloadError;
use super::fields::Obj;
use crate::job::{CacheEntry, Transfers};

/// The three lists, validated.
pub(super) fn transfers(root: &Obj<'_>) -> Result<Transfers, PayloadError> {
    let mut artifacts = Vec::new();
    for a in root.objects("artifacts")? {
        if let Some(upload) = artifact(&a)? {
            artifacts.push(upload);
        }
    }
    let mut dependencies = Vec::new();
    for d in root.objects("dependencies")? {
        if let Some(dep) = dependency(&d)? {
            dependencies.push(dep);
        }
    }
    let caches = root
        .objects("cache")?
        .iter()
        .map(cache)
        .collect::<Result<_, _>>()?;
    Ok(Transfers {
        artifacts,
        dependencies,
        caches,
        left_out: Vec::new(),
    })
}

/// One `artifacts[]` entry; `None` when it names no files, neither `paths` nor `untracked`
/// (GitLab sends such entries for jobs without `artifacts:`, and gitlab-runner skips them).
fn artifact(a: &Obj<'_>) -> Result<Option<ArtifactUpload>, PayloadError> {
    let untracked = a.flag("untracked")?;
    let paths = a.str_list("paths")?;
    if paths.is_empty() && !untracked {
        return Ok(None);
    }
    let format = match a.opt_str("artifact_format")?.unwrap_or_default() {
        "" | "zip" => Format::Zip,
        "gzip" => Format::Gzip,
        other => {
            return Err(PayloadError::Unsupported {
                field: a.field("artifact_format"),
                reason: format!(
                    "Keyhole uploads artifacts as `zip` or `gzip`, not `{other}`; \
                     use a report type GitLab stores as one of those"
                ),
            });
        }
    };
    let artifact_type = match a.opt_str("artifact_type")?.unwrap_or_default() {
        "" => "archive",
        t => t,
    };
    // GitLab sends reports without a name; the file is then named after its type.
    let name = match a.opt_str("name")?.unwrap_or_default() {
        "" if artifact_type == "archive" => "artifacts",
        "" => artifact_type,
        n => n,
    };
    Ok(Some(ArtifactUpload {
        name: name.to_owned(),
        paths,
        exclude: a.str_list("exclude")?,
        untracked,
        when: when(a)?,
        artifact_type: artifact_type.to_owned(),
        format,
        expire_in: a.opt_str("expire_in")?.unwrap_or_default().to_owned(),
    }))
}

/// `when`: empty means `on_success`, as in gitlab-runner.
fn when(o: &Obj<'_>) -> Result<When, PayloadError> {
    match o.opt_str("when")?.unwrap_or_default() {
        "" | "on_success" => Ok(When::OnSuccess),
        "on_failure" => Ok(When::OnFailure),
        "always" => Ok(When::Always),
        other => Err(PayloadError::Invalid {
            field: o.field("when"),
            reason: format!("is `{other}`; expected on_success, on_failure or always"),
        }),
    }
}

/// One `dependencies[]` entry; `None` when that job left no archive
/// (`artifacts_file.filename` empty), which gitlab-runner skips too.
fn dependency(d: &Obj<'_>) -> Result<Option<Dependency>, PayloadError> {
    let Some(file) = d.opt_obj("artifacts_file")? else {
        return Ok(None);
    };
    let filename = file.opt_str("filename")?.unwrap_or_default();
    if filename.is_empty() {
        return Ok(None);
    }
    Ok(Some(Dependency {
        id: d.req_u64("id")?,
        name: d.opt_str("name")?.unwrap_or_default().to_owned(),
        filename: filename.to_owned(),
        size: file.opt_u64("size")?.unwrap_or(0),
        token: SecretString::from(d.req_str("token")?.to_owned()),
    }))
}

fn cache(c: &Obj<'_>) -> Result<CacheEntry, PayloadError> {
    let policy = c.opt_str("policy")?.unwrap_or_default();
    let policy = match policy {
        "" => "pull-push",
        "pull" | "push" | "pull-push" => policy,
        other => {
            return Err(PayloadError::Invalid {
                field: c.field("policy"),
                reason: format!("is `{other}`; expected pull, push or pull-push"),
            });
        }
    };
    Ok(CacheEntry {
        key: c.opt_str("key")?.unwrap_or_default().to_owned(),
        paths: c.str_list("paths")?,
        untracked: c.flag("untracked")?,
        policy: policy.to_owned(),
        when: when(c)?,
        fallback_keys: c.str_list("fallback_keys")?,
    })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;
    use serde_json::json;

    use crate::gitlab::error::PayloadError;
    use crate::gitlab::payload::job_from_value;

    fn payload(extra: serde_json::Value) -> serde_json::Value {
        let mut p = json!({
            "id": 5, "token": "t",
            "job_info": {"name": "test", "stage": "test", "project_id": 1},
            "git_info": {"repo_url": "http://gitlab/p.git", "sha": "abc", "ref": "main"},
        });
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    }

    #[test]
    fn artifacts_reports_and_dependencies_are_read_as_gitlab_sends_them() {
        let job = job_from_value(&payload(json!({
            "artifacts": [
                {"name": "bin", "untracked": false, "paths": ["dist/", "**/*.so"],
                 "exclude": ["dist/tmp/**"], "when": "always", "artifact_type": "archive",
                 "artifact_format": "zip", "expire_in": "1 week"},
                {"name": "junit", "paths": ["report.xml"], "when": "always",
                 "artifact_type": "junit", "artifact_format": "gzip"},
                {"name": "", "paths": [], "when": "on_success", "artifact_type": "archive",
                 "artifact_format": "zip"}
            ],
            "dependencies": [
                {"id": 3, "name": "build", "token": "dep-token",
                 "artifacts_file": {"filename": "artifacts.zip", "size": 1234}},
                {"id": 4, "name": "lint", "token": "dep-token",
                 "artifacts_file": {"filename": "", "size": 0}}
            ]
        })))
        .unwrap()
        .job;
        let t = &job.transfers;
        assert_eq!(t.artifacts.len(), 2, "the entry without paths is skipped");
        assert_eq!(t.artifacts[0].paths, ["dist/", "**/*.so"]);
        assert_eq!(t.artifacts[0].exclude, ["dist/tmp/**"]);
        assert_eq!(t.artifacts[0].expire_in, "1 week");
        assert_eq!(t.artifacts[1].artifact_type, "junit");
        assert_eq!(t.artifacts[1].format.as_str(), "gzip");
        assert_eq!(
            t.dependencies.len(),
            1,
            "a job without an archive is skipped"
        );
        assert_eq!(t.dependencies[0].id, 3);
        assert_eq!(t.dependencies[0].token.expose_secret(), "dep-token");
    }

    #[test]
    fn what_keyhole_cannot_honour_is_refused_by_name() {
        for (artifacts, field) in [
            (
                json!([{"paths": ["a"], "artifact_format": "tarzstd"}]),
                "artifacts[0].artifact_format",
            ),
            (
                json!([{"paths": ["a"], "when": "later"}]),
                "artifacts[0].when",
            ),
        ] {
            let err = job_from_value(&payload(json!({"artifacts": artifacts}))).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(field), "{text}");
            assert!(
                matches!(
                    err,
                    PayloadError::Unsupported { .. } | PayloadError::Invalid { .. }
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn untracked_is_carried_into_the_plan_with_or_without_paths() {
        let job = job_from_value(&payload(json!({
            "artifacts": [
                {"name": "both", "paths": ["dist/"], "untracked": true, "exclude": ["*.o"]},
                {"name": "alone", "paths": [], "untracked": true},
                {"name": "nothing", "paths": [], "untracked": false},
                {"name": "paths", "paths": ["a"]}
            ],
            "cache": [{"key": "deps", "paths": [], "untracked": true}]
        })))
        .unwrap()
        .job;
        let artifacts: Vec<(&str, bool, usize)> = job
            .transfers
            .artifacts
            .iter()
            .map(|a| (a.name.as_str(), a.untracked, a.paths.len()))
            .collect();
        assert_eq!(
            artifacts,
            [("both", true, 1), ("alone", true, 0), ("paths", false, 1)]
        );
        assert_eq!(job.transfers.artifacts[0].exclude, ["*.o"]);
        assert!(job.transfers.caches[0].untracked);
        let err = job_from_value(&payload(
            json!({"artifacts": [{"paths": [], "untracked": "yes"}]}),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("artifacts[0].untracked"), "{err}");
    }

    #[test]
    fn caches_default_to_pull_push_on_success() {
        let job = job_from_value(&payload(json!({
            "cache": [{"key": "deps", "paths": ["vendor/"], "fallback_keys": ["main-deps"]}]
        })))
        .unwrap()
        .job;
        let c = &job.transfers.caches[0];
        assert_eq!((c.key.as_str(), c.policy.as_str()), ("deps", "pull-push"));
        assert_eq!(c.fallback_keys, ["main-deps"]);
    }
}
