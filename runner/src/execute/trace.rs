//! The job's trace as the runner writes it: its own lines (with their level) and the job's log,
//! in the order they happened. A leaf: the pod's run, its log follower and its event reader all
//! write through [`TraceWriter`].

use tokio::sync::mpsc;

/// How much a runner line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// One piece of a job's trace, in the order it happened: a line of the runner's own, or the
/// job's log. GitLab gets both in one trace; `exec` puts the log on stdout and the runner's
/// lines on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceChunk {
    /// What the runner says: what it does, the pod's progress, warnings, errors. One line.
    Runner { level: Level, line: String },
    /// The job's log as the broker relays it (masked), byte for byte.
    Log(Vec<u8>),
}

impl TraceChunk {
    /// The chunk as a trace holds it: a runner line with its `WARNING: `/`ERROR: ` prefix and a
    /// newline, in GitLab's colours if `colour`; the log as it came.
    pub fn into_bytes(self, colour: bool) -> Vec<u8> {
        let (level, line) = match self {
            TraceChunk::Log(bytes) => return bytes,
            TraceChunk::Runner { level, line } => (level, line),
        };
        let (code, prefix) = match level {
            Level::Info => ("\x1b[36;1m", ""),
            Level::Warning => ("\x1b[0;33m", "WARNING: "),
            Level::Error => ("\x1b[31;1m", "ERROR: "),
        };
        if colour {
            format!("{code}{prefix}{line}\x1b[0;m\n").into_bytes()
        } else {
            format!("{prefix}{line}\n").into_bytes()
        }
    }
}

/// Writes into the trace: the runner's lines and the job's log.
#[derive(Debug, Clone)]
pub struct TraceWriter(pub mpsc::Sender<TraceChunk>);

impl TraceWriter {
    async fn line(&self, level: Level, line: &str) {
        let line = line.to_string();
        let _ = self.0.send(TraceChunk::Runner { level, line }).await;
    }
    pub async fn info(&self, line: &str) {
        self.line(Level::Info, line).await;
    }
    pub async fn warn(&self, line: &str) {
        self.line(Level::Warning, line).await;
    }
    pub async fn error(&self, line: &str) {
        self.line(Level::Error, line).await;
    }
    /// Bytes of the job's log.
    pub async fn log(&self, bytes: Vec<u8>) {
        let _ = self.0.send(TraceChunk::Log(bytes)).await;
    }
}
