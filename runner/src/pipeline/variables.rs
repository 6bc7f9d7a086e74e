//! `variables:` (global and per job), the predefined `CI_*` variables of a local job, and the
//! Git settings GitLab reads from variables (`GIT_STRATEGY`, `GIT_DEPTH`).
//!
//! Values are strings or integers, or `{value, description, expand, options}` mappings
//! (`expand: false` makes a raw variable), as GitLab accepts them; booleans and floats are
//! refused as GitLab refuses them. No message quotes a value: YAML variables should not hold
//! secrets, but some do.

use indexmap::IndexMap;

use crate::job::{GitCheckout, GitStrategy, Variable};

use super::{
    error::{Location, PipelineError},
    yaml::{Map, Node, Value},
};

/// One YAML variable.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct YamlVariable {
    pub(crate) value: String,
    /// `expand: false`: GitLab's raw variable, no `$VAR` expansion.
    pub(crate) raw: bool,
}

impl std::fmt::Debug for YamlVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YamlVariable")
            .field("value", &"[redacted]")
            .field("raw", &self.raw)
            .finish()
    }
}

/// Variables by name, in file order.
pub(crate) type Variables = IndexMap<String, YamlVariable>;

const DATA_KEYS: &[&str] = &["value", "description", "expand", "options"];

/// Reads a `variables:` mapping; `job` is `None` for the global one.
pub(crate) fn read(node: &Node, job: Option<&str>) -> Result<Variables, PipelineError> {
    let fail =
        |at: &Node, problem: String| PipelineError::config(&at.at, job, Some("variables"), problem);
    let map = match &node.value {
        Value::Map(map) => map,
        Value::Null => return Ok(Variables::new()),
        _ => {
            return Err(fail(
                node,
                format!(
                    "is {}; variables are a mapping of names to values",
                    node.kind()
                ),
            ));
        }
    };
    let mut out = Variables::new();
    for (name, entry) in map {
        let variable = match &entry.value {
            Value::Str(s) => YamlVariable {
                value: s.clone(),
                raw: false,
            },
            Value::Int(i) => YamlVariable {
                value: i.to_string(),
                raw: false,
            },
            Value::Map(data) => with_data(name, entry, data, &fail)?,
            _ => {
                return Err(fail(
                    entry,
                    format!(
                        "variable {name:?} is {}; GitLab accepts a string, an integer or \
                         {{value: ..., expand: ...}}: quote the value",
                        entry.kind()
                    ),
                ));
            }
        };
        out.insert(name.clone(), variable);
    }
    Ok(out)
}

fn with_data(
    name: &str,
    entry: &Node,
    data: &Map,
    fail: &impl Fn(&Node, String) -> PipelineError,
) -> Result<YamlVariable, PipelineError> {
    if let Some(unknown) = data.keys().find(|k| !DATA_KEYS.contains(&k.as_str())) {
        return Err(fail(
            entry,
            format!(
                "variable {name:?} has the unknown key {unknown:?}; allowed: {}",
                DATA_KEYS.join(", ")
            ),
        ));
    }
    let value = match data.get("value").map(|n| (&n.value, n)) {
        None | Some((Value::Null, _)) => String::new(),
        Some((Value::Str(s), _)) => s.clone(),
        Some((Value::Int(i), _)) => i.to_string(),
        Some((_, n)) => {
            return Err(fail(
                n,
                format!("the value of variable {name:?} is {}; quote it", n.kind()),
            ));
        }
    };
    let raw = match data.get("expand").map(|n| (&n.value, n)) {
        None => false,
        Some((Value::Bool(expand), _)) => !expand,
        Some((_, n)) => {
            return Err(fail(
                n,
                format!("`expand` of variable {name:?} is true or false"),
            ));
        }
    };
    if let Some(options) = data.get("options") {
        let Value::Seq(items) = &options.value else {
            return Err(fail(
                options,
                format!("`options` of variable {name:?} is a list of strings"),
            ));
        };
        let mut listed = false;
        for item in items {
            let Some(option) = item.as_str() else {
                return Err(fail(
                    item,
                    format!("`options` of variable {name:?} is a list of strings"),
                ));
            };
            listed |= option == value;
        }
        if !listed {
            return Err(fail(
                entry,
                format!("the value of variable {name:?} is not one of its `options`"),
            ));
        }
    }
    if let Some(d) = data.get("description")
        && !matches!(d.value, Value::Str(_) | Value::Null)
    {
        return Err(fail(
            d,
            format!("`description` of variable {name:?} is a string"),
        ));
    }
    Ok(YamlVariable { value, raw })
}

/// `inherit:variables` (and `inherit:default`): all, none, or the listed names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inherit {
    All,
    Nothing,
    Only(Vec<String>),
}

impl Inherit {
    pub(crate) fn allows(&self, name: &str) -> bool {
        match self {
            Inherit::All => true,
            Inherit::Nothing => false,
            Inherit::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// The job's YAML variables in GitLab's precedence: the inherited global ones, then the job's
/// own, which replace global ones of the same name (in the global one's place).
pub(crate) fn merge(global: &Variables, inherit: &Inherit, job: Variables) -> Variables {
    let mut out: Variables = global
        .iter()
        .filter(|(name, _)| inherit.allows(name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(job);
    out
}

/// What a local job knows about itself, as predefined variables.
pub(crate) struct Predefined<'a> {
    pub(crate) job_name: &'a str,
    pub(crate) stage: &'a str,
    pub(crate) job_id: u64,
    pub(crate) project_dir: &'a str,
    pub(crate) image: Option<&'a str>,
    pub(crate) timeout_secs: Option<u64>,
}

/// `keyhole-runner exec`'s `CI_PIPELINE_SOURCE`.
pub const PIPELINE_SOURCE: &str = "keyhole-exec";

/// The predefined variables that mean something without GitLab, first in the job's list so
/// YAML variables may override them (GitLab's precedence).
pub(crate) fn predefined(p: &Predefined<'_>) -> Vec<Variable> {
    let mut vars = vec![
        Variable::public("CI", "true"),
        Variable::public("GITLAB_CI", "true"),
        Variable::public("CI_JOB_ID", p.job_id.to_string()),
        Variable::public("CI_JOB_NAME", p.job_name),
        Variable::public("CI_JOB_NAME_SLUG", slug(p.job_name)),
        Variable::public("CI_JOB_STAGE", p.stage),
        Variable::public("CI_PROJECT_DIR", p.project_dir),
        Variable::public("CI_PIPELINE_SOURCE", PIPELINE_SOURCE),
        // One job, not one of a `parallel:` set: GitLab gives such a job a total of 1 and no
        // index.
        Variable::public("CI_NODE_TOTAL", "1"),
    ];
    if let Some(image) = p.image {
        vars.push(Variable::public("CI_JOB_IMAGE", image));
    }
    if let Some(secs) = p.timeout_secs {
        vars.push(Variable::public("CI_JOB_TIMEOUT", secs.to_string()));
    }
    vars
}

/// GitLab's `CI_JOB_NAME_SLUG`: lowercase, runs of other characters than `a-z0-9` become `-`,
/// at most 63 bytes, no `-` at either end.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.to_ascii_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(63);
    out.trim_matches('-').to_owned()
}

/// YAML variables as job variables: public (GitLab sends YAML variables as public).
pub(crate) fn to_job_variables(vars: &Variables) -> Vec<Variable> {
    vars.iter()
        .map(|(name, v)| {
            let mut variable = Variable::public(name.clone(), v.value.clone());
            variable.raw = v.raw;
            variable
        })
        .collect()
}

/// `GIT_STRATEGY` and `GIT_DEPTH`. A local job has no repository to fetch from GitLab, so the
/// strategy defaults to `none`.
pub(crate) fn git(
    vars: &Variables,
    at: &Location,
    job: &str,
) -> Result<GitCheckout, PipelineError> {
    let fail = |problem: &str| PipelineError::config(at, Some(job), Some("variables"), problem);
    let strategy = match vars.get("GIT_STRATEGY").map(|v| v.value.as_str()) {
        None | Some("" | "none" | "empty") => GitStrategy::None,
        Some("fetch") => GitStrategy::Fetch,
        Some("clone") => GitStrategy::Clone,
        Some(_) => return Err(fail("GIT_STRATEGY must be none, empty, fetch or clone")),
    };
    let depth =
        match vars.get("GIT_DEPTH").map(|v| v.value.trim()) {
            None | Some("") => None,
            Some(d) => Some(d.parse::<u32>().map_err(|_| {
                fail("GIT_DEPTH must be a whole number of commits (0: full history)")
            })?),
        };
    Ok(GitCheckout {
        depth,
        strategy,
        ..GitCheckout::default()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::yaml::load_config;

    fn vars(text: &str) -> Result<Variables, PipelineError> {
        let node = load_config(text, &Arc::from("ci.yml")).unwrap();
        read(&node, Some("job"))
    }

    #[test]
    fn value_forms() {
        let v = vars(
            "A: text\nB: 42\nC: {value: '$raw', expand: false}\nD: {value: x, description: d}\n\
             E: {description: only}\nF: {value: b, options: [a, b]}\nG: 010\n",
        )
        .unwrap();
        let get = |k: &str| (v[k].value.as_str(), v[k].raw);
        assert_eq!(get("A"), ("text", false));
        assert_eq!(get("B"), ("42", false));
        assert_eq!(get("C"), ("$raw", true));
        assert_eq!(get("D"), ("x", false));
        assert_eq!(get("E"), ("", false));
        assert_eq!(get("F"), ("b", false));
        // YAML 1.1 octal, as GitLab reads it.
        assert_eq!(get("G"), ("8", false));
    }

    #[test]
    fn refused_forms_never_quote_values() {
        for (text, expect) in [
            ("S: true\n", "is a boolean"),
            ("S: 1.5\n", "is a decimal number"),
            ("S:\n", "is empty"),
            ("S: [a]\n", "is a list"),
            ("S: {value: s3cr3t-value, expand: maybe}\n", "`expand`"),
            (
                "S: {value: s3cr3t-value, options: [a]}\n",
                "not one of its `options`",
            ),
            (
                "S: {value: s3cr3t-value, secret: true}\n",
                "unknown key \"secret\"",
            ),
        ] {
            let err = vars(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
            assert!(!err.contains("s3cr3t"), "{err}");
            assert!(err.contains("job \"job\": key \"variables\""), "{err}");
        }
    }

    #[test]
    fn job_variables_win_and_inherit_filters_global_ones() {
        let global = vars("A: g\nB: g\nC: g\n").unwrap();
        let job = vars("B: j\nD: j\n").unwrap();
        let all = merge(&global, &Inherit::All, job.clone());
        let pairs: Vec<(&str, &str)> = all
            .iter()
            .map(|(k, v)| (k.as_str(), v.value.as_str()))
            .collect();
        assert_eq!(pairs, [("A", "g"), ("B", "j"), ("C", "g"), ("D", "j")]);
        let none = merge(&global, &Inherit::Nothing, job.clone());
        assert_eq!(none.keys().collect::<Vec<_>>(), ["B", "D"]);
        let some = merge(&global, &Inherit::Only(vec!["C".into()]), job);
        assert_eq!(some.keys().collect::<Vec<_>>(), ["C", "B", "D"]);
    }

    #[test]
    fn git_settings_from_variables() {
        let at = Location::file_start(&Arc::from("ci.yml"));
        let git_of = |text: &str| git(&vars(text).unwrap(), &at, "job");
        assert_eq!(git_of("A: b\n").unwrap().strategy, GitStrategy::None);
        let g = git_of("GIT_STRATEGY: clone\nGIT_DEPTH: 5\n").unwrap();
        assert_eq!((g.strategy, g.depth), (GitStrategy::Clone, Some(5)));
        assert_eq!(
            git_of("GIT_STRATEGY: fetch\n").unwrap().strategy,
            GitStrategy::Fetch
        );
        assert!(git_of("GIT_STRATEGY: teleport\n").is_err());
        let err = git_of("GIT_DEPTH: deep\n").unwrap_err().to_string();
        assert!(
            err.contains("GIT_DEPTH") && !err.contains("deep\""),
            "{err}"
        );
    }

    #[test]
    fn job_name_slug_like_gitlab() {
        assert_eq!(slug("Build: Linux/AMD64"), "build-linux-amd64");
        assert_eq!(slug("--x--"), "x");
        assert_eq!(slug(&"a".repeat(80)).len(), 63);
    }
}
