//! Job variables from the per-job Secret. The runner writes what only it has (CI_JOB_TOKEN,
//! masked or otherwise non-public GitLab variables) there, because values must never go into
//! the pod spec; the broker delivers them next to the job's secrets, in the same all-or-nothing
//! write. Pure: the caller reads the directory (`inputs::read_job_secret`).
//!
//! Keys (see `contract`): `var.<NAME>` is a plain variable, exported from the env file;
//! `file.<NAME>` is a GitLab file variable, written to `<secrets>/<NAME>` with `$NAME` exported
//! as that path. Any other key is an input for the broker itself (an ID token for JWT login)
//! and is not delivered.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret as _, SecretSlice};

use crate::delivery::{Delivery, Resolved};
use keyhole_contract::reference::{NameError, SecretName, SecretRef};
use keyhole_contract::{JOB_FILE_VARIABLE_PREFIX, JOB_VARIABLE_PREFIX};

/// How a job variable reaches the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableKind {
    /// `export NAME='value'` in the env file.
    Plain,
    /// The value in the file `<secrets>/NAME`, and `export NAME='<secrets>/NAME'`.
    File,
}

/// One variable the job gets from the per-job Secret. `Debug` never shows the value.
pub struct JobVariable {
    pub name: SecretName,
    /// The per-job Secret key it came from, for messages.
    pub key: String,
    pub kind: VariableKind,
    pub value: SecretSlice<u8>,
}

impl std::fmt::Debug for JobVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobVariable")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl JobVariable {
    /// What the delivery layer writes for this variable (a copy of the value, zeroized on drop).
    pub fn to_resolved(&self) -> Resolved {
        Resolved {
            name: self.name.clone(),
            value: SecretSlice::from(self.value.expose_secret().to_vec()),
            delivery: match self.kind {
                VariableKind::Plain => Delivery::Env,
                VariableKind::File => Delivery::FileAndPath,
            },
            json_object: false,
        }
    }
}

/// A per-job Secret whose variables cannot be delivered. Keys and names are not secret; values
/// never appear here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobVariableError {
    #[error(
        "per-job Secret key {key:?} does not name a usable variable: {reason}; the runner must put a shell variable name after {JOB_VARIABLE_PREFIX:?} or {JOB_FILE_VARIABLE_PREFIX:?}"
    )]
    BadName { key: String, reason: NameError },
    #[error(
        "per-job Secret keys {first:?} and {second:?} both define the variable {name}; the runner must write only one of them"
    )]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "job variable {name} (per-job Secret key {key:?}) and secret {name} ({reference}) both define ${name}; rename the variable or the secret"
    )]
    ClashesWithSecret {
        name: String,
        key: String,
        reference: String,
    },
}

/// The variables among the per-job Secret's keys, sorted by name; every bad key is reported.
pub fn job_variables(
    job_secret: &BTreeMap<String, SecretSlice<u8>>,
) -> Result<Vec<JobVariable>, Vec<JobVariableError>> {
    let mut by_name: BTreeMap<SecretName, JobVariable> = BTreeMap::new();
    let mut errors = Vec::new();
    for (key, value) in job_secret {
        let (kind, name) = if let Some(name) = key.strip_prefix(JOB_VARIABLE_PREFIX) {
            (VariableKind::Plain, name)
        } else if let Some(name) = key.strip_prefix(JOB_FILE_VARIABLE_PREFIX) {
            (VariableKind::File, name)
        } else {
            continue;
        };
        let name = match SecretName::new(name) {
            Ok(n) => n,
            Err(reason) => {
                errors.push(JobVariableError::BadName {
                    key: key.clone(),
                    reason,
                });
                continue;
            }
        };
        if let Some(earlier) = by_name.get(&name) {
            errors.push(JobVariableError::Duplicate {
                name: name.to_string(),
                first: earlier.key.clone(),
                second: key.clone(),
            });
            continue;
        }
        by_name.insert(
            name.clone(),
            JobVariable {
                name,
                key: key.clone(),
                kind,
                value: SecretSlice::from(value.expose_secret().to_vec()),
            },
        );
    }
    if errors.is_empty() {
        Ok(by_name.into_values().collect())
    } else {
        Err(errors)
    }
}

/// A variable and a secret reference may not define the same name: one would silently
/// overwrite the other's file or export.
pub fn check_clashes(
    variables: &[JobVariable],
    references: &[SecretRef],
) -> Result<(), Vec<JobVariableError>> {
    let errors: Vec<_> = variables
        .iter()
        .filter_map(|v| {
            references.iter().find(|r| r.name == v.name).map(|r| {
                JobVariableError::ClashesWithSecret {
                    name: v.name.to_string(),
                    key: v.key.clone(),
                    reference: r.source.to_string(),
                }
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// An input for the broker itself (e.g. the ID token for JWT login) by its variable name: the
/// runner may deliver it as a job variable too (`var.<key>`), or as a bare key.
pub fn broker_input<'a>(
    job_secret: &'a BTreeMap<String, SecretSlice<u8>>,
    key: &str,
) -> Option<&'a SecretSlice<u8>> {
    job_secret
        .get(&format!("{JOB_VARIABLE_PREFIX}{key}"))
        .or_else(|| job_secret.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhole_contract::reference::parse_keyhole;

    fn secret(entries: &[(&str, &str)]) -> BTreeMap<String, SecretSlice<u8>> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretSlice::from(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn plain_and_file_variables_are_delivered_and_other_keys_are_not() {
        let vars = job_variables(&secret(&[
            ("var.CI_JOB_TOKEN", "glcbt-64_token-value"),
            ("file.KUBECONFIG_DEV", "apiVersion: v1"),
            ("VAULT_ID_TOKEN", "eyJ.header.sig"),
            ("..data", "ignored"),
        ]))
        .unwrap();
        let shown: Vec<_> = vars
            .iter()
            .map(|v| (v.name.as_str(), v.kind, v.value.expose_secret().to_vec()))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "CI_JOB_TOKEN",
                    VariableKind::Plain,
                    b"glcbt-64_token-value".to_vec()
                ),
                (
                    "KUBECONFIG_DEV",
                    VariableKind::File,
                    b"apiVersion: v1".to_vec()
                ),
            ]
        );
        assert_eq!(vars[0].to_resolved().delivery, Delivery::Env);
        assert_eq!(vars[1].to_resolved().delivery, Delivery::FileAndPath);
    }

    #[test]
    fn bad_names_and_duplicates_are_all_reported_by_key() {
        let errors = job_variables(&secret(&[
            ("var.1BAD", "x"),
            ("file.a-b", "x"),
            ("var.", "x"),
            ("var.TOKEN", "x"),
            ("file.TOKEN", "x"),
        ]))
        .unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown.iter().any(|e| e.contains("\"var.1BAD\"")),
            "{shown:#?}"
        );
        assert!(
            shown.iter().any(|e| e.contains("\"file.a-b\"")),
            "{shown:#?}"
        );
        assert!(shown.iter().any(|e| e.contains("\"var.\"")), "{shown:#?}");
        assert!(
            shown
                .iter()
                .any(|e| e.contains("\"file.TOKEN\"") && e.contains("\"var.TOKEN\"")),
            "{shown:#?}"
        );
    }

    #[test]
    fn a_variable_may_not_share_a_name_with_a_secret() {
        let vars = job_variables(&secret(&[("var.DB_PASSWORD", "from-gitlab-1234")])).unwrap();
        let refs = [parse_keyhole("DB_PASSWORD", "vault:kv/app/db#password").unwrap()];
        let errors = check_clashes(&vars, &refs).unwrap_err();
        let shown = errors[0].to_string();
        assert!(
            shown.contains("job variable DB_PASSWORD")
                && shown.contains("\"var.DB_PASSWORD\"")
                && shown.contains("vault:kv/app/db#password"),
            "{shown}"
        );
        assert!(!shown.contains("from-gitlab-1234"));
        let other = [parse_keyhole("API_KEY", "vault:kv/app/api#key").unwrap()];
        assert!(check_clashes(&vars, &other).is_ok());
    }

    #[test]
    fn broker_inputs_prefer_the_variable_key() {
        let both = secret(&[
            ("var.VAULT_ID_TOKEN", "as-variable"),
            ("VAULT_ID_TOKEN", "bare"),
        ]);
        assert_eq!(
            broker_input(&both, "VAULT_ID_TOKEN")
                .unwrap()
                .expose_secret(),
            b"as-variable"
        );
        let bare = secret(&[("VAULT_ID_TOKEN", "bare")]);
        assert_eq!(
            broker_input(&bare, "VAULT_ID_TOKEN")
                .unwrap()
                .expose_secret(),
            b"bare"
        );
        assert!(broker_input(&bare, "OTHER").is_none());
    }

    proptest::proptest! {
        /// Whatever keys the Secret has: every prefixed key is delivered under the name after
        /// its prefix with its own value, or reported; no other key is ever delivered.
        #[test]
        fn prefixed_keys_are_delivered_or_reported_and_others_never(
            keys in proptest::collection::btree_set("(var\\.|file\\.)?[A-Za-z0-9_.-]{0,10}", 0..8)
        ) {
            let secret: BTreeMap<String, SecretSlice<u8>> = keys
                .iter()
                .map(|k| (k.clone(), SecretSlice::from(k.as_bytes().to_vec())))
                .collect();
            let prefixed = keys
                .iter()
                .filter(|k| k.starts_with(JOB_VARIABLE_PREFIX) || k.starts_with(JOB_FILE_VARIABLE_PREFIX))
                .count();
            match job_variables(&secret) {
                Ok(vars) => {
                    proptest::prop_assert_eq!(vars.len(), prefixed);
                    for v in &vars {
                        let (prefix, kind) = match v.kind {
                            VariableKind::Plain => (JOB_VARIABLE_PREFIX, VariableKind::Plain),
                            VariableKind::File => (JOB_FILE_VARIABLE_PREFIX, VariableKind::File),
                        };
                        proptest::prop_assert_eq!(v.key.clone(), format!("{prefix}{}", v.name));
                        proptest::prop_assert_eq!(v.kind, kind);
                        proptest::prop_assert_eq!(v.value.expose_secret(), v.key.as_bytes());
                    }
                }
                Err(errors) => {
                    proptest::prop_assert!(!errors.is_empty());
                    for e in &errors {
                        let key = match e {
                            JobVariableError::BadName { key, .. } => key,
                            JobVariableError::Duplicate { second, .. } => second,
                            JobVariableError::ClashesWithSecret { key, .. } => key,
                        };
                        proptest::prop_assert!(keys.contains(key));
                        proptest::prop_assert!(
                            key.starts_with(JOB_VARIABLE_PREFIX) || key.starts_with(JOB_FILE_VARIABLE_PREFIX)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn debug_never_shows_a_value() {
        let vars = job_variables(&secret(&[("var.TOKEN", "hunter2-token")])).unwrap();
        let shown = format!("{vars:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
