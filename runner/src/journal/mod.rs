//! The in-flight job journal: what a runner must know to report a job whose runner process
//! died (its id, its pod, its job token), kept outside that process. A runner that starts
//! reports the jobs a crashed predecessor left, and with the Secret journal also the jobs of
//! any dead instance of the same runner (a pod that was replaced), instead of leaving them
//! "running" until GitLab's own timeout. gitlab-runner loses them.
//!
//! Two places: a directory on the runner pod's memory-backed volume ([`DirJournal`]: survives a
//! restart of the process in the same pod), or one Secret in the runner's own namespace
//! ([`SecretJournal`]: survives the pod, so the next pod of the Deployment can report).

mod dir;
mod secret;

use std::collections::BTreeSet;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use zeroize::Zeroizing;

pub use dir::DirJournal;
pub use secret::SecretJournal;

/// One running job, as written to the journal.
#[derive(Debug, Clone)]
pub struct Entry {
    pub job_id: u64,
    pub namespace: String,
    pub pod_name: String,
    pub token: SecretString,
    /// The runner process (instance id) that runs the job.
    pub instance: String,
}

impl Entry {
    /// The stored form: JSON, in memory that is wiped when dropped (it holds the token).
    fn to_json(&self) -> Zeroizing<String> {
        Zeroizing::new(
            serde_json::json!({
                "job_id": self.job_id,
                "namespace": self.namespace,
                "pod_name": self.pod_name,
                "token": self.token.expose_secret(),
                "instance": self.instance,
            })
            .to_string(),
        )
    }
}

/// What a journal entry holds, as read back.
#[derive(Deserialize)]
struct Stored {
    job_id: u64,
    namespace: String,
    pod_name: String,
    token: String,
    /// Absent in entries of runners older than instances.
    #[serde(default)]
    instance: String,
}

impl From<Stored> for Entry {
    fn from(s: Stored) -> Self {
        Self {
            job_id: s.job_id,
            namespace: s.namespace,
            pod_name: s.pod_name,
            token: SecretString::from(s.token),
            instance: s.instance,
        }
    }
}

/// Why the journal could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("journal Secret {secret}: {source}")]
    Kube {
        secret: String,
        source: Box<kube::Error>,
    },
}

/// One runner's journal, in a directory or in a Secret.
#[derive(Clone, Debug)]
pub enum Journal {
    Dir(DirJournal),
    Secret(Box<SecretJournal>),
}

impl Journal {
    /// Records a job before its pod is created.
    ///
    /// # Errors
    /// The entry could not be written; the job runs on, unjournaled.
    pub async fn record(&self, entry: &Entry) -> Result<(), JournalError> {
        match self {
            Self::Dir(d) => Ok(d.record(entry)?),
            Self::Secret(s) => s.record(entry).await,
        }
    }

    /// Forgets a job once GitLab has its final state.
    pub async fn remove(&self, job_id: u64) {
        match self {
            Self::Dir(d) => d.remove(job_id),
            Self::Secret(s) => s.remove(job_id).await,
        }
    }

    /// Jobs a previous process of this runner (in this pod, `own_instance`) left unfinished,
    /// and problems with unreadable entries (named, never shown).
    pub async fn unfinished(&self, own_instance: &str) -> (Vec<Entry>, Vec<String>) {
        match self {
            Self::Dir(d) => d.unfinished(),
            Self::Secret(s) => s.entries_of(|i| i == own_instance).await,
        }
    }

    /// Jobs of this runner whose instance is neither `own_instance` nor among `live` (its
    /// Lease expired: a replaced or crashed pod). A directory journal sees only its own pod's.
    pub async fn abandoned(
        &self,
        own_instance: &str,
        live: &BTreeSet<String>,
    ) -> (Vec<Entry>, Vec<String>) {
        match self {
            Self::Dir(_) => (Vec::new(), Vec::new()),
            Self::Secret(s) => {
                s.entries_of(|i| i != own_instance && !live.contains(i))
                    .await
            }
        }
    }
}
