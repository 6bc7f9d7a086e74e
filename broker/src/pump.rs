//! The job log's only way out: the build script writes to a FIFO, the broker masks what it
//! reads and writes it to its own stdout, which the kubelet keeps as the container log.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::mask::StreamMasker;

/// How long output may sit unflushed when the job is quiet (a prompt without a newline).
const IDLE_FLUSH: Duration = Duration::from_millis(200);

/// Creates the FIFO the build container writes its output to.
pub fn create_fifo(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o620))
        .map_err(io::Error::from)
}

/// Masks everything written to the FIFO into `out` until `shutdown` turns true, then drains
/// what is left and flushes the masker.
pub async fn pump(
    fifo: &Path,
    mut masker: StreamMasker,
    out: &mut (impl AsyncWrite + Unpin),
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    // Opened read-write, the FIFO never reports EOF between writers, and opening never blocks.
    let mut rx = pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(fifo)?;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 64 * 1024]);
    let mut masked = Vec::with_capacity(64 * 1024);
    loop {
        tokio::select! {
            read = rx.read(&mut buf[..]) => {
                let n = read?;
                masker.push(&buf[..n], &mut masked);
            }
            _ = tokio::time::sleep(IDLE_FLUSH), if masker.held() > 0 => masker.flush(&mut masked),
            _ = shutdown.changed() => break,
        }
        if !masked.is_empty() {
            out.write_all(&masked).await?;
            out.flush().await?;
            masked.clear();
        }
    }
    // Drain whatever the job wrote before it exited.
    loop {
        match rx.try_read(&mut buf[..]) {
            Ok(0) => break,
            Ok(n) => masker.push(&buf[..n], &mut masked),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    masker.finish(&mut masked);
    out.write_all(&masked).await?;
    out.flush().await
}
