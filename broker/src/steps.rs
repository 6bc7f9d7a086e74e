//! The job's preparation steps (the checkout, the artifacts' download): regular containers
//! that the kubelet starts right after the broker, with the build container, in one sync.
//! Each says it succeeded by a marker file ([`keyhole_contract::step_done_marker`]); the
//! broker opens the script's gate only once all of them did, and a step that must come after
//! another (the download after the checkout) waits for the other's marker first.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

/// How often the markers are looked for: a `stat` each on a memory-backed volume, well below
/// what a person notices.
const POLL: Duration = Duration::from_millis(10);

/// Waits until every step in `steps` has left its marker in `runtime_dir`. False when `stop`
/// turned true first (the job ended: a failed step never leaves its marker, and the runner
/// ends such a job from the step container's exit).
pub async fn wait_for_steps(
    runtime_dir: &Path,
    steps: &[String],
    stop: &watch::Receiver<bool>,
) -> bool {
    let markers: Vec<_> = steps
        .iter()
        .map(|s| runtime_dir.join(keyhole_contract::step_done_marker(s)))
        .collect();
    loop {
        if markers.iter().all(|m| m.exists()) {
            return true;
        }
        if *stop.borrow() {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Leaves `step`'s marker in `runtime_dir`: it succeeded.
pub fn mark_done(runtime_dir: &Path, step: &str) -> std::io::Result<()> {
    std::fs::write(
        runtime_dir.join(keyhole_contract::step_done_marker(step)),
        b"",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kh-steps-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn waits_for_every_step_and_no_longer() {
        let dir = temp_dir("every");
        let steps = vec!["keyhole-checkout".to_owned(), "keyhole-fetch".to_owned()];
        let (_tx, rx) = watch::channel(false);
        let waiting = tokio::spawn({
            let (dir, steps, rx) = (dir.clone(), steps.clone(), rx.clone());
            async move { wait_for_steps(&dir, &steps, &rx).await }
        });
        mark_done(&dir, "keyhole-checkout").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "one step of two is not all of them");
        mark_done(&dir, "keyhole-fetch").unwrap();
        assert!(waiting.await.unwrap());
        assert!(
            wait_for_steps(&dir, &[], &rx).await,
            "no steps: nothing to wait for"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_step_that_never_succeeds_is_waited_for_until_the_job_ends() {
        let dir = temp_dir("never");
        let (tx, rx) = watch::channel(false);
        let waiting = tokio::spawn({
            let dir = dir.clone();
            async move { wait_for_steps(&dir, &["keyhole-checkout".to_owned()], &rx).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        tx.send(true).unwrap();
        assert!(!waiting.await.unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
