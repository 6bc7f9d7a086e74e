//! A child process's output, collected while it runs: the bytes so far can be read at any time
//! (to wait for a line), and the collecting task ends at the end of the output.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::task::JoinHandle;

/// The bytes collected so far.
pub type Collected = Arc<Mutex<Vec<u8>>>;

/// Collects `from` into a buffer by a task of its own, which ends at the end of the output.
pub fn collect_output(
    mut from: impl AsyncRead + Unpin + Send + 'static,
) -> (Collected, JoinHandle<()>) {
    let buffer = Collected::default();
    let into = buffer.clone();
    let task = tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = from.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&chunk[..n]);
        }
    });
    (buffer, task)
}

/// The bytes collected so far, as text (invalid UTF-8 replaced).
pub fn collected_text(buffer: &Collected) -> String {
    String::from_utf8_lossy(&buffer.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
}
