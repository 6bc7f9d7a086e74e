//! Secret references: what a job asks for, by name and location, never a value.
//!
//! Two sources feed the same model. Keyhole references come from job variables named
//! `KEYHOLE_SECRET_<NAME>` (see [`parse_keyhole`] and `docs/secrets.md` for the grammar); GitLab's
//! own `secrets:` keyword arrives in the job payload and is parsed by the runner
//! (`keyhole_runner::secrets::from_gitlab_secrets`), which passes the broker both kinds in this
//! model.

mod keyhole;
mod name;
mod vault_path;

pub use keyhole::{KEYHOLE_VARIABLE_PREFIX, ReferenceError, is_dns_subdomain, parse_keyhole};
pub use name::{NameError, SecretName, printable};
pub use vault_path::{RESERVED_MOUNTS, check_vault_location};

/// One secret a job asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub name: SecretName,
    pub source: Source,
    /// GitLab file semantics: `true` delivers a file whose path is the variable's value;
    /// `false` exports the value as an environment variable from the broker's env file.
    pub file: bool,
}

/// Where a secret's value lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Secret in the job's namespace, read with the job's ServiceAccount token.
    Kubernetes {
        secret: String,
        /// One key; `None` means all keys, delivered as a JSON object.
        key: Option<String>,
    },
    Vault(VaultRef),
}

/// A value in Vault: a field of a KV secret, or of a dynamic secret (database credentials and
/// the like), which Vault issues with a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRef {
    pub mount: String,
    pub path: String,
    /// One field; `None` means the whole secret as a JSON object.
    pub field: Option<String>,
    pub engine: Engine,
    /// A pinned KV v2 version.
    pub version: Option<u64>,
    /// Server settings from GitLab's payload; `None` uses the broker's configured server.
    pub server: Option<VaultServer>,
}

/// What kind of secrets engine serves a mount; it decides the API path and whether a read
/// comes with a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Asked of Vault (`sys/internal/ui/mounts/<mount>`) at resolve time: type `kv` (or
    /// `generic`) is KV, with its version option; anything else is dynamic.
    Detect,
    /// KV version 1: `GET <mount>/<path>`.
    KvV1,
    /// KV version 2: `GET <mount>/data/<path>`, versions may be pinned.
    KvV2,
    /// Any other engine (database, PKI, AWS, ...): `GET <mount>/<path>` issues a new secret with
    /// a lease, which the broker renews during the job and revokes at its end. Several fields of
    /// one path in one job come from one read, so they belong together (a username and its
    /// password).
    Dynamic,
}

/// Vault server and auth settings that GitLab sends with each `secrets:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultServer {
    pub url: String,
    pub namespace: Option<String>,
    /// Auth method mount path, e.g. `jwt`.
    pub auth_path: String,
    pub role: Option<String>,
    /// Name of the job variable holding the ID token (GitLab's `$VAULT_ID_TOKEN`), without `$`.
    pub jwt_variable: Option<String>,
}

impl Source {
    /// Whether the reference names a whole secret (no key, no field): its value is then a JSON
    /// object of all the secret's fields.
    pub fn is_whole(&self) -> bool {
        match self {
            Source::Kubernetes { key, .. } => key.is_none(),
            Source::Vault(v) => v.field.is_none(),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Kubernetes { secret, key: None } => write!(f, "k8s:{secret}"),
            Source::Kubernetes {
                secret,
                key: Some(key),
            } => write!(f, "k8s:{secret}/{key}"),
            Source::Vault(v) => {
                write!(f, "vault:{}/{}", v.mount, v.path)?;
                let mut sep = '?';
                if let Some(version) = v.version {
                    write!(f, "{sep}version={version}")?;
                    sep = '&';
                }
                match v.engine {
                    Engine::Detect => {}
                    Engine::KvV1 => write!(f, "{sep}engine=kv-v1")?,
                    Engine::KvV2 => write!(f, "{sep}engine=kv-v2")?,
                    Engine::Dynamic => write!(f, "{sep}engine=dynamic")?,
                }
                if let Some(field) = &v.field {
                    write!(f, "#{field}")?;
                }
                Ok(())
            }
        }
    }
}
