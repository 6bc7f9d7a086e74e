//! GitLab's own `secrets:` keyword, as the job payload carries it, converted into Keyhole's
//! reference model: the runner alone reads it and passes the broker the result.

use keyhole_contract::reference::{
    Engine, SecretName, SecretRef, Source, VaultRef, VaultServer, check_vault_location, printable,
};
use serde::Deserialize;

/// A `secrets:` entry from the GitLab job payload that Keyhole cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitlabSecretsError {
    #[error("the job payload's secrets are not in GitLab's format: {0}")]
    Malformed(String),
    #[error("secret {name}: {problem}")]
    Entry { name: String, problem: String },
}

#[derive(Deserialize)]
struct Entry {
    vault: Option<VaultEntry>,
    #[serde(default = "default_true")]
    file: bool,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct VaultEntry {
    server: ServerEntry,
    engine: EngineEntry,
    path: String,
    field: Option<String>,
}

#[derive(Deserialize)]
struct ServerEntry {
    url: String,
    namespace: Option<String>,
    auth: AuthEntry,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[allow(dead_code)]
    name: Option<String>,
    path: String,
    #[serde(default)]
    data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct EngineEntry {
    name: String,
    path: String,
}

/// Converts the payload's `secrets` object (GitLab's `secrets:` keyword) into references.
///
/// GitLab's `vault:` entries carry their server and auth; other providers (Azure Key Vault,
/// GCP Secret Manager, AWS) are refused by name.
pub fn from_gitlab_secrets(
    secrets: &serde_json::Value,
) -> Result<Vec<SecretRef>, GitlabSecretsError> {
    let map = match secrets {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Object(map) => map,
        other => {
            return Err(GitlabSecretsError::Malformed(format!(
                "expected an object of name → entry, found {}",
                kind(other)
            )));
        }
    };
    let mut refs = Vec::with_capacity(map.len());
    for (name, value) in map {
        let entry_err = |problem: String| GitlabSecretsError::Entry {
            name: printable(name),
            problem,
        };
        let secret_name = SecretName::new(name).map_err(|e| entry_err(e.to_string()))?;
        let entry: Entry = serde_json::from_value(value.clone())
            .map_err(|e| entry_err(format!("malformed entry: {e}")))?;
        let Some(vault) = entry.vault else {
            let providers: Vec<&str> = entry.other.keys().map(String::as_str).collect();
            return Err(entry_err(format!(
                "provider {providers:?} is not supported; Keyhole resolves `vault:` entries and KEYHOLE_SECRET_ references"
            )));
        };
        let engine = match vault.engine.name.as_str() {
            "kv-v2" => Engine::KvV2,
            "kv-v1" | "generic" => Engine::KvV1,
            other => {
                return Err(entry_err(format!(
                    "engine {other:?} is not supported; use kv-v2, kv-v1 or generic"
                )));
            }
        };
        let jwt_variable = vault
            .server
            .auth
            .data
            .get("jwt")
            .and_then(|v| v.as_str())
            .map(|v| {
                v.trim_start_matches('$')
                    .trim_matches(|c| c == '{' || c == '}')
                    .to_owned()
            });
        let mount = vault.engine.path.trim_matches('/').to_owned();
        let path = vault.path.trim_matches('/').to_owned();
        check_vault_location(&mount, &path).map_err(|problem| {
            entry_err(format!(
                "the Vault location {:?} (engine path {:?}, path {:?}) {problem}",
                printable(&format!("{mount}/{path}")),
                printable(&mount),
                printable(&path),
            ))
        })?;
        let role = vault
            .server
            .auth
            .data
            .get("role")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        refs.push(SecretRef {
            name: secret_name,
            source: Source::Vault(VaultRef {
                mount,
                path,
                field: vault.field,
                engine,
                version: None,
                server: Some(VaultServer {
                    url: vault.server.url,
                    namespace: vault.server.namespace.filter(|n| !n.is_empty()),
                    auth_path: vault.server.auth.path.trim_matches('/').to_owned(),
                    role,
                    jwt_variable,
                }),
            }),
            file: entry.file,
        });
    }
    Ok(refs)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> serde_json::Value {
        let text = include_str!("../gitlab/fixtures/job-response-vault-example.json");
        let job: serde_json::Value = serde_json::from_str(text).unwrap();
        job["secrets"].clone()
    }

    #[test]
    fn converts_gitlabs_vault_entries() {
        let mut refs = from_gitlab_secrets(&fixture()).unwrap();
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        let api = &refs[0];
        assert_eq!(api.name.as_str(), "API_KEY");
        assert!(!api.file);
        let Source::Vault(v) = &refs[1].source else {
            panic!()
        };
        assert_eq!(refs[1].name.as_str(), "DATABASE_PASSWORD");
        assert!(refs[1].file);
        assert_eq!(
            (v.mount.as_str(), v.path.as_str()),
            ("ops", "production/db")
        );
        assert_eq!(v.field.as_deref(), Some("password"));
        assert_eq!(v.engine, Engine::KvV2);
        let server = v.server.as_ref().unwrap();
        assert_eq!(server.url, "https://vault.example.com:8200");
        assert_eq!(server.auth_path, "jwt");
        assert_eq!(server.role.as_deref(), Some("demo-app-deploy"));
        assert_eq!(server.jwt_variable.as_deref(), Some("VAULT_ID_TOKEN"));
        assert_eq!(server.namespace, None);
    }

    #[test]
    fn refuses_other_providers_and_engines_by_name() {
        let azure = serde_json::json!({"X": {"azure_key_vault": {"name": "n"}, "file": true}});
        let err = from_gitlab_secrets(&azure).unwrap_err().to_string();
        assert!(
            err.contains("secret X") && err.contains("azure_key_vault"),
            "{err}"
        );
        let mut pki = fixture();
        pki["API_KEY"]["vault"]["engine"]["name"] = "pki".into();
        let err = from_gitlab_secrets(&pki).unwrap_err().to_string();
        assert!(err.contains("engine \"pki\""), "{err}");
        let err = from_gitlab_secrets(&serde_json::json!([1]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("found an array"), "{err}");
    }

    #[test]
    fn refuses_vaults_own_apis_and_encoded_paths() {
        for (engine_path, path, problem) in [
            ("auth", "token/lookup-self", "not a secrets engine"),
            ("sys", "mounts", "not a secrets engine"),
            ("cubbyhole", "x", "not a secrets engine"),
            ("identity", "entity/name/x", "not a secrets engine"),
            ("kv", "%2e%2e/auth/token/lookup-self", "'%'"),
            ("kv", "../sys/mounts", "'..'"),
        ] {
            let mut s = fixture();
            s["API_KEY"]["vault"]["engine"]["path"] = engine_path.into();
            s["API_KEY"]["vault"]["path"] = path.into();
            let err = from_gitlab_secrets(&s).unwrap_err().to_string();
            assert!(
                err.contains("secret API_KEY") && err.contains(problem),
                "{engine_path}/{path}: {err}"
            );
        }
    }

    #[test]
    fn file_defaults_to_true_as_in_gitlab() {
        let mut s = fixture();
        s["API_KEY"].as_object_mut().unwrap().remove("file");
        let refs = from_gitlab_secrets(&s).unwrap();
        assert!(refs.iter().all(|r| r.file));
    }
}
