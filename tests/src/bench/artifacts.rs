//! Benchmark P10 (`scripts/bench runner P10`): a job's artifacts through the real
//! `keyhole-broker transfer store` and `transfer fetch` binary against the coordinator, on
//! this machine. No pod: what the job pod's transfer containers do is the binary's work, and
//! here it runs as a child process with nothing else of the bed in the way.
//!
//! This module holds the parts: the data set (half random bytes, half log-like text, so that
//! deflate has realistic work), jobs made running as a runner takes them, the plans, the
//! broker run under GNU `time` for its peak RSS, and the round-trip check that keeps a broken
//! transfer from being reported as a fast one.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use keyhole_contract::transfer::{
    ArtifactUpload, Dependency, Format, Plan, SCRIPT_STATUS_FILE, When,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Coordinator;
use crate::coordinator::EnqueuedJob;

/// The data set's unit: one file of the many-files case, one stretch of the one-file case.
pub const BLOCK: usize = 1 << 20;

/// How often a running transfer is looked at for its phase change.
const MARK_POLL: Duration = Duration::from_millis(5);

/// A deadline against hangs, not a measurement.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(1800);

/// GNU time, for the child's peak RSS (`ru_maxrss` of `wait4`).
const GNU_TIME: &str = "/usr/bin/time";

/// Block `i` of the data set: even blocks are random bytes (what compressed files, images
/// and binaries look like to deflate), odd blocks log-like text (build output, reports) that
/// deflate shrinks several-fold. The same `i` always gives the same bytes.
pub fn block(i: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(i);
    if !is_text_block(i) {
        let mut out = vec![0; BLOCK];
        rng.fill(&mut out);
        out
    } else {
        text_block(&mut rng)
    }
}

/// Whether block `i` is text (for the file's extension).
pub fn is_text_block(i: u64) -> bool {
    !i.is_multiple_of(2)
}

const LEVELS: [&str; 4] = ["INFO", "INFO", "DEBUG", "WARN"];
const VERBS: [&str; 6] = [
    "compiled",
    "checked",
    "linked",
    "tested",
    "formatted",
    "fetched",
];
const MODULES: [&str; 8] = [
    "gitlab", "pod", "execute", "transfer", "secrets", "config", "journal", "pipeline",
];

/// [`BLOCK`] bytes of log lines with timestamps, counters and paths that vary line by line.
fn text_block(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK + 256);
    let mut ms = rng.u64(0..86_400_000);
    while out.len() < BLOCK {
        ms += rng.u64(0..400);
        let _ = writeln!(
            out,
            "2026-11-28T{:02}:{:02}:{:02}.{:03}Z {:<5} [worker-{}] {} src/{}/{}_{}.rs in {} ms ({} warnings, job {})",
            ms / 3_600_000 % 24,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            LEVELS[rng.usize(..LEVELS.len())],
            rng.u8(0..8),
            VERBS[rng.usize(..VERBS.len())],
            MODULES[rng.usize(..MODULES.len())],
            MODULES[rng.usize(..MODULES.len())],
            rng.u16(0..400),
            rng.u32(0..20_000),
            rng.u8(0..3),
            rng.u32(100_000..100_100),
        );
    }
    out.truncate(BLOCK);
    out
}

/// The shape of a P10 data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// This many files of one [`BLOCK`] each, 100 to a directory (`d00/f0000.bin`; text
    /// blocks end in `.log`).
    Files(u64),
    /// One file (`big.bin`) of this many [`BLOCK`]s, alternating as [`block`] makes them.
    OneFile(u64),
}

impl Shape {
    /// Bytes of the data set.
    pub fn bytes(self) -> u64 {
        match self {
            Self::Files(n) | Self::OneFile(n) => n * BLOCK as u64,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Files(n) => write!(f, "{n}x1MiB"),
            Self::OneFile(n) => write!(f, "1x{n}MiB"),
        }
    }
}

/// Writes the data set into `dir` (created).
pub fn write_data(dir: &Path, shape: Shape) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    match shape {
        Shape::Files(n) => {
            for i in 0..n {
                let sub = dir.join(format!("d{:02}", i / 100));
                if i.is_multiple_of(100) {
                    std::fs::create_dir_all(&sub)?;
                }
                let ext = if is_text_block(i) { "log" } else { "bin" };
                let path = sub.join(format!("f{i:04}.{ext}"));
                std::fs::write(&path, block(i))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Shape::OneFile(n) => {
            let path = dir.join("big.bin");
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::with_capacity(BLOCK, file);
            for i in 0..n {
                out.write_all(&block(i))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// Bytes free on the file system of `dir` (`df`).
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .context("running df")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df {}: unexpected output {text:?}", dir.display()))
}

/// Regular files under `root`, by path relative to it, with their sizes. Symlinks are not
/// followed (the data set has none).
pub fn list_files(root: &Path) -> Result<BTreeMap<PathBuf, u64>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, u64>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            if meta.is_dir() {
                walk(root, &entry.path(), out)?;
            } else if meta.is_file() {
                let relative = entry.path().strip_prefix(root)?.to_owned();
                out.insert(relative, meta.len());
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; BLOCK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// What [`compare_trees`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTrip {
    pub files: u64,
    pub bytes: u64,
    /// Files compared byte for byte (by SHA-256).
    pub sampled: u64,
}

/// Checks that `copy` holds exactly the files of `original` with the same sizes, and the
/// same bytes in every `every`-th file (the first and the last included).
pub fn compare_trees(original: &Path, copy: &Path, every: usize) -> Result<RoundTrip> {
    let want = list_files(original)?;
    let got = list_files(copy)?;
    let missing: Vec<_> = want.keys().filter(|p| !got.contains_key(*p)).collect();
    let extra: Vec<_> = got.keys().filter(|p| !want.contains_key(*p)).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "{} files missing (first {:?}), {} not in the original (first {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    for (path, size) in &want {
        ensure!(
            got[path] == *size,
            "{}: {} bytes, the original has {size}",
            path.display(),
            got[path]
        );
    }
    let last = want.len().saturating_sub(1);
    let mut sampled = 0;
    for (i, path) in want.keys().enumerate() {
        if i % every.max(1) != 0 && i != last {
            continue;
        }
        ensure!(
            sha256_file(&original.join(path))? == sha256_file(&copy.join(path))?,
            "{}: the bytes differ from the original's",
            path.display()
        );
        sampled += 1;
    }
    Ok(RoundTrip {
        files: want.len() as u64,
        bytes: want.values().sum(),
        sampled,
    })
}

/// Takes the next queued job as a runner does (`POST jobs/request` with the runner token),
/// which makes it running; returns its payload. It must be `job`.
pub async fn take_job(
    gitlab: &Coordinator,
    http: &reqwest::Client,
    job: &EnqueuedJob,
) -> Result<Value> {
    let response = http
        .post(format!("{}/api/v4/jobs/request", gitlab.url()))
        .json(&json!({ "token": gitlab.runner_token() }))
        .send()
        .await
        .context("POST jobs/request")?;
    let status = response.status();
    ensure!(status.as_u16() == 201, "jobs/request answered {status}");
    let payload: Value = response.json().await.context("the jobs/request body")?;
    ensure!(
        payload["id"].as_u64() == Some(job.id),
        "jobs/request handed out job {} instead of {}",
        payload["id"],
        job.id
    );
    Ok(payload)
}

/// The payload's `artifacts` entry of a P10 job: `paths`, zipped, on success.
pub fn artifacts_entry(paths: &[&str]) -> Value {
    json!([{
        "name": "artifacts",
        "untracked": false,
        "paths": paths,
        "exclude": [],
        "when": "on_success",
        "artifact_type": "archive",
        "artifact_format": "zip",
        "expire_in": "1 day",
    }])
}

/// The plan `transfer store` gets for `job`: its `paths` of `project_dir`, zipped, at
/// `compression` (`ARTIFACT_COMPRESSION_LEVEL`; `None`: the broker's default, `fast`).
pub fn store_plan(
    gitlab: &Coordinator,
    job: &EnqueuedJob,
    project_dir: &Path,
    paths: &[&str],
    compression: Option<&str>,
) -> Plan {
    Plan {
        gitlab_url: gitlab.url(),
        job_id: job.id,
        job_token: SecretString::from(job.token.clone()),
        project_dir: project_dir.display().to_string(),
        dependencies: Vec::new(),
        artifacts: vec![ArtifactUpload {
            name: "artifacts".into(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            exclude: Vec::new(),
            untracked: false,
            when: When::OnSuccess,
            artifact_type: "archive".into(),
            format: Format::Zip,
            expire_in: "1 day".into(),
        }],
        compression: compression.map(str::to_owned),
        caches: Vec::new(),
        cache_compression: None,
    }
}

/// The plan `transfer fetch` gets for `job`, from its payload's `dependencies` (with an
/// archive), as the runner makes it.
pub fn fetch_plan(
    gitlab: &Coordinator,
    job: &EnqueuedJob,
    project_dir: &Path,
    payload: &Value,
) -> Result<Plan> {
    let mut dependencies = Vec::new();
    for d in payload["dependencies"].as_array().into_iter().flatten() {
        let file = &d["artifacts_file"];
        dependencies.push(Dependency {
            id: d["id"].as_u64().context("a dependency without an id")?,
            name: d["name"].as_str().unwrap_or_default().to_owned(),
            filename: file["filename"]
                .as_str()
                .context("a dependency without an archive")?
                .to_owned(),
            size: file["size"].as_u64().unwrap_or(0),
            token: SecretString::from(
                d["token"]
                    .as_str()
                    .context("a dependency without a token")?
                    .to_owned(),
            ),
        });
    }
    ensure!(!dependencies.is_empty(), "the payload has no dependency");
    Ok(Plan {
        gitlab_url: gitlab.url(),
        job_id: job.id,
        job_token: SecretString::from(job.token.clone()),
        project_dir: project_dir.display().to_string(),
        dependencies,
        artifacts: Vec::new(),
        compression: None,
        caches: Vec::new(),
        cache_compression: None,
    })
}

/// The directories of one transfer container, under a directory of their own.
#[derive(Debug, Clone)]
pub struct TransferDirs {
    pub plan: PathBuf,
    pub runtime: PathBuf,
    pub scratch: PathBuf,
    /// The container's output (its lines go to stdout without a log pipe).
    pub log: PathBuf,
    /// GNU time's figures.
    pub rusage: PathBuf,
}

impl TransferDirs {
    /// Creates `<dir>/{run,scratch}` and writes `plan` to `<dir>/plan.json`; with
    /// `exit_code`, the script's status file too (what the store container waits for).
    pub fn create(dir: &Path, plan: &Plan, exit_code: Option<i32>) -> Result<Self> {
        let dirs = Self {
            plan: dir.join("plan.json"),
            runtime: dir.join("run"),
            scratch: dir.join("scratch"),
            log: dir.join("output.log"),
            rusage: dir.join("rusage"),
        };
        std::fs::create_dir_all(&dirs.runtime)?;
        std::fs::create_dir_all(&dirs.scratch)?;
        std::fs::write(&dirs.plan, serde_json::to_vec(plan)?)?;
        if let Some(code) = exit_code {
            std::fs::write(dirs.runtime.join(SCRIPT_STATUS_FILE), format!("{code}\n"))?;
        }
        Ok(dirs)
    }
}

/// One `keyhole-broker transfer` run.
#[derive(Debug, Clone, Copy)]
pub struct BrokerRun {
    /// From the spawn to the exit.
    pub wall: Duration,
    /// When the `mark` condition was first seen to hold, from the spawn.
    pub mark: Option<Duration>,
    /// Peak resident set size of the broker process (`ru_maxrss`), in KiB.
    pub peak_rss_kib: u64,
    /// User + system CPU time of the broker.
    pub cpu: Duration,
}

/// Runs `broker transfer <verb>` in `dirs` under GNU time and waits for its exit, looking at
/// `mark` every few milliseconds meanwhile (for the moment one phase of the transfer gave way
/// to the next). An exit other than 0 is an error with the end of the broker's output.
pub async fn run_transfer(
    broker: &Path,
    verb: &str,
    dirs: &TransferDirs,
    mut mark: impl FnMut() -> bool,
) -> Result<BrokerRun> {
    let log = std::fs::File::create(&dirs.log)?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(GNU_TIME)
        .arg("-f")
        .arg("%M %U %S")
        .arg("-o")
        .arg(&dirs.rusage)
        .arg(broker)
        // The directories are options of `transfer`, before the verb.
        .args(["transfer", "--plan"])
        .arg(&dirs.plan)
        .arg("--runtime-dir")
        .arg(&dirs.runtime)
        .arg("--scratch-dir")
        .arg(&dirs.scratch)
        .arg(verb)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {GNU_TIME} {}", broker.display()))?;
    let mut marked = None;
    let wait = async {
        loop {
            tokio::select! {
                status = child.wait() => break status,
                () = tokio::time::sleep(MARK_POLL) => {
                    if marked.is_none() && mark() {
                        marked = Some(started.elapsed());
                    }
                }
            }
        }
    };
    let status = tokio::time::timeout(TRANSFER_DEADLINE, wait)
        .await
        .with_context(|| format!("transfer {verb} still running after {TRANSFER_DEADLINE:?}"))??;
    let wall = started.elapsed();
    if !status.success() {
        let output = std::fs::read(&dirs.log).unwrap_or_default();
        bail!(
            "transfer {verb} exited with {status}; its output ends:\n{}",
            String::from_utf8_lossy(&output[output.len().saturating_sub(3000)..])
        );
    }
    let rusage = std::fs::read_to_string(&dirs.rusage)?;
    let (peak_rss_kib, cpu) = parse_rusage(&rusage)
        .with_context(|| format!("{GNU_TIME} wrote {rusage:?}, not `%M %U %S`"))?;
    Ok(BrokerRun {
        wall,
        mark: marked,
        peak_rss_kib,
        cpu,
    })
}

/// GNU time's `%M %U %S` (its last line: a line about the exit status may come first).
fn parse_rusage(text: &str) -> Option<(u64, Duration)> {
    let mut fields = text.lines().last()?.split_whitespace();
    let rss = fields.next()?.parse().ok()?;
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((rss, Duration::from_secs_f64(user + system)))
}

/// `bytes` per `time`, in MiB/s.
pub fn mib_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / time.as_secs_f64().max(1e-9)
}

/// `PASS` or `MISS`.
pub fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_stable_full_and_alternate_between_random_and_text() {
        for i in 0..4 {
            let b = block(i);
            assert_eq!(b.len(), BLOCK, "block {i}");
            assert!(b == block(i), "block {i} is not reproducible");
            let printable = b.iter().all(|&c| c == b'\n' || (32..127).contains(&c));
            assert_eq!(printable, is_text_block(i), "block {i}");
        }
        assert!(block(1) != block(3));
        assert!(block(0) != block(2));
    }

    #[test]
    fn text_blocks_are_lines_that_vary() {
        let text = block(1);
        let lines: Vec<&[u8]> = text.split(|&c| c == b'\n').collect();
        assert!(lines.len() > 5000, "{} lines", lines.len());
        let distinct: std::collections::BTreeSet<_> = lines.iter().collect();
        assert!(distinct.len() > lines.len() * 9 / 10);
    }

    #[test]
    fn a_copy_with_a_changed_byte_or_a_missing_file_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for root in [&a, &b] {
            std::fs::create_dir_all(root.join("d")).unwrap();
            for (name, content) in [("x", "one"), ("d/y", "two"), ("d/z", "three")] {
                std::fs::write(root.join(name), content).unwrap();
            }
        }
        let same = compare_trees(&a, &b, 1).unwrap();
        assert_eq!(
            same,
            RoundTrip {
                files: 3,
                bytes: 11,
                sampled: 3
            }
        );
        // Sorted d/y, d/z, x: every 5th is the first, plus the last.
        assert_eq!(compare_trees(&a, &b, 5).unwrap().sampled, 2);
        std::fs::write(b.join("d/z"), "thrEe").unwrap();
        let e = compare_trees(&a, &b, 1).unwrap_err().to_string();
        assert!(e.contains("d/z") && e.contains("differ"), "{e}");
        // Unsampled files are compared by size.
        std::fs::write(b.join("d/z"), "thre").unwrap();
        let e = compare_trees(&a, &b, 5).unwrap_err().to_string();
        assert!(e.contains("d/z: 4 bytes"), "{e}");
        std::fs::remove_file(b.join("d/z")).unwrap();
        let e = compare_trees(&a, &b, 1).unwrap_err().to_string();
        assert!(e.contains("1 files missing"), "{e}");
    }

    #[test]
    fn gnu_time_output_is_read_from_its_last_line() {
        assert_eq!(
            parse_rusage("12345 1.50 0.25\n"),
            Some((12345, Duration::from_millis(1750)))
        );
        assert_eq!(
            parse_rusage("Command exited with non-zero status 1\n800 0.00 0.01\n"),
            Some((800, Duration::from_millis(10)))
        );
        assert_eq!(parse_rusage(""), None);
    }

    #[test]
    fn rates_are_in_mib_per_second() {
        assert!((mib_per_s(200 << 20, Duration::from_secs(2)) - 100.0).abs() < 1e-9);
        assert_eq!(Shape::Files(1000).bytes(), 1000 << 20);
        assert_eq!(Shape::OneFile(1024).to_string(), "1x1024MiB");
    }
}
