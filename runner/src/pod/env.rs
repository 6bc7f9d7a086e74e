//! The job's variables split by where they may go: public ones into the pod spec (the build
//! container's env), everything that may be secret into the per-job Secret, which only the
//! broker reads.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::EnvVar;
use keyhole_contract as contract;
use secrecy::{ExposeSecret, SecretString};

use super::error::PodError;
use super::parts::env_var;
use crate::config::RunnerConfig;
use crate::job::Job;

/// The job's variables, split.
pub(super) struct JobEnv {
    /// `$CI_PROJECT_DIR`: where the repository is checked out and the script starts.
    pub project_dir: String,
    /// Public variables and the runner's `environment`: the build and service containers' env.
    pub public: BTreeMap<String, String>,
    /// The per-job Secret's data: `var.NAME` and `file.NAME` for the broker, the job token,
    /// the log-end token.
    pub secret_data: BTreeMap<String, ByteString>,
}

/// Splits the job's variables. Masked, file and non-public variables never reach the pod spec;
/// a later variable of the same name wins, as in GitLab.
pub(super) fn split_variables(
    job: &Job,
    runner: &RunnerConfig,
    log_end_token: &SecretString,
) -> Result<JobEnv, PodError> {
    let project_dir = project_dir(job, runner);
    let mut public: BTreeMap<String, String> = BTreeMap::new();
    let mut secret_data: BTreeMap<String, ByteString> = BTreeMap::new();
    for entry in &runner.environment {
        if let Some((key, value)) = entry.split_once('=') {
            public.insert(key.into(), value.into());
        }
    }
    for v in &job.variables {
        if v.key
            .starts_with(keyhole_contract::reference::KEYHOLE_VARIABLE_PREFIX)
        {
            continue; // references: the broker resolves them; the value is a location.
        }
        if v.public && !v.file && !v.masked {
            public.insert(v.key.clone(), v.value.expose_secret().to_string());
        } else {
            public.remove(&v.key);
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
        ByteString(log_end_token.expose_secret().as_bytes().to_vec()),
    );
    public.insert("CI_PROJECT_DIR".into(), project_dir.clone());
    public.insert("CI_BUILDS_DIR".into(), runner.builds_dir.clone());
    check_secret_names(&secret_data)?;
    Ok(JobEnv {
        project_dir,
        public,
        secret_data,
    })
}

/// `CI_PROJECT_DIR`: the same rule that gave the job its `CI_PROJECT_DIR` variable.
fn project_dir(job: &Job, runner: &RunnerConfig) -> String {
    crate::variables::project_dir(job, &runner.builds_dir)
}

/// The broker writes each Secret entry to a file and an env line named after it: only names a
/// shell and a file system take as they are.
fn check_secret_names(secret_data: &BTreeMap<String, ByteString>) -> Result<(), PodError> {
    for key in secret_data.keys() {
        let name = key.split_once('.').map_or(key.as_str(), |(_, n)| n);
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(PodError::SecretName { name: name.into() });
        }
    }
    Ok(())
}

/// A container's `env` list, every value as it is (see [`literal_env_value`]).
pub(super) fn env_list(vars: &BTreeMap<String, String>) -> Vec<EnvVar> {
    vars.iter()
        .map(|(k, v)| env_var(k, literal_env_value(v)))
        .collect()
}

/// `value` as an env value Kubernetes hands over unchanged. The kubelet expands `$(NAME)` in
/// env values (to an earlier variable's value) and turns `$$` into `$`; with every `$` doubled,
/// each pair gives back one `$` and nothing else is read as a reference, so a job sees
/// `$(date)`, `$(CI_JOB_ID)` or `$$` exactly as its variable holds them.
pub(super) fn literal_env_value(value: &str) -> String {
    value.replace('$', "$$")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// The kubelet's expansion of env values (`third_party/forked/golang/expansion`), byte for
    /// byte: `$$` → `$`, `$(NAME)` → an earlier variable's value (else kept), any other `$`
    /// kept with the byte after it, which Go turns into a character of its own (so `$é` is
    /// mangled too).
    fn kubelet_expand(input: &str, env: &HashMap<&str, &str>) -> Vec<u8> {
        let b = input.as_bytes();
        let mut out = Vec::new();
        let (mut checkpoint, mut cursor) = (0, 0);
        while cursor < b.len() {
            if b[cursor] == b'$' && cursor + 1 < b.len() {
                out.extend_from_slice(&b[checkpoint..cursor]);
                let rest = &b[cursor + 1..];
                let advance = match rest[0] {
                    b'$' => {
                        out.push(b'$');
                        1
                    }
                    b'(' => match rest.iter().skip(1).position(|&c| c == b')') {
                        Some(p) => {
                            let name = String::from_utf8_lossy(&rest[1..=p]);
                            match env.get(name.as_ref()) {
                                Some(v) => out.extend_from_slice(v.as_bytes()),
                                None => out.extend_from_slice(format!("$({name})").as_bytes()),
                            }
                            p + 2
                        }
                        None => {
                            out.extend_from_slice(b"$(");
                            1
                        }
                    },
                    other => {
                        out.push(b'$');
                        out.extend_from_slice(char::from(other).to_string().as_bytes());
                        1
                    }
                };
                cursor += advance;
                checkpoint = cursor + 1;
            }
            cursor += 1;
        }
        out.extend_from_slice(&b[checkpoint..]);
        out
    }

    #[test]
    fn the_kubelet_would_rewrite_raw_values() {
        let env = HashMap::from([("CI_JOB_ID", "42")]);
        assert_eq!(
            kubelet_expand("$(CI_JOB_ID) $$ $(date) $é", &env),
            b"42 $ $(date) $\xc3\x83\xa9"
        );
    }

    #[test]
    fn env_values_reach_the_container_as_written() {
        let env = HashMap::from([("BASE", "base-value"), ("CI_JOB_ID", "42")]);
        for value in [
            "$(BASE)",
            "$$(BASE)",
            "now $(date) and $(CI_JOB_ID)",
            "a$$b",
            "$",
            "trailing $",
            "$(unclosed",
            "$é",
            "plain",
            "",
        ] {
            assert_eq!(
                kubelet_expand(&literal_env_value(value), &env),
                value.as_bytes()
            );
        }
        let list = env_list(&BTreeMap::from([("K".to_string(), "$(BASE)".to_string())]));
        assert_eq!(list, [env_var("K", "$$(BASE)")]);
    }

    proptest! {
        #[test]
        fn any_env_value_survives_the_kubelet(value in any::<String>(), name in "[A-Z]{1,3}") {
            let env = HashMap::from([(name.as_str(), "replaced")]);
            prop_assert_eq!(kubelet_expand(&literal_env_value(&value), &env), value.as_bytes());
        }
    }
}
