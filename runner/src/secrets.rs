//! A job's secret references, collected and checked before any pod exists (job flow step 3):
//! GitLab's `secrets:` entries and `KEYHOLE_SECRET_<NAME>` variables become one list the pod
//! carries in annotations, and the Vault login the broker will use is fixed here, against the
//! runner's allow-list, so a job cannot point the broker's token at a server of its choosing.

mod gitlab;

pub use gitlab::{GitlabSecretsError, from_gitlab_secrets};
use keyhole_contract::reference::{KEYHOLE_VARIABLE_PREFIX, SecretRef, Source, parse_keyhole};
use secrecy::ExposeSecret;

use crate::config::KeyholeConfig;
use crate::job::Job;

/// How the broker logs in to Vault for this job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultLogin {
    pub addr: String,
    /// Every address the broker may send its token to (`vault_addr` and `vault_allowed`).
    pub allowed: Vec<String>,
    pub namespace: Option<String>,
    pub auth_mount: String,
    pub role: String,
    pub method: VaultMethod,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultMethod {
    /// Kubernetes auth with the pod's projected ServiceAccount token.
    Kubernetes,
    /// JWT auth with the GitLab ID token in this job variable.
    Jwt { id_token_variable: String },
}

/// Everything the pod needs to know about the job's secrets: names and locations, no values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobSecrets {
    pub references: Vec<SecretRef>,
    pub vault: Option<VaultLogin>,
    /// Whether any reference reads a Kubernetes Secret (the broker then gets an API token).
    pub uses_kubernetes: bool,
}

/// Renders a reference in the Keyhole grammar the broker parses from the pod annotation.
pub fn annotation_value(r: &SecretRef) -> String {
    let mut value = r.source.to_string();
    if !r.file {
        let (base, fragment) = match value.split_once('#') {
            Some((b, f)) => (b.to_string(), Some(f.to_string())),
            None => (value.clone(), None),
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        value = format!("{base}{sep}file=false");
        if let Some(f) = fragment {
            value = format!("{value}#{f}");
        }
    }
    value
}

/// The addresses the broker may send its Vault token to: `vault_addr`, then `vault_allowed`.
fn allow_list(keyhole: &KeyholeConfig) -> Vec<String> {
    let mut list: Vec<String> = keyhole
        .vault_addr
        .iter()
        .chain(&keyhole.vault_allowed)
        .cloned()
        .collect();
    list.dedup();
    list
}

fn on_allow_list(addr: &str, keyhole: &KeyholeConfig) -> bool {
    let norm = |a: &str| a.trim_end_matches('/').to_ascii_lowercase();
    keyhole
        .vault_allowed
        .iter()
        .chain(keyhole.vault_addr.iter())
        .any(|allowed| norm(allowed) == norm(addr))
}

/// Collects and validates the job's references; every problem is reported, each naming the
/// secret and what to do.
pub fn collect(
    job: &Job,
    keyhole: &KeyholeConfig,
    service_account: &str,
) -> Result<JobSecrets, Vec<String>> {
    let mut errors = Vec::new();
    let mut references: Vec<SecretRef> = Vec::new();
    for v in &job.variables {
        if let Some(name) = v.key.strip_prefix(KEYHOLE_VARIABLE_PREFIX) {
            match parse_keyhole(name, v.value.expose_secret()) {
                Ok(r) => references.push(r),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if let Some(secrets) = &job.gitlab_secrets {
        match from_gitlab_secrets(secrets) {
            Ok(refs) => references.extend(refs),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &references {
        if !seen.insert(r.name.as_str().to_string()) {
            errors.push(format!(
                "secret {} is declared twice; give each secret one source",
                r.name.as_str()
            ));
        }
        let label_ok = r.name.as_str().len() <= 63
            && r.name
                .as_str()
                .starts_with(|c: char| c.is_ascii_alphanumeric())
            && r.name
                .as_str()
                .ends_with(|c: char| c.is_ascii_alphanumeric());
        if !label_ok {
            errors.push(format!(
                "secret {}: a name must start and end with a letter or digit and be at most 63 characters (it becomes a pod annotation key)",
                r.name.as_str()
            ));
        }
    }
    let vault = vault_login(&references, keyhole, service_account, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let uses_kubernetes = references
        .iter()
        .any(|r| matches!(r.source, Source::Kubernetes { .. }));
    Ok(JobSecrets {
        references,
        vault,
        uses_kubernetes,
    })
}

fn vault_login(
    references: &[SecretRef],
    keyhole: &KeyholeConfig,
    service_account: &str,
    errors: &mut Vec<String>,
) -> Option<VaultLogin> {
    let vault_refs: Vec<(&SecretRef, &keyhole_contract::reference::VaultRef)> = references
        .iter()
        .filter_map(|r| match &r.source {
            Source::Vault(v) => Some((r, v)),
            Source::Kubernetes { .. } => None,
        })
        .collect();
    let (first, first_vault) = vault_refs.first()?;
    if let Some(server) = &first_vault.server {
        for (r, v) in &vault_refs[1..] {
            if v.server.as_ref() != Some(server) {
                errors.push(format!(
                    "secret {}: every Vault secret of a job must use the same server and auth as {} (one login per job)",
                    r.name.as_str(),
                    first.name.as_str()
                ));
            }
        }
        if !on_allow_list(&server.url, keyhole) {
            errors.push(format!(
                "secret {}: Vault server {:?} is not on this runner's allow-list (runners.keyhole.vault_allowed); the broker sends its token to no other server. Ask the runner's administrators to add it, or use the runner's Vault",
                first.name.as_str(),
                server.url
            ));
            return None;
        }
        let Some(id_token_variable) = server.jwt_variable.clone() else {
            errors.push(format!(
                "secret {}: GitLab's Vault auth for this secret names no ID token; declare one under id_tokens: and set VAULT_AUTH_ROLE",
                first.name.as_str()
            ));
            return None;
        };
        return Some(VaultLogin {
            addr: server.url.clone(),
            allowed: allow_list(keyhole),
            namespace: server.namespace.clone(),
            auth_mount: server.auth_path.clone(),
            role: server.role.clone().unwrap_or_default(),
            method: VaultMethod::Jwt { id_token_variable },
        });
    }
    if let Some((r, _)) = vault_refs.iter().find(|(_, v)| v.server.is_some()) {
        errors.push(format!(
            "secret {}: mixes GitLab `secrets:` (own Vault server) with vault: references (the runner's Vault) in one job; use one kind",
            r.name.as_str()
        ));
    }
    let Some(addr) = keyhole.vault_addr.clone() else {
        errors.push(format!(
            "secret {}: this runner has no Vault configured (runners.keyhole.vault_addr), so vault: references cannot be resolved",
            first.name.as_str()
        ));
        return None;
    };
    Some(VaultLogin {
        addr,
        allowed: allow_list(keyhole),
        namespace: keyhole.vault_namespace.clone(),
        auth_mount: keyhole.vault_auth_mount.clone(),
        role: keyhole
            .vault_role
            .clone()
            .unwrap_or_else(|| service_account.to_string()),
        method: VaultMethod::Kubernetes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{GitCheckout, Project, Variable};

    /// The job variable carrying the reference for the secret `name`.
    fn reference_var(name: &str) -> String {
        format!("{KEYHOLE_VARIABLE_PREFIX}{name}")
    }

    fn job(vars: &[(&str, &str)], gitlab: Option<serde_json::Value>) -> Job {
        Job {
            id: 1,
            name: "j".into(),
            stage: "test".into(),
            project: Project::default(),
            git: GitCheckout::default(),
            image: None,
            services: vec![],
            variables: vars.iter().map(|(k, v)| Variable::public(*k, *v)).collect(),
            before_script: vec![],
            script: vec![],
            after_script: vec![],
            timeout: None,
            gitlab_secrets: gitlab,
            token: None,
            id_tokens: Vec::new(),
            registry_credentials: Vec::new(),
            transfers: Default::default(),
        }
    }

    fn keyhole() -> KeyholeConfig {
        KeyholeConfig {
            vault_addr: Some("http://vault:8200".into()),
            ..KeyholeConfig::default()
        }
    }

    #[test]
    fn keyhole_variables_become_references_with_a_kubernetes_login_as_the_service_account() {
        let (db, token) = (reference_var("DB"), reference_var("TOKEN"));
        let j = job(
            &[
                (db.as_str(), "vault:kv/app/db#password"),
                (token.as_str(), "k8s:registry/token?file=false"),
                ("OTHER", "x"),
            ],
            None,
        );
        let s = collect(&j, &keyhole(), "app-deployer").unwrap();
        assert_eq!(s.references.len(), 2);
        assert!(s.uses_kubernetes);
        let v = s.vault.unwrap();
        assert_eq!(v.role, "app-deployer");
        assert_eq!(v.method, VaultMethod::Kubernetes);
        assert_eq!(
            annotation_value(&s.references[1]),
            "k8s:registry/token?file=false"
        );
    }

    #[test]
    fn annotation_values_round_trip_through_the_brokers_parser() {
        for reference in [
            "vault:kv/app/db#password",
            "vault:kv/app/db?version=3&engine=kv-v2#password",
            "vault:kv/app/db?file=false#password",
            "vault:kv1/app?engine=kv-v1&file=false",
            "k8s:registry",
            "k8s:registry/token?file=false",
        ] {
            let r = parse_keyhole("X", reference).unwrap();
            let again = parse_keyhole("X", &annotation_value(&r)).unwrap();
            assert_eq!(r, again, "{reference}");
        }
    }

    fn gitlab_secret(url: &str) -> serde_json::Value {
        serde_json::json!({
            "DATABASE_PASSWORD": {
                "vault": {
                    "server": {"url": url, "auth": {"name": "jwt", "path": "jwt", "data": {"jwt": "$VAULT_ID_TOKEN", "role": "deploy"}}},
                    "engine": {"name": "kv-v2", "path": "ops"},
                    "path": "production/db", "field": "password"
                },
                "file": true
            }
        })
    }

    #[test]
    fn gitlab_secrets_log_in_with_jwt_only_on_allow_listed_servers() {
        let j = job(&[], Some(gitlab_secret("http://vault:8200")));
        let s = collect(&j, &keyhole(), "sa").unwrap();
        let v = s.vault.unwrap();
        assert_eq!(
            v.method,
            VaultMethod::Jwt {
                id_token_variable: "VAULT_ID_TOKEN".into()
            }
        );
        assert_eq!((v.auth_mount.as_str(), v.role.as_str()), ("jwt", "deploy"));
        let j = job(&[], Some(gitlab_secret("https://evil.example:8200")));
        let errs = collect(&j, &keyhole(), "sa").unwrap_err();
        assert!(errs[0].contains("allow-list"), "{errs:?}");
    }

    #[test]
    fn every_bad_reference_is_reported() {
        let names = ["A", "B", "C"].map(reference_var);
        let j = job(
            &[
                (names[0].as_str(), "vault:nomount"),
                (names[1].as_str(), "s3:bucket/key"),
                (names[2].as_str(), "vault:kv/x#y"),
            ],
            None,
        );
        let no_vault = KeyholeConfig::default();
        let errs = collect(&j, &no_vault, "sa").unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains("no Vault configured")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_secret_put_in_a_keyhole_variable_is_not_echoed() {
        let db = reference_var("DB");
        let j = job(&[(db.as_str(), "correct-horse-battery-staple-42")], None);
        let errs = collect(&j, &keyhole(), "sa").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("DB"), "{errs:?}");
        assert!(!errs[0].contains("correct-horse"), "{errs:?}");
    }
}
