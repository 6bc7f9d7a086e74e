//! The one way tests wait for what the cluster, Vault or a process does in its own time.

use std::time::Duration;

/// Calls `probe` every `every` until it returns `Some`, for at most `within`: that value, or
/// `None` once `within` has passed (a probe still running then is dropped). `within` is a
/// deadline against hangs, not a speed assertion; the caller says what a `None` means, usually
/// with `.expect("what did not happen within ...")`.
pub async fn eventually<T>(
    within: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    tokio::time::timeout(within, async {
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            tokio::time::sleep(every).await;
        }
    })
    .await
    .ok()
}
