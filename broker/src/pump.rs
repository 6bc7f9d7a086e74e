//! The job log's only way out: the build script writes to a FIFO, the broker masks what it
//! reads and writes it to its own stdout, which the kubelet keeps as the container log.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::log_budget::{LogBudget, LogLimits, limit_notice};
use crate::mask::StreamMasker;

/// How long output may sit unflushed when the job is quiet (a prompt without a newline).
const IDLE_FLUSH: Duration = Duration::from_millis(200);

/// Creates the FIFO `path` with exactly `mode` (an old one there is replaced): the log pipe
/// is written by the job's containers (`0620`), the gate read by the script (`0640`), the
/// alive and done pipes opened read-write (`0660`); the group is the pod's `fsGroup`, which
/// every container of the pod has.
pub fn create_fifo(path: &Path, mode: u32) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(mode))
        .map_err(io::Error::from)?;
    // mkfifo applies the umask (022 takes the group's write bit away); the build container
    // reaches these pipes through the pod's fsGroup when it runs as another uid
    // (`kubernetes: user`), so the mode must be exactly what was asked.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Whether the job's script runs, as [`keyhole_contract::ALIVE_FIFO`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptLife {
    /// Not past its gate yet (or not started at all).
    NotYet,
    /// Past its gate: the job's commands run.
    Running,
    /// Every process of the build container is gone.
    Gone,
}

/// Follows the script's life through the alive FIFO: [`ScriptLife::Running`] at its byte,
/// [`ScriptLife::Gone`] when every process holding it has exited.
///
/// Waits on the FIFO's readiness alone, no polling: Linux reports the end (hang-up) of a FIFO
/// opened for reading before any writer only once a writer has come and gone, so a read
/// waits until the script opens it, and returns 0 only when every holder is gone, the
/// script's byte read or not (a holder that never wrote is gone all the same).
pub async fn follow_script_life(fifo: &Path, life: watch::Sender<ScriptLife>) -> io::Result<()> {
    let mut rx = pipe::OpenOptions::new().open_receiver(fifo)?;
    let mut buf = [0u8; 64];
    while rx.read(&mut buf).await? > 0 {
        life.send_replace(ScriptLife::Running);
    }
    life.send_replace(ScriptLife::Gone);
    Ok(())
}

/// Returns once the job's script wrote to its `done` FIFO ([`keyhole_contract::DONE_FIFO`]),
/// with the exit status it wrote ([`keyhole_contract::parse_done`]). One read: the script's
/// one small write arrives whole (a pipe write of up to `PIPE_BUF` bytes is atomic).
pub async fn wait_for_done(fifo: &Path) -> io::Result<Option<u8>> {
    // Read-write, like the log FIFO: no EOF, no blocking open.
    let mut rx = pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(fifo)?;
    let mut written = [0u8; 8];
    let n = rx.read(&mut written).await?;
    Ok(keyhole_contract::parse_done(&written[..n]))
}

/// Masks everything written to the FIFO into `out`, within `limits`, until `shutdown` turns
/// true, then drains what is left and flushes the masker.
pub async fn pump(
    fifo: &Path,
    mut masker: StreamMasker,
    limits: LogLimits,
    out: &mut (impl AsyncWrite + Unpin),
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    // Opened read-write, the FIFO never reports EOF between writers, and opening never blocks.
    let mut rx = pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(fifo)?;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 64 * 1024]);
    let mut masked = Vec::with_capacity(64 * 1024);
    let mut budget = LogBudget::new(limits, now());
    loop {
        tokio::select! {
            read = rx.read(&mut buf[..]) => {
                let n = read?;
                // Past the size limit the output is read (so the job never blocks) and dropped.
                if !budget.over_limit() {
                    masker.push(&buf[..n], &mut masked);
                }
            }
            _ = tokio::time::sleep(IDLE_FLUSH), if masker.held() > 0 => masker.flush(&mut masked),
            _ = shutdown.changed() => break,
        }
        if !masked.is_empty() {
            let wait = emit(&mut masked, &mut budget, out).await?;
            if !wait.is_zero() {
                // The job's writes block on the full pipe meanwhile.
                tokio::time::sleep(wait).await;
            }
        }
    }
    // Drain whatever the job wrote before it exited (at most a pipe's worth: unpaced).
    loop {
        match rx.try_read(&mut buf[..]) {
            Ok(0) => break,
            Ok(n) if !budget.over_limit() => masker.push(&buf[..n], &mut masked),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    masker.finish(&mut masked);
    emit(&mut masked, &mut budget, out).await?;
    Ok(())
}

/// Writes the part of `masked` the budget admits (and the limit notice once), empties it and
/// returns how long to wait before the next write.
async fn emit(
    masked: &mut Vec<u8>,
    budget: &mut LogBudget,
    out: &mut (impl AsyncWrite + Unpin),
) -> io::Result<Duration> {
    let admitted = budget.admit(masked.len());
    out.write_all(&masked[..admitted.keep]).await?;
    if admitted.limit_reached
        && let Some(max) = budget.max_bytes()
    {
        out.write_all(limit_notice(max).as_bytes()).await?;
    }
    out.flush().await?;
    masked.clear();
    Ok(budget.spend(admitted.keep, now()))
}

/// Tokio's clock, so that tests can pause it.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_budget::Pace;
    use crate::mask::MaskSet;
    use std::io::Write as _;
    use std::sync::Arc;

    fn fifo_in_temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("keyhole-pump-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("log");
        create_fifo(&fifo, 0o620).unwrap();
        fifo
    }

    /// Writes `bytes` into the FIFO from a plain thread (a job), then signals the end.
    async fn pump_job_output(name: &str, bytes: Vec<u8>, limits: LogLimits) -> (Vec<u8>, Duration) {
        let fifo = fifo_in_temp_dir(name);
        let (stop_tx, stop_rx) = watch::channel(false);
        let masker = StreamMasker::new(Arc::new(MaskSet::new(Vec::new())));
        let started = tokio::time::Instant::now();
        let writer_path = fifo.clone();
        // A plain thread, not spawn_blocking: that would stop the paused clock's auto-advance.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(writer_path)
                .unwrap();
            f.write_all(&bytes).unwrap();
            let _ = done_tx.send(());
        });
        let job = async {
            done_rx.await.unwrap();
            stop_tx.send(true).unwrap();
        };
        let mut out = Vec::new();
        let (pumped, ()) = tokio::join!(pump(&fifo, masker, limits, &mut out, stop_rx), job);
        pumped.unwrap();
        let _ = std::fs::remove_dir_all(fifo.parent().unwrap());
        (out, started.elapsed())
    }

    /// The script's last act, as the generated script does it (`printf '%s\n' "$rc" >&3`
    /// with `3<>done`), reaches the broker whole; an older script's `.` carries no status.
    #[tokio::test]
    async fn the_done_fifo_gives_the_scripts_exit_status() {
        for (name, written, status) in [
            ("done-rc", &b"42\n"[..], Some(42)),
            ("done-dot", b".", None),
        ] {
            let fifo = fifo_in_temp_dir(name);
            let waiting = tokio::spawn({
                let fifo = fifo.clone();
                async move { wait_for_done(&fifo).await }
            });
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
                .unwrap();
            f.write_all(written).unwrap();
            assert_eq!(waiting.await.unwrap().unwrap(), status, "{name}");
            let _ = std::fs::remove_dir_all(fifo.parent().unwrap());
        }
    }

    /// A follower of a fresh alive FIFO named `name`, checked to wait while nobody opened it
    /// (no end of file before a first holder).
    async fn follow_fresh_alive_fifo(
        name: &str,
    ) -> (
        std::path::PathBuf,
        watch::Receiver<ScriptLife>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let fifo = fifo_in_temp_dir(name);
        let (tx, rx) = watch::channel(ScriptLife::NotYet);
        let following = tokio::spawn({
            let fifo = fifo.clone();
            async move { follow_script_life(&fifo, tx).await }
        });
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(*rx.borrow(), ScriptLife::NotYet, "nobody opened it yet");
        (fifo, rx, following)
    }

    /// Waits (10 s at most) until the follower says `life`.
    async fn until_life(rx: &mut watch::Receiver<ScriptLife>, life: ScriptLife) {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| *l == life))
            .await
            .unwrap_or_else(|_| panic!("the follower never said {life:?}"))
            .unwrap();
    }

    /// The script opens the alive FIFO read-write and writes a byte; its end (every holder
    /// exited) is the end of file, also when no one ever wrote `done`.
    #[tokio::test]
    async fn the_alive_fifo_tells_when_the_script_runs_and_when_it_is_gone() {
        let (fifo, mut rx, following) = follow_fresh_alive_fifo("alive").await;
        let mut script = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        script.write_all(b"1").unwrap();
        until_life(&mut rx, ScriptLife::Running).await;
        drop(script);
        until_life(&mut rx, ScriptLife::Gone).await;
        following.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(fifo.parent().unwrap());
    }

    /// A holder that leaves without writing (a script killed right after opening it) is gone
    /// as well: the follower says so at once instead of waiting on a FIFO no one holds.
    #[tokio::test]
    async fn a_holder_of_the_alive_fifo_that_left_without_a_byte_is_gone() {
        let (fifo, mut rx, following) = follow_fresh_alive_fifo("alive-silent").await;
        drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
        until_life(&mut rx, ScriptLife::Gone).await;
        following.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(fifo.parent().unwrap());
    }

    #[tokio::test]
    async fn output_past_the_limit_is_dropped_after_one_notice() {
        let output: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let limits = LogLimits {
            max_bytes: Some(100_000),
            pace: None,
        };
        let (out, _) = pump_job_output("limit", output.clone(), limits).await;
        let notice = limit_notice(100_000);
        assert_eq!(out.len(), 100_000 + notice.len());
        assert_eq!(&out[..100_000], &output[..100_000]);
        assert_eq!(&out[100_000..], notice.as_bytes());
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_burst_the_output_goes_at_the_pace() {
        // 1 MiB at 256 KiB/s after a 256 KiB burst: at least 3 s of (paused, virtual) time.
        let output = vec![b'x'; 1024 * 1024];
        let limits = LogLimits {
            max_bytes: None,
            pace: Some(Pace {
                bytes_per_second: 256 * 1024,
                burst: 256 * 1024,
            }),
        };
        let (out, elapsed) = pump_job_output("pace", output.clone(), limits).await;
        assert_eq!(out, output, "pacing loses nothing");
        assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    }
}
