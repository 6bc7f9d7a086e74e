use crate::blame::Blame;

/// What went wrong talking to Vault, and whether trying again could help.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "Vault at {addr} is not on the broker's allow-list; add it to vault.allowed_addresses or fix the reference"
    )]
    NotAllowed { addr: String },
    #[error(
        "Vault at {addr} could not be reached: {reason}; check the address and that Vault is running"
    )]
    Unreachable { addr: String, reason: String },
    #[error(
        "Vault at {addr} presented a certificate the broker does not trust ({reason}); give the broker the CA bundle that signs it (runner: [runners.keyhole] vault_ca_config_map; broker: {ca_file})",
        ca_file = keyhole_contract::env::VAULT_CA_FILE
    )]
    Untrusted { addr: String, reason: String },
    #[error("Vault at {addr} is sealed; unseal it (vault operator unseal) and rerun the job")]
    Sealed { addr: String },
    #[error(
        "Vault denied {what}: {detail}; check the Vault role's bound service account/claims and its policies"
    )]
    Denied { what: String, detail: String },
    #[error("Vault has nothing at {path}; check the mount, path and version")]
    NotFound { path: String },
    #[error("the secret at {path} has no field {field:?}; fields present: {present}")]
    MissingField {
        path: String,
        field: String,
        present: String,
    },
    #[error(
        "Vault mount {mount} is not a KV engine, so it has no KV versions; drop engine=kv-v1/kv-v2 and version= from the reference"
    )]
    NotKv { mount: String },
    #[error(
        "Vault mount {mount} is of type {kind}, which is not a secrets engine the broker reads (KV v1/v2, or one that issues leased secrets such as database or aws); reference a secret in a KV or dynamic secrets engine"
    )]
    NotASecretsEngine { mount: String, kind: String },
    #[error(
        "the reference states engine={stated} but Vault mount {mount} is {actual}; drop engine= or correct it"
    )]
    EngineMismatch {
        mount: String,
        stated: &'static str,
        actual: &'static str,
    },
    #[error("Vault answered {what} with status {status}: {detail}")]
    Status {
        what: String,
        status: u16,
        detail: String,
    },
    #[error("Vault's answer to {what} was not understood: {detail}")]
    BadResponse { what: String, detail: String },
    #[error("reading the login token from {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
}

impl VaultError {
    /// Whose fix this error needs.
    pub fn blame(&self) -> Blame {
        match self {
            VaultError::Unreachable { .. } | VaultError::Sealed { .. } => Blame::Platform,
            VaultError::Status { status, .. } if *status == 429 || *status >= 500 => {
                Blame::Platform
            }
            VaultError::NotAllowed { .. }
            | VaultError::TokenFile { .. }
            | VaultError::Untrusted { .. } => Blame::Settings,
            _ => Blame::Reference,
        }
    }

    /// Transient failures are retried with backoff; denied, missing and sealed are final.
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Unreachable { .. } => true,
            VaultError::Status { status, .. } => matches!(status, 429 | 500 | 502 | 504),
            _ => false,
        }
    }
}
