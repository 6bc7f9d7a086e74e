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
use tokio::sync::watch;

use crate::blame::Blame;
use crate::delivery::{Delivery, Resolved};
use crate::kube_secrets::read_secret;
use crate::leases::{HeldLease, VaultSession};
use crate::vault::{LoginMethod, VaultClient, VaultConfig, VaultError, reconcile_engine};
use keyhole_contract::reference::{Engine, SecretRef, Source, VaultRef};

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

/// Everything resolved: the values and their audit lines. The Vault session that issued them
/// (token and leases) is the caller's, see [`resolve_all`].
#[derive(Debug)]
pub struct Outcome {
    pub resolved: Vec<Resolved>,
    pub audit: Vec<AuditEntry>,
}

/// Why nothing is delivered.
#[derive(Debug)]
pub enum Unresolved {
    /// References failed; every failure, sorted by name.
    Failed(Vec<Failure>),
    /// A termination signal came first; what was in flight was dropped.
    Terminated,
}

/// How long a login that is in flight when the job is stopped may still take: a token Vault
/// has issued is only revocable once its answer arrives. Past this it is left to its TTL.
pub const LOGIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

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

/// Everything the reads produced, failures included.
#[derive(Default)]
struct Reads {
    resolved: Vec<Resolved>,
    audit: Vec<AuditEntry>,
    leases: Vec<HeldLease>,
    failures: Vec<Failure>,
}

/// Resolves all references with at most `concurrency` reads in flight. One Vault login per
/// job, whose session goes into `session` the moment it exists, so that the caller revokes the
/// token (and with it every lease issued to it, even one whose answer was never read) however
/// this ends: failure, `terminated` turning true, or the future being dropped.
pub async fn resolve_all(
    refs: Vec<SecretRef>,
    vault: Option<VaultSource>,
    kube: Option<KubeSource>,
    concurrency: usize,
    session: &mut Option<VaultSession>,
    mut terminated: watch::Receiver<bool>,
) -> Result<Outcome, Unresolved> {
    let concurrency = concurrency.max(1);
    let needs_vault = refs.iter().any(|r| matches!(r.source, Source::Vault(_)));
    let mut blocked = None;
    if needs_vault {
        let (login, stopped) = login_unless_terminated(vault, &mut terminated).await;
        match login {
            Ok(client) => *session = Some(VaultSession::new(client)),
            Err(b) => blocked = Some(b),
        }
        if stopped {
            return Err(Unresolved::Terminated);
        }
    }
    let client = session.as_ref().map(VaultSession::client);
    let reads = read_all(refs, blocked, client, kube.as_ref(), concurrency);
    let mut reads = tokio::select! {
        reads = reads => reads,
        () = crate::termination::stopped(&mut terminated) => return Err(Unresolved::Terminated),
    };
    if let Some(s) = session.as_mut() {
        s.hold(std::mem::take(&mut reads.leases));
    }
    if !reads.failures.is_empty() {
        reads.failures.sort_by(|a, b| a.name.cmp(&b.name));
        return Err(Unresolved::Failed(reads.failures));
    }
    reads.resolved.sort_by(|a, b| a.name.cmp(&b.name));
    reads.audit.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Outcome {
        resolved: reads.resolved,
        audit: reads.audit,
    })
}

/// Detects the engines, plans and runs every read.
async fn read_all(
    refs: Vec<SecretRef>,
    blocked: Option<Blocked>,
    client: Option<&VaultClient>,
    kube: Option<&KubeSource>,
    concurrency: usize,
) -> Reads {
    let engines = match client {
        Some(c) => detect_engines(c, &refs, concurrency).await,
        None => BTreeMap::new(),
    };
    let (tasks, failures) = plan(refs, blocked.as_ref(), &engines);
    let results: Vec<(Vec<Read>, Option<HeldLease>)> = futures::stream::iter(tasks)
        .map(|t| run_task(t, client, kube))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut out = Reads {
        failures,
        ..Reads::default()
    };
    for (reads, lease) in results {
        out.leases.extend(lease);
        for read in reads {
            match read {
                Ok((r, a)) => {
                    out.resolved.push(r);
                    out.audit.push(a);
                }
                Err(f) => out.failures.push(f),
            }
        }
    }
    out
}

/// Logs in, unless the job is stopped first; then a login in flight gets [`LOGIN_GRACE`] to
/// come back with a token the caller can revoke. Returns the login and whether the job was
/// stopped.
async fn login_unless_terminated(
    vault: Option<VaultSource>,
    terminated: &mut watch::Receiver<bool>,
) -> (Result<VaultClient, Blocked>, bool) {
    let login = login(vault);
    tokio::pin!(login);
    tokio::select! {
        done = &mut login => (done, false),
        () = crate::termination::stopped(terminated) => {
            let late = tokio::time::timeout(LOGIN_GRACE, login).await.unwrap_or_else(|_| {
                Err(("stopped while logging in to Vault".to_owned(), Blame::Platform))
            });
            (late, true)
        }
    }
}

async fn login(vault: Option<VaultSource>) -> Result<VaultClient, Blocked> {
    let Some(source) = vault else {
        return Err((
            format!(
                "no Vault is configured for this broker ({})",
                keyhole_contract::env::VAULT_ADDR
            ),
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

/// The real engine of every mount a reference names, asked of Vault once per mount before any
/// read: a stated `engine=` is only checked against it (see [`plan`]), never trusted.
async fn detect_engines(
    client: &VaultClient,
    refs: &[SecretRef],
    concurrency: usize,
) -> BTreeMap<String, Result<Engine, Blocked>> {
    let mut mounts: Vec<&str> = refs
        .iter()
        .filter_map(|r| match &r.source {
            Source::Vault(v) => Some(v.mount.as_str()),
            Source::Kubernetes { .. } => None,
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
        let engine = match blocked {
            Some((reason, blame)) => Err((reason.clone(), *blame)),
            None => engines
                .get(&v.mount)
                .cloned()
                .unwrap_or_else(|| {
                    Err((
                        format!("the engine of mount {} is unknown", v.mount),
                        Blame::Platform,
                    ))
                })
                .and_then(|actual| {
                    reconcile_engine(&v.mount, v.engine, actual)
                        .map_err(|e| (e.to_string(), e.blame()))
                }),
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
                    format!(
                        "no Kubernetes API is configured for this broker ({})",
                        keyhole_contract::env::KUBE_API
                    ),
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
    use keyhole_contract::reference::parse_keyhole;

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
            ("aws".to_owned(), Ok(Engine::Dynamic)),
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
    fn a_stated_engine_is_checked_against_the_mount_and_never_read_on_its_own_word() {
        let engines = BTreeMap::from([
            ("kv".to_owned(), Ok(Engine::KvV2)),
            ("database".to_owned(), Ok(Engine::Dynamic)),
        ]);
        let (tasks, failures) = plan(
            refs(&[
                ("A", "vault:kv/a?engine=kv-v1#x"),
                ("B", "vault:database/creds/app?engine=kv-v2#password"),
                ("C", "vault:kv/c?engine=kv-v2#x"),
                ("D", "vault:unlisted/x?engine=kv-v2#x"),
            ]),
            None,
            &engines,
        );
        assert_eq!(describe(&tasks), ["C KvV2"]);
        let reasons: Vec<_> = failures
            .iter()
            .map(|f| (f.name.as_str(), f.blame))
            .collect();
        assert_eq!(
            reasons,
            [
                ("A", Blame::Reference),
                ("B", Blame::Reference),
                ("D", Blame::Platform)
            ]
        );
        assert!(
            failures[0].reason.contains("states engine=kv-v1"),
            "{failures:?}"
        );
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
