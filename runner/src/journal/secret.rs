//! The journal as one Secret in the runner's own namespace, shared by every pod of the
//! Deployment: each running job is one key (`<runner label>.<job id>`) whose value holds the job
//! id, pod, instance and job token. A Secret because it outlives the pod (an emptyDir dies with
//! it), and because the chart can grant exactly this one object (`resourceNames`) without
//! letting the runner read any other Secret. The job token is in etcd already (the per-job
//! Secret); this adds no reader: whoever can read Secrets in the runner's namespace can read its
//! runner token, which is worth more.
//!
//! Writes are merge patches of one key, so replicas never conflict; taking over a dead
//! instance's entry is a JSON patch that tests the value and removes it in one step, so of two
//! live replicas exactly one reports the job.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tracing::warn;

use super::{Entry, JournalError, Stored};

/// The journal Secret of one runner (`[[runners]]` entry), seen by one instance.
#[derive(Clone, Debug)]
pub struct SecretJournal {
    secrets: Api<Secret>,
    name: String,
    namespace: String,
    /// The runner's name as a label value: the prefix of its keys.
    runner: String,
}

impl SecretJournal {
    /// Opens `namespace/name`, checking it can be read now rather than at the first crash.
    ///
    /// # Errors
    /// The Secret cannot be read (missing, or no `get` on it).
    pub async fn open(
        client: Client,
        namespace: &str,
        name: &str,
        runner: &str,
    ) -> Result<Self, JournalError> {
        let journal = Self {
            secrets: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            runner: runner.to_owned(),
        };
        journal
            .secrets
            .get(name)
            .await
            .map_err(|e| journal.error(e))?;
        Ok(journal)
    }

    fn error(&self, source: kube::Error) -> JournalError {
        JournalError::Kube {
            secret: format!("{}/{}", self.namespace, self.name),
            source: Box::new(source),
        }
    }

    fn key(&self, job_id: u64) -> String {
        key_of(&self.runner, job_id)
    }

    /// Writes (or replaces) a job's key.
    ///
    /// # Errors
    /// The apiserver refused the patch.
    pub async fn record(&self, entry: &Entry) -> Result<(), JournalError> {
        let value = ByteString(entry.to_json().as_bytes().to_vec());
        let patch = json!({"data": {self.key(entry.job_id): value}});
        self.secrets
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Removes a job's key; a failure is logged (the entry is reported once more later, which
    /// GitLab refuses for a finished job).
    pub async fn remove(&self, job_id: u64) {
        let patch = json!({"data": {self.key(job_id): null}});
        if let Err(e) = self
            .secrets
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(job = job_id, error = %self.error(e), "removing the job's journal entry failed");
        }
    }

    /// Takes this runner's entries whose instance `pick` chooses out of the journal, each in
    /// one test-and-remove step, so no other replica reports the same job; unreadable ones
    /// are removed and named. An entry whose report then fails goes back with
    /// [`record`](Self::record).
    pub async fn entries_of(&self, pick: impl Fn(&str) -> bool) -> (Vec<Entry>, Vec<String>) {
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        let secret = match self.secrets.get(&self.name).await {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("reading the journal: {}", self.error(e)));
                return (entries, problems);
            }
        };
        for (key, value) in secret.data.unwrap_or_default() {
            if !is_key_of(&self.runner, &key) {
                continue;
            }
            let parsed = serde_json::from_slice::<Stored>(&value.0);
            match parsed {
                Ok(stored) if !pick(&stored.instance) => {}
                Ok(stored) => {
                    if self.take(&key, &value).await {
                        entries.push(stored.into());
                    }
                }
                Err(_) => {
                    problems.push(format!(
                        "journal Secret {}/{} key {key} is not a journal entry; removed",
                        self.namespace, self.name
                    ));
                    self.take(&key, &value).await;
                }
            }
        }
        entries.sort_by_key(|e| e.job_id);
        (entries, problems)
    }

    /// Removes `key` if it still holds `value`; false when another replica was first (or the
    /// apiserver refused).
    async fn take(&self, key: &str, value: &ByteString) -> bool {
        let patch: json_patch::Patch = match serde_json::from_value(json!([
            {"op": "test", "path": format!("/data/{key}"), "value": value},
            {"op": "remove", "path": format!("/data/{key}")},
        ])) {
            Ok(p) => p,
            Err(_) => return false,
        };
        self.secrets
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
            .is_ok()
    }
}

/// A job's key in the journal Secret.
fn key_of(runner: &str, job_id: u64) -> String {
    format!("{runner}.{job_id}")
}

/// Whether `key` is one of `runner`'s (its label may itself hold dots).
fn is_key_of(runner: &str, key: &str) -> bool {
    key.rsplit_once('.')
        .is_some_and(|(label, id)| label == runner && id.parse::<u64>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_belong_to_exactly_one_runner_even_with_dots_in_its_label() {
        assert_eq!(key_of("a", 7), "a.7");
        assert!(is_key_of("a", "a.7"));
        assert!(!is_key_of("a", "a.b.7"));
        assert!(is_key_of("a.b", "a.b.7"));
        assert!(!is_key_of("a.b", "a.7"));
        assert!(!is_key_of("a", "a.x"));
        assert!(!is_key_of("a", "a"));
    }
}
