//! Resolving every reference of a job, concurrently and all or nothing.

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::delivery::Resolved;
use crate::kube_secrets::read_secret;
use crate::reference::{SecretRef, Source};
use crate::vault::{LoginMethod, VaultClient, VaultConfig};

/// Where `vault:` references are read.
#[derive(Debug)]
pub struct VaultSource {
    pub config: VaultConfig,
    pub login: LoginMethod,
}

/// Where `k8s:` references are read: the job namespace, as the job's ServiceAccount.
pub struct KubeSource {
    pub api: Api<Secret>,
    pub namespace: String,
    /// `namespace/name` of the ServiceAccount, for error messages.
    pub account: String,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("namespace", &self.namespace)
            .field("account", &self.account)
            .finish()
    }
}

/// One audit line: what was delivered, from where, which version. Never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub name: String,
    pub source: String,
    pub version: Option<u64>,
}

/// One reference that failed: its name, source, and why (with what to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub source: String,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "secret {} ({}): {}", self.name, self.source, self.reason)
    }
}

/// Everything resolved, with the Vault client kept for revocation at the end.
#[derive(Debug)]
pub struct Outcome {
    pub resolved: Vec<Resolved>,
    pub audit: Vec<AuditEntry>,
    pub vault: Option<VaultClient>,
}

/// Resolves all references with at most `concurrency` reads in flight. One Vault login per
/// job. Any failure fails the whole set: the caller writes nothing.
pub async fn resolve_all(
    refs: Vec<SecretRef>,
    vault: Option<VaultSource>,
    kube: Option<KubeSource>,
    concurrency: usize,
) -> Result<Outcome, Vec<Failure>> {
    let needs_vault = refs.iter().any(|r| matches!(r.source, Source::Vault(_)));
    let mut client = None;
    let mut login_error = None;
    if needs_vault {
        match vault {
            None => {
                login_error =
                    Some("no Vault is configured for this broker (KEYHOLE_VAULT_ADDR)".to_owned())
            }
            Some(source) => {
                eprintln!(
                    "keyhole-broker: logging in to Vault at {}",
                    source.config.addr
                );
                match VaultClient::new(source.config) {
                    Err(e) => login_error = Some(e.to_string()),
                    Ok(mut c) => match c.login(&source.login).await {
                        Ok(_) => {
                            eprintln!("keyhole-broker: Vault login done");
                            client = Some(c);
                        }
                        Err(e) => login_error = Some(e.to_string()),
                    },
                }
            }
        }
    }
    let client_ref = client.as_ref();
    let kube_ref = kube.as_ref();
    let login_error = login_error.as_deref();
    let results: Vec<Result<(Resolved, AuditEntry), Failure>> = futures::stream::iter(refs)
        .map(|r| async move { resolve_one(r, client_ref, login_error, kube_ref).await })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut resolved = Vec::new();
    let mut audit = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok((r, a)) => {
                resolved.push(r);
                audit.push(a);
            }
            Err(f) => failures.push(f),
        }
    }
    if !failures.is_empty() {
        failures.sort_by(|a, b| a.name.cmp(&b.name));
        // Nothing is delivered, so the token has no further use.
        if let Some(mut c) = client
            && tokio::time::timeout(std::time::Duration::from_secs(5), c.revoke_self())
                .await
                .is_err()
        {
            eprintln!(
                "keyhole-broker: warning: revoking the Vault token timed out; it expires at its TTL"
            );
        }
        return Err(failures);
    }
    resolved.sort_by(|a, b| a.name.cmp(&b.name));
    audit.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Outcome {
        resolved,
        audit,
        vault: client,
    })
}

async fn resolve_one(
    r: SecretRef,
    vault: Option<&VaultClient>,
    login_error: Option<&str>,
    kube: Option<&KubeSource>,
) -> Result<(Resolved, AuditEntry), Failure> {
    let source = r.source.to_string();
    eprintln!("keyhole-broker: reading {} from {source}", r.name);
    let fail = |reason: String| Failure {
        name: r.name.to_string(),
        source: source.clone(),
        reason,
    };
    let (value, version) = match &r.source {
        Source::Vault(v) => {
            let client = vault
                .ok_or_else(|| fail(login_error.unwrap_or("Vault login failed").to_owned()))?;
            let kv = client
                .read_kv(&v.mount, &v.path, v.engine, v.version, v.field.as_deref())
                .await
                .map_err(|e| fail(e.to_string()))?;
            (kv.value, kv.version)
        }
        Source::Kubernetes { secret, key } => {
            let kube = kube.ok_or_else(|| {
                fail("no Kubernetes API is configured for this broker (KEYHOLE_KUBE_API)".into())
            })?;
            let value = read_secret(
                &kube.api,
                &kube.namespace,
                &kube.account,
                secret,
                key.as_deref(),
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
            (value, None)
        }
    };
    let audit = AuditEntry {
        name: r.name.to_string(),
        source: source.clone(),
        version,
    };
    Ok((
        Resolved {
            name: r.name,
            value,
            file: r.file,
        },
        audit,
    ))
}
