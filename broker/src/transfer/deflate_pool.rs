//! Deflate on several threads, the way pigz does it: a file is cut into chunks, each chunk is
//! deflated on its own by a worker with the previous chunk's last 32 KiB as its dictionary (so
//! matches still reach back across the cut and the ratio stays that of one stream), every chunk
//! but a file's last ends with a sync flush (a byte boundary and an empty stored block), and the
//! concatenation is one valid raw deflate stream.
//!
//! Why: one core deflates the job's artifacts at roughly 100 MiB/s; packing is on the path of
//! every job that uploads artifacts or saves a cache. Memory stays bounded: the caller keeps at
//! most a fixed number of chunks in flight.

use std::io;
use std::num::NonZero;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

use flate2::{Compress, FlushCompress, Status};

/// Bytes of input per chunk.
pub const CHUNK: usize = 256 * 1024;
/// Deflate's window: how much of the previous chunk a chunk's dictionary holds.
pub const DICTIONARY: usize = 32 * 1024;
/// At most this many workers, whatever the machine.
const MAX_WORKERS: usize = 8;
/// Bytes of each of the three samples [`looks_incompressible`] deflates.
const SAMPLE: usize = 8 * 1024;
/// Chunks smaller than this are always deflated (sampling would cost more than it saves).
const SAMPLED_FROM: usize = 4 * SAMPLE;
/// Samples that deflate to at least this share of their size (in 1/100) mark the chunk as
/// incompressible: random data, or data compressed already (archives, images, `.jar`s).
const INCOMPRESSIBLE_PERCENT: usize = 97;

/// One chunk to deflate.
struct Job {
    data: Vec<u8>,
    dictionary: Vec<u8>,
    last: bool,
    reply: mpsc::SyncSender<io::Result<Vec<u8>>>,
}

/// The deflated bytes of one submitted chunk, once a worker has them.
#[derive(Debug)]
pub struct Pending(mpsc::Receiver<io::Result<Vec<u8>>>);

impl Pending {
    /// Waits for the chunk's deflated bytes.
    ///
    /// # Errors
    /// Deflate failed, or the worker is gone.
    pub fn wait(self) -> io::Result<Vec<u8>> {
        self.0
            .recv()
            .map_err(|_| io::Error::other("deflate: the worker stopped"))?
    }
}

/// Worker threads that deflate chunks at one level.
pub struct DeflatePool {
    jobs: Option<mpsc::SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl DeflatePool {
    /// Starts `workers` threads (at least one, at most eight) deflating at `level` (0 to 9).
    pub fn new(level: u32, workers: usize) -> Self {
        let count = workers.clamp(1, MAX_WORKERS);
        let (sender, receiver) = mpsc::sync_channel::<Job>(count);
        let receiver = Arc::new(Mutex::new(receiver));
        let workers = (0..count)
            .map(|_| {
                let receiver = Arc::clone(&receiver);
                std::thread::spawn(move || work(level, &receiver))
            })
            .collect();
        Self {
            jobs: Some(sender),
            workers,
        }
    }

    /// One worker per core this process may use (cgroup quotas included).
    pub fn workers_for_this_machine() -> usize {
        std::thread::available_parallelism().map_or(1, NonZero::get)
    }

    /// Hands a chunk to the workers: `dictionary` is the end of the previous chunk of the same
    /// stream (empty for the first), `last` ends the stream.
    ///
    /// # Errors
    /// Every worker is gone.
    pub fn submit(&self, data: Vec<u8>, dictionary: Vec<u8>, last: bool) -> io::Result<Pending> {
        let (reply, receiver) = mpsc::sync_channel(1);
        let job = Job {
            data,
            dictionary,
            last,
            reply,
        };
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("deflate: the pool is closed"))?
            .send(job)
            .map_err(|_| io::Error::other("deflate: every worker stopped"))?;
        Ok(Pending(receiver))
    }
}

impl Drop for DeflatePool {
    fn drop(&mut self) {
        self.jobs.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A worker: one compressor at the pool's level, reset for every chunk, until the pool closes;
/// chunks that [look incompressible](looks_incompressible) go to a second one that only
/// stores (deflate's stored blocks, so the stream stays one deflate stream).
fn work(level: u32, jobs: &Mutex<mpsc::Receiver<Job>>) {
    let mut compress = Compress::new(flate2::Compression::new(level), false);
    let mut store = Compress::new(flate2::Compression::none(), false);
    let mut probe = Compress::new(flate2::Compression::fast(), false);
    loop {
        let job = {
            let receiver = jobs.lock().unwrap_or_else(PoisonError::into_inner);
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let chosen = if level > 0 && looks_incompressible(&mut probe, &job.data) {
            &mut store
        } else {
            &mut compress
        };
        chosen.reset();
        let result = deflate_chunk(chosen, &job.dictionary, &job.data, job.last);
        let _ = job.reply.send(result);
    }
}

/// Whether deflating `data` is wasted work: three samples (start, middle, end) deflated at
/// level 1 barely shrink. Deflate would find nothing in such a chunk either, only slower (at
/// level 3 about half the time of packing goes to random bytes otherwise); the price of a
/// wrong guess is one chunk stored instead of deflated, never a wrong archive.
fn looks_incompressible(probe: &mut Compress, data: &[u8]) -> bool {
    if data.len() < SAMPLED_FROM {
        return false;
    }
    let starts = [0, data.len() / 2 - SAMPLE / 2, data.len() - SAMPLE];
    let mut deflated = 0;
    for start in starts {
        let sample = data.get(start..start + SAMPLE).unwrap_or_default();
        probe.reset();
        match deflate_chunk(probe, &[], sample, true) {
            Ok(out) => deflated += out.len(),
            Err(_) => return false,
        }
    }
    deflated * 100 >= 3 * SAMPLE * INCOMPRESSIBLE_PERCENT
}

/// Deflates one chunk with a fresh (reset) compressor: the dictionary first, then the data,
/// ending with a sync flush, or with the final block when `last`.
///
/// # Errors
/// The compressor refuses the dictionary or stops making progress.
pub fn deflate_chunk(
    compress: &mut Compress,
    dictionary: &[u8],
    data: &[u8],
    last: bool,
) -> io::Result<Vec<u8>> {
    if !dictionary.is_empty() {
        compress
            .set_dictionary(dictionary)
            .map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 64);
    let mut consumed = 0usize;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(1024));
        }
        let (before_in, before_out) = (compress.total_in(), compress.total_out());
        let status = compress
            .compress_vec(data.get(consumed..).unwrap_or_default(), &mut out, flush)
            .map_err(io::Error::other)?;
        let read = usize::try_from(compress.total_in() - before_in).unwrap_or(usize::MAX);
        consumed = consumed.saturating_add(read);
        let room_left = out.len() < out.capacity();
        let done = if last {
            status == Status::StreamEnd
        } else {
            consumed >= data.len() && room_left
        };
        if done {
            return Ok(out);
        }
        let progressed = read > 0 || compress.total_out() > before_out;
        if !progressed && room_left {
            return Err(io::Error::other("deflate made no progress"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn inflate(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(raw)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn mixed(len: usize) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(7);
        (0..len)
            .map(|i| {
                if (i / 40_000) % 2 == 0 {
                    b"the quick brown fox jumps over the lazy dog\n"[i % 44]
                } else {
                    rng.u8(..)
                }
            })
            .collect()
    }

    fn deflate_in_chunks(pool: &DeflatePool, data: &[u8], chunk: usize) -> Vec<u8> {
        let pieces: Vec<&[u8]> = if data.is_empty() {
            vec![&[]]
        } else {
            data.chunks(chunk).collect()
        };
        let mut pending = Vec::new();
        let mut dictionary = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let tail = piece[piece.len().saturating_sub(DICTIONARY)..].to_vec();
            let last = i + 1 == pieces.len();
            let previous = std::mem::replace(&mut dictionary, tail);
            pending.push(pool.submit(piece.to_vec(), previous, last).unwrap());
        }
        pending
            .into_iter()
            .flat_map(|p| p.wait().unwrap())
            .collect()
    }

    #[test]
    fn chunks_deflated_apart_concatenate_to_one_stream_of_the_original_bytes() {
        let pool = DeflatePool::new(3, 2);
        for len in [0, 1, 1000, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12_345] {
            let data = mixed(len);
            let deflated = deflate_in_chunks(&pool, &data, CHUNK);
            assert_eq!(inflate(&deflated), data, "{len} bytes");
        }
    }

    #[test]
    fn the_dictionary_keeps_the_ratio_of_one_stream() {
        // Random bytes that repeat every 10 KiB: without the previous chunk as dictionary each
        // 16 KiB chunk starts cold and its first 10 KiB do not compress; with it, chunking
        // costs almost nothing.
        let mut rng = fastrand::Rng::with_seed(3);
        let unit: Vec<u8> = (0..10 * 1024).map(|_| rng.u8(..)).collect();
        let data: Vec<u8> = unit.iter().copied().cycle().take(64 * 16 * 1024).collect();
        let pool = DeflatePool::new(6, 2);
        let chunked = deflate_in_chunks(&pool, &data, 16 * 1024);
        let mut whole = Compress::new(flate2::Compression::new(6), false);
        let one = deflate_chunk(&mut whole, &[], &data, true).unwrap();
        assert_eq!(inflate(&chunked), data);
        assert!(
            chunked.len() < one.len() * 2 + 64 * 8,
            "chunked {} bytes, one stream {}",
            chunked.len(),
            one.len()
        );
        let mut cold = Compress::new(flate2::Compression::new(6), false);
        let without: usize = data
            .chunks(16 * 1024)
            .map(|c| {
                cold.reset();
                deflate_chunk(&mut cold, &[], c, false).unwrap().len()
            })
            .sum();
        assert!(
            chunked.len() * 4 < without,
            "{} vs {without}",
            chunked.len()
        );
    }

    #[test]
    fn random_chunks_are_stored_and_text_chunks_deflated_in_one_valid_stream() {
        let mut probe = Compress::new(flate2::Compression::fast(), false);
        let mut rng = fastrand::Rng::with_seed(11);
        let random: Vec<u8> = (0..CHUNK).map(|_| rng.u8(..)).collect();
        let text = mixed(CHUNK)
            .iter()
            .take(40_000)
            .copied()
            .cycle()
            .take(CHUNK)
            .collect::<Vec<u8>>();
        assert!(looks_incompressible(&mut probe, &random));
        assert!(!looks_incompressible(&mut probe, &text));
        assert!(!looks_incompressible(
            &mut probe,
            &random[..SAMPLED_FROM - 1]
        ));

        let pool = DeflatePool::new(6, 2);
        let data = [text.clone(), random.clone(), text.clone(), random].concat();
        let deflated = deflate_in_chunks(&pool, &data, CHUNK);
        assert_eq!(inflate(&deflated), data);
        // The random half costs its size plus stored-block headers, the text half little.
        assert!(deflated.len() < CHUNK * 2 + CHUNK / 8, "{}", deflated.len());
    }

    #[test]
    fn dropping_the_pool_stops_its_workers_and_waiting_on_a_lost_reply_is_an_error() {
        let pool = DeflatePool::new(1, 3);
        let pending = pool.submit(b"abc".to_vec(), Vec::new(), true).unwrap();
        drop(pool);
        assert_eq!(inflate(&pending.wait().unwrap()), b"abc");
        let (_, receiver) = mpsc::sync_channel(1);
        assert!(Pending(receiver).wait().is_err());
    }
}
