//! Following the job log (the broker's container log, masked) into the trace, through broken
//! streams: an apiserver restart or a cut connection ends a `follow` stream in the middle of a
//! job. The follower then opens the log again, checks that its start is what it has already
//! passed on (same length, same CRC-32) and goes on from there, so no byte is lost or doubled.
//! Should the log have been rotated in between (the kubelet serves only the current file), the
//! start differs: the trace says lines may be missing and the follower goes on.

use std::time::{Duration, Instant};

use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use keyhole_contract as contract;
use kube::Api;
use kube::api::LogParams;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::oneshot;

use super::log_end::LogEnd;
use super::trace::TraceWriter;

/// How long the follower keeps trying to open the log again without getting a new byte.
const NO_PROGRESS_LIMIT: Duration = Duration::from_secs(120);
/// Pause between attempts to open the log again.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);

/// What has been read of the log so far: its length and CRC-32.
#[derive(Debug, Default, Clone)]
pub(super) struct Position {
    taken: u64,
    crc: crc32fast::Hasher,
}

impl Position {
    fn advance(&mut self, bytes: &[u8]) {
        self.taken += bytes.len() as u64;
        self.crc.update(bytes);
    }
}

/// How one stream of the log ended.
enum StreamEnd {
    /// The end-of-log markers came: the trace is complete.
    Complete,
    /// The stream ended or broke before them; `progressed`: it brought new bytes.
    Cut { progressed: bool, why: String },
}

/// The job's output as it reaches the trace: the end markers cut off, the size limit applied.
struct Sink {
    trace: TraceWriter,
    end: LogEnd,
    limit: u64,
    sent: u64,
}

impl Sink {
    /// Passes `bytes` on; true once the end markers came.
    async fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut chunk = Vec::new();
        let complete = self.end.feed(bytes, &mut chunk);
        self.send(chunk).await;
        complete
    }

    async fn finish(&mut self) {
        let mut chunk = Vec::new();
        self.end.finish(&mut chunk);
        self.send(chunk).await;
    }

    async fn send(&mut self, mut chunk: Vec<u8>) {
        if self.sent >= self.limit || chunk.is_empty() {
            return;
        }
        let room = (self.limit - self.sent) as usize;
        self.sent += chunk.len() as u64;
        if chunk.len() > room {
            chunk.truncate(room);
            self.trace.log(chunk).await;
            self.trace
                .warn(&format!(
                    "Job's log exceeded limit of {} KiB; the rest is not shown.",
                    self.limit / 1024
                ))
                .await;
        } else {
            self.trace.log(chunk).await;
        }
    }
}

/// Follows the broker's log into the trace until the broker's log-end markers for
/// `log_end_token` came through, opening it again after a broken stream. Returns whether the
/// markers came: they follow the whole job output, so without them the trace may lack the
/// job's last lines. Once they came, sends the script's exit status on `script_status` if the
/// broker gave it.
pub(super) async fn follow_log(
    pods: Api<Pod>,
    name: String,
    trace: TraceWriter,
    limit: u64,
    log_end_token: SecretString,
    script_status: Option<oneshot::Sender<u8>>,
) -> bool {
    let mut sink = Sink {
        trace: trace.clone(),
        end: LogEnd::new(log_end_token.expose_secret()),
        limit,
        sent: 0,
    };
    drop(log_end_token);
    let mut position = Position::default();
    let mut last_progress = Instant::now();
    let mut warned = false;
    loop {
        let why = match follow_once(&pods, &name, &mut position, &mut sink).await {
            StreamEnd::Complete => {
                if let (Some(tx), Some(status)) = (script_status, sink.end.script_status()) {
                    let _ = tx.send(status);
                }
                return true;
            }
            StreamEnd::Cut { progressed, why } => {
                if progressed {
                    last_progress = Instant::now();
                }
                why
            }
        };
        if last_progress.elapsed() > NO_PROGRESS_LIMIT || pod_gone(&pods, &name).await {
            sink.finish().await;
            if !warned {
                trace
                    .warn(&format!("the job log stream ended: {why}"))
                    .await;
            }
            return false;
        }
        if !warned {
            trace
                .warn(&format!(
                    "the job log stream broke ({why}); following it again from where it was"
                ))
                .await;
            warned = true;
        }
        tokio::time::sleep(REOPEN_PAUSE).await;
    }
}

/// Whether the pod is gone, and its log with it. Asked of the apiserver, not read from the
/// log request's error: a kubelet that has just restarted answers "not found" for a pod it has
/// not yet taken up again. An apiserver that does not answer: not known to be gone.
async fn pod_gone(pods: &Api<Pod>, name: &str) -> bool {
    matches!(pods.get_opt(name).await, Ok(None))
}

/// One `follow` stream: the part already passed on skipped (and checked), the rest fed on.
async fn follow_once(
    pods: &Api<Pod>,
    name: &str,
    position: &mut Position,
    sink: &mut Sink,
) -> StreamEnd {
    let params = LogParams {
        container: Some(contract::BROKER_CONTAINER.into()),
        follow: true,
        ..LogParams::default()
    };
    let mut stream = match pods.log_stream(name, &params).await {
        Ok(s) => s,
        Err(e) => {
            return StreamEnd::Cut {
                progressed: false,
                why: e.to_string(),
            };
        }
    };
    let mut skip = Skip::new(position);
    let mut progressed = false;
    loop {
        let buf = match stream.fill_buf().await {
            Ok([]) => {
                return StreamEnd::Cut {
                    progressed,
                    why: "the stream ended before the broker's end-of-log markers".into(),
                };
            }
            Ok(buf) => buf.to_vec(),
            Err(e) => {
                return StreamEnd::Cut {
                    progressed,
                    why: e.to_string(),
                };
            }
        };
        stream.consume_unpin(buf.len());
        let (fresh, verdict) = skip.take(&buf);
        if verdict == Some(false) {
            sink.trace
                .warn("the job log was rotated while its stream was broken: some of its lines may be missing from the trace")
                .await;
        }
        if fresh.is_empty() {
            continue;
        }
        position.advance(fresh);
        progressed = true;
        if sink.feed(fresh).await {
            return StreamEnd::Complete;
        }
    }
}

/// Skips, in a new stream, the bytes an earlier one already passed on, checking they are
/// the same (pure).
struct Skip {
    left: u64,
    expected: u32,
    crc: crc32fast::Hasher,
    decided: bool,
}

impl Skip {
    fn new(position: &Position) -> Self {
        Self {
            left: position.taken,
            expected: position.crc.clone().finalize(),
            crc: crc32fast::Hasher::new(),
            decided: position.taken == 0,
        }
    }

    /// The part of `buf` past what was already passed on, and, once the skipped part is
    /// complete, whether it matched (`Some(true)`), only in the call that completes it.
    fn take<'b>(&mut self, buf: &'b [u8]) -> (&'b [u8], Option<bool>) {
        if self.decided {
            return (buf, None);
        }
        let n = usize::try_from(self.left).map_or(buf.len(), |left| left.min(buf.len()));
        self.crc.update(&buf[..n]);
        self.left -= n as u64;
        if self.left > 0 {
            return (&[], None);
        }
        self.decided = true;
        let matched = self.crc.clone().finalize() == self.expected;
        (&buf[n..], Some(matched))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(bytes: &[u8]) -> Position {
        let mut p = Position::default();
        p.advance(bytes);
        p
    }

    #[test]
    fn a_new_stream_goes_on_exactly_after_what_was_passed_on() {
        let seen = position(b"line 1\nline 2\nli");
        let mut skip = Skip::new(&seen);
        // The replay arrives in other chunks than the first time.
        assert_eq!(skip.take(b"line 1\nli"), (&b""[..], None));
        assert_eq!(skip.take(b"ne 2\nline 3\n"), (&b"ne 3\n"[..], Some(true)));
        assert_eq!(skip.take(b"line 4\n"), (&b"line 4\n"[..], None));
    }

    #[test]
    fn a_rotated_log_is_told_apart_and_followed_on() {
        let seen = position(b"line 1\nline 2\n");
        let mut skip = Skip::new(&seen);
        // The current file holds later lines: as many bytes as were passed on are skipped.
        let (fresh, matched) = skip.take(b"line 8\nline 9\nline 10\n");
        assert_eq!(matched, Some(false));
        assert_eq!(fresh, b"line 10\n");
    }

    #[test]
    fn the_first_stream_skips_nothing() {
        let mut skip = Skip::new(&Position::default());
        assert_eq!(skip.take(b"abc"), (&b"abc"[..], None));
    }
}
