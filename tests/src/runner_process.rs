//! The real `keyhole-runner run` binary as a child process, for benchmarks: its config written
//! to a temporary file, its JSON log (`log_format = "json"`) read as it comes, so that the
//! per-job figures the service logs (`added_ms`, `final_ms`) and its warnings can be collected,
//! and its peak RSS read from `/proc/<pid>/status`.
//!
//! The caller picks the binary ([`crate::runner_binary`]; `scripts/bench runner` points
//! `$KEYHOLE_RUNNER_BIN` at the release build).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Warnings and errors kept for the report (the newest).
const KEPT_PROBLEMS: usize = 20;

/// What the runner's log said so far.
#[derive(Debug, Clone, Default)]
pub struct RunnerLog {
    /// It logged `runner ready` (GitLab and the cluster answered).
    pub ready: bool,
    /// Per job id: job received → pod create request, in ms.
    pub added_ms: BTreeMap<u64, u64>,
    /// Per job id: job end seen → GitLab took the final state, in ms.
    pub final_ms: BTreeMap<u64, u64>,
    /// WARN and ERROR lines (the newest [`KEPT_PROBLEMS`]), and lines that are not JSON.
    pub problems: Vec<String>,
    /// How many WARN/ERROR lines there were in all.
    pub problem_count: u64,
}

impl RunnerLog {
    /// Takes one stderr line of the runner.
    fn take(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            self.problem(line);
            return;
        };
        let message = v["fields"]["message"].as_str().unwrap_or_default();
        let job = v["span"]["id"].as_u64();
        match (message, job) {
            ("runner ready", _) => self.ready = true,
            ("creating the job pod", Some(id)) => {
                if let Some(ms) = v["fields"]["added_ms"].as_u64() {
                    self.added_ms.insert(id, ms);
                }
            }
            ("reported the job", Some(id)) => {
                if let Some(ms) = v["fields"]["final_ms"].as_u64() {
                    self.final_ms.insert(id, ms);
                }
            }
            _ => {}
        }
        if matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
            self.problem(line);
        }
    }

    fn problem(&mut self, line: &str) {
        self.problem_count += 1;
        if self.problems.len() == KEPT_PROBLEMS {
            self.problems.remove(0);
        }
        self.problems.push(line.to_owned());
    }

    /// Per job: added_ms + final_ms, for jobs that logged both.
    pub fn added_total_ms(&self) -> BTreeMap<u64, u64> {
        self.added_ms
            .iter()
            .filter_map(|(id, a)| Some((*id, a + self.final_ms.get(id)?)))
            .collect()
    }
}

/// A running `keyhole-runner run`. Killed (SIGKILL) if dropped without [`Self::stop`].
#[derive(Debug)]
pub struct RunnerProcess {
    child: Child,
    pid: u32,
    log: watch::Receiver<RunnerLog>,
    reader: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl RunnerProcess {
    /// Writes `config` (TOML) to a temporary file and starts `binary run --config <it>` with
    /// `env` added to its environment.
    pub fn start(binary: &Path, config: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("keyhole-runner-bench-")
            .tempdir()?;
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let mut child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the runner exited at once")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, log) = watch::channel(RunnerLog::default());
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|l| l.take(&line));
            }
        });
        Ok(Self {
            child,
            pid,
            log,
            reader,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the log said so far.
    pub fn log(&self) -> RunnerLog {
        self.log.borrow().clone()
    }

    /// Waits for `runner ready`; fails with the runner's last problems when it exits first.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let mut rx = self.log.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|l| l.ready)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => bail!(
                "the runner exited before it was ready: {}",
                self.log().problems.join("\n")
            ),
            Err(_) => bail!(
                "the runner was not ready after {timeout:?}: {}",
                self.log().problems.join("\n")
            ),
        }
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM line in {path}"))
    }

    /// CPU time all the runner's threads used so far (`utime` + `stime` of
    /// `/proc/<pid>/stat`, in USER_HZ ticks, which Linux fixes at 100 per second).
    pub fn cpu_time(&self) -> Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        cpu_ticks(&text)
            .map(|ticks| Duration::from_millis(ticks * 10))
            .with_context(|| format!("{path}: no utime/stime in {text:?}"))
    }

    /// SIGTERM (the runner lets running jobs finish), waits up to `grace` for the exit, then
    /// kills it. Returns the whole log.
    pub async fn stop(mut self, grace: Duration) -> Result<RunnerLog> {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await
            .context("running kill")?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                self.child.kill().await?;
                bail!("the runner did not stop within {grace:?} of SIGTERM; killed it");
            }
        };
        let _ = (&mut self.reader).await;
        if !status.success() {
            bail!(
                "the runner exited with {status}: {}",
                self.log().problems.join("\n")
            );
        }
        Ok(self.log())
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line; the command name (field 2,
/// in parentheses) may hold spaces, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_collects_per_job_figures_and_problems() {
        let mut log = RunnerLog::default();
        for line in [
            r#"{"timestamp":"t","level":"INFO","fields":{"message":"runner ready"},"target":"keyhole_runner::service"}"#,
            r#"{"timestamp":"t","level":"INFO","fields":{"message":"creating the job pod","pod":"kh-1","added_ms":12},"span":{"id":1001,"name":"job"},"spans":[]}"#,
            r#"{"timestamp":"t","level":"INFO","fields":{"message":"reported the job","final_ms":30},"span":{"id":1001,"name":"job"},"spans":[]}"#,
            r#"{"timestamp":"t","level":"INFO","fields":{"message":"creating the job pod","pod":"kh-2","added_ms":7},"span":{"id":1002,"name":"job"},"spans":[]}"#,
            r#"{"timestamp":"t","level":"WARN","fields":{"message":"keep-alive failed"},"span":{"id":1002,"name":"job"},"spans":[]}"#,
            "thread 'main' panicked",
        ] {
            log.take(line);
        }
        assert!(log.ready);
        assert_eq!(log.added_ms, BTreeMap::from([(1001, 12), (1002, 7)]));
        assert_eq!(log.final_ms, BTreeMap::from([(1001, 30)]));
        assert_eq!(log.added_total_ms(), BTreeMap::from([(1001, 42)]));
        assert_eq!(log.problem_count, 2);
        assert!(log.problems[1].contains("panicked"));
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (keyhole run) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 37 0 0 20 0 9 0 123 456 789";
        assert_eq!(cpu_ticks(stat), Some(187));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn only_the_newest_problems_are_kept() {
        let mut log = RunnerLog::default();
        for i in 0..(KEPT_PROBLEMS + 5) {
            log.take(&format!("not json {i}"));
        }
        assert_eq!(log.problems.len(), KEPT_PROBLEMS);
        assert_eq!(log.problem_count, (KEPT_PROBLEMS + 5) as u64);
        assert_eq!(log.problems[0], "not json 5");
    }
}
