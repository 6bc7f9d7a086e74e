//! Resolving every reference of a job, concurrently and all or nothing.
//!
//! Vault references are sorted by engine first (stated, or asked of Vault once per mount): KV
//! references are read one by one; dynamic references are grouped by path, so that the
//! username and the password of one set of database credentials come from one read and one
//! lease.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::blame::Blame;
use crate::delivery::{Delivery, Resolved};
use crate::kube_secrets::read_secret;
use crate::leases::{HeldLease, VaultSession};
use crate::reference::{Engine, SecretRef, Source, VaultRef};
use crate::vault::{LoginMethod, VaultClient, VaultConfig, VaultError};

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

/// One audit line: what was delivered, from where, which version or lease. Never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub name: String,
    pub source: String,
    pub version: Option<u64>,
    /// The lease of a dynamic secret: not a secret, the handle to revoke it.
    pub lease: Option<String>,
}

/// One reference that failed: its name, source, why (with what to do), and whose fix it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub source: String,
    pub reason: String,
    pub blame: Blame,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "secret {} ({}): {}", self.name, self.source, self.reason)
    }
}

/// Everything resolved, with the Vault session (token and leases) kept for renewal during the
/// job and revocation at its end.
#[derive(Debug)]
pub struct Outcome {
    pub resolved: Vec<Resolved>,
    pub audit: Vec<AuditEntry>,
    pub vault: Option<VaultSession>,
}

/// Why a Vault reference cannot be read at all (no login, no engine): a message and its blame.
type Blocked = (String, Blame);

/// One unit of work: a KV or Kubernetes read for one reference, or one dynamic read shared by
/// every reference to its path.
enum Task {
    Kv(SecretRef, Engine),
    Kube(SecretRef),
    Dynamic {
        mount: String,
        path: String,
        refs: Vec<SecretRef>,
    },
}

type Read = Result<(Resolved, AuditEntry), Failure>;

/// Resolves all references with at most `concurrency` reads in flight. One Vault login per
/// job. Any failure fails the whole set: the caller writes nothing, and leases and token
/// issued on the way are revoked here.
pub async fn resolve_all(
    refs: Vec<SecretRef>,
    vault: Option<VaultSource>,
    kube: Option<KubeSource>,
    concurrency: usize,
) -> Result<Outcome, Vec<Failure>> {
    let concurrency = concurrency.max(1);
    let needs_vault = refs.iter().any(|r| matches!(r.source, Source::Vault(_)));
    let (client, blocked) = if needs_vault {
        match login(vault).await {
            Ok(c) => (Some(c), None),
            Err(b) => (None, Some(b)),
        }
    } else {
        (None, None)
    };
    let engines = match &client {
        Some(c) => detect_engines(c, &refs, concurrency).await,
        None => BTreeMap::new(),
    };
    let (tasks, mut failures) = plan(refs, blocked.as_ref(), &engines);
    let client_ref = client.as_ref();
    let kube_ref = kube.as_ref();
    let results: Vec<(Vec<Read>, Option<HeldLease>)> = futures::stream::iter(tasks)
        .map(|t| run_task(t, client_ref, kube_ref))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut resolved = Vec::new();
    let mut audit = Vec::new();
    let mut leases = Vec::new();
    for (reads, lease) in results {
        leases.extend(lease);
        for read in reads {
            match read {
                Ok((r, a)) => {
                    resolved.push(r);
                    audit.push(a);
                }
                Err(f) => failures.push(f),
            }
        }
    }
    let session = client.map(|c| VaultSession::new(c, leases));
    if !failures.is_empty() {
        failures.sort_by(|a, b| a.name.cmp(&b.name));
        // Nothing is delivered, so the leases and the token have no further use.
        if let Some(s) = session {
            s.end().await;
        }
        return Err(failures);
    }
    resolved.sort_by(|a, b| a.name.cmp(&b.name));
    audit.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Outcome {
        resolved,
        audit,
        vault: session,
    })
}

async fn login(vault: Option<VaultSource>) -> Result<VaultClient, Blocked> {
    let Some(source) = vault else {
        return Err((
            "no Vault is configured for this broker (KEYHOLE_VAULT_ADDR)".to_owned(),
            Blame::Settings,
        ));
    };
    eprintln!(
        "keyhole-broker: logging in to Vault at {}",
        source.config.addr
    );
    let blocked = |e: VaultError| (e.to_string(), e.blame());
    let mut client = VaultClient::new(source.config).map_err(blocked)?;
    client.login(&source.login).await.map_err(blocked)?;
    eprintln!("keyhole-broker: Vault login done");
    Ok(client)
}

/// The engine of every mount a reference leaves to detection, asked once per mount.
async fn detect_engines(
    client: &VaultClient,
    refs: &[SecretRef],
    concurrency: usize,
) -> BTreeMap<String, Result<Engine, Blocked>> {
    let mut mounts: Vec<&str> = refs
        .iter()
        .filter_map(|r| match &r.source {
            Source::Vault(v) if v.engine == Engine::Detect => Some(v.mount.as_str()),
            _ => None,
        })
        .collect();
    mounts.sort_unstable();
    mounts.dedup();
    futures::stream::iter(mounts)
        .map(|mount| async move {
            let engine = client
                .resolve_engine(mount, Engine::Detect)
                .await
                .map_err(|e| (e.to_string(), e.blame()));
            (mount.to_owned(), engine)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Splits references into tasks, grouping dynamic ones by path; references that cannot be
/// read at all fail here.
fn plan(
    refs: Vec<SecretRef>,
    blocked: Option<&Blocked>,
    engines: &BTreeMap<String, Result<Engine, Blocked>>,
) -> (Vec<Task>, Vec<Failure>) {
    let mut tasks = Vec::new();
    let mut failures = Vec::new();
    let mut dynamic: BTreeMap<(String, String), Vec<SecretRef>> = BTreeMap::new();
    for r in refs {
        let Source::Vault(v) = &r.source else {
            tasks.push(Task::Kube(r));
            continue;
        };
        let engine = match (blocked, v.engine) {
            (Some((reason, blame)), _) => Err((reason.clone(), *blame)),
            (None, Engine::Detect) => engines.get(&v.mount).cloned().unwrap_or_else(|| {
                Err((
                    format!("the engine of mount {} is unknown", v.mount),
                    Blame::Platform,
                ))
            }),
            (None, stated) => Ok(stated),
        };
        match engine {
            Err((reason, blame)) => failures.push(failure(&r, reason, blame)),
            Ok(Engine::Dynamic) if v.version.is_some() => failures.push(failure(
                &r,
                format!(
                    "pins a version, but {} is a dynamic engine whose every read issues a new secret; drop version=",
                    v.mount
                ),
                Blame::Reference,
            )),
            Ok(Engine::Dynamic) => {
                let key = (v.mount.clone(), v.path.clone());
                dynamic.entry(key).or_default().push(r);
            }
            Ok(kv) => tasks.push(Task::Kv(r, kv)),
        }
    }
    tasks.extend(
        dynamic
            .into_iter()
            .map(|((mount, path), refs)| Task::Dynamic { mount, path, refs }),
    );
    (tasks, failures)
}

fn failure(r: &SecretRef, reason: String, blame: Blame) -> Failure {
    Failure {
        name: r.name.to_string(),
        source: r.source.to_string(),
        reason,
        blame,
    }
}

async fn run_task(
    task: Task,
    vault: Option<&VaultClient>,
    kube: Option<&KubeSource>,
) -> (Vec<Read>, Option<HeldLease>) {
    match task {
        Task::Kv(r, engine) => (vec![read_one(r, engine, vault, kube).await], None),
        Task::Kube(r) => (vec![read_one(r, Engine::Detect, vault, kube).await], None),
        Task::Dynamic { mount, path, refs } => match vault {
            Some(client) => read_dynamic(client, &mount, &path, refs).await,
            None => {
                let reads = refs
                    .iter()
                    .map(|r| Err(failure(r, "Vault login failed".to_owned(), Blame::Platform)))
                    .collect();
                (reads, None)
            }
        },
    }
}

async fn read_one(
    r: SecretRef,
    engine: Engine,
    vault: Option<&VaultClient>,
    kube: Option<&KubeSource>,
) -> Read {
    let source = r.source.to_string();
    eprintln!("keyhole-broker: reading {} from {source}", r.name);
    let (value, version) = match &r.source {
        Source::Vault(VaultRef {
            mount,
            path,
            version,
            field,
            ..
        }) => {
            let client = vault
                .ok_or_else(|| failure(&r, "Vault login failed".to_owned(), Blame::Platform))?;
            let kv = client
                .read_kv(mount, path, engine, *version, field.as_deref())
                .await
                .map_err(|e| failure(&r, e.to_string(), e.blame()))?;
            (kv.value, kv.version)
        }
        Source::Kubernetes { secret, key } => {
            let kube = kube.ok_or_else(|| {
                failure(
                    &r,
                    "no Kubernetes API is configured for this broker (KEYHOLE_KUBE_API)".into(),
                    Blame::Settings,
                )
            })?;
            let value = read_secret(
                &kube.api,
                &kube.namespace,
                &kube.account,
                secret,
                key.as_deref(),
            )
            .await
            .map_err(|e| failure(&r, e.to_string(), e.blame()))?;
            (value, None)
        }
    };
    let audit = AuditEntry {
        name: r.name.to_string(),
        source,
        version,
        lease: None,
    };
    Ok((
        Resolved {
            json_object: r.source.is_whole(),
            name: r.name,
            value,
            delivery: Delivery::for_reference(r.file),
        },
        audit,
    ))
}

/// One read for every reference to a dynamic path: one secret, one lease.
async fn read_dynamic(
    client: &VaultClient,
    mount: &str,
    path: &str,
    refs: Vec<SecretRef>,
) -> (Vec<Read>, Option<HeldLease>) {
    let names: Vec<String> = refs.iter().map(|r| r.name.to_string()).collect();
    eprintln!(
        "keyhole-broker: reading {} from vault:{mount}/{path} (dynamic: one read, one lease)",
        names.join(", ")
    );
    let secret = match client.read_dynamic(mount, path).await {
        Ok(s) => s,
        Err(e) => {
            let reason = e.to_string();
            let blame = e.blame();
            let reads = refs
                .iter()
                .map(|r| Err(failure(r, reason.clone(), blame)))
                .collect();
            return (reads, None);
        }
    };
    let lease_id = secret.lease.as_ref().map(|l| l.id.clone());
    let reads = refs
        .into_iter()
        .map(|r| {
            let Source::Vault(v) = &r.source else {
                return Err(failure(
                    &r,
                    "is not a Vault reference".into(),
                    Blame::Reference,
                ));
            };
            let value = secret
                .field(v.field.as_deref())
                .map_err(|e| failure(&r, e.to_string(), e.blame()))?;
            let audit = AuditEntry {
                name: r.name.to_string(),
                source: r.source.to_string(),
                version: None,
                lease: lease_id.clone(),
            };
            Ok((
                Resolved {
                    json_object: r.source.is_whole(),
                    name: r.name,
                    value,
                    delivery: Delivery::for_reference(r.file),
                },
                audit,
            ))
        })
        .collect();
    let held = secret.lease.clone().map(|lease| HeldLease {
        lease,
        secrets: names,
    });
    (reads, held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::parse_keyhole;

    fn refs(list: &[(&str, &str)]) -> Vec<SecretRef> {
        list.iter()
            .map(|(n, r)| parse_keyhole(n, r).unwrap())
            .collect()
    }

    fn describe(tasks: &[Task]) -> Vec<String> {
        let mut out: Vec<String> = tasks
            .iter()
            .map(|t| match t {
                Task::Kv(r, e) => format!("{} {e:?}", r.name),
                Task::Kube(r) => format!("{} k8s", r.name),
                Task::Dynamic { mount, path, refs } => format!(
                    "{mount}/{path}: {}",
                    refs.iter()
                        .map(|r| r.name.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn fields_of_one_dynamic_path_share_one_read() {
        let engines = BTreeMap::from([
            ("database".to_owned(), Ok(Engine::Dynamic)),
            ("kv".to_owned(), Ok(Engine::KvV2)),
        ]);
        let (tasks, failures) = plan(
            refs(&[
                ("DB_USER", "vault:database/creds/app#username"),
                ("DB_PASSWORD", "vault:database/creds/app#password"),
                ("RO_PASSWORD", "vault:database/creds/readonly#password"),
                ("STATED", "vault:aws/creds/deploy?engine=dynamic#access_key"),
                ("API", "vault:kv/team/api#key"),
                ("REG", "k8s:registry/token"),
            ]),
            None,
            &engines,
        );
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(
            describe(&tasks),
            [
                "API KvV2",
                "REG k8s",
                "aws/creds/deploy: STATED",
                "database/creds/app: DB_USER,DB_PASSWORD",
                "database/creds/readonly: RO_PASSWORD",
            ]
        );
    }

    #[test]
    fn blocked_vault_and_failed_detection_fail_their_references_with_blame() {
        let blocked = ("Vault at http://v is sealed".to_owned(), Blame::Platform);
        let (tasks, failures) = plan(
            refs(&[("A", "vault:kv/a#x"), ("B", "k8s:b/c")]),
            Some(&blocked),
            &BTreeMap::new(),
        );
        assert_eq!(describe(&tasks), ["B k8s"]);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].blame, Blame::Platform);
        assert!(
            failures[0]
                .to_string()
                .contains("secret A (vault:kv/a#x): Vault at")
        );

        let engines = BTreeMap::from([(
            "kv".to_owned(),
            Err((
                "Vault denied mount lookup of kv".to_owned(),
                Blame::Reference,
            )),
        )]);
        let (_, failures) = plan(refs(&[("A", "vault:kv/a#x")]), None, &engines);
        assert_eq!(failures[0].reason, "Vault denied mount lookup of kv");
    }

    #[test]
    fn a_version_on_a_detected_dynamic_mount_is_refused() {
        let engines = BTreeMap::from([("database".to_owned(), Ok(Engine::Dynamic))]);
        let (tasks, failures) = plan(
            refs(&[("P", "vault:database/creds/app?version=2#password")]),
            None,
            &engines,
        );
        assert!(tasks.is_empty());
        assert!(
            failures[0].reason.contains("dynamic engine"),
            "{failures:?}"
        );
        assert_eq!(failures[0].blame, Blame::Reference);
    }
}
