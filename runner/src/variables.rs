//! A job's variables as the runner completes them before the job becomes a pod: the variables
//! gitlab-runner adds itself (`CI_SERVER`, `CI_RUNNER_*`, `CI_BUILDS_DIR`, `CI_PROJECT_DIR`,
//! `CI_JOB_STATUS`, ...), then GitLab's runner-side expansion of every non-raw value and of the
//! image and service fields.
//!
//! Expansion is gitlab-runner's (`JobVariables.Expand` and `ExpandValue`, which are Go's
//! `os.Expand`): `$NAME` and `${NAME}` become the variable's value (a file variable's: the path
//! of its file), `$$` becomes `$`, unknown names and shell parameters (`$1`, `$?`) become
//! nothing, and a `$` before anything else stays. One pass, against the values as they were:
//! a value that refers to another variable gets that variable's unexpanded value, so no chain
//! of references can loop or grow. GitLab itself resolves nested references between the
//! variables it knows before it sends a job; `keyhole-runner exec` has no GitLab, so there a
//! reference to a variable that itself refers to another stays one level deep.
//!
//! [`complete_job`] is pure and runs once per job ([`crate::prepare`]), for GitLab jobs and
//! `exec` jobs alike. Keyhole keeps values that may be secret out of the pod spec, so the pass
//! also tracks where a value came from: a public variable whose value takes in a non-public or
//! masked one is no longer public (it travels in the per-job Secret with the others), and an
//! image or service field, which must be in the pod spec, may not take in a masked variable.
//!
//! Values stay [`SecretString`]s. An expanded value is assembled in one allocation of its final
//! size from borrowed pieces, so no partial copy is left behind in freed memory; errors and
//! `Debug` output name variables, never values.

use std::borrow::Cow;

use keyhole_contract as contract;
use keyhole_contract::reference::KEYHOLE_VARIABLE_PREFIX;
use secrecy::{ExposeSecret, SecretString};

use crate::config::RunnerConfig;
use crate::job::{Image, Job, Service, Transfers, Variable};
use crate::pod::DEFAULT_JOB_TIMEOUT;

/// Lives with the job model, which reads `CI_DEBUG_TRACE` with it; re-exported here, beside the
/// other variable rules.
pub use crate::job::go_bool;

/// Why a job's variables cannot be completed. Names fields and variables, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// A field that ends up in the pod spec (or in a pod annotation) refers to a masked
    /// variable: its value would be readable by anyone who can read the pod.
    #[error(
        "{field} refers to the masked variable {variable}: its value would be visible in the \
         pod spec; use the variable in the script instead"
    )]
    MaskedInPodSpec { field: String, variable: String },
}

/// What the runner says about itself in every job's variables (gitlab-runner's
/// `RunnerConfig.GetVariables`, `GetDefaultVariables` and `AppVersion.Variables`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerFacts {
    /// `CI_BUILDS_DIR`, the parent of every project directory.
    pub builds_dir: String,
    /// The runner's `environment = ["NAME=value"]`, in order.
    pub environment: Vec<(String, String)>,
    /// `CI_RUNNER_SHORT_TOKEN`: the first characters of the runner's token, as GitLab shows
    /// them; `None` without a token (`exec`).
    pub short_token: Option<String>,
    /// `CI_RUNNER_VERSION`.
    pub version: String,
    /// `CI_RUNNER_REVISION`.
    pub revision: String,
    /// `CI_RUNNER_EXECUTABLE_ARCH`, in Go's `os/arch` spelling as gitlab-runner gives it.
    pub executable_arch: String,
}

impl RunnerFacts {
    /// The facts of this runner binary with this configuration.
    pub fn of(runner: &RunnerConfig) -> Self {
        Self {
            builds_dir: runner.builds_dir.clone(),
            environment: runner
                .environment
                .iter()
                .filter_map(|entry| entry.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            short_token: runner
                .token
                .as_ref()
                .map(|t| short_token(t.expose_secret()))
                .filter(|t| !t.is_empty()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            // Set by whoever builds a release (`KEYHOLE_REVISION=$(git rev-parse --short HEAD)`).
            revision: option_env!("KEYHOLE_REVISION")
                .unwrap_or("unknown")
                .to_owned(),
            executable_arch: go_platform(std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// gitlab-runner's `helpers.ShortenToken`: the token without its known prefixes (runner
/// `glrt-`, partition `t1_`..`t3_`, `glrtr-`, job `glcbt-`, old registration `GR` + 7 hex
/// digits), cut to 9 characters. GitLab shows the same characters in its runner list, so they
/// identify the runner without being a usable credential.
pub fn short_token(token: &str) -> String {
    let mut rest = token;
    if let Some(r) = rest.strip_prefix("glrt-") {
        rest = strip_partition(r);
    } else if let Some(r) = rest.strip_prefix("glrtr-") {
        rest = r;
    } else {
        rest = strip_partition(rest);
    }
    rest = rest.strip_prefix("glcbt-").unwrap_or(rest);
    if rest.len() >= 9
        && rest.starts_with("GR")
        && rest.as_bytes()[2..9].iter().all(u8::is_ascii_hexdigit)
    {
        rest = &rest[9..];
    }
    rest.chars().take(9).collect()
}

/// `t1_`, `t2_`, `t3_`: the partition prefix of newer runner tokens.
fn strip_partition(token: &str) -> &str {
    match token.as_bytes() {
        [b't', b'1'..=b'3', b'_', ..] => &token[3..],
        _ => token,
    }
}

/// Rust's target names in Go's spelling (`linux/amd64`), which jobs compare against.
fn go_platform(os: &str, arch: &str) -> String {
    let arch = match arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    };
    format!("{os}/{arch}")
}

/// `CI_PROJECT_DIR`: the job's own public value (GitLab's, or `exec`'s), else
/// `<builds_dir>/<project path>`; without a project path the project id still gives the job
/// a directory of its own.
pub fn project_dir(job: &Job, builds_dir: &str) -> String {
    if let Some(dir) = job.public_variable("CI_PROJECT_DIR") {
        return dir.to_owned();
    }
    let project = match &job.project.path {
        Some(path) => path.clone(),
        None => format!("project-{}", job.project.id),
    };
    format!("{}/{project}", builds_dir.trim_end_matches('/'))
}

/// The job with the runner's variables added and every variable, image and service field
/// expanded. Pure; run it once per job (expansion is not idempotent: `$$` becomes `$`).
///
/// # Errors
///
/// [`ExpandError::MaskedInPodSpec`] when an image or service field, a service variable or a
/// `KEYHOLE_SECRET_*` reference (a pod annotation) refers to a masked variable.
pub fn complete_job(job: &Job, runner: &RunnerFacts) -> Result<Job, ExpandError> {
    let all = with_runner_variables(job, runner);
    let variables = expand_variables(&all)?;
    let image = job
        .image
        .as_ref()
        .map(|image| expand_image(image, &variables, "image"))
        .transpose()?;
    let services = job
        .services
        .iter()
        .enumerate()
        .map(|(i, service)| expand_service(service, &variables, i))
        .collect::<Result<Vec<_>, _>>()?;
    let transfers = expand_transfers(&job.transfers, &variables)?;
    Ok(Job {
        variables,
        image,
        services,
        transfers,
        ..job.clone()
    })
}

/// Artifacts' names, paths and excludes, and caches' keys and paths, as gitlab-runner
/// expands them (`$CI_COMMIT_REF_SLUG` in a cache key, `$CI_JOB_NAME` in a name). A masked
/// variable is refused there too: names and paths appear in the trace and in GitLab.
fn expand_transfers(t: &Transfers, vars: &[Variable]) -> Result<Transfers, ExpandError> {
    let mut out = t.clone();
    for (i, a) in out.artifacts.iter_mut().enumerate() {
        let field = format!("artifacts[{i}]");
        a.name = expand_field(&a.name, vars, &format!("{field} name"))?;
        a.paths = expand_list(&a.paths, vars, &format!("{field} paths"))?;
        a.exclude = expand_list(&a.exclude, vars, &format!("{field} exclude"))?;
    }
    for (i, c) in out.caches.iter_mut().enumerate() {
        let field = format!("cache[{i}]");
        c.key = expand_field(&c.key, vars, &format!("{field} key"))?;
        c.paths = expand_list(&c.paths, vars, &format!("{field} paths"))?;
        c.fallback_keys = expand_list(&c.fallback_keys, vars, &format!("{field} fallback_keys"))?;
    }
    Ok(out)
}

/// The job's variables between those gitlab-runner puts before them (which the job may
/// override) and those it puts after (which win), in gitlab-runner's order.
fn with_runner_variables(job: &Job, runner: &RunnerFacts) -> Vec<Variable> {
    let mut before = Vec::new();
    if let Some(image) = &job.image {
        before.push(Variable::public("CI_JOB_IMAGE", image.name.clone()));
    }
    if let Some(token) = &runner.short_token {
        before.push(Variable::public("CI_RUNNER_SHORT_TOKEN", token.clone()));
    }
    before.extend(
        runner
            .environment
            .iter()
            .map(|(k, v)| Variable::public(k.clone(), v.clone())),
    );
    let timeout = job.timeout.unwrap_or(DEFAULT_JOB_TIMEOUT).as_secs();
    before.extend([
        Variable::public("CI_BUILDS_DIR", runner.builds_dir.clone()),
        Variable::public("CI_PROJECT_DIR", project_dir(job, &runner.builds_dir)),
        Variable::public("CI_SERVER", "yes"),
        // `after_script` gets `success`, `failed` or `canceled` from the script itself.
        Variable::public("CI_JOB_STATUS", "running"),
        Variable::public("CI_JOB_TIMEOUT", timeout.to_string()),
    ]);
    let after = [
        // Every job gets a pod of its own, deleted after it.
        Variable::public("CI_DISPOSABLE_ENVIRONMENT", "true"),
        Variable::public("CI_RUNNER_VERSION", runner.version.clone()),
        Variable::public("CI_RUNNER_REVISION", runner.revision.clone()),
        Variable::public("CI_RUNNER_EXECUTABLE_ARCH", runner.executable_arch.clone()),
    ];
    let mut all = before;
    all.extend(job.variables.iter().cloned());
    all.extend(after);
    all
}

/// Expands every non-raw variable (file variables' contents too) against `vars` as they are.
/// A public variable that takes in a non-public or masked value stops being public, so the
/// pod builder puts it in the per-job Secret instead of the pod spec.
///
/// # Errors
///
/// A `KEYHOLE_SECRET_*` reference (it becomes a pod annotation) that refers to a masked
/// variable.
pub fn expand_variables(vars: &[Variable]) -> Result<Vec<Variable>, ExpandError> {
    vars.iter()
        .map(|v| {
            if v.raw {
                return Ok(v.clone());
            }
            let expanded = expand(v.value.expose_secret(), vars);
            if v.key.starts_with(KEYHOLE_VARIABLE_PREFIX)
                && let Some(masked) = expanded.masked
            {
                return Err(ExpandError::MaskedInPodSpec {
                    field: format!("the secret reference {}", v.key),
                    variable: masked,
                });
            }
            Ok(Variable {
                value: expanded.value,
                public: v.public && !expanded.takes_secret,
                ..v.clone()
            })
        })
        .collect()
}

/// A field of the pod spec expanded against the (already expanded) job variables.
fn expand_field(value: &str, vars: &[Variable], field: &str) -> Result<String, ExpandError> {
    let expanded = expand(value, vars);
    if let Some(variable) = expanded.masked {
        return Err(ExpandError::MaskedInPodSpec {
            field: field.to_owned(),
            variable,
        });
    }
    Ok(expanded.value.expose_secret().to_owned())
}

fn expand_list(
    values: &[String],
    vars: &[Variable],
    field: &str,
) -> Result<Vec<String>, ExpandError> {
    values
        .iter()
        .map(|v| expand_field(v, vars, field))
        .collect()
}

/// `image:` or a service's image: name, entrypoint and pull policies, as gitlab-runner
/// expands them before it builds the pod.
fn expand_image(image: &Image, vars: &[Variable], field: &str) -> Result<Image, ExpandError> {
    Ok(Image {
        name: expand_field(&image.name, vars, &format!("{field} name"))?,
        entrypoint: image
            .entrypoint
            .as_ref()
            .map(|e| expand_list(e, vars, &format!("{field} entrypoint")))
            .transpose()?,
        pull_policy: expand_list(&image.pull_policy, vars, &format!("{field} pull_policy"))?,
        user: image
            .user
            .as_ref()
            .map(|u| expand_field(u, vars, &format!("{field} kubernetes user")))
            .transpose()?,
    })
}

/// A service: its image fields, aliases (split again, as an alias may expand to several),
/// command, and its own variables, which (as gitlab-runner's `GetServiceVariables`) are
/// expanded against the job's variables and the service's own.
fn expand_service(
    service: &Service,
    vars: &[Variable],
    index: usize,
) -> Result<Service, ExpandError> {
    let field = format!("services[{index}]");
    let aliases = service
        .aliases
        .iter()
        .map(|a| expand_field(a, vars, &format!("{field} alias")))
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .flat_map(|a| crate::gitlab::payload::split_aliases(a))
        .collect();
    let mut source = vars.to_vec();
    source.extend(
        service
            .variables
            .iter()
            .map(|(k, v)| Variable::public(k.clone(), v.clone())),
    );
    let variables = service
        .variables
        .iter()
        .map(|(k, v)| {
            let value = expand_field(v, &source, &format!("{field} variable {k}"))?;
            Ok((k.clone(), value))
        })
        .collect::<Result<Vec<_>, ExpandError>>()?;
    Ok(Service {
        image: expand_image(&service.image, vars, &field)?,
        aliases,
        command: service
            .command
            .as_ref()
            .map(|c| expand_list(c, vars, &format!("{field} command")))
            .transpose()?,
        variables,
        ports: service.ports.clone(),
    })
}

/// One value expanded, with where its pieces came from.
struct Expanded {
    value: SecretString,
    /// A referenced variable is not public or is masked: the result may be secret.
    takes_secret: bool,
    /// The first masked variable referenced, by name.
    masked: Option<String>,
}

/// Expands `value` against `vars` (the last variable of a name wins, as in GitLab).
fn expand(value: &str, vars: &[Variable]) -> Expanded {
    let mut parts: Vec<Cow<'_, str>> = Vec::new();
    let mut takes_secret = false;
    let mut masked = None;
    for piece in pieces(value) {
        match piece {
            Piece::Text(text) => parts.push(Cow::Borrowed(text)),
            Piece::Reference(name) => match target(name, vars) {
                Target::Dollar => parts.push(Cow::Borrowed("$")),
                Target::Nothing => {}
                Target::Path(path) => parts.push(Cow::Owned(path)),
                Target::Value(v) => {
                    takes_secret |= !v.public || v.masked;
                    if v.masked && masked.is_none() {
                        masked = Some(v.key.clone());
                    }
                    parts.push(Cow::Borrowed(v.value.expose_secret()));
                }
            },
        }
    }
    Expanded {
        value: concat(&parts),
        takes_secret,
        masked,
    }
}

/// The parts joined in one allocation of the exact size: `String` never reallocates (which
/// would leave a copy in freed memory), and turning it into a `SecretString` needs no shrink.
fn concat(parts: &[Cow<'_, str>]) -> SecretString {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    SecretString::from(out)
}

/// What a reference stands for (gitlab-runner's `Variables.Get`).
enum Target<'v> {
    /// `$$` (and `${$}`): a literal `$`.
    Dollar,
    /// Shell parameters (`$1`, `$?`, `$#`, ...) and unknown names.
    Nothing,
    /// A file variable: the path of the file the job sees.
    Path(String),
    /// Any other variable: its value.
    Value(&'v Variable),
}

fn target<'v>(name: &str, vars: &'v [Variable]) -> Target<'v> {
    match name {
        "$" => return Target::Dollar,
        "*" | "#" | "@" | "!" | "?" | "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" => {
            return Target::Nothing;
        }
        _ => {}
    }
    match vars.iter().rev().find(|v| v.key == name) {
        None => Target::Nothing,
        // The broker writes a file variable to SECRETS_DIR/<name> (contract::JOB_FILE_VARIABLE_PREFIX).
        Some(v) if v.file => Target::Path(format!("{}/{}", contract::SECRETS_DIR, v.key)),
        Some(v) => Target::Value(v),
    }
}

/// A piece of a value as Go's `os.Expand` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'v> {
    /// Kept as it is.
    Text(&'v str),
    /// `$NAME`, `${NAME}`, `$$` (name `$`), `$1`: replaced.
    Reference(&'v str),
}

/// Splits a value into text and references, byte for byte as Go's `os.Expand`: `${}` and an
/// unclosed `${` are dropped, a `$` not followed by a name (or at the end) is text.
fn pieces(value: &str) -> Vec<Piece<'_>> {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut j = 0;
    while j < bytes.len() {
        if bytes[j] == b'$' && j + 1 < bytes.len() {
            if start < j {
                out.push(Piece::Text(&value[start..j]));
            }
            let (name, width) = shell_name(&value[j + 1..]);
            match name {
                Some(name) => out.push(Piece::Reference(name)),
                // Bad syntax (`${}`, `${` never closed): Go drops it.
                None if width > 0 => {}
                // Not a name (`$ `, `$(`, `$-x`...): the `$` stays.
                None => out.push(Piece::Text(&value[j..=j])),
            }
            j += width;
            start = j + 1;
        }
        j += 1;
    }
    if start < bytes.len() {
        out.push(Piece::Text(&value[start..]));
    }
    out
}

/// Go's `isShellSpecialVar`.
fn is_special(b: u8) -> bool {
    matches!(
        b,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

/// Go's `getShellName` on the text after a `$` (never empty): the name, if any, and how many
/// bytes the reference takes after the `$`. Every index sliced at is an ASCII byte, so a
/// slice never splits a UTF-8 character.
fn shell_name(s: &str) -> (Option<&str>, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && is_special(b[1]) && b[2] == b'}' {
            return (Some(&s[1..2]), 3);
        }
        return match b.iter().skip(1).position(|&c| c == b'}') {
            Some(0) => (None, 2),
            Some(i) => (Some(&s[1..=i]), i + 2),
            None => (None, 1),
        };
    }
    if is_special(b[0]) {
        return (Some(&s[..1]), 1);
    }
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    if n == 0 {
        (None, 0)
    } else {
        (Some(&s[..n]), n)
    }
}

#[cfg(test)]
mod tests;
