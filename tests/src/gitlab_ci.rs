//! What GitLab (Rails) puts in a job payload for the `artifacts:`, `cache:` and
//! `needs:`/`dependencies:` of a `.gitlab-ci.yml`, so a test can run a whole pipeline through
//! the coordinator as GitLab would hand it out.
//!
//! The rules are Rails', not the runner's:
//! - `artifacts[]` (`Ci::BuildRunnerPresenter#artifacts`): one `archive` entry (format `zip`)
//!   when the job has `artifacts:paths` or `untracked`, then one entry per
//!   `artifacts:reports:<type>` with that type's format and default file name, `when: always`
//!   and the archive's `expire_in`. Unset fields are `null`, and `exclude` is left out when
//!   empty.
//! - `cache[]` (`Ci::Build#cache`): a single `cache:` or a list of them, `key` default
//!   `default`, `policy` default `pull-push`, `when` default `on_success`, `fallback_keys`
//!   default `[]`; GitLab's "separate caches for protected branches" (on by default) appends
//!   `-protected` or `-non_protected` to the key and to every fallback key.
//! - `dependencies[]` (`Ci::BuildDependencies`): the `needs:` with `artifacts: true` (the
//!   default) when the job has `needs:`, all jobs of earlier stages otherwise; `dependencies:`
//!   then keeps only the jobs it names (`dependencies: []`: none).
//!
//! Variables in keys, names and paths stay as written: the runner expands them, as
//! gitlab-runner does.
//!
//! What would make the pipeline differ from GitLab's is refused by name, never approximated:
//! `include:`, `extends:`, inherited `artifacts:`/`cache:` (`default:` or top level),
//! job-selecting keys (`rules:`, `only:`, `except:`, `when:` other than `on_success`,
//! `parallel:`, `trigger:`, `inherit:`), `cache:key:files`/`prefix`, cross-pipeline `needs:`
//! and report types other than `junit` and `dotenv`. Not modelled either: the project's cache
//! index (GitLab appends `-<n>` to keys after "Clear runner caches"), and GitLab's checks that
//! `needs:`/`dependencies:` name jobs of earlier stages.

use anyhow::{Context, Result, bail};
// Top-level keys that are not jobs (GitLab's reserved names): the runner's own list.
use keyhole_runner::pipeline::RESERVED_KEYS as RESERVED;
use serde_json::{Map, Value, json};

/// Job keys that change which jobs run, or that bring in keys from elsewhere: a pipeline with
/// them would not run here as GitLab runs it.
const NOT_MODELLED: &[&str] = &[
    "extends", "inherit", "rules", "only", "except", "parallel", "trigger",
];

/// Report types GitLab uploads, with their format and default file name
/// (`Ci::JobArtifact::TYPE_AND_FORMAT_PAIRS` and `DEFAULT_FILE_NAMES`).
const REPORTS: &[(&str, &str, &str)] = &[
    ("junit", "gzip", "junit.xml.gz"),
    ("dotenv", "gzip", ".env.gz"),
];

const DEFAULT_STAGES: &[&str] = &["build", "test", "deploy"];

/// One job of a pipeline, with the transfer fields of its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineJob {
    pub name: String,
    pub stage: String,
    /// The payload's `artifacts[]`.
    pub artifacts: Value,
    /// The payload's `cache[]`.
    pub cache: Value,
    /// The jobs whose artifacts the payload's `dependencies[]` lists, by name, in pipeline
    /// order; the caller adds each job's id (and GitLab leaves out those without an archive).
    pub dependencies: Vec<String>,
}

/// The jobs of `config` (a `.gitlab-ci.yml` as JSON) in the order a pipeline runs them: by
/// stage, by name within a stage (GitLab runs a stage's jobs in parallel, so that order means
/// nothing). `protected_ref` is whether the pipeline's ref is protected (it picks the cache
/// keys' suffix).
///
/// # Errors
///
/// A configuration this module does not model (see the module docs), or a malformed one.
pub fn pipeline_jobs(config: &Value, protected_ref: bool) -> Result<Vec<PipelineJob>> {
    let root = config
        .as_object()
        .context("the configuration is not a mapping of keywords and jobs")?;
    if root.contains_key("include") {
        bail!("`include:` is not modelled: the converter reads one file");
    }
    if root.contains_key("cache") {
        bail!("a top-level `cache:` is not modelled: put `cache:` in the jobs");
    }
    if let Some(default) = root.get("default").and_then(Value::as_object) {
        for key in ["artifacts", "cache"] {
            if default.contains_key(key) {
                bail!("`default: {key}:` is not modelled: put `{key}:` in the jobs");
            }
        }
    }
    let stages = stages(root)?;
    let mut jobs = Vec::new();
    for (name, job) in root {
        if RESERVED.contains(&name.as_str()) || name.starts_with('.') {
            continue;
        }
        let job = job
            .as_object()
            .with_context(|| format!("job {name} is not a mapping"))?;
        jobs.push((name.as_str(), job, stage_of(name, job, &stages)?));
    }
    jobs.sort_by_key(|(name, _, stage)| (*stage, *name));
    let mut out: Vec<PipelineJob> = Vec::new();
    for (name, job, stage) in &jobs {
        let earlier: Vec<&str> = jobs
            .iter()
            .filter(|(_, _, s)| s < stage)
            .map(|(n, _, _)| *n)
            .collect();
        out.push(PipelineJob {
            name: (*name).to_owned(),
            stage: stages[*stage].clone(),
            artifacts: artifacts(name, job)?,
            cache: cache(name, job, protected_ref)?,
            dependencies: dependencies(name, job, &earlier)?,
        });
    }
    Ok(out)
}

/// `.pre`, the file's `stages:` (or GitLab's default ones), `.post`.
fn stages(root: &Map<String, Value>) -> Result<Vec<String>> {
    let mut stages = vec![".pre".to_owned()];
    match root.get("stages") {
        None => stages.extend(DEFAULT_STAGES.iter().map(|s| (*s).to_owned())),
        Some(list) => stages.extend(strings(list).context("`stages:`")?),
    }
    stages.push(".post".to_owned());
    Ok(stages)
}

/// The index of the job's stage (default `test`); refuses what this module does not model.
fn stage_of(name: &str, job: &Map<String, Value>, stages: &[String]) -> Result<usize> {
    if let Some(key) = NOT_MODELLED.iter().find(|k| job.contains_key(**k)) {
        bail!("job {name}: `{key}:` is not modelled");
    }
    match job.get("when") {
        None => {}
        Some(when) if when == "on_success" => {}
        Some(other) => bail!("job {name}: `when: {other}` is not modelled"),
    }
    let stage = match job.get("stage") {
        None => "test",
        Some(v) => v
            .as_str()
            .with_context(|| format!("job {name}: `stage:` is not a name"))?,
    };
    stages
        .iter()
        .position(|s| s == stage)
        .with_context(|| format!("job {name}: stage {stage:?} is not one of {stages:?}"))
}

/// The payload's `artifacts[]` for `artifacts:`.
fn artifacts(name: &str, job: &Map<String, Value>) -> Result<Value> {
    let Some(spec) = job.get("artifacts") else {
        return Ok(json!([]));
    };
    let spec = spec
        .as_object()
        .with_context(|| format!("job {name}: `artifacts:` is not a mapping"))?;
    let field = |key: &str| spec.get(key).cloned().unwrap_or(Value::Null);
    let mut list = Vec::new();
    if spec.contains_key("paths") || spec.contains_key("untracked") {
        let mut archive = json!({
            "name": field("name"),
            "untracked": field("untracked"),
            "paths": field("paths"),
            "when": field("when"),
            "expire_in": field("expire_in"),
            "artifact_type": "archive",
            "artifact_format": "zip",
        });
        if spec.get("exclude").is_some_and(|e| !is_empty(e)) {
            archive["exclude"] = field("exclude");
        }
        list.push(archive);
    }
    if let Some(reports) = spec.get("reports") {
        let reports = reports
            .as_object()
            .with_context(|| format!("job {name}: `artifacts:reports:` is not a mapping"))?;
        for (kind, paths) in reports {
            let Some((_, format, file_name)) = REPORTS.iter().find(|(k, _, _)| k == kind) else {
                bail!("job {name}: report type {kind:?} is not modelled");
            };
            // A single path is a list of one, as GitLab normalises it.
            let paths = match paths {
                Value::String(p) => vec![p.clone()],
                other => strings(other)
                    .with_context(|| format!("job {name}: `artifacts:reports:{kind}:`"))?,
            };
            list.push(json!({
                "name": file_name,
                "paths": paths,
                "when": "always",
                "expire_in": field("expire_in"),
                "artifact_type": kind,
                "artifact_format": format,
            }));
        }
    }
    Ok(list.into())
}

/// The payload's `cache[]` for `cache:` (one mapping or a list of them).
fn cache(name: &str, job: &Map<String, Value>, protected_ref: bool) -> Result<Value> {
    let entries = match job.get("cache") {
        None => return Ok(json!([])),
        Some(Value::Array(list)) => list.iter().collect(),
        Some(one) => vec![one],
    };
    let mut list = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let entry = entry
            .as_object()
            .with_context(|| format!("job {name}: `cache:` entry {i} is not a mapping"))?;
        let key = match entry.get("key") {
            None => "default".to_owned(),
            Some(Value::String(k)) => k.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => bail!("job {name}: `cache:key:files` and `prefix` are not modelled"),
        };
        let unprotect = entry.get("unprotect").and_then(Value::as_bool) == Some(true);
        let suffix = if protected_ref && !unprotect {
            "protected"
        } else {
            "non_protected"
        };
        let fallback_keys = match entry.get("fallback_keys") {
            None => Vec::new(),
            Some(list) => {
                strings(list).with_context(|| format!("job {name}: `cache:fallback_keys:`"))?
            }
        };
        let field = |key: &str, default: Value| entry.get(key).cloned().unwrap_or(default);
        list.push(json!({
            "key": format!("{key}-{suffix}"),
            "untracked": field("untracked", Value::Null),
            "paths": field("paths", Value::Null),
            "policy": field("policy", "pull-push".into()),
            "when": field("when", "on_success".into()),
            "fallback_keys": fallback_keys
                .iter()
                .map(|k| format!("{k}-{suffix}"))
                .collect::<Vec<_>>(),
        }));
    }
    Ok(list.into())
}

/// The jobs whose artifacts this one downloads, by name.
fn dependencies(name: &str, job: &Map<String, Value>, earlier: &[&str]) -> Result<Vec<String>> {
    let mut from: Vec<String> = match job.get("needs") {
        None => earlier.iter().map(|n| (*n).to_owned()).collect(),
        Some(Value::Array(needs)) => {
            let mut names = Vec::new();
            for need in needs {
                match need {
                    Value::String(n) => names.push(n.clone()),
                    Value::Object(n) => {
                        let Some(job_name) = n.get("job").and_then(Value::as_str) else {
                            bail!("job {name}: only `needs:job` is modelled (not {need})");
                        };
                        if n.get("artifacts").and_then(Value::as_bool) != Some(false) {
                            names.push(job_name.to_owned());
                        }
                    }
                    other => bail!("job {name}: `needs:` entry {other} is not a job"),
                }
            }
            names
        }
        Some(other) => bail!("job {name}: `needs:` is {other}, not a list"),
    };
    if let Some(only) = job.get("dependencies") {
        let only = strings(only).with_context(|| format!("job {name}: `dependencies:`"))?;
        from.retain(|n| only.contains(n));
    }
    // Pipeline order, as GitLab lists them.
    from.sort_by_key(|n| earlier.iter().position(|e| e == n));
    Ok(from)
}

fn strings(list: &Value) -> Result<Vec<String>> {
    let Value::Array(items) = list else {
        bail!("is {list}, not a list of strings");
    };
    items
        .iter()
        .map(|item| {
            item.as_str()
                .map(str::to_owned)
                .with_context(|| format!("{item} is not a string"))
        })
        .collect()
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(yaml: &str) -> Vec<PipelineJob> {
        let config: Value = serde_saphyr::from_str(yaml).unwrap();
        pipeline_jobs(&config, false).unwrap()
    }

    fn refusal(yaml: &str) -> String {
        let config: Value = serde_saphyr::from_str(yaml).unwrap();
        format!("{:#}", pipeline_jobs(&config, false).unwrap_err())
    }

    #[test]
    fn an_archive_and_a_junit_report_become_two_entries_as_rails_sends_them() {
        let j = jobs(
            "build:\n  script: [make]\n  artifacts:\n    name: bin\n    paths: [dist/]\n    \
             exclude: [dist/*.log]\n    expire_in: 1 week\n    reports:\n      junit: report.xml\n",
        );
        assert_eq!(
            j[0].artifacts,
            json!([
                {"name": "bin", "untracked": null, "paths": ["dist/"], "exclude": ["dist/*.log"],
                 "when": null, "expire_in": "1 week", "artifact_type": "archive",
                 "artifact_format": "zip"},
                {"name": "junit.xml.gz", "paths": ["report.xml"], "when": "always",
                 "expire_in": "1 week", "artifact_type": "junit", "artifact_format": "gzip"}
            ])
        );
    }

    #[test]
    fn reports_alone_make_no_archive() {
        let j = jobs("t:\n  script: [a]\n  artifacts: {reports: {junit: [a.xml, b.xml]}}\n");
        assert_eq!(j[0].artifacts.as_array().unwrap().len(), 1);
        assert_eq!(j[0].artifacts[0]["paths"], json!(["a.xml", "b.xml"]));
        assert_eq!(j[0].artifacts[0]["expire_in"], Value::Null);
    }

    #[test]
    fn cache_keys_get_the_protection_suffix_and_gitlab_defaults() {
        let j = jobs(
            "t:\n  script: [a]\n  cache: {key: deps-$CI_COMMIT_REF_SLUG, paths: [vendor/], \
             fallback_keys: [deps-main]}\n",
        );
        assert_eq!(
            j[0].cache,
            json!([{"key": "deps-$CI_COMMIT_REF_SLUG-non_protected", "untracked": null,
                    "paths": ["vendor/"], "policy": "pull-push", "when": "on_success",
                    "fallback_keys": ["deps-main-non_protected"]}])
        );
        let config: Value = serde_saphyr::from_str(
            "t: {script: [a], cache: [{paths: [a]}, {key: k, unprotect: true}]}",
        )
        .unwrap();
        let protected = pipeline_jobs(&config, true).unwrap();
        assert_eq!(protected[0].cache[0]["key"], "default-protected");
        assert_eq!(protected[0].cache[1]["key"], "k-non_protected");
    }

    #[test]
    fn dependencies_follow_needs_then_earlier_stages_then_the_dependencies_keyword() {
        let j = jobs(
            "stages: [build, test, deploy]\n\
             lint: {stage: build, script: [a]}\n\
             compile: {stage: build, script: [a]}\n\
             unit: {stage: test, script: [a]}\n\
             dag: {stage: test, script: [a], needs: [compile, {job: lint, artifacts: false}]}\n\
             ship: {stage: deploy, script: [a], dependencies: [unit, compile]}\n\
             none: {stage: deploy, script: [a], dependencies: []}\n",
        );
        let of = |name: &str| {
            j.iter()
                .find(|job| job.name == name)
                .unwrap()
                .dependencies
                .clone()
        };
        let order: Vec<&str> = j.iter().map(|job| job.name.as_str()).collect();
        assert_eq!(order, ["compile", "lint", "dag", "unit", "none", "ship"]);
        assert!(of("lint").is_empty());
        assert_eq!(of("unit"), ["compile", "lint"]);
        assert_eq!(of("dag"), ["compile"]);
        assert_eq!(of("ship"), ["compile", "unit"]);
        assert!(of("none").is_empty());
    }

    #[test]
    fn what_is_not_modelled_is_refused_by_name() {
        for (yaml, expected) in [
            ("include: a.yml\nt: {script: [a]}\n", "`include:`"),
            (
                "cache: {paths: [a]}\nt: {script: [a]}\n",
                "top-level `cache:`",
            ),
            (
                "default: {artifacts: {paths: [a]}}\nt: {script: [a]}\n",
                "`default: artifacts:`",
            ),
            (
                "t: {script: [a], rules: [{when: always}]}\n",
                "job t: `rules:`",
            ),
            ("t: {script: [a], when: manual}\n", "`when: \"manual\"`"),
            (
                "t: {script: [a], cache: {key: {files: [Gemfile.lock]}}}\n",
                "key:files",
            ),
            (
                "t: {script: [a], artifacts: {reports: {sast: a.json}}}\n",
                "\"sast\"",
            ),
            (
                "t: {script: [a], needs: [{pipeline: other}]}\n",
                "only `needs:job`",
            ),
            ("t: {stage: nope, script: [a]}\n", "stage \"nope\""),
        ] {
            let err = refusal(yaml);
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }
}
