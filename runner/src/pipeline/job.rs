//! One job of a resolved configuration → [`Job`]: GitLab's `default:` and the deprecated
//! top-level defaults, `inherit:`, variable precedence, and the predefined variables of a
//! local run.

use std::{sync::Arc, time::Duration};

use crate::job::{Job, Project, Transfers};

use super::{
    LoadOptions,
    duration::{MAX_TIMEOUT, format_duration, parse_duration},
    error::{Location, PipelineError},
    image, script, secrets,
    variables::{self, Inherit, Predefined, Variables},
    yaml::{Map, Node, Value},
};

/// Top-level keys that are not jobs (GitLab's reserved names).
pub const RESERVED: &[&str] = &[
    "default",
    "include",
    "before_script",
    "image",
    "services",
    "after_script",
    "variables",
    "stages",
    "cache",
    "workflow",
];

/// Keys `default:` may hold.
const DEFAULT_KEYS: &[&str] = &[
    "after_script",
    "artifacts",
    "before_script",
    "cache",
    "hooks",
    "id_tokens",
    "image",
    "interruptible",
    "retry",
    "services",
    "tags",
    "timeout",
];

/// Deprecated top-level keys that act as `default:` entries.
const TOP_LEVEL_DEFAULTS: &[&str] = &[
    "image",
    "services",
    "before_script",
    "after_script",
    "cache",
];

/// Keys a job may hold. Those that only matter to GitLab (rules, artifacts, ...) are accepted
/// and ignored by a local run.
const JOB_KEYS: &[&str] = &[
    "after_script",
    "allow_failure",
    "artifacts",
    "before_script",
    "cache",
    "coverage",
    "dast_configuration",
    "dependencies",
    "environment",
    "except",
    "extends",
    "hooks",
    "id_tokens",
    "identity",
    "image",
    "inherit",
    "interruptible",
    "manual_confirmation",
    "needs",
    "only",
    "pages",
    "parallel",
    "publish",
    "release",
    "resource_group",
    "retry",
    "rules",
    "run",
    "script",
    "secrets",
    "services",
    "stage",
    "start_in",
    "tags",
    "timeout",
    "trigger",
    "variables",
    "when",
];

const DEFAULT_STAGES: &[&str] = &["build", "test", "deploy"];

/// GitLab's longest job name.
const MAX_JOB_NAME: usize = 255;

/// The jobs `keyhole-runner exec` can run, in file order: not reserved, not hidden, mappings,
/// not trigger jobs.
pub(crate) fn runnable_names(config: &Map) -> Vec<String> {
    config
        .iter()
        .filter(|(name, node)| {
            !RESERVED.contains(&name.as_str())
                && !name.starts_with('.')
                && node.as_map().is_some_and(|m| !m.contains_key("trigger"))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Builds job `name` of the resolved configuration.
pub(crate) fn build(
    config: &Map,
    file: &Arc<str>,
    name: &str,
    opts: &LoadOptions,
) -> Result<Job, PipelineError> {
    let available = || runnable_names(config);
    let node = match config.get(name) {
        Some(node) if !RESERVED.contains(&name) => node,
        _ => {
            return Err(PipelineError::UnknownJob {
                file: file.to_string(),
                name: name.to_owned(),
                available: available(),
            });
        }
    };
    let not_runnable = |reason: &str| PipelineError::NotRunnable {
        at: node.at.clone(),
        name: name.to_owned(),
        reason: reason.to_owned(),
        available: available(),
    };
    if name.len() > MAX_JOB_NAME {
        return Err(PipelineError::config(
            &node.at,
            None,
            None,
            format!("a job name has at most {MAX_JOB_NAME} characters (GitLab's limit)"),
        ));
    }
    if name.starts_with('.') {
        return Err(not_runnable(
            "is hidden (its name starts with `.`): a template for other jobs, not a job",
        ));
    }
    let Value::Map(job) = &node.value else {
        return Err(PipelineError::config(
            &node.at,
            Some(name),
            None,
            format!("a job is a mapping of keywords, not {}", node.kind()),
        ));
    };
    if job.contains_key("trigger") {
        return Err(not_runnable(
            "is a trigger job: it starts a downstream pipeline in GitLab and runs nothing itself",
        ));
    }
    Builder {
        config,
        job,
        at: &node.at,
        name,
    }
    .build(opts)
}

struct Builder<'c> {
    config: &'c Map,
    job: &'c Map,
    at: &'c Location,
    name: &'c str,
}

impl<'c> Builder<'c> {
    fn fail(&self, at: &Location, key: Option<&str>, problem: impl Into<String>) -> PipelineError {
        PipelineError::config(at, Some(self.name), key, problem)
    }

    fn build(&self, opts: &LoadOptions) -> Result<Job, PipelineError> {
        self.check_keys()?;
        let defaults = self.defaults()?;
        let (inherit_default, inherit_variables) = self.inherit()?;
        let pick = |key: &str| -> Option<&'c Node> {
            match self.job.get(key) {
                Some(node) if !node.is_null() => Some(node),
                _ if inherit_default.allows(key) => {
                    defaults.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
                }
                _ => None,
            }
        };

        let script = self.script()?;
        let before_script = pick("before_script")
            .map(|n| script::commands(n, self.name, "before_script"))
            .transpose()?
            .unwrap_or_default();
        let after_script = pick("after_script")
            .map(|n| script::commands(n, self.name, "after_script"))
            .transpose()?
            .unwrap_or_default();
        let image = pick("image")
            .map(|n| image::image(n, self.name))
            .transpose()?;
        let services = pick("services")
            .map(|n| image::services(n, self.name))
            .transpose()?
            .unwrap_or_default();
        let timeout = pick("timeout").map(|n| self.timeout(n)).transpose()?;
        let id_tokens = pick("id_tokens")
            .map(|n| secrets::id_tokens(n, self.name))
            .transpose()?
            .unwrap_or_default();
        let stage = self.stage()?;
        // A local run is one job alone: nothing to pass files to or from. Said in the trace.
        let left_out: Vec<String> = ["artifacts", "cache", "dependencies", "needs"]
            .into_iter()
            .filter(|k| pick(k).is_some())
            .map(str::to_owned)
            .collect();

        let yaml_vars = self.yaml_variables(&inherit_variables)?;
        let gitlab_secrets = self
            .job
            .get("secrets")
            .filter(|n| !n.is_null())
            .map(|n| secrets::secrets(n, self.name, &yaml_vars, &id_tokens))
            .transpose()?;
        let git = variables::git(&yaml_vars, self.at, self.name)?;

        let mut all_vars = variables::predefined(&Predefined {
            job_name: self.name,
            stage: &stage,
            job_id: opts.job_id,
            project_dir: &opts.ci_project_dir,
            image: image.as_ref().map(|i| i.name.as_str()),
            timeout_secs: timeout.map(|t| t.as_secs()),
        });
        all_vars.extend(variables::to_job_variables(&yaml_vars));

        Ok(Job {
            id: opts.job_id,
            name: self.name.to_owned(),
            stage,
            project: Project::default(),
            git,
            image,
            services,
            variables: all_vars,
            before_script,
            script,
            after_script,
            timeout,
            gitlab_secrets,
            token: None,
            id_tokens,
            registry_credentials: Vec::new(),
            transfers: Transfers {
                left_out,
                ..Transfers::default()
            },
        })
    }

    /// Refuses a key GitLab does not know in a job, and `run:` (CI/CD steps).
    fn check_keys(&self) -> Result<(), PipelineError> {
        if let Some((key, node)) = self
            .job
            .iter()
            .find(|(k, _)| !JOB_KEYS.contains(&k.as_str()))
        {
            return Err(self.fail(
                &node.at,
                Some(key),
                "is not a GitLab job keyword (a typo? a job holds script, image, variables, ...)",
            ));
        }
        if let Some(run) = self.job.get("run") {
            return Err(self.fail(
                &run.at,
                Some("run"),
                "CI/CD steps (`run:`) are not supported by keyhole-runner exec; use `script:`",
            ));
        }
        Ok(())
    }

    /// The job's own `script:`, which it must have and which may not be empty (never taken
    /// from `default:`).
    fn script(&self) -> Result<Vec<String>, PipelineError> {
        let script = match self.job.get("script") {
            Some(node) if !node.is_null() => script::commands(node, self.name, "script")?,
            _ => {
                return Err(self.fail(
                    self.at,
                    None,
                    "has no `script:`; a job needs the commands to run",
                ));
            }
        };
        if script.is_empty() {
            return Err(self.fail(
                self.at,
                Some("script"),
                "is empty; a job needs commands to run",
            ));
        }
        Ok(script)
    }

    /// The file's global `variables:` as `inherit:variables` lets them through, then the
    /// job's own, which win.
    fn yaml_variables(&self, inherit: &Inherit) -> Result<Variables, PipelineError> {
        let global = match self.config.get("variables") {
            Some(node) => variables::read(node, None)?,
            None => Variables::new(),
        };
        let own = match self.job.get("variables") {
            Some(node) => variables::read(node, Some(self.name))?,
            None => Variables::new(),
        };
        Ok(variables::merge(&global, inherit, own))
    }

    /// `default:` entries plus the deprecated top-level ones, refusing a key defined both ways
    /// (GitLab's "is defined in top-level and `default:` entry").
    fn defaults(&self) -> Result<Vec<(&'c str, &'c Node)>, PipelineError> {
        let mut out: Vec<(&'c str, &'c Node)> = Vec::new();
        if let Some(node) = self.config.get("default") {
            match &node.value {
                Value::Null => {}
                Value::Map(map) => {
                    for (key, value) in map {
                        if !DEFAULT_KEYS.contains(&key.as_str()) {
                            let hint = match key.as_str() {
                                "variables" => "; put variables in the top-level `variables:`",
                                "secrets" => "; `secrets:` belongs in each job",
                                _ => "",
                            };
                            return Err(PipelineError::config(
                                &value.at,
                                None,
                                Some("default"),
                                format!(
                                    "`default:{key}` is not a default GitLab knows (allowed: {}){hint}",
                                    DEFAULT_KEYS.join(", ")
                                ),
                            ));
                        }
                        if !value.is_null() {
                            out.push((key.as_str(), value));
                        }
                    }
                }
                _ => {
                    return Err(PipelineError::config(
                        &node.at,
                        None,
                        Some("default"),
                        format!(
                            "is {}; `default:` is a mapping of job keywords",
                            node.kind()
                        ),
                    ));
                }
            }
        }
        for key in TOP_LEVEL_DEFAULTS {
            let Some(node) = self.config.get(*key).filter(|n| !n.is_null()) else {
                continue;
            };
            if out.iter().any(|(k, _)| k == key) {
                return Err(PipelineError::config(
                    &node.at,
                    None,
                    Some(key),
                    format!(
                        "{key} is defined in top-level and `default:` entry; keep only `default:{key}`"
                    ),
                ));
            }
            out.push((key, node));
        }
        Ok(out)
    }

    /// `inherit: {default: ..., variables: ...}`.
    fn inherit(&self) -> Result<(Inherit, Inherit), PipelineError> {
        let Some(node) = self.job.get("inherit") else {
            return Ok((Inherit::All, Inherit::All));
        };
        let Value::Map(map) = &node.value else {
            return Err(self.fail(
                &node.at,
                Some("inherit"),
                "is a mapping with `default:` and/or `variables:`",
            ));
        };
        if let Some(unknown) = map.keys().find(|k| *k != "default" && *k != "variables") {
            return Err(self.fail(
                &node.at,
                Some("inherit"),
                format!("has the unknown key {unknown:?}; use `default:` or `variables:`"),
            ));
        }
        let read = |key: &str, allowed: Option<&[&str]>| -> Result<Inherit, PipelineError> {
            let Some(node) = map.get(key) else {
                return Ok(Inherit::All);
            };
            let expected = format!("`inherit:{key}` is true, false or a list of names");
            match &node.value {
                Value::Bool(true) => Ok(Inherit::All),
                Value::Bool(false) => Ok(Inherit::Nothing),
                Value::Seq(items) => {
                    let mut names = Vec::with_capacity(items.len());
                    for item in items {
                        let name = item.as_str().ok_or_else(|| {
                            self.fail(&item.at, Some("inherit"), expected.clone())
                        })?;
                        if let Some(allowed) = allowed
                            && !allowed.contains(&name)
                        {
                            return Err(self.fail(
                                &item.at,
                                Some("inherit"),
                                format!(
                                    "`inherit:default` lists {name:?}, which is not a default (allowed: {})",
                                    allowed.join(", ")
                                ),
                            ));
                        }
                        names.push(name.to_owned());
                    }
                    Ok(Inherit::Only(names))
                }
                _ => Err(self.fail(&node.at, Some("inherit"), expected)),
            }
        };
        Ok((
            read("default", Some(DEFAULT_KEYS))?,
            read("variables", None)?,
        ))
    }

    fn timeout(&self, node: &Node) -> Result<Duration, PipelineError> {
        let hint = "use e.g. \"10m\" or \"1h 30m\"";
        let text = match &node.value {
            Value::Str(s) => s,
            Value::Int(i) => {
                return Err(self.fail(
                    &node.at,
                    Some("timeout"),
                    format!(
                        "{i} is a bare number; GitLab wants a duration string: \"{i}s\" or {hint}"
                    ),
                ));
            }
            _ => {
                return Err(self.fail(
                    &node.at,
                    Some("timeout"),
                    format!("is {}; {hint}", node.kind()),
                ));
            }
        };
        let duration = parse_duration(text).map_err(|why| {
            self.fail(
                &node.at,
                Some("timeout"),
                format!("{text:?} is not a duration (it {why}); {hint}"),
            )
        })?;
        if duration > MAX_TIMEOUT {
            return Err(self.fail(
                &node.at,
                Some("timeout"),
                format!(
                    "{text:?} is longer than GitLab's limit of {}",
                    format_duration(MAX_TIMEOUT)
                ),
            ));
        }
        Ok(duration)
    }

    /// `stage:` (default `test`), which must be one of `stages:` (or GitLab's default stages),
    /// `.pre` or `.post`.
    fn stage(&self) -> Result<String, PipelineError> {
        let stage = match self.job.get("stage") {
            None => "test".to_owned(),
            Some(node) => match &node.value {
                Value::Str(s) => s.clone(),
                Value::Null => "test".to_owned(),
                _ => {
                    return Err(self.fail(
                        &node.at,
                        Some("stage"),
                        format!("is {}; a stage is a name", node.kind()),
                    ));
                }
            },
        };
        let mut stages: Vec<String> = vec![".pre".to_owned()];
        match self.config.get("stages") {
            Some(node) => {
                let Value::Seq(items) = &node.value else {
                    return Err(PipelineError::config(
                        &node.at,
                        None,
                        Some("stages"),
                        "is a list of stage names",
                    ));
                };
                for item in items {
                    let name = item.as_str().ok_or_else(|| {
                        PipelineError::config(
                            &item.at,
                            None,
                            Some("stages"),
                            "is a list of stage names",
                        )
                    })?;
                    stages.push(name.to_owned());
                }
            }
            None => stages.extend(DEFAULT_STAGES.iter().map(|s| (*s).to_owned())),
        }
        stages.push(".post".to_owned());
        if !stages.contains(&stage) {
            let at = self.job.get("stage").map_or(self.at, |n| &n.at);
            return Err(self.fail(
                at,
                Some("stage"),
                format!(
                    "chosen stage {stage:?} does not exist; available stages are {}",
                    stages.join(", ")
                ),
            ));
        }
        Ok(stage)
    }
}
