use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::VaultError;

/// Exponential backoff for transient Vault errors, bounded by a total deadline.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails for good, or the deadline passes (then the last
    /// transient error is returned).
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, VaultError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, VaultError>>,
    {
        let give_up = Instant::now() + self.deadline;
        let mut delay = self.first_delay;
        loop {
            match op().await {
                Err(e) if e.is_transient() && Instant::now() + delay < give_up => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.max_delay);
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn unreachable() -> VaultError {
        VaultError::Unreachable {
            addr: "http://127.0.0.1:1".into(),
            reason: "refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy::default();
        let out = policy
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(unreachable())
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(out, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_final_errors() {
        let calls = AtomicU32::new(0);
        let err = RetryPolicy::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(VaultError::NotFound {
                    path: "kv/x".into(),
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(err, VaultError::NotFound { .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            deadline: Duration::from_secs(5),
        };
        let start = Instant::now();
        let err = policy
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(unreachable())
            })
            .await
            .unwrap_err();
        assert!(err.is_transient());
        assert!(Instant::now() - start <= Duration::from_secs(5));
        assert!(calls.load(Ordering::SeqCst) > 3);
    }
}
