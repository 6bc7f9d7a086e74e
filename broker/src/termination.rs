//! SIGTERM and SIGINT, from the broker's first instruction to its last.
//!
//! The broker is PID 1 of its container, and the kernel drops signals to a PID 1 that has no
//! handler for them. Until the handler is in place, a pod deleted (cancel, timeout,
//! `poll_timeout`) would leave the broker logging in, issuing dynamic credentials and renewing
//! them until the kubelet's SIGKILL at the end of the grace period, with nothing revoked. So the
//! handlers are installed before anything else, and every phase of the run watches the one
//! receiver this returns.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Installs the handlers now (not when a task first runs) and returns a receiver that turns
/// true at the first SIGTERM or SIGINT. Must be called inside the runtime.
pub fn listen() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let _ = tx.send(true);
                // Later signals stay handled (and ignored): the first one has started the end.
                loop {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
            });
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!(
                "keyhole-broker: warning: cannot handle SIGTERM/SIGINT ({e}); the job's end is then known only from its done pipe"
            );
            // Keep the sender alive: a dropped sender would read as a signal.
            tokio::spawn(async move {
                let _keep = tx;
                std::future::pending::<()>().await;
            });
        }
    }
    rx
}

/// Resolves once a signal has come (at once if one came already).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stopped| *stopped).await.is_err() {
        // The sender never goes away (see `listen`); should it, never stop on that account.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_before_anything_else_is_seen_later() {
        let mut rx = listen();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), stopped(&mut rx))
            .await
            .expect("SIGTERM raised right after listen() was not seen");
        assert!(*rx.borrow());
    }
}
