//! GitLab's job payload (the 201 body of `POST /api/v4/jobs/request`) turned into a [`Job`].
//!
//! The payload carries the job token and every variable value, so parsing never puts a value
//! into an error: errors name the field (`git_info.sha`, `variables[3].key`) and the JSON type
//! found. Unknown fields are ignored, so newer GitLab versions keep working; a field the runner
//! needs and cannot find is an error naming it.

use secrecy::SecretString;
use serde_json::Value;

use super::error::PayloadError;
use super::fields::Obj;
use crate::job::{
    GitCheckout, GitStrategy, Image, Job, Project, RegistryCredential, Service, Variable,
};

/// A job as GitLab sent it: the source-independent [`Job`] plus what only matters when
/// talking back to GitLab.
#[derive(Debug, Clone)]
pub struct JobPayload {
    pub job: Job,
    pub features: GitlabFeatures,
}

/// The payload's `features` block: what this GitLab accepts back from the runner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitlabFeatures {
    /// Failure reasons GitLab understands; others must be mapped before the final update
    /// (see [`super::FailureReason::supported_by`]). Empty when GitLab did not say.
    pub failure_reasons: Vec<String>,
    /// Token prefixes (`glpat-`, ...) the trace masker should hide.
    pub token_mask_prefixes: Vec<String>,
    /// GitLab renders `section_start`/`section_end` markers in the trace.
    pub trace_sections: bool,
}

/// Parses a `jobs/request` 201 body.
pub fn job_from_payload(json: &[u8]) -> Result<JobPayload, PayloadError> {
    let value: Value = serde_json::from_slice(json).map_err(|e| PayloadError::Syntax {
        // The message of a serde_json error may quote input; keep only its kind and place.
        category: match e.classify() {
            serde_json::error::Category::Eof => "unexpected end of input",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "data error",
            serde_json::error::Category::Io => "read error",
        },
        line: e.line(),
        column: e.column(),
    })?;
    job_from_value(&value)
}

/// Converts an already parsed payload.
pub fn job_from_value(value: &Value) -> Result<JobPayload, PayloadError> {
    let root = Obj::root(value)?;

    let id = root.req_u64("id")?;
    let token = root.req_str("token")?;
    if token.is_empty() {
        return Err(PayloadError::Invalid {
            field: "token".into(),
            reason: "is empty; GitLab sends a job token with every job".into(),
        });
    }
    if root.opt_str("run")?.is_some_and(|r| !r.trim().is_empty()) {
        return Err(PayloadError::Unsupported {
            field: "run".into(),
            reason: "CI steps (`run:`) are not implemented; use `script:`".into(),
        });
    }

    let variables = variables(&root)?;
    let job_info = root.req_obj("job_info")?;
    let project = project(&job_info)?;
    let (before_script, script, after_script, step_timeout) = steps(&root)?;
    let runner_timeout = match root.opt_obj("runner_info")? {
        Some(info) => info.opt_u64("timeout")?,
        None => None,
    };
    // A step's own timeout is the job's `timeout:`; runner_info.timeout is GitLab's
    // effective limit for the runner. 0 means "not set" in both.
    let timeout = step_timeout
        .filter(|t| *t > 0)
        .or(runner_timeout.filter(|t| *t > 0))
        .map(std::time::Duration::from_secs);

    let mut job = Job {
        id,
        name: job_info.req_str("name")?.to_owned(),
        stage: job_info.req_str("stage")?.to_owned(),
        project,
        git: GitCheckout::default(),
        image: match root.opt_obj("image")? {
            Some(img) => image(&img)?,
            None => None,
        },
        services: services(&root)?,
        variables,
        before_script,
        script,
        after_script,
        timeout,
        gitlab_secrets: secrets(&root)?,
        token: Some(SecretString::from(token.to_owned())),
        id_tokens: Vec::new(),
        registry_credentials: registry_credentials(&root)?,
        transfers: super::transfers::transfers(&root)?,
    };
    job.git = git_checkout(&root.req_obj("git_info")?, &job)?;

    let features = match root.opt_obj("features")? {
        Some(f) => GitlabFeatures {
            failure_reasons: f.str_list("failure_reasons")?,
            token_mask_prefixes: f.str_list("token_mask_prefixes")?,
            trace_sections: f.flag("trace_sections")?,
        },
        None => GitlabFeatures::default(),
    };
    Ok(JobPayload { job, features })
}

fn variables(root: &Obj<'_>) -> Result<Vec<Variable>, PayloadError> {
    root.objects("variables")?
        .iter()
        .map(|v| {
            Ok(Variable {
                key: v.req_str("key")?.to_owned(),
                value: SecretString::from(v.opt_str("value")?.unwrap_or_default().to_owned()),
                public: v.flag("public")?,
                masked: v.flag("masked")?,
                file: v.flag("file")?,
                raw: v.flag("raw")?,
            })
        })
        .collect()
}

/// The last public value of `key` (later variables win, as in GitLab).
fn public_value<'v>(variables: &'v [Variable], key: &str) -> Option<&'v str> {
    use secrecy::ExposeSecret;
    variables
        .iter()
        .rev()
        .find(|v| v.public && v.key == key)
        .map(|v| v.value.expose_secret())
}

/// The project identity, only from GitLab's own `job_info`. `CI_PROJECT_PATH` is no fallback:
/// a job's `variables:` come later in the list and win, so a job could name any project and
/// match another project's ServiceAccount rules. Older GitLab versions omit
/// `project_full_path`; their jobs get no project path, so no rule matches them.
fn project(job_info: &Obj<'_>) -> Result<Project, PayloadError> {
    let path = job_info
        .opt_str("project_full_path")?
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    Ok(Project {
        id: job_info.req_u64("project_id")?,
        path,
    })
}

type Scripts = (Vec<String>, Vec<String>, Vec<String>, Option<u64>);

/// `script` and `after_script` steps. GitLab has already merged `before_script` into the
/// `script` step, so `before_script` stays empty.
fn steps(root: &Obj<'_>) -> Result<Scripts, PayloadError> {
    let mut script = Vec::new();
    let mut after_script = Vec::new();
    let mut timeout = None;
    for step in root.objects("steps")? {
        match step.req_str("name")? {
            "script" => {
                script = step.str_list("script")?;
                timeout = step.opt_u64("timeout")?;
            }
            "after_script" => after_script = step.str_list("script")?,
            other => {
                return Err(PayloadError::Unsupported {
                    field: step.field("name"),
                    reason: format!(
                        "the step `{}` is not implemented (only `script` and `after_script` are)",
                        // Step names are GitLab keywords, not user data; still cap the length.
                        other.chars().take(40).collect::<String>()
                    ),
                });
            }
        }
    }
    Ok((Vec::new(), script, after_script, timeout))
}

fn image(img: &Obj<'_>) -> Result<Option<Image>, PayloadError> {
    let name = img.opt_str("name")?.unwrap_or_default();
    if name.is_empty() {
        // Rails sends an empty image block when the job has no `image:`.
        return Ok(None);
    }
    // `ports` of the build image only matter to gitlab-runner's web-terminal proxy, which
    // Keyhole does not have; they are read (so a malformed block is an error) and documented
    // as having no effect.
    image_ports(img)?;
    Ok(Some(Image {
        name: name.to_owned(),
        entrypoint: img.opt_str_list("entrypoint")?,
        pull_policy: img.str_list("pull_policy")?,
        user: executor_user(img)?,
    }))
}

/// `ports[].number` of an image or service, each 1..=65535.
fn image_ports(img: &Obj<'_>) -> Result<Vec<u16>, PayloadError> {
    img.objects("ports")?
        .iter()
        .map(|p| {
            let number = p.req_u64("number")?;
            u16::try_from(number)
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| PayloadError::Invalid {
                    field: p.field("number"),
                    reason: format!("is {number}; a port is a number from 1 to 65535"),
                })
        })
        .collect()
}

/// `executor_opts`: `kubernetes.user` is honoured; everything else (`docker.*`, unknown
/// executors or keys) is refused by name, as gitlab-runner refuses options it does not know.
fn executor_user(img: &Obj<'_>) -> Result<Option<String>, PayloadError> {
    let Some(opts) = img.opt_obj("executor_opts")? else {
        return Ok(None);
    };
    if let Some(other) = opts.keys().find(|&k| k != "kubernetes") {
        return Err(PayloadError::Unsupported {
            field: opts.field(other),
            reason: format!(
                "executor options for `{}` (user, platform) are not honoured by Keyhole's \
                 Kubernetes pods; remove them or use `kubernetes: {{user: ...}}`",
                other.chars().take(40).collect::<String>()
            ),
        });
    }
    let Some(k) = opts.opt_obj("kubernetes")? else {
        return Ok(None);
    };
    if let Some(other) = k.keys().find(|&k| k != "user") {
        return Err(PayloadError::Unsupported {
            field: k.field(other),
            reason: "only `user` is a Kubernetes executor option".into(),
        });
    }
    match k.get("user") {
        // `get` already reads JSON null as absent.
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(v) => Err(PayloadError::WrongType {
            field: k.field("user"),
            expected: "a string (`uid` or `uid:gid`) or a number",
            found: super::fields::type_name(v),
        }),
    }
}

fn services(root: &Obj<'_>) -> Result<Vec<Service>, PayloadError> {
    root.objects("services")?
        .iter()
        .map(|s| {
            let name = s.req_str("name")?;
            if name.is_empty() {
                return Err(PayloadError::Invalid {
                    field: s.field("name"),
                    reason: "is empty; a service needs an image".into(),
                });
            }
            let variables = s
                .objects("variables")?
                .iter()
                .map(|v| {
                    Ok((
                        v.req_str("key")?.to_owned(),
                        v.opt_str("value")?.unwrap_or_default().to_owned(),
                    ))
                })
                .collect::<Result<Vec<_>, PayloadError>>()?;
            Ok(Service {
                image: Image {
                    name: name.to_owned(),
                    entrypoint: s.opt_str_list("entrypoint")?,
                    pull_policy: s.str_list("pull_policy")?,
                    user: executor_user(s)?,
                },
                aliases: split_aliases(s.opt_str("alias")?.unwrap_or_default()),
                command: s.opt_str_list("command")?,
                variables,
                ports: image_ports(s)?,
            })
        })
        .collect()
}

/// GitLab accepts several aliases in one `alias`, separated by commas and/or spaces (also
/// after expansion: [`crate::variables`] splits an expanded alias again).
pub(crate) fn split_aliases(alias: &str) -> Vec<String> {
    alias
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `credentials[]`: the registry logins GitLab hands the runner (today the job token for
/// GitLab's container registry). gitlab-runner uses only `type: registry`, and so does
/// Keyhole; no other type exists.
fn registry_credentials(root: &Obj<'_>) -> Result<Vec<RegistryCredential>, PayloadError> {
    let mut out = Vec::new();
    for c in root.objects("credentials")? {
        if c.opt_str("type")? != Some("registry") {
            continue;
        }
        let registry = c.req_str("url")?;
        if registry.is_empty() {
            return Err(PayloadError::Invalid {
                field: c.field("url"),
                reason: "is empty; a registry login needs the registry's host".into(),
            });
        }
        out.push(RegistryCredential {
            registry: registry.to_owned(),
            username: c.req_str("username")?.to_owned(),
            password: SecretString::from(c.req_str("password")?.to_owned()),
        });
    }
    Ok(out)
}

fn secrets(root: &Obj<'_>) -> Result<Option<Value>, PayloadError> {
    match root.get("secrets") {
        None => Ok(None),
        Some(Value::Object(map)) if map.is_empty() => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(v) => Err(PayloadError::WrongType {
            field: "secrets".into(),
            expected: "an object",
            found: super::fields::type_name(v),
        }),
    }
}

fn git_checkout(git: &Obj<'_>, job: &Job) -> Result<GitCheckout, PayloadError> {
    let repo_url = match git.opt_str("repo_url")? {
        Some(url) if !url.is_empty() => {
            Some(strip_credentials(url).ok_or_else(|| PayloadError::Invalid {
                field: git.field("repo_url"),
                reason: "is not a URL".into(),
            })?)
        }
        _ => None,
    };
    let ref_is_tag = match git.opt_str("ref_type")? {
        None | Some("branch") | Some("") => false,
        Some("tag") => true,
        Some(_) => {
            return Err(PayloadError::Invalid {
                field: git.field("ref_type"),
                reason: "is neither `branch` nor `tag`".into(),
            });
        }
    };
    let depth = match public_value(&job.variables, "GIT_DEPTH") {
        Some(d) if !d.trim().is_empty() => {
            Some(d.trim().parse::<u32>().map_err(|_| PayloadError::Invalid {
                field: "variables.GIT_DEPTH".into(),
                reason: "is not a non-negative integer; fix `GIT_DEPTH` in .gitlab-ci.yml".into(),
            })?)
        }
        _ => match git.opt_u64("depth")? {
            None => None,
            Some(d) => Some(u32::try_from(d).map_err(|_| PayloadError::Invalid {
                field: git.field("depth"),
                reason: "is larger than 4294967295".into(),
            })?),
        },
    };
    let strategy = match public_value(&job.variables, "GIT_STRATEGY").map(str::trim) {
        None | Some("") => GitStrategy::default(),
        // `empty` (GitLab 17.x) cleans the directory and skips the checkout: in a fresh pod
        // that is the same as `none`.
        Some("none") | Some("empty") => GitStrategy::None,
        Some("fetch") => GitStrategy::Fetch,
        Some("clone") => GitStrategy::Clone,
        Some(_) => {
            return Err(PayloadError::Invalid {
                field: "variables.GIT_STRATEGY".into(),
                reason: "is not one of `none`, `empty`, `fetch`, `clone`; fix it in .gitlab-ci.yml"
                    .into(),
            });
        }
    };
    Ok(GitCheckout {
        repo_url,
        sha: git.req_str("sha")?.to_owned(),
        ref_name: git.req_str("ref")?.to_owned(),
        ref_is_tag,
        protected: git.flag("protected")?,
        refspecs: git.str_list("refspecs")?,
        depth,
        strategy,
    })
}

/// The URL without user and password: GitLab embeds `gitlab-ci-token:<job token>@`, and the
/// token must travel separately (as a Secret), never inside a URL that ends up in a pod spec
/// or a log. `None` when it is not a URL.
pub fn strip_credentials(url: &str) -> Option<String> {
    let mut parsed = reqwest::Url::parse(url).ok()?;
    if parsed.cannot_be_a_base() {
        return None;
    }
    // Both only fail for cannot-be-a-base URLs, excluded above.
    parsed.set_username("").ok()?;
    parsed.set_password(None).ok()?;
    Some(parsed.into())
}

#[cfg(test)]
mod tests;
