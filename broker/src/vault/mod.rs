//! A thin Vault client for exactly what the broker needs: Kubernetes and JWT login, KV v1/v2
//! reads, dynamic reads with their leases, mount detection, lease and token renewal and
//! revocation.
//!
//! Written on reqwest rather than vaultrs because vaultrs keeps the token as a plain `String`
//! and has no `sys/leases` calls; here the token is a `SecretString`, response bodies are read
//! into zeroizing buffers, and secret fields are borrowed from them rather than copied.

mod client;
mod error;
mod retry;

pub use client::{
    DYNAMIC_MOUNT_TYPES, DynamicSecret, KvValue, Lease, LoginMethod, Token, VaultClient,
    VaultConfig, reconcile_engine,
};
pub use error::VaultError;
pub use retry::RetryPolicy;
