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
//! - `P10 case=… store_mib_s=… fetch_mib_s=… store_rss_kib=… fetch_rss_kib=…`: a job's
//!   artifacts through the real `keyhole-broker transfer store` and `transfer fetch` binary
//!   (`$KEYHOLE_BROKER_BIN`, the `broker` profile) against the coordinator on 127.0.0.1, no
//!   pod: `P10_FILES` (1000) files of 1 MiB, then one file of `P10_MIB` (1024) MiB, on disk,
//!   half random bytes and half log-like text. Store: pack (zip, the default level) and
//!   upload; fetch: download and extract into an empty project directory, checked against
//!   the original (every file's size, every 50th file's bytes). Peak RSS of each run from
//!   GNU time (`ru_maxrss`). The store split into pack and upload at the moment the upload
//!   request reaches the coordinator, the fetch into download and extract at the moment the
//!   downloaded archive is whole in the scratch dir. One more store line per case with
//!   `ARTIFACT_COMPRESSION_LEVEL=fastest`. The goals (`P10_GOAL_RSS_MIB`,
//!   `P10_GOAL_PACK_MIB_S`, set by `scripts/bench`) are printed as PASS or MISS.
//!
//! - `P7 variant=… keyhole_ms=… floor_ms=… ratio=…`: the time from a job handed to the
//!   runner (GitLab mode, long-polling the coordinator) to its first script command (`cat
//!   /proc/uptime`), against a bare pod of the same image and hardening from its create request
//!   to its first command, medians of `P7_RUNS` (7) runs each, floor and variants taking turns
//!   in the same run. Both ends read the kernel's uptime (pods share the node's kernel). Three
//!   variants: no secrets, one Vault secret, a repository checkout. `volume_floor_ms`: the
//!   bare pod with one memory-backed `emptyDir` mounted, what any volume costs (the secrets
//!   need one). `sidecar_floor_ms`: the bare pod with a native sidecar started before it
//!   (postStart returning at once), the kubelet's own cost of the one container step a job's
//!   ordering needs. `one_sync_floor_ms`: the bare pod behind a regular gate container, both
//!   sharing a memory-backed volume, whose postStart hook waits for a marker its own process
//!   writes: the same ordering within one kubelet sync, the shape of Keyhole's job pod.
//!
//! - `P8 api_requests_per_job=…`: the Kubernetes API requests the runner makes per job, as the
//!   apiserver's audit log counts them (`scripts/lib/audit.sh`) under the runner's own user: a
//!   ServiceAccount with the chart's runner and journal Roles, the journal in a Secret as the
//!   chart deploys it. `P8_JOBS` (100) short jobs, `concurrent = 10`; by verb and resource.
//! - `P9 jobs_per_min=… floor_per_min=… ratio=…`: `P9_JOBS` (500) short jobs through one runner
//!   with `concurrent = P9_CONCURRENT` (50), enqueued at once, against as many bare pods of the
//!   same image and hardening created, run to completion and deleted by as many workers; the
//!   runner's peak RSS and the jobs that did not succeed. `one_sync_floor_per_min`: the same
//!   with P7's one-sync floor pods (a gate container before the build container, a shared
//!   memory-backed volume), what the job pod's shape alone leaves of the node's throughput.
//!
//! Arguments name the figures to run (`P4 P5 P6 P7 P8 P9 P10`; all when none). Figures are printed,
//! not asserted. P4–P6 need the bed (`scripts/testbed up`) and the broker image
//! `keyhole.local/broker:dev` on it; P10 needs neither, only `/usr/bin/time` (GNU time).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use keyhole_tests::bench::api::{JOURNAL_SECRET, Requests, RunnerIdentity, runner_identity};
use keyhole_tests::bench::artifacts::{
    BrokerRun, RoundTrip, Shape, TransferDirs, artifacts_entry, compare_trees, fetch_plan,
    free_bytes, mib_per_s, run_transfer, store_plan, take_job, verdict, write_data,
};
use keyhole_tests::bench::start::{first_uptime_line, median, uptime_now};
use keyhole_tests::bench::{
    COUNTER_LINE_LEN, CounterCheck, between_marker_lines, check_counter_log, counter_command,
    counter_lines_for, percentile,
};
use keyhole_tests::coordinator::{Endpoint, EnqueuedJob, FinalStatus};
use keyhole_tests::{
    Coordinator, CoordinatorOptions, RunnerLog, RunnerProcess, TestBed, TestNamespace, VaultAdmin,
    broker_binary, pod_logs, run_pod_to_completion, runner_binary,
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

/// The figures this bench prints, in the order it runs them.
const FIGURES: [&str; 7] = ["P4", "P5", "P6", "P7", "P8", "P9", "P10"];

/// The figures named on the command line (any letter case), all of them when none is.
fn selected_figures() -> Result<Vec<&'static str>> {
    let mut selected = Vec::new();
    for arg in std::env::args().skip(1) {
        let Some(figure) = FIGURES.iter().find(|f| f.eq_ignore_ascii_case(&arg)) else {
            bail!("unknown figure {arg:?}; this bench prints {FIGURES:?}");
        };
        selected.push(*figure);
    }
    Ok(if selected.is_empty() {
        FIGURES.to_vec()
    } else {
        selected
    })
}

async fn run() -> Result<()> {
    let figures = selected_figures()?;
    let size = |figure: &str, var: &str, default: u64| {
        if figures.contains(&figure) {
            env_number(var, default)
        } else {
            Ok(0)
        }
    };
    // 0 skips a phase.
    let p4_jobs = size("P4", "P4_JOBS", 20)?;
    let p5_jobs = size("P5", "P5_JOBS", 100)?;
    let p6_mib = size("P6", "P6_MIB", 100)?;
    let p7_runs = size("P7", "P7_RUNS", 7)?;
    let p8_jobs = size("P8", "P8_JOBS", 100)?;
    let p9_jobs = size("P9", "P9_JOBS", 500)?;
    let p10_files = size("P10", "P10_FILES", 1000)?;
    let p10_mib = size("P10", "P10_MIB", 1024)?;
    if p4_jobs + p5_jobs + p6_mib + p7_runs + p8_jobs + p9_jobs > 0 {
        let bench = Bench::new().await?;
        if p4_jobs > 0 {
            p4(&bench, p4_jobs).await?;
        }
        if p5_jobs > 0 {
            p5(&bench, p5_jobs).await?;
        }
        if p6_mib > 0 {
            p6(&bench, p6_mib).await?;
        }
        if p7_runs > 0 {
            p7(&bench, p7_runs).await?;
        }
        if p8_jobs > 0 || p9_jobs > 0 {
            // An hour: P9's 500 jobs take minutes.
            let identity = runner_identity(&bench.bed, &bench.ns.name, 3600).await?;
            if p8_jobs > 0 {
                p8(&bench, &identity, p8_jobs).await?;
            }
            if p9_jobs > 0 {
                let concurrent = env_number("P9_CONCURRENT", 50)?;
                p9(&bench, &identity, p9_jobs, concurrent).await?;
            }
        }
    }
    if p10_files + p10_mib > 0 {
        let goals = Goals {
            rss_mib: env_number("P10_GOAL_RSS_MIB", 64)?,
            pack_mib_s: env_number("P10_GOAL_PACK_MIB_S", 200)?,
        };
        let broker = broker_binary()?;
        for shape in [Shape::Files(p10_files), Shape::OneFile(p10_mib)] {
            if shape.bytes() > 0 {
                p10(&broker, shape, &goals).await?;
            }
        }
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
        let journal = journal_dir()?;
        let config = self.config(&gitlab, name, concurrent, output_limit_kib, journal.path());
        self.start_phase(gitlab, &config, &self.bed.env.kubeconfig, journal)
            .await
    }

    /// Starts the runner binary with `config`, as the user of `kubeconfig`, and waits until it
    /// is ready.
    async fn start_runner(&self, config: &str, kubeconfig: &Path) -> Result<RunnerProcess> {
        let kubeconfig = kubeconfig.display().to_string();
        let mut runner = RunnerProcess::start(
            &self.binary,
            config,
            &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "info")],
        )?;
        runner.wait_ready(READY_DEADLINE).await?;
        Ok(runner)
    }

    /// A phase of `gitlab` and a runner with `config` (its journal in `journal`), once the
    /// runner polls for jobs.
    async fn start_phase(
        &self,
        gitlab: Coordinator,
        config: &str,
        kubeconfig: &Path,
        journal: tempfile::TempDir,
    ) -> Result<Phase> {
        let runner = self.start_runner(config, kubeconfig).await?;
        gitlab.wait_for_pollers(1, READY_DEADLINE).await?;
        Ok(Phase {
            gitlab,
            runner,
            _journal: journal,
        })
    }
}

/// A runner's journal directory, on a memory-backed volume as docs/runner.md deploys it.
fn journal_dir() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("keyhole-bench-journal-")
        .tempdir_in("/dev/shm")?)
}

impl Bench {
    /// [`Bench::phase`] as the runner's own ServiceAccount (`identity`), with the journal in
    /// its Secret as the chart deploys it.
    async fn phase_as(
        &self,
        name: &str,
        concurrent: u64,
        identity: &RunnerIdentity,
    ) -> Result<Phase> {
        let gitlab = Coordinator::start(CoordinatorOptions::default()).await?;
        let journal = journal_dir()?;
        let config = self
            .config(&gitlab, name, concurrent, 4096, journal.path())
            .replace(
                "  [runners.keyhole]\n",
                &format!(
                    "  [runners.keyhole]\n  journal_secret = \"{}/{JOURNAL_SECRET}\"\n",
                    self.ns.name
                ),
            );
        self.start_phase(gitlab, &config, &identity.kubeconfig, journal)
            .await
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

    /// Enqueues `n` short jobs at once (`<figure>-<i>`, in lower case) and waits for each; the
    /// ones that succeeded. Each that did not is a line `<figure>: <why>` on stderr.
    async fn run_short_jobs(&self, figure: &str, n: u64) -> Result<Vec<EnqueuedJob>> {
        let prefix = figure.to_lowercase();
        let jobs = (0..n)
            .map(|i| self.short_job(&format!("{prefix}-{i}")))
            .collect::<Result<Vec<_>>>()?;
        let mut ok = Vec::new();
        for job in jobs {
            match self.wait_success(&job).await {
                Ok(()) => ok.push(job),
                Err(e) => eprintln!("{figure}: {e:#}"),
            }
        }
        Ok(ok)
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
    let ok = phase.run_short_jobs("P5", n).await?;
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
        n - ok.len() as u64,
        log.problem_count,
    );
    Ok(())
}

/// The variants of P7: what the job asks for besides its one command.
const P7_VARIANTS: [&str; 3] = ["none", "vault", "checkout"];

/// P7: job start (handed out → first command) against the bare-pod floor, medians of `runs`.
async fn p7(bench: &Bench, runs: u64) -> Result<()> {
    eprintln!("P7: {runs} runs of the floor and of each variant ({P7_VARIANTS:?})");
    let ns = bench.ns.name.clone();
    let vault = VaultAdmin::new(&bench.bed.env);
    vault
        .grant_job_in_namespace(&ns, &[format!("kv/data/{ns}/*")])
        .await?;
    vault
        .write(
            &format!("kv/data/{ns}/p7"),
            json!({"data": {"value": "p7-bench-value"}}),
        )
        .await?;
    Api::<ServiceAccount>::namespaced(bench.bed.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "job"}}))?,
        )
        .await
        .context("creating the ServiceAccount job")?;
    // On the bed's bridge: the checkout variant's pods fetch the repository from it.
    let gitlab = Coordinator::start(CoordinatorOptions {
        bind: std::net::SocketAddr::from(([10, 213, 0, 1], 0)),
        long_poll: Duration::from_secs(30),
        ..CoordinatorOptions::default()
    })
    .await?;
    let sha = gitlab.create_repo("bench/p7", &[("README.md", "p7\n")])?;
    let journal = journal_dir()?;
    let config = bench
        .config(&gitlab, "p7", 1, 4096, journal.path())
        .replace(
            "  [runners.keyhole]\n",
            &format!(
                "  service_account = \"job\"\n\n  [runners.keyhole]\n  vault_addr = {:?}\n  vault_role = {ns:?}\n",
                bench.bed.env.vault_pod_addr
            ),
        );
    let runner = bench
        .start_runner(&config, &bench.bed.env.kubeconfig)
        .await?;
    let pods: Api<Pod> = Api::namespaced(bench.bed.client.clone(), &ns);
    let mut floors: Vec<(FloorShape, Vec<f64>)> =
        FloorShape::ALL.iter().map(|s| (*s, Vec::new())).collect();
    let mut variants: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for run in 0..runs {
        for (shape, samples) in &mut floors {
            samples.push(p7_floor(&pods, run, *shape).await?);
        }
        for variant in P7_VARIANTS {
            gitlab.wait_for_pollers(1, READY_DEADLINE).await?;
            let job = gitlab.job().name(&format!("p7-{variant}-{run}"));
            let job = match variant {
                "vault" => job
                    .variable("GIT_STRATEGY", "none")
                    .variable("KEYHOLE_SECRET_P7", &format!("vault:kv/{ns}/p7#value")),
                "checkout" => job.project(7, "bench/p7").sha(&sha),
                _ => job.variable("GIT_STRATEGY", "none"),
            };
            let handed_out = uptime_now()?;
            let job = job.script(["cat /proc/uptime"]).enqueue()?;
            let done = gitlab.wait_for_final(job.id, JOB_DEADLINE).await?;
            let trace = String::from_utf8_lossy(&gitlab.trace(job.id)).into_owned();
            ensure!(
                done.status == FinalStatus::Success,
                "P7 {variant} job failed:\n{trace}"
            );
            let ran = first_uptime_line(&trace).with_context(|| {
                format!("no uptime line in the {variant} job's trace:\n{trace}")
            })?;
            variants.entry(variant).or_default().push(ran - handed_out);
        }
    }
    runner.stop(STOP_GRACE).await?;
    print_p7(runs, &floors, &variants);
    Ok(())
}

/// P7's lines: one per variant against the bare floor, with every floor's median beside it;
/// each floor's samples on stderr.
fn print_p7(
    runs: u64,
    floors: &[(FloorShape, Vec<f64>)],
    variants: &std::collections::BTreeMap<&str, Vec<f64>>,
) {
    let ms = |samples: &[f64]| median(samples).unwrap_or(0.0) * 1000.0;
    let listed = |samples: &[f64]| {
        let all: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.0}", s * 1000.0))
            .collect();
        all.join(",")
    };
    let floor_ms = floors
        .iter()
        .find(|(shape, _)| *shape == FloorShape::Bare)
        .map_or(0.0, |(_, samples)| ms(samples));
    let other_floors: Vec<String> = floors
        .iter()
        .filter(|(shape, _)| *shape != FloorShape::Bare)
        .map(|(shape, samples)| format!("{}_ms={:.0}", shape.key(), ms(samples)))
        .collect();
    for variant in P7_VARIANTS {
        let samples = variants.get(variant).map_or(&[][..], |v| v.as_slice());
        let keyhole_ms = ms(samples);
        let goal = if variant == "checkout" { 1.5 } else { 1.25 };
        let ratio = keyhole_ms / floor_ms.max(1.0);
        println!(
            "P7 variant={variant} keyhole_ms={keyhole_ms:.0} floor_ms={floor_ms:.0} ratio={ratio:.2} goal={}(<={goal}) {} runs={runs} keyhole_samples_ms={}",
            verdict(ratio <= goal),
            other_floors.join(" "),
            listed(samples)
        );
    }
    for (shape, samples) in floors {
        eprintln!("P7 {} samples_ms={}", shape.key(), listed(samples));
    }
}

/// The floors P7 and P9 measure, each a pod with the build container's image, hardening and
/// command, P7's from its create request to that command.
#[derive(Clone, Copy, PartialEq)]
enum FloorShape {
    /// The build container alone.
    Bare,
    /// The build container with one memory-backed `emptyDir` mounted: what one volume costs.
    /// The kubelet starts a pod's containers only once its volumes are mounted, and checks
    /// that at once and then every 300 ms (`podAttachAndMountRetryInterval` in
    /// pkg/kubelet/volumemanager); the volume manager's loops (100 ms each) never have them
    /// ready for the first check, so a pod with any volume waits at least that 300 ms.
    Volume,
    /// A native sidecar whose postStart hook returns at once, started before the build
    /// container as the broker once was: what the kubelet alone adds for one more container
    /// step (the next one waits for its status relist, once a second).
    Sidecar,
    /// Two regular containers sharing a memory-backed volume: a gate whose postStart hook
    /// returns only once its own process has written a marker, then the build container,
    /// which fails unless the marker is there. The kubelet starts a pod's regular containers
    /// in order in one sync, each after the one before's postStart hook returned, so the gate
    /// holds the build container back without a relist: the floor for a job pod that keeps
    /// the broker-first ordering (the layout Keyhole has).
    OneSync,
}

impl FloorShape {
    /// Every shape, in the order P7 runs them.
    const ALL: [FloorShape; 4] = [
        FloorShape::Bare,
        FloorShape::Volume,
        FloorShape::Sidecar,
        FloorShape::OneSync,
    ];

    /// The shape's name in the bench's output.
    fn key(self) -> &'static str {
        match self {
            FloorShape::Bare => "floor",
            FloorShape::Volume => "volume_floor",
            FloorShape::Sidecar => "sidecar_floor",
            FloorShape::OneSync => "one_sync_floor",
        }
    }

    /// A pod of this shape named by `metadata`, its build container running `command` (the
    /// one-sync shape's after checking the gate's marker, then releasing the gate).
    fn pod(self, metadata: serde_json::Value, command: &str) -> Result<Pod> {
        let command = match self {
            FloorShape::OneSync => format!("test -e /gate/ready && {command} && touch /gate/done"),
            _ => command.to_owned(),
        };
        let mut pod = floor_pod(metadata, &command)?;
        let spec = pod.spec.as_mut().context("floor pod without spec")?;
        let hardening =
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        let gate_mount = json!([{"name": "gate", "mountPath": "/gate"}]);
        let gate_volume = json!({"name": "gate", "emptyDir": {"medium": "Memory"}});
        match self {
            FloorShape::Bare => {}
            FloorShape::Volume => {
                spec.volumes = Some(vec![serde_json::from_value(gate_volume)?]);
                spec.containers[0].volume_mounts = Some(serde_json::from_value(gate_mount)?);
            }
            FloorShape::Sidecar => {
                spec.init_containers = Some(vec![serde_json::from_value(json!({
                    "name": "sidecar", "image": "keyhole.local/busybox:1", "imagePullPolicy": "Never",
                    "restartPolicy": "Always",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
                    "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", ":"]}}},
                    "securityContext": hardening
                }))?]);
            }
            FloorShape::OneSync => {
                spec.volumes = Some(vec![serde_json::from_value(gate_volume)?]);
                spec.containers[0].volume_mounts =
                    Some(serde_json::from_value(gate_mount.clone())?);
                spec.containers.insert(
                    0,
                    serde_json::from_value(json!({
                        "name": "gate", "image": "keyhole.local/busybox:1", "imagePullPolicy": "Never",
                        "command": ["sh", "-c",
                            "touch /gate/ready; until [ -e /gate/done ]; do sleep 0.05; done"],
                        "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c",
                            "until [ -e /gate/ready ]; do sleep 0.005; done"]}}},
                        "volumeMounts": gate_mount,
                        "securityContext": hardening
                    }))?,
                );
            }
        }
        Ok(pod)
    }
}

/// One floor pod of `shape`: create request → its first command, in seconds.
async fn p7_floor(pods: &Api<Pod>, run: u64, shape: FloorShape) -> Result<f64> {
    let name = format!("p7-{}-{run}", shape.key().replace('_', "-"));
    let pod = shape.pod(json!({"name": name}), "cat /proc/uptime")?;
    let created = uptime_now()?;
    let done = run_pod_to_completion(pods, &pod).await?;
    let phase = done.status.and_then(|s| s.phase).unwrap_or_default();
    ensure!(phase == "Succeeded", "P7 floor pod {name} ended {phase}");
    let log = pod_logs(pods, &name, "build").await?;
    pods.delete(&name, &Default::default()).await?;
    let ran = first_uptime_line(&log).with_context(|| format!("floor pod log: {log:?}"))?;
    Ok(ran - created)
}

/// A bare pod with `metadata`, running `command` in a build container of the jobs' image and
/// hardening.
fn floor_pod(metadata: serde_json::Value, command: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": metadata,
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000,
                "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "build", "image": "keyhole.local/busybox:1",
                "imagePullPolicy": "Never", "command": ["sh", "-c", command],
                "securityContext": {"allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}}}]
        }
    }))?)
}

/// P8's goal: Kubernetes API requests per job.
const P8_GOAL: f64 = 10.0;

/// P8: the runner's Kubernetes API requests per job, counted by the apiserver's audit log
/// under the runner's own user, over `n` short jobs (10 at a time).
async fn p8(bench: &Bench, identity: &RunnerIdentity, n: u64) -> Result<()> {
    eprintln!("P8: {n} jobs, counting the runner's API requests in the apiserver's audit log");
    let audit_dir = bench.bed.path("logs");
    let before = keyhole_tests::bench::api::count_requests_in(&audit_dir, &identity.user)?;
    let phase = bench.phase_as("p8", 10, identity).await?;
    let started = Instant::now();
    let failed = n - phase.run_short_jobs("P8", n).await?.len() as u64;
    let seconds = started.elapsed().as_secs_f64();
    let (log, _gitlab) = phase.stop().await?;
    // The log backend writes each event as its request ends; a moment for the last ones.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = keyhole_tests::bench::api::count_requests_in(&audit_dir, &identity.user)?;
    let diff = |a: &std::collections::BTreeMap<String, u64>,
                b: &std::collections::BTreeMap<String, u64>| {
        a.iter()
            .map(|(k, v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0))))
            .filter(|(_, v)| *v > 0)
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    // Saturating: a rotation may have dropped the oldest file (scripts/lib/audit.sh).
    let total = after.total.saturating_sub(before.total);
    let per_job = total as f64 / n.max(1) as f64;
    println!(
        "P8 api_requests_per_job={per_job:.2} goal={}(<={P8_GOAL}) requests={total} jobs={n} failed={failed} by_verb={} by_resource={} seconds={seconds:.0} runner_warnings={}",
        verdict(per_job <= P8_GOAL),
        Requests::breakdown(&diff(&after.by_verb, &before.by_verb)),
        Requests::breakdown(&diff(&after.by_resource, &before.by_resource)),
        log.problem_count,
    );
    print_problems("P8", &log);
    Ok(())
}

/// The runner's first ten problems (warnings, errors), a line `<figure> runner: <line>` each on
/// stderr.
fn print_problems(figure: &str, log: &RunnerLog) {
    for line in log.problems.iter().take(10) {
        eprintln!("{figure} runner: {line}");
    }
}

/// P9's goals: throughput against the bare-pod floor, the runner's peak RSS.
const P9_GOAL_RATIO: f64 = 0.8;
const P9_GOAL_RSS_MIB: u64 = 64;

/// P9: `n` short jobs through one runner with `concurrent` slots against `n` bare pods run by
/// `concurrent` workers; jobs (pods) per minute each.
async fn p9(bench: &Bench, identity: &RunnerIdentity, n: u64, concurrent: u64) -> Result<()> {
    eprintln!("P9: {n} bare pods, {n} one-sync floor pods, then {n} jobs, {concurrent} at a time");
    let floor_s = p9_floor(bench, n, concurrent, FloorShape::Bare).await?;
    let one_sync_s = p9_floor(bench, n, concurrent, FloorShape::OneSync).await?;
    let phase = bench.phase_as("p9", concurrent, identity).await?;
    let started = Instant::now();
    let lost = n - phase.run_short_jobs("P9", n).await?.len() as u64;
    let keyhole_s = started.elapsed().as_secs_f64();
    let rss = phase.runner.peak_rss_kib()?;
    let cpu = phase.runner.cpu_time()?.as_secs_f64();
    let (log, _gitlab) = phase.stop().await?;
    let per_min = |s: f64| n as f64 * 60.0 / s.max(0.001);
    let ratio = per_min(keyhole_s) / per_min(floor_s);
    println!(
        "P9 jobs_per_min={:.0} floor_per_min={:.0} ratio={ratio:.2} goal={}(>={P9_GOAL_RATIO}) rss_kib={rss} rss_goal={}(<{P9_GOAL_RSS_MIB}MiB) jobs={n} concurrent={concurrent} lost={lost} seconds={keyhole_s:.0} floor_seconds={floor_s:.0} runner_cpu_s={cpu:.1} runner_warnings={} one_sync_floor_per_min={:.0} one_sync_floor_seconds={one_sync_s:.0}",
        per_min(keyhole_s),
        per_min(floor_s),
        verdict(ratio >= P9_GOAL_RATIO),
        verdict(rss < P9_GOAL_RSS_MIB * 1024),
        log.problem_count,
        per_min(one_sync_s),
    );
    print_problems("P9", &log);
    Ok(())
}

/// P9's floor: `n` pods of `shape` (the build container's image and hardening, the jobs'
/// command), `concurrent` at a time, each created, seen to succeed (one watch of them all, as a
/// lean controller would) and deleted. The seconds it took.
async fn p9_floor(bench: &Bench, n: u64, concurrent: u64, shape: FloorShape) -> Result<f64> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio::sync::oneshot;
    type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<String>>>>;
    let pods: Api<Pod> = Api::namespaced(bench.bed.client.clone(), &bench.ns.name);
    let waiters: Waiters = Arc::default();
    let watch = tokio::spawn({
        let (pods, waiters) = (pods.clone(), waiters.clone());
        async move {
            use futures::StreamExt;
            use kube::runtime::{WatchStreamExt, watcher};
            let stream = watcher(pods, watcher::Config::default().labels("bench=p9-floor"))
                .default_backoff()
                .applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(pod) = stream.next().await {
                let Ok(pod) = pod else { continue };
                let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
                if phase == "Succeeded" || phase == "Failed" {
                    let name = pod.metadata.name.unwrap_or_default();
                    let waiter = waiters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&name);
                    if let Some(w) = waiter {
                        let _ = w.send(phase);
                    }
                }
            }
        }
    });
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrent {
        let (pods, waiters, next) = (pods.clone(), waiters.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let name = format!("p9-{}-{i}", shape.key().replace('_', "-"));
                let pod = shape.pod(
                    json!({"name": name, "labels": {"bench": "p9-floor"}}),
                    "echo bench job",
                )?;
                let (tx, rx) = oneshot::channel();
                waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.clone(), tx);
                pods.create(&PostParams::default(), &pod).await?;
                let phase = tokio::time::timeout(JOB_DEADLINE, rx)
                    .await
                    .with_context(|| format!("floor pod {name} did not end"))??;
                ensure!(phase == "Succeeded", "floor pod {name} ended {phase}");
                pods.delete(&name, &Default::default()).await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let seconds = started.elapsed().as_secs_f64();
    watch.abort();
    Ok(seconds)
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

/// P10's goals (from `scripts/bench`): each transfer's peak RSS below `rss_mib`, packing at
/// `pack_mib_s` or faster.
struct Goals {
    rss_mib: u64,
    pack_mib_s: u64,
}

/// `bytes` over `time`, in MiB/s, or `-` when the phase boundary was not seen.
fn rate(bytes: u64, time: Option<Duration>) -> String {
    time.map_or_else(|| "-".into(), |t| format!("{:.0}", mib_per_s(bytes, t)))
}

/// The first phase of `run` (up to its mark) and the second (from the mark to the exit).
fn phases(run: &BrokerRun) -> (Option<Duration>, Option<Duration>) {
    (run.mark, run.mark.map(|m| run.wall.saturating_sub(m)))
}

/// The packing rate the goal is held against: up to the upload request, or the whole store
/// when that moment was not seen.
fn pack_rate(bytes: u64, store: &BrokerRun) -> f64 {
    mib_per_s(bytes, store.mark.unwrap_or(store.wall))
}

/// `<dir>/output.log` says the broker packed `files` files.
fn check_packed(dirs: &TransferDirs, files: u64) -> Result<()> {
    let output = std::fs::read_to_string(&dirs.log)?;
    ensure!(
        output.contains(&format!(" files={files} size=")),
        "transfer store did not report {files} files uploaded:\n{output}"
    );
    Ok(())
}

/// What the transfers of one P10 data set share: the broker, the coordinator (and a client
/// taking its jobs) and the project directory whose `data` holds the set.
struct P10Case<'a> {
    broker: &'a Path,
    gitlab: &'a Coordinator,
    http: &'a reqwest::Client,
    project: &'a Path,
    shape: Shape,
    files: u64,
}

impl P10Case<'_> {
    /// A job `name` with `data` as its artifacts, taken from GitLab, and one `transfer store` of
    /// them (its dirs under `dir`, at `compression` or the default level); the job, the run and
    /// the size of the archive GitLab then holds.
    async fn store(
        &self,
        name: &str,
        dir: &Path,
        compression: Option<&str>,
    ) -> Result<(EnqueuedJob, BrokerRun, u64)> {
        let gitlab = self.gitlab;
        let job = gitlab
            .job()
            .name(name)
            .artifacts(artifacts_entry(&["data"]))
            .enqueue()?;
        take_job(gitlab, self.http, &job).await?;
        let level = compression
            .map(|c| format!(", ARTIFACT_COMPRESSION_LEVEL={c}"))
            .unwrap_or_default();
        eprintln!("P10 {}: transfer store{level}", self.shape);
        let plan = store_plan(gitlab, &job, self.project, &["data"], compression);
        let dirs = TransferDirs::create(dir, &plan, Some(0))?;
        let uploads = || gitlab.counters().requests(Endpoint::UploadArtifacts);
        let before = uploads();
        let run = run_transfer(self.broker, "store", &dirs, || uploads() > before).await?;
        check_packed(&dirs, self.files)?;
        let archive = gitlab
            .artifacts(job.id)
            .into_iter()
            .find(|a| a.artifact_type == "archive")
            .context("transfer store exited 0, but GitLab holds no archive of the job")?;
        Ok((job, run, archive.size))
    }
}

/// P10: a job's artifacts of `shape` through `keyhole-broker transfer store`, a dependent
/// job's `transfer fetch`, and one more store at `fastest`, against a coordinator of its own.
async fn p10(broker: &Path, shape: Shape, goals: &Goals) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bytes = shape.bytes();
    // On disk (the system temp dir), as a job's project directory and the transfer
    // containers' scratch dir are. Removed when the case ends, as are the coordinator's files.
    let work = tempfile::Builder::new()
        .prefix("keyhole-bench-p10-")
        .tempdir()?;
    // The data, the archive in scratch and at GitLab (twice: the fastest store), the copy.
    let need = bytes * 4 + (1 << 30);
    let free = free_bytes(work.path())?;
    ensure!(
        free >= need,
        "P10 {shape} needs about {} MiB free in {}; {} MiB are",
        need >> 20,
        work.path().display(),
        free >> 20
    );
    eprintln!("P10 {shape}: writing the data set");
    let project = work.path().join("project");
    let data = project.join("data");
    write_data(&data, shape)?;
    let files = match shape {
        Shape::Files(n) => n,
        Shape::OneFile(_) => 1,
    };

    let gitlab = Coordinator::start(CoordinatorOptions {
        max_artifacts_size: bytes * 2,
        ..CoordinatorOptions::default()
    })
    .await?;
    let http = reqwest::Client::new();
    let case = P10Case {
        broker,
        gitlab: &gitlab,
        http: &http,
        project: &project,
        shape,
        files,
    };
    let (build, store, archive) = case
        .store("p10-build", &work.path().join("store"), None)
        .await?;

    let test = gitlab
        .job()
        .name("p10-test")
        .dependency(build.id, "p10-build")
        .enqueue()?;
    let payload = take_job(&gitlab, &http, &test).await?;
    let fetched = work.path().join("fetched");
    std::fs::create_dir(&fetched)?;
    let plan = fetch_plan(&gitlab, &test, &fetched, &payload)?;
    let dirs = TransferDirs::create(&work.path().join("fetch"), &plan, None)?;
    // Where the broker downloads the archive to before it extracts it.
    let download = dirs.scratch.join(format!("download-{}.zip", build.id));
    eprintln!("P10 {shape}: transfer fetch");
    let fetch = run_transfer(broker, "fetch", &dirs, || {
        std::fs::metadata(&download).is_ok_and(|m| m.len() >= archive)
    })
    .await?;
    let RoundTrip {
        files: copied,
        bytes: copied_bytes,
        sampled,
    } = compare_trees(&data, &fetched.join("data"), 50)
        .with_context(|| format!("P10 {shape}: the fetched copy is not the original"))?;
    ensure!(
        copied == files && copied_bytes == bytes,
        "P10 {shape}: the data set has {copied} files of {copied_bytes} bytes, not {files} of {bytes}"
    );
    std::fs::remove_dir_all(&fetched)?;

    let (pack, upload) = phases(&store);
    let (download_time, extract) = phases(&fetch);
    let rss_met = store.peak_rss_kib.max(fetch.peak_rss_kib) < goals.rss_mib * 1024;
    let pack_met = pack_rate(bytes, &store) >= goals.pack_mib_s as f64;
    println!(
        "P10 case={shape} files={files} bytes={bytes} store_mib_s={:.0} fetch_mib_s={:.0} store_rss_kib={} fetch_rss_kib={} archive_bytes={archive} pack_mib_s={} upload_mib_s={} download_mib_s={} extract_mib_s={} store_s={:.2} fetch_s={:.2} store_cpu_s={:.2} fetch_cpu_s={:.2} sampled_files={sampled} rss_goal={}(<{}MiB) pack_goal={}(>={}MiB/s)",
        mib_per_s(bytes, store.wall),
        mib_per_s(bytes, fetch.wall),
        store.peak_rss_kib,
        fetch.peak_rss_kib,
        rate(bytes, pack),
        rate(archive, upload),
        rate(archive, download_time),
        rate(bytes, extract),
        store.wall.as_secs_f64(),
        fetch.wall.as_secs_f64(),
        store.cpu.as_secs_f64(),
        fetch.cpu.as_secs_f64(),
        verdict(rss_met),
        goals.rss_mib,
        verdict(pack_met),
        goals.pack_mib_s,
    );

    // The same store at the level a job can choose for speed (deflate level 1).
    let (_, fastest, fastest_archive) = case
        .store(
            "p10-build-fastest",
            &work.path().join("store-fastest"),
            Some("fastest"),
        )
        .await?;
    let (pack, upload) = phases(&fastest);
    println!(
        "P10 case={shape} compression=fastest store_mib_s={:.0} store_rss_kib={} archive_bytes={fastest_archive} pack_mib_s={} upload_mib_s={} store_s={:.2} store_cpu_s={:.2} pack_goal={}(>={}MiB/s)",
        mib_per_s(bytes, fastest.wall),
        fastest.peak_rss_kib,
        rate(bytes, pack),
        rate(fastest_archive, upload),
        fastest.wall.as_secs_f64(),
        fastest.cpu.as_secs_f64(),
        verdict(pack_rate(bytes, &fastest) >= goals.pack_mib_s as f64),
        goals.pack_mib_s,
    );
    drop(http);
    gitlab.shutdown().await;
    Ok(())
}
