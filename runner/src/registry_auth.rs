//! Registry credentials for a job's images, resolved as gitlab-runner does: per registry, the
//! job's `DOCKER_AUTH_CONFIG` variable first, then the runner's `environment` one, then the
//! credentials GitLab sends with the job (the job-token login to GitLab's own registry). The
//! result becomes a `kubernetes.io/dockerconfigjson` Secret made for the job's pod only: the
//! kubelet reads it to pull, and no container of the job mounts it.
//!
//! Everything here holds passwords, so errors name the source and the registry, never a value,
//! and the JSON the Secret carries is built in buffers that are wiped when dropped.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::job::RegistryCredential;

/// Where a registry's credentials came from, in gitlab-runner's order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthSource {
    JobVariable,
    RunnerEnvironment,
    Gitlab,
}

impl std::fmt::Display for AuthSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::JobVariable => "the job's DOCKER_AUTH_CONFIG",
            Self::RunnerEnvironment => "the runner's DOCKER_AUTH_CONFIG (environment)",
            Self::Gitlab => "GitLab's job credentials",
        })
    }
}

/// A `DOCKER_AUTH_CONFIG` that cannot be used. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {problem}")]
pub struct RegistryAuthError {
    source_name: String,
    problem: String,
}

fn error(source: AuthSource, problem: impl Into<String>) -> RegistryAuthError {
    RegistryAuthError {
        source_name: source.to_string(),
        problem: problem.into(),
    }
}

/// One registry's login, as the `auth` field of a docker config (`base64(user:password)`).
struct Login {
    /// The key as written (`https://index.docker.io/v1/`, `registry.example.com:5000`): the
    /// kubelet matches images against it.
    key: String,
    auth: SecretString,
    source: AuthSource,
}

/// The resolved logins, one per registry.
pub struct PullAuth {
    logins: BTreeMap<String, Login>,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.registries()).finish()
    }
}

impl PullAuth {
    /// Each registry and where its login came from, for the trace.
    pub fn registries(&self) -> Vec<(String, AuthSource)> {
        self.logins
            .values()
            .map(|l| (l.key.clone(), l.source))
            .collect()
    }

    /// The `.dockerconfigjson` value: `{"auths": {"<registry>": {"auth": "…"}}}`.
    pub fn dockerconfigjson(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(64 * self.logins.len() + 16));
        out.extend_from_slice(b"{\"auths\":{");
        for (i, login) in self.logins.values().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Keys and base64 need no escaping beyond what serde_json gives a plain string.
            let key = Zeroizing::new(Value::String(login.key.clone()).to_string());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b":{\"auth\":\"");
            out.extend_from_slice(login.auth.expose_secret().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        out.extend_from_slice(b"}}");
        out
    }
}

/// The registry a key names, for precedence: no scheme, no path, Docker Hub's aliases as one.
pub fn registry_host(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(&key);
    let host = rest.split('/').next().unwrap_or(rest).to_string();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// Resolves the logins for a job; `None` when no source names a registry.
pub fn resolve(
    job_docker_auth: Option<&SecretString>,
    runner_docker_auth: Option<&SecretString>,
    credentials: &[RegistryCredential],
) -> Result<Option<PullAuth>, RegistryAuthError> {
    let mut logins = BTreeMap::new();
    let sources = [
        (AuthSource::JobVariable, job_docker_auth),
        (AuthSource::RunnerEnvironment, runner_docker_auth),
    ];
    for (source, text) in sources {
        let Some(text) = text else { continue };
        for login in parse_docker_auth_config(text.expose_secret(), source)? {
            logins.entry(registry_host(&login.key)).or_insert(login);
        }
    }
    for c in credentials {
        let auth = basic_auth(&c.username, c.password.expose_secret());
        let login = Login {
            key: c.registry.clone(),
            auth,
            source: AuthSource::Gitlab,
        };
        logins.entry(registry_host(&c.registry)).or_insert(login);
    }
    Ok((!logins.is_empty()).then_some(PullAuth { logins }))
}

fn basic_auth(username: &str, password: &str) -> SecretString {
    let plain = Zeroizing::new(format!("{username}:{password}"));
    SecretString::from(STANDARD.encode(plain.as_bytes()))
}

/// Reads a docker config (`{"auths": {...}}`). Credential helpers and stores are refused: they
/// are programs on a workstation that the runner cannot run for a pod.
fn parse_docker_auth_config(
    text: &str,
    source: AuthSource,
) -> Result<Vec<Login>, RegistryAuthError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        error(
            source,
            format!(
                "is not valid JSON (line {}, column {}); it must look like {{\"auths\": {{\"registry.example.com\": {{\"auth\": \"<base64 of user:password>\"}}}}}}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let Some(root) = value.as_object() else {
        return Err(error(
            source,
            "must be a JSON object with an `auths` object",
        ));
    };
    for helper in ["credsStore", "credHelpers"] {
        if root.contains_key(helper) {
            return Err(error(
                source,
                format!(
                    "uses `{helper}`, a credential helper the runner cannot run for a pod; put each registry's login in `auths`"
                ),
            ));
        }
    }
    let Some(auths) = root.get("auths").and_then(Value::as_object) else {
        return Err(error(source, "has no `auths` object"));
    };
    auths
        .iter()
        .map(|(key, entry)| login_from_entry(key, entry, source))
        .collect()
}

/// One `auths` entry: `auth` (base64 of `user:password`) or `username` and `password`.
fn login_from_entry(
    key: &str,
    entry: &Value,
    source: AuthSource,
) -> Result<Login, RegistryAuthError> {
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let auth = match (field("auth"), field("username"), field("password")) {
        (Some(auth), _, _) => {
            let decoded = Zeroizing::new(STANDARD.decode(auth).unwrap_or_default());
            if !decoded.contains(&b':') {
                return Err(error(
                    source,
                    format!("auths.{key:?}.auth is not the base64 of user:password"),
                ));
            }
            SecretString::from(auth.to_owned())
        }
        (None, Some(user), Some(password)) => basic_auth(user, password),
        _ => {
            let token = ["identitytoken", "registrytoken"]
                .into_iter()
                .find(|t| entry.get(*t).is_some());
            let problem = match token {
                Some(t) => format!(
                    "auths.{key:?} has only `{t}`, which image pulls cannot use; give `auth` or `username` and `password`"
                ),
                None => format!("auths.{key:?} has neither `auth` nor `username` and `password`"),
            };
            return Err(error(source, problem));
        }
    };
    Ok(Login {
        key: key.to_owned(),
        auth,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn json_of(auth: &PullAuth) -> Value {
        serde_json::from_slice(&auth.dockerconfigjson()).unwrap()
    }

    fn gitlab(registry: &str, password: &str) -> RegistryCredential {
        RegistryCredential {
            registry: registry.into(),
            username: "gitlab-ci-token".into(),
            password: secret(password),
        }
    }

    #[test]
    fn each_registry_takes_the_first_source_that_names_it() {
        let job = secret(
            r#"{"auths": {"https://registry.example.com/v2/": {"username": "job", "password": "p1"}}}"#,
        );
        let runner = secret(&format!(
            r#"{{"auths": {{"registry.example.com": {{"auth": "{}"}}, "other.example.com:5000": {{"auth": "{}"}}}}}}"#,
            STANDARD.encode("runner:p2"),
            STANDARD.encode("runner:p3")
        ));
        let creds = [
            gitlab("other.example.com:5000", "job-token"),
            gitlab("gitlab.example.com:5050", "job-token"),
        ];
        let auth = resolve(Some(&job), Some(&runner), &creds).unwrap().unwrap();
        assert_eq!(
            auth.registries(),
            [
                ("gitlab.example.com:5050".into(), AuthSource::Gitlab),
                (
                    "other.example.com:5000".into(),
                    AuthSource::RunnerEnvironment
                ),
                (
                    "https://registry.example.com/v2/".into(),
                    AuthSource::JobVariable
                ),
            ]
        );
        let json = json_of(&auth);
        let decode = |key: &str| {
            let b = json["auths"][key]["auth"].as_str().unwrap();
            String::from_utf8(STANDARD.decode(b).unwrap()).unwrap()
        };
        assert_eq!(decode("https://registry.example.com/v2/"), "job:p1");
        assert_eq!(decode("other.example.com:5000"), "runner:p3");
        assert_eq!(
            decode("gitlab.example.com:5050"),
            "gitlab-ci-token:job-token"
        );
    }

    #[test]
    fn no_source_means_no_secret() {
        assert!(resolve(None, None, &[]).unwrap().is_none());
    }

    #[test]
    fn docker_hubs_names_are_one_registry() {
        for key in [
            "https://index.docker.io/v1/",
            "docker.io",
            "registry-1.docker.io",
        ] {
            assert_eq!(registry_host(key), "docker.io", "{key}");
        }
        assert_eq!(
            registry_host("HTTP://Reg.Example.com:5000/x"),
            "reg.example.com:5000"
        );
    }

    #[test]
    fn bad_configs_say_what_and_where_without_the_value() {
        let cases = [
            (
                r#"{"auths": {"r.example.com": {"auth": "hunter2"}}}"#,
                "auths.\"r.example.com\".auth is not the base64",
            ),
            (
                r#"{"credsStore": "desktop", "auths": {}}"#,
                "credential helper",
            ),
            (
                r#"{"auths": {"r.example.com": {"identitytoken": "hunter2"}}}"#,
                "has only `identitytoken`",
            ),
            (
                r#"{"auths": {"r.example.com": {"username": "u"}}}"#,
                "neither `auth` nor",
            ),
            (
                r#"{"auths": {"r.example.com": "hunter2"#,
                "is not valid JSON (line 1",
            ),
            (r#"["hunter2"]"#, "must be a JSON object"),
        ];
        for (text, expected) in cases {
            let err = resolve(Some(&secret(text)), None, &[])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("the job's DOCKER_AUTH_CONFIG: "), "{err}");
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = resolve(None, Some(&secret("{}")), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("the runner's DOCKER_AUTH_CONFIG (environment): has no `auths`"),
            "{err}"
        );
    }

    proptest::proptest! {
        /// Any text as `DOCKER_AUTH_CONFIG`: an answer, never a panic, and an error never
        /// quotes the text's secret part.
        #[test]
        fn any_docker_auth_config_gets_an_answer_without_its_value(
            text in "\\PC{0,200}",
            json in r#"\{"auths": \{"r": \{"(auth|username|password|identitytoken)": "s3cr3tV[a-z]{0,9}"\}\}\}"#,
        ) {
            for input in [text.as_str(), json.as_str()] {
                if let Err(e) = resolve(Some(&secret(input)), None, &[]) {
                    proptest::prop_assert!(!e.to_string().contains("s3cr3tV"));
                }
            }
        }
    }

    #[test]
    fn debug_shows_registries_not_passwords() {
        let auth = resolve(None, None, &[gitlab("r.example.com", "hunter2")])
            .unwrap()
            .unwrap();
        let shown = format!("{auth:?} {:?}", gitlab("r.example.com", "hunter2"));
        assert!(
            shown.contains("r.example.com") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
