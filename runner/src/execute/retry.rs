//! Retrying Kubernetes API calls that failed for a passing reason (an apiserver restarting, a
//! dropped connection, 429/5xx), as gitlab-runner's `retry_limit` and `retry_backoff_max` do,
//! so one blip does not fail a job as a system failure. A refusal (403, 422: the admission
//! policy, RBAC, a bad object) is final at once: retrying cannot change the answer.

use std::future::Future;
use std::time::Duration;

/// The first wait between attempts; each next one doubles, up to [`ApiRetry::backoff_max`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRetry {
    /// Retries after the first attempt (gitlab-runner's `retry_limit`).
    pub limit: u32,
    /// The longest wait between attempts (gitlab-runner's `retry_backoff_max`).
    pub backoff_max: Duration,
}

impl Default for ApiRetry {
    /// gitlab-runner's defaults: 5 retries, at most 2 s apart.
    fn default() -> Self {
        Self {
            limit: 5,
            backoff_max: Duration::from_millis(2000),
        }
    }
}

impl ApiRetry {
    /// The runner's `retry_limit` and `retry_backoff_max`.
    pub fn from_config(k: &crate::config::KubernetesConfig) -> Self {
        Self {
            limit: k.retry_limit,
            backoff_max: Duration::from_millis(k.retry_backoff_max),
        }
    }

    /// The wait before retry number `retry` (0-based): 0.5 s, 1 s, 2 s … capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        FIRST_BACKOFF
            .saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX))
            .min(self.backoff_max)
    }
}

/// True for errors a later attempt may not meet: no answer at all (connection refused or
/// reset, a timeout) or an answer that says "later" (429, 500, 502, 503, 504).
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Runs `call` until it succeeds, fails for good, or the retries are spent. `on_retry` hears
/// of each retry (the job's trace says why it waits) with the error and the wait.
pub async fn with_retry<T, F, Fut, R, RFut>(
    policy: ApiRetry,
    mut call: F,
    mut on_retry: R,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
    R: FnMut(&kube::Error, Duration) -> RFut,
    RFut: Future<Output = ()>,
{
    let mut retry = 0;
    loop {
        match call().await {
            Err(e) if retry < policy.limit && is_transient(&e) => {
                let wait = policy.backoff(retry);
                on_retry(&e, wait).await;
                tokio::time::sleep(wait).await;
                retry += 1;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: format!("status {code}"),
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn only_passing_failures_are_retried() {
        for code in [429, 500, 502, 503, 504] {
            assert!(is_transient(&api_error(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert!(!is_transient(&api_error(code)), "{code}");
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_the_cap() {
        let policy = ApiRetry::default();
        let waits: Vec<u128> = (0..5).map(|r| policy.backoff(r).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 2000, 2000]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_millis(2000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_failure_is_retried_until_it_passes_and_a_refusal_is_not() {
        let calls = AtomicU32::new(0);
        let retries = AtomicU32::new(0);
        let answer = with_retry(
            ApiRetry::default(),
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(api_error(503)),
                    _ => Ok("created"),
                }
            },
            |_, _| async {
                retries.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
        assert_eq!(answer.unwrap(), "created");
        assert_eq!(retries.load(Ordering::SeqCst), 2);

        let calls = AtomicU32::new(0);
        let refused: Result<(), _> = with_retry(
            ApiRetry::default(),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(api_error(403))
            },
            |_, _| async {},
        )
        .await;
        assert!(refused.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_retries_end_at_the_limit_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let policy = ApiRetry {
            limit: 2,
            backoff_max: Duration::from_secs(1),
        };
        let answer: Result<(), _> = with_retry(
            policy,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(api_error(500))
            },
            |_, _| async {},
        )
        .await;
        assert!(matches!(answer, Err(kube::Error::Api(s)) if s.code == 500));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
