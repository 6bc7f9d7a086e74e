//! The broker's Vault session for the life of the job: it keeps the dynamic secrets' leases
//! (and the token they hang on) alive while the job runs, and ends them with it.
//!
//! Logs one line per renewal (lease id and new TTL, never a value). A failed renewal is logged
//! with what it means and does not end the job: the secret keeps working until its lease
//! expires.

mod clock;

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use clock::{RenewalClock, Renewed, two_thirds};

use crate::vault::{Lease, VaultClient, VaultError};

/// Ending the session must fit the pod's termination grace period, whatever the retry policy
/// for reads says; what outlives this still expires at its TTL.
pub const END_DEADLINE: Duration = Duration::from_secs(10);

/// A Vault failure as the trace states it once the job runs: a [`VaultError`]'s own text is
/// written for a job that could not start, and tells a sealed Vault's operator to "rerun the
/// job", which is wrong for a renewal while the job goes on or a revocation after it ended.
#[derive(Debug, thiserror::Error)]
enum MidJobError {
    #[error("Vault at {addr} is sealed")]
    Sealed { addr: String },
    #[error(transparent)]
    Other(VaultError),
}

impl From<VaultError> for MidJobError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Sealed { addr } => MidJobError::Sealed { addr },
            other => MidJobError::Other(other),
        }
    }
}

/// A lease the broker holds, and the secrets that came from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub lease: Lease,
    /// Names of the secrets read under this lease, for messages.
    pub secrets: Vec<String>,
}

#[derive(Debug)]
struct Kept {
    held: HeldLease,
    clock: RenewalClock,
}

/// What to renew next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Lease(usize),
    Token,
}

/// The logged-in client and everything issued to it.
#[derive(Debug)]
pub struct VaultSession {
    client: VaultClient,
    leases: Vec<Kept>,
    token: RenewalClock,
}

impl VaultSession {
    /// Starts the session of a client that has just logged in: from here on, ending the
    /// session revokes its token, and with it everything issued to it.
    pub fn new(client: VaultClient) -> Self {
        let token = client
            .token()
            .map(|t| RenewalClock::new(Instant::now(), t.ttl, t.renewable))
            .unwrap_or_else(|| RenewalClock::new(Instant::now(), Duration::ZERO, false));
        Self {
            client,
            leases: Vec::new(),
            token,
        }
    }

    /// The logged-in client, for the reads.
    pub fn client(&self) -> &VaultClient {
        &self.client
    }

    /// Starts keeping `leases`, issued just now to the session's token. Logs the leases that
    /// cannot be renewed.
    pub fn hold(&mut self, leases: Vec<HeldLease>) {
        let now = Instant::now();
        self.leases.extend(leases.into_iter().map(|held| {
            if !held.lease.renewable {
                eprintln!(
                    "keyhole-broker: lease {} ({}) is not renewable; it expires at its TTL ({}s)",
                    held.lease.id,
                    held.secrets.join(", "),
                    held.lease.ttl.as_secs()
                );
            }
            Kept {
                clock: RenewalClock::new(now, held.lease.ttl, held.lease.renewable),
                held,
            }
        }));
    }

    /// The leases held, for the audit log.
    pub fn leases(&self) -> impl Iterator<Item = &HeldLease> {
        self.leases.iter().map(|k| &k.held)
    }

    /// Renews leases at 2/3 of their TTL, and the token when it would end before a lease that
    /// still needs it, until `stop` turns true (or its sender goes away).
    pub async fn keep_alive(&mut self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let Some((at, due)) = self.next_due() else {
                let _ = stop.changed().await;
                return;
            };
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(at) => {
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = self.renew(due) => {}
                    }
                }
            }
        }
    }

    fn next_due(&self) -> Option<(Instant, Due)> {
        let leases = self
            .leases
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.clock.renew_at.map(|at| (at, Due::Lease(i))));
        let token = self.token.renew_at.map(|at| (at, Due::Token));
        leases.chain(token).min_by_key(|(at, _)| *at)
    }

    /// Whether a lease still needs the token beyond the token's current end: leases end with
    /// the token that made them.
    fn token_needed(&self) -> bool {
        self.leases
            .iter()
            .any(|k| k.clock.renew_at.is_some() || k.clock.expires > self.token.expires)
    }

    async fn renew(&mut self, due: Due) {
        match due {
            Due::Lease(i) => self.renew_lease(i).await,
            Due::Token => self.renew_token().await,
        }
    }

    async fn renew_lease(&mut self, i: usize) {
        let Some(kept) = self.leases.get_mut(i) else {
            return;
        };
        let id = kept.held.lease.id.clone();
        let result = self.client.renew_lease(&id, kept.clock.increment).await;
        let now = Instant::now();
        match result {
            Ok(renewed) => match kept.clock.renewed(now, renewed.ttl) {
                Renewed::Extended => eprintln!(
                    "keyhole-broker: lease {id} renewed; ttl {}s",
                    renewed.ttl.as_secs()
                ),
                Renewed::Capped => eprintln!(
                    "keyhole-broker: lease {id} renewed; ttl {}s, its max TTL: it expires then and is not renewed again",
                    renewed.ttl.as_secs()
                ),
            },
            Err(e) => {
                let e = MidJobError::from(e);
                let left = kept.clock.failed(now);
                eprintln!(
                    "keyhole-broker: warning: renewing lease {id} failed: {e}; the secrets from it ({}) stop working when it ends, in at most {}s{}; the job goes on",
                    kept.held.secrets.join(", "),
                    left.as_secs(),
                    if kept.clock.renew_at.is_some() {
                        ", unless a retry before then succeeds"
                    } else {
                        ""
                    }
                );
            }
        }
    }

    async fn renew_token(&mut self) {
        if !self.token_needed() {
            // Nothing issued to it outlives it; it is only needed for revocation, and a token
            // that has expired needs none.
            self.token.renew_at = None;
            return;
        }
        let result = self.client.renew_self(self.token.increment).await;
        let now = Instant::now();
        match result {
            Ok(ttl) => match self.token.renewed(now, ttl) {
                Renewed::Extended => {
                    eprintln!(
                        "keyhole-broker: Vault token renewed; ttl {}s",
                        ttl.as_secs()
                    );
                }
                Renewed::Capped => eprintln!(
                    "keyhole-broker: Vault token renewed; ttl {}s, its max TTL: it and the leases it holds end then",
                    ttl.as_secs()
                ),
            },
            Err(e) => {
                let e = MidJobError::from(e);
                let left = self.token.failed(now);
                eprintln!(
                    "keyhole-broker: warning: renewing the Vault token failed: {e}; it and the leases it holds end in {}s; the job goes on",
                    left.as_secs()
                );
            }
        }
    }

    /// Revokes every lease (`sys/leases/revoke`), then the token, within [`END_DEADLINE`].
    /// A lease the token's policy may not revoke ends with the token anyway. A refusal (a
    /// sealed Vault) is not retried: what was not revoked expires at its TTL.
    pub async fn end(mut self) {
        let started = std::time::Instant::now();
        let ended = tokio::time::timeout(END_DEADLINE, async {
            for kept in &self.leases {
                let id = &kept.held.lease.id;
                match self.client.revoke_lease(id).await {
                    Ok(()) => eprintln!("keyhole-broker: lease {id} revoked"),
                    Err(VaultError::Denied { .. }) => eprintln!(
                        "keyhole-broker: lease {id}: the token's policy does not allow sys/leases/revoke; revoking the token ends it"
                    ),
                    Err(e) => eprintln!(
                        "keyhole-broker: warning: revoking lease {id}: {}; it expires at its TTL",
                        MidJobError::from(e)
                    ),
                }
            }
            self.client.revoke_self().await
        })
        .await;
        match ended {
            Ok(Ok(())) => eprintln!(
                "keyhole-broker: Vault token revoked ({} ms)",
                started.elapsed().as_millis()
            ),
            Ok(Err(e)) => eprintln!(
                "keyhole-broker: warning: revoking the Vault token: {}; it and the leases it holds expire at their TTL",
                MidJobError::from(e)
            ),
            Err(_) => eprintln!(
                "keyhole-broker: warning: revoking the Vault token and leases took over {}s; they expire at their TTL",
                END_DEADLINE.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_vault_mid_job_is_named_without_the_advice_to_rerun() {
        let sealed = MidJobError::from(VaultError::Sealed {
            addr: "http://vault:8200".into(),
        });
        assert_eq!(sealed.to_string(), "Vault at http://vault:8200 is sealed");
        let other = MidJobError::from(VaultError::NotFound {
            path: "sys/leases/renew".into(),
        });
        assert_eq!(
            other.to_string(),
            "Vault has nothing at sys/leases/renew; check the mount, path and version"
        );
    }
}
