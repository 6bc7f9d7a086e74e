//! `scripts/bench runner`: the runner's figures P4–P6 against the coordinator (a fake GitLab
//! speaking the Runner API) and real job pods on the test bed. Each phase starts the real
//! `keyhole-runner run` binary (release build) with a config of its own and `log_format =
//! "json"`; the per-job figures come from the service's log lines `creating the job pod`
//! (`added_ms`: job received → pod create request) and `reported the job` (`final_ms`: job end
//! seen → GitLab holds the trace and the final state). Prints one line per figure:
//!
//! - `P4 p50_ms=… p99_ms=…`: added_ms + final_ms per job, `P4_JOBS` (20) sequential jobs.
//! - `P5 rss_kib=… p99_ms=…`: peak RSS (`VmHWM`) and added_ms + final_ms with `P5_JOBS` (100)
//!   jobs enqueued at once and `concurrent` as large.
//! - `P6 bytes=… lost=0 duplicated=0 rss_kib=…`: a job writing `P6_MIB` (100) MiB of numbered
//!   100-byte lines; the trace GitLab holds is checked line by line (lost, duplicated and
//!   corrupt count lines).
//!
//! Figures are printed, not asserted. Needs the bed (`scripts/testbed up`) and the broker
//! image `keyhole.local/broker:dev` on it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ServiceAccount;
use keyhole_tests::bench::{
    COUNTER_LINE_LEN, CounterCheck, between_marker_lines, check_counter_log, counter_command,
    counter_lines_for, percentile,
};
use keyhole_tests::coordinator::{EnqueuedJob, FinalStatus};
use keyhole_tests::{
    Coordinator, CoordinatorOptions, RunnerLog, RunnerProcess, TestBed, TestNamespace,
    runner_binary,
};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// Guards against hangs, not measurements.
const READY_DEADLINE: Duration = Duration::from_secs(60);
const JOB_DEADLINE: Duration = Duration::from_secs(900);
const STOP_GRACE: Duration = Duration::from_secs(120);

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench runner: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench runner: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?}: expected a whole number")),
        Err(_) => Ok(default),
    }
}

async fn run() -> Result<()> {
    let p4_jobs = env_number("P4_JOBS", 20)?;
    let p5_jobs = env_number("P5_JOBS", 100)?;
    let p6_mib = env_number("P6_MIB", 100)?;
    let bench = Bench::new().await?;
    // 0 skips a phase.
    if p4_jobs > 0 {
        p4(&bench, p4_jobs).await?;
    }
    if p5_jobs > 0 {
        p5(&bench, p5_jobs).await?;
    }
    if p6_mib > 0 {
        p6(&bench, p6_mib).await?;
    }
    Ok(())
}

struct Bench {
    bed: TestBed,
    ns: TestNamespace,
    binary: std::path::PathBuf,
}

/// One phase: its own fake GitLab (no request of an earlier runner can take its jobs) and
/// runner.
struct Phase {
    gitlab: Coordinator,
    runner: RunnerProcess,
    _journal: tempfile::TempDir,
}

impl Bench {
    async fn new() -> Result<Self> {
        let binary = runner_binary()?;
        let bed = TestBed::connect().await;
        let ns = TestNamespace::create(
            &bed,
            "bench",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await?;
        Api::<ServiceAccount>::namespaced(bed.client.clone(), &ns.name)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "keyhole-job"}}))?,
            )
            .await
            .context("creating the ServiceAccount keyhole-job")?;
        Ok(Self { bed, ns, binary })
    }

    /// A runner config of its own per phase (name, journal), JSON logs.
    fn config(
        &self,
        gitlab: &Coordinator,
        name: &str,
        concurrent: u64,
        output_limit_kib: u64,
        journal: &Path,
    ) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        format!(
            r#"concurrent = {concurrent}
log_format = "json"
shutdown_timeout = 60

[[runners]]
name = {name}
url = {url}
token = {token}
executor = "kubernetes"
output_limit = {output_limit_kib}

  [runners.kubernetes]
  namespace = {ns}
  pull_policy = "never"
  poll_timeout = 900

  [runners.keyhole]
  journal_dir = {journal}
  kube_api = {kube_api}
"#,
            name = q(&format!("bench-{name}")),
            url = q(&gitlab.url()),
            token = q(gitlab.runner_token()),
            ns = q(&self.ns.name),
            journal = q(&journal.display().to_string()),
            kube_api = q(&self.bed.env.apiserver_url),
        )
    }

    /// Starts a fake GitLab and a runner, and waits until the runner polls for jobs.
    async fn phase(&self, name: &str, concurrent: u64, output_limit_kib: u64) -> Result<Phase> {
        // Jobs skip the checkout (GIT_STRATEGY=none), so pods need not reach it: loopback.
        let gitlab = Coordinator::start(CoordinatorOptions::default()).await?;
        // The journal on a memory-backed volume, as docs/runner.md deploys it.
        let journal = tempfile::Builder::new()
            .prefix("keyhole-bench-journal-")
            .tempdir_in("/dev/shm")?;
        let config = self.config(&gitlab, name, concurrent, output_limit_kib, journal.path());
        let kubeconfig = self.bed.env.kubeconfig.display().to_string();
        let mut runner = RunnerProcess::start(
            &self.binary,
            &config,
            &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "info")],
        )?;
        runner.wait_ready(READY_DEADLINE).await?;
        gitlab.wait_for_pollers(1, READY_DEADLINE).await?;
        Ok(Phase {
            gitlab,
            runner,
            _journal: journal,
        })
    }
}

impl Phase {
    /// Stops the runner (its jobs are done); the fake GitLab stays for reading traces.
    async fn stop(self) -> Result<(RunnerLog, Coordinator)> {
        let log = self.runner.stop(STOP_GRACE).await?;
        Ok((log, self.gitlab))
    }

    fn short_job(&self, tag: &str) -> Result<EnqueuedJob> {
        self.gitlab
            .job()
            .name(tag)
            .variable("GIT_STRATEGY", "none")
            .script(["echo bench job $CI_JOB_ID"])
            .enqueue()
    }

    /// Waits for the job's end; an error names a job that did not succeed, with its trace end.
    async fn wait_success(&self, job: &EnqueuedJob) -> Result<()> {
        let done = self.gitlab.wait_for_final(job.id, JOB_DEADLINE).await?;
        if done.status != FinalStatus::Success {
            let trace = self.gitlab.trace(job.id);
            let tail = &trace[trace.len().saturating_sub(2000)..];
            bail!(
                "job {} ended {:?} ({:?}):\n{}",
                job.id,
                done.status,
                done.failure_reason,
                String::from_utf8_lossy(tail)
            );
        }
        Ok(())
    }
}

/// Per-job added latency of `jobs`, or an error naming the jobs the log has no figures for.
fn totals(log: &RunnerLog, jobs: &[EnqueuedJob]) -> Result<Vec<u64>> {
    let all = log.added_total_ms();
    let missing: Vec<u64> = jobs
        .iter()
        .map(|j| j.id)
        .filter(|id| !all.contains_key(id))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the runner logged no added_ms/final_ms for jobs {missing:?}; its problems:\n{}",
            log.problems.join("\n")
        );
    }
    Ok(jobs
        .iter()
        .filter_map(|j| all.get(&j.id).copied())
        .collect())
}

fn p(samples: &[u64], pct: f64) -> u64 {
    percentile(samples, pct).unwrap_or(0)
}

/// A percentile of one part (added or final) over `jobs`.
fn part(map: &std::collections::BTreeMap<u64, u64>, jobs: &[EnqueuedJob], pct: f64) -> u64 {
    let v: Vec<u64> = jobs
        .iter()
        .filter_map(|j| map.get(&j.id).copied())
        .collect();
    p(&v, pct)
}

/// P4: runner-added latency of sequential jobs.
async fn p4(bench: &Bench, n: u64) -> Result<()> {
    eprintln!("P4: {n} sequential jobs");
    let phase = bench.phase("p4", 1, 4096).await?;
    let mut jobs = Vec::new();
    for i in 0..n {
        let job = phase.short_job(&format!("p4-{i}"))?;
        phase.wait_success(&job).await?;
        jobs.push(job);
    }
    let (log, _gitlab) = phase.stop().await?;
    let t = totals(&log, &jobs)?;
    println!(
        "P4 p50_ms={} p99_ms={} jobs={n} added_p50_ms={} final_p50_ms={} runner_warnings={}",
        p(&t, 50.0),
        p(&t, 99.0),
        part(&log.added_ms, &jobs, 50.0),
        part(&log.final_ms, &jobs, 50.0),
        log.problem_count,
    );
    Ok(())
}

/// P5: peak RSS and added latency with `n` jobs at once.
async fn p5(bench: &Bench, n: u64) -> Result<()> {
    eprintln!("P5: {n} concurrent jobs");
    let phase = bench.phase("p5", n, 4096).await?;
    let started = Instant::now();
    let jobs = (0..n)
        .map(|i| phase.short_job(&format!("p5-{i}")))
        .collect::<Result<Vec<_>>>()?;
    let mut ok = Vec::new();
    for job in &jobs {
        match phase.wait_success(job).await {
            Ok(()) => ok.push(job.clone()),
            Err(e) => eprintln!("P5: {e:#}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss = phase.runner.peak_rss_kib()?;
    let (log, _gitlab) = phase.stop().await?;
    let t = totals(&log, &ok)?;
    println!(
        "P5 rss_kib={rss} p99_ms={} jobs={n} p50_ms={} added_p99_ms={} final_p99_ms={} failed={} seconds={seconds:.0} runner_warnings={}",
        p(&t, 99.0),
        p(&t, 50.0),
        part(&log.added_ms, &ok, 99.0),
        part(&log.final_ms, &ok, 99.0),
        jobs.len() - ok.len(),
        log.problem_count,
    );
    Ok(())
}

/// P6: a job writing `mib` MiB of counter lines; every line must reach GitLab's trace once.
async fn p6(bench: &Bench, mib: u64) -> Result<()> {
    let n = counter_lines_for(mib << 20);
    let expected = n * COUNTER_LINE_LEN;
    eprintln!("P6: one job writing {n} counter lines ({expected} bytes)");
    // The trace holds the runner's lines and the echoed command besides the output.
    let limit_kib = expected / 1024 + 1024;
    let phase = bench.phase("p6", 1, limit_kib).await?;
    let started = Instant::now();
    // One command line, so that no echoed command lands between the markers.
    let job = phase
        .gitlab
        .job()
        .name("p6")
        .variable("GIT_STRATEGY", "none")
        .script([format!(
            "printf 'KH%s\\n' BENCHSTART; {}; printf 'KH%s\\n' BENCHEND",
            counter_command(n)
        )])
        .enqueue()?;
    phase.wait_success(&job).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rss = phase.runner.peak_rss_kib()?;
    let cpu = phase.runner.cpu_time()?.as_secs_f64();
    let (log, gitlab) = phase.stop().await?;
    let trace = gitlab.trace(job.id);
    let Some(body) = between_marker_lines(&trace, b"KHBENCHSTART", b"KHBENCHEND") else {
        bail!(
            "the start marker is not in the trace ({} bytes); its end:\n{}",
            trace.len(),
            String::from_utf8_lossy(&trace[trace.len().saturating_sub(2000)..])
        );
    };
    let end_marker = trace.windows(11).any(|w| w == b"KHBENCHEND\n");
    // lost/duplicated/corrupt count lines (of 100 bytes).
    let CounterCheck {
        lost,
        duplicated,
        corrupt,
        identical,
        ..
    } = check_counter_log(body, n);
    println!(
        "P6 bytes={} lost={lost} duplicated={duplicated} rss_kib={rss} expected_bytes={expected} corrupt_lines={corrupt} identical={identical} end_marker={end_marker} seconds={seconds:.1} runner_cpu_s={cpu:.1} runner_warnings={}",
        body.len(),
        log.problem_count,
    );
    for line in &log.problems {
        eprintln!("P6 runner: {line}");
    }
    if !identical {
        let path = std::env::temp_dir().join(format!("keyhole-bench-p6-trace-{}", job.id));
        std::fs::write(&path, &trace)?;
        eprintln!(
            "P6: the trace differs from the counter log; it is in {}",
            path.display()
        );
    }
    Ok(())
}
