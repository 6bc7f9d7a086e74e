//! The job log on its way to GitLab: an append-only byte stream sent as incremental
//! `PATCH jobs/:id/trace` requests.
//!
//! [`TraceBuffer`] is the pure part: it holds the bytes GitLab has not acknowledged yet and
//! knows at which remote offset they start. A byte leaves the buffer only when GitLab
//! acknowledged it (202) or said it already has it (416 with `Range: 0-<size>`), so a lost
//! response, a 5xx or a timeout never loses or duplicates a byte: the same chunk is sent
//! again, and GitLab's 416 tells how much of it had landed.
//!
//! The handle the executor appends to, [`super::TraceSender`], and the sending itself are the
//! job session's (`session.rs`); this module knows nothing of HTTP.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use super::protocol::DEFAULT_UPDATE_INTERVAL;

/// How the trace is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceConfig {
    /// Largest PATCH body; GitLab accepts up to 1 MiB per request.
    pub max_patch: usize,
    /// Most unacknowledged bytes held in memory. When the buffer is full, `append` waits
    /// until GitLab acknowledges bytes (backpressure): the executor then stops reading the
    /// pod's log for a while, and Kubernetes keeps it meanwhile. Memory is thus bounded by
    /// `buffer_limit` plus one chunk copy (`max_patch`) per job.
    pub buffer_limit: usize,
    /// Interval between sends until GitLab sets one (`X-GitLab-Trace-Update-Interval`). A
    /// full chunk is sent at once, without waiting for the interval.
    pub update_interval: Duration,
    /// A keep-alive `PUT state=running` is sent when nothing reached GitLab for this long,
    /// so that GitLab does not take a quiet job for a stuck one.
    pub keep_alive_interval: Duration,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            max_patch: 1024 * 1024,
            buffer_limit: 8 * 1024 * 1024,
            update_interval: DEFAULT_UPDATE_INTERVAL,
            keep_alive_interval: Duration::from_secs(30),
        }
    }
}

/// One PATCH body and where it starts in GitLab's copy of the trace.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    pub start: u64,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("start", &self.start)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// What a 416 (`Range: 0-<size>`) did to the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// GitLab has exactly what was acknowledged: send the same chunk again.
    InSync,
    /// GitLab had already stored this many of the pending bytes (a response was lost);
    /// they are dropped, not sent twice.
    Skipped(u64),
    /// GitLab claims more bytes than were ever sent; everything pending was dropped and
    /// sending goes on at GitLab's size.
    GitlabAhead(u64),
    /// GitLab lost this many bytes it had acknowledged; they are no longer held, so the
    /// trace goes on at GitLab's size (with a gap).
    GitlabLost(u64),
}

/// What the final update says of the whole trace, so GitLab can tell it got every byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceOutput {
    pub checksum: String,
    pub bytesize: u64,
}

/// Bytes not yet acknowledged by GitLab, and the remote offset of the first of them.
pub struct TraceBuffer {
    /// GitLab's trace size as far as we know: the remote offset of `pending[0]`.
    offset: u64,
    pending: VecDeque<u8>,
    limit: usize,
    appended: u64,
    /// CRC-32 (IEEE) of every byte appended: GitLab checks the trace it assembled against it
    /// (`output.checksum` of the final update), as it does for gitlab-runner.
    crc: crc32fast::Hasher,
}

impl fmt::Debug for TraceBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The log is the job's output: counts only.
        f.debug_struct("TraceBuffer")
            .field("offset", &self.offset)
            .field("pending", &self.pending.len())
            .field("limit", &self.limit)
            .field("appended", &self.appended)
            .finish()
    }
}

impl TraceBuffer {
    /// An empty buffer holding at most `limit` unacknowledged bytes (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            offset: 0,
            pending: VecDeque::new(),
            limit: limit.max(1),
            appended: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Takes as many bytes as fit; returns how many were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.pending.extend(&bytes[..n]);
        self.crc.update(&bytes[..n]);
        self.appended += n as u64;
        n
    }

    pub fn room(&self) -> usize {
        self.limit - self.pending.len()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// GitLab's trace size as far as this runner knows.
    pub fn acknowledged(&self) -> u64 {
        self.offset
    }

    /// All bytes ever accepted by `push`.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// `output` of the final update: `crc32:<8 hex digits>` of the whole trace and its size,
    /// as gitlab-runner sends them.
    pub fn output(&self) -> TraceOutput {
        TraceOutput {
            checksum: format!("crc32:{:08x}", self.crc.clone().finalize()),
            bytesize: self.appended,
        }
    }

    /// The next PATCH: up to `max` pending bytes from the acknowledged offset. `None` when
    /// nothing is pending.
    pub fn chunk(&self, max: usize) -> Option<Chunk> {
        let n = self.pending.len().min(max);
        (n > 0).then(|| Chunk {
            start: self.offset,
            bytes: self.pending.range(..n).copied().collect(),
        })
    }

    /// GitLab accepted a chunk (202): its bytes leave the buffer. A stale answer (for a
    /// chunk before the current offset) drops only what it newly covers.
    pub fn acknowledge(&mut self, start: u64, len: usize) {
        let end = start.saturating_add(len as u64);
        if start <= self.offset && end > self.offset {
            self.advance_to(end);
        }
    }

    /// GitLab answered 416 and says it holds `remote_size` bytes.
    pub fn resync(&mut self, remote_size: u64) -> Resync {
        let held_end = self.offset + self.pending.len() as u64;
        if remote_size == self.offset {
            Resync::InSync
        } else if remote_size < self.offset {
            let lost = self.offset - remote_size;
            self.offset = remote_size;
            Resync::GitlabLost(lost)
        } else if remote_size <= held_end {
            let skipped = remote_size - self.offset;
            self.advance_to(remote_size);
            Resync::Skipped(skipped)
        } else {
            let ahead = remote_size - held_end;
            self.advance_to(remote_size);
            Resync::GitlabAhead(ahead)
        }
    }

    fn advance_to(&mut self, new_offset: u64) {
        let n = usize::try_from(new_offset - self.offset)
            .unwrap_or(usize::MAX)
            .min(self.pending.len());
        self.pending.drain(..n);
        self.offset = new_offset;
    }

    /// Drops everything pending (the job is gone: nobody will read it).
    pub fn discard(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests;
