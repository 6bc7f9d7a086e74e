//! The bed's etcd, read with its own `etcdctl`: the whole keyspace now, and every write made
//! while a test runs (a watch on the whole keyspace from a start revision), so that values
//! written and deleted again (a job's pod and Secret) are seen too, whatever compaction does
//! afterwards.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::scan::{Finding, Scanner};
use crate::TestBed;

/// Where `scripts/lib/up.sh` makes etcd listen (loopback, plain HTTP; `ETCD_URL` there).
pub const ETCD_URL: &str = "http://127.0.0.1:23790";

/// A deadline against hangs, not a speed assertion.
const DEADLINE: Duration = Duration::from_secs(60);

/// One stored version of one key. `Debug` leaves the value out.
#[derive(Clone)]
pub struct EtcdEntry {
    pub key: String,
    pub revision: i64,
    /// Empty for a deletion.
    pub value: Vec<u8>,
}

impl fmt::Debug for EtcdEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdEntry")
            .field("key", &self.key)
            .field("revision", &self.revision)
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// Searches each entry's value; the place is `etcd:<key>` (revisions folded together).
pub fn scan_entries(scanner: &Scanner, entries: &[EtcdEntry]) -> Vec<Finding> {
    let mut out: Vec<Finding> = entries
        .iter()
        .flat_map(|e| scanner.scan(&format!("etcd:{}", e.key), &e.value))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    mod_revision: i64,
    #[serde(default)]
    value: Option<String>,
}

impl RawKv {
    fn decode(self) -> Result<EtcdEntry> {
        let key = STANDARD
            .decode(&self.key)
            .context("etcd key is not base64")?;
        let value = match self.value {
            Some(v) => STANDARD.decode(v).context("etcd value is not base64")?,
            None => Vec::new(),
        };
        Ok(EtcdEntry {
            key: String::from_utf8_lossy(&key).into_owned(),
            revision: self.mod_revision,
            value,
        })
    }
}

#[derive(Deserialize)]
struct Header {
    revision: i64,
}

#[derive(Deserialize)]
struct RangeResponse {
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WatchResponse {
    #[serde(default)]
    events: Vec<WatchEvent>,
    #[serde(default)]
    compact_revision: i64,
    #[serde(default)]
    canceled: bool,
}

#[derive(Deserialize)]
struct WatchEvent {
    kv: RawKv,
}

/// The bed's etcd.
#[derive(Debug, Clone)]
pub struct Etcd {
    etcdctl: PathBuf,
    endpoint: String,
}

impl Etcd {
    pub fn new(bed: &TestBed) -> Self {
        Self {
            etcdctl: bed.env.bin("etcdctl"),
            endpoint: std::env::var("KEYHOLE_ETCD_URL").unwrap_or_else(|_| ETCD_URL.into()),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.etcdctl);
        c.arg("--endpoints").arg(&self.endpoint);
        c.kill_on_drop(true);
        c
    }

    async fn range(&self, keys_only: bool) -> Result<RangeResponse> {
        let mut c = self.command();
        c.args(["get", "", "--prefix", "-w", "json"]);
        if keys_only {
            c.arg("--keys-only");
        }
        let out = tokio::time::timeout(DEADLINE, c.output())
            .await
            .context("etcdctl get did not finish")?
            .with_context(|| format!("running {}", self.etcdctl.display()))?;
        if !out.status.success() {
            bail!(
                "etcdctl get failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("parsing etcdctl get output")
    }

    /// The current revision of the store.
    pub async fn revision(&self) -> Result<i64> {
        Ok(self.range(true).await?.header.revision)
    }

    /// Every key with its current value.
    pub async fn keyspace(&self) -> Result<Vec<EtcdEntry>> {
        self.range(false)
            .await?
            .kvs
            .into_iter()
            .map(RawKv::decode)
            .collect()
    }

    /// Starts recording every write after the current revision.
    pub async fn record(&self) -> Result<EtcdRecorder> {
        let start = self.revision().await?;
        let mut child = self
            .command()
            .args(["watch", "--prefix", "", "-w", "json", "--rev"])
            .arg((start + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} watch", self.etcdctl.display()))?;
        let stdout = child.stdout.take().context("etcdctl watch has no stdout")?;
        let (seen_tx, seen_rx) = watch::channel(start);
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut entries = Vec::new();
            while let Some(line) = lines.next_line().await? {
                let resp: WatchResponse =
                    serde_json::from_str(&line).context("parsing etcdctl watch output")?;
                if resp.canceled || resp.compact_revision != 0 {
                    bail!(
                        "etcd cancelled the watch (compacted at revision {}); rerun the test",
                        resp.compact_revision
                    );
                }
                for event in resp.events {
                    let entry = event.kv.decode()?;
                    let _ = seen_tx.send(entry.revision);
                    entries.push(entry);
                }
            }
            Ok(entries)
        });
        Ok(EtcdRecorder {
            etcd: self.clone(),
            child,
            reader,
            seen: seen_rx,
            start,
        })
    }
}

/// A running record of etcd's writes; [`EtcdRecorder::finish`] returns them.
#[derive(Debug)]
pub struct EtcdRecorder {
    etcd: Etcd,
    child: Child,
    reader: JoinHandle<Result<Vec<EtcdEntry>>>,
    seen: watch::Receiver<i64>,
    start: i64,
}

impl EtcdRecorder {
    /// The revision the record starts after.
    pub fn start_revision(&self) -> i64 {
        self.start
    }

    /// Waits until every write up to the store's current revision has arrived, stops the
    /// watch and returns the writes (puts with their values, deletions with none).
    pub async fn finish(mut self) -> Result<Vec<EtcdEntry>> {
        let end = self.etcd.revision().await?;
        let caught_up = matches!(
            tokio::time::timeout(DEADLINE, self.seen.wait_for(|&r| r >= end)).await,
            Ok(Ok(_))
        );
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let entries = self.reader.await.context("etcd watch reader panicked")??;
        if !caught_up {
            bail!(
                "the etcd watch stopped before revision {end} (last seen {}); see whether etcdctl watch works",
                entries.last().map_or(self.start, |e| e.revision)
            );
        }
        Ok(entries)
    }
}
