//! `keyhole-runner run`: the GitLab service. Long-polls for jobs, runs up to `concurrent` at
//! once, reports each to the end (the final state is retried until GitLab has it), recovers
//! jobs a crashed predecessor left behind, reaps orphaned pods, and on SIGTERM stops taking
//! jobs and lets running ones finish within `shutdown_timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::{Config, RunnerConfig};
use crate::connect::{gitlab_client, kube_client};
use crate::execute::{
    Control, FailureKind, JobRun, Outcome, PodWatch, TraceChunk, TraceWriter, execute_timed,
};
use crate::gitlab::{
    FailureReason, GitlabClient, JobOutcome, JobPayload, JobRequest, JobSession, PayloadError,
    RemoteStatus, TraceSender,
};
use crate::journal::{DirJournal, Entry, Journal, SecretJournal};
use crate::metrics::Metrics;
use crate::prepare::prepare;
use crate::reaper::ActiveJob;

pub(crate) mod error;
pub use error::ServiceError;

/// How often the reaper looks for orphaned pods: with [`crate::instance::LEASE_DURATION`], the
/// pods of a runner process that died go within about a minute.
const REAP_INTERVAL: Duration = Duration::from_secs(30);

/// The jobs this process runs, by runner (label value) and job id, with their control
/// channels (cancel/abort). One map for all of the process's runners: the reaper of each must
/// see the jobs of all, since they share the instance label.
type ActiveJobs = Arc<Mutex<BTreeMap<ActiveJob, watch::Sender<Control>>>>;

/// What every runner of this process shares.
#[derive(Clone)]
struct Process {
    /// This process's instance id (see [`crate::instance`]).
    instance: Arc<str>,
    metrics: Metrics,
    active: ActiveJobs,
}

/// Shared state of one `[[runners]]` entry's service.
#[derive(Clone)]
struct Service {
    runner: Arc<RunnerConfig>,
    gitlab: GitlabClient,
    kube: kube::Client,
    metrics: Metrics,
    journal: Option<Journal>,
    instance: Arc<str>,
    active: ActiveJobs,
    /// The watch of this process's job pods in the runner's namespace, shared by its jobs
    /// and by the runners of this process that use the same namespace.
    pod_watch: Option<PodWatch>,
}

/// Runs the service until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), ServiceError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    run_until(config, stop_rx, None).await
}

/// [`run`] with the stop signal given (tests stop it without signals) and, optionally, the
/// Kubernetes client to use instead of the inferred one.
///
/// Every `[[runners]]` entry is served, as gitlab-runner does: each asks its GitLab with its
/// own token for at most its `limit` of jobs, and `concurrent` bounds them all together.
pub async fn run_until(
    config: Config,
    stop: watch::Receiver<bool>,
    kube: Option<kube::Client>,
) -> Result<(), ServiceError> {
    if config.runners.is_empty() {
        return Err(ServiceError::NoRunners);
    }
    check_runner_names(&config.runners)?;
    let metrics = Metrics::new();
    let process = Process {
        instance: crate::instance::instance_id(config.instance.as_deref()).into(),
        metrics: metrics.clone(),
        active: Arc::new(Mutex::new(BTreeMap::new())),
    };
    if let Some(addr) = &config.listen_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServiceError::Listen {
                address: addr.clone(),
                source,
            })?;
        info!(address = %addr, "serving /healthz, /readyz and /metrics");
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    }
    let (services, mut leases) = connect_all(&config, kube, &process).await?;
    info!(instance = %process.instance, "runner instance (its job pods carry this id; its Lease says it is alive)");
    metrics.set_ready(true);
    let running = serve(&config, &services, stop).await?;
    metrics.set_ready(false);
    drain(
        &services,
        running,
        Duration::from_secs(config.shutdown_timeout),
    )
    .await;
    leases.abort_all();
    for (i, service) in services.iter().enumerate() {
        if !services[..i].iter().any(|s| s.same_lease_as(service)) {
            let ns = &service.runner.kubernetes.namespace;
            crate::instance::release(&service.kube, ns, &process.instance).await;
        }
    }
    info!("stopped");
    Ok(())
}

/// Connects every `[[runners]]` entry. Runners of this process in one namespace share one
/// instance Lease (renewed by the returned tasks) and one watch of the job pods.
async fn connect_all(
    config: &Config,
    kube: Option<kube::Client>,
    process: &Process,
) -> Result<(Vec<Service>, tokio::task::JoinSet<()>), ServiceError> {
    let mut services: Vec<Service> = Vec::new();
    let mut leases = tokio::task::JoinSet::new();
    for (i, runner) in config.runners.iter().enumerate() {
        let mut service = Service::connect(runner.clone(), kube.clone(), process)
            .await
            .map_err(|e| ServiceError::Runner {
                index: i,
                name: runner.name.clone(),
                source: Box::new(e),
            })?;
        match services.iter().find(|s| s.same_lease_as(&service)) {
            Some(s) => service.pod_watch = s.pod_watch.clone(),
            None => {
                service.pod_watch = Some(service.watch_pods());
                leases.spawn(crate::instance::keep_alive(
                    service.kube.clone(),
                    service.runner.kubernetes.namespace.clone(),
                    process.instance.to_string(),
                ));
            }
        }
        services.push(service);
    }
    Ok((services, leases))
}

/// Recovers and reaps each runner's leftovers, then takes jobs until `stop`, within
/// `concurrent`; returns the jobs still running.
async fn serve(
    config: &Config,
    services: &[Service],
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinSet<()>, ServiceError> {
    let slots = Arc::new(Semaphore::new(config.concurrent));
    let mut pollers = tokio::task::JoinSet::new();
    for service in services {
        service.recover().await;
        service.reap().await;
        let s = service.clone();
        let own = Arc::new(Semaphore::new(s.own_slots(config.concurrent)));
        let poll = s.poll(own, slots.clone(), stop.clone(), config.check_interval);
        pollers.spawn(poll);
    }
    let mut running = tokio::task::JoinSet::new();
    while let Some(jobs) = pollers.join_next().await {
        let mut jobs = jobs.map_err(ServiceError::JobLoop)??;
        running.spawn(async move { while jobs.join_next().await.is_some() {} });
    }
    Ok(running)
}

/// Lets the running jobs finish within `grace`, then aborts the rest (and gives them a
/// minute to report).
async fn drain(services: &[Service], mut running: tokio::task::JoinSet<()>, grace: Duration) {
    info!(runners = services.len(), grace = ?grace, "stopping: no new jobs; waiting for running ones");
    let drained = tokio::time::timeout(grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("shutdown grace period over: aborting the remaining jobs");
        for service in services {
            service.abort_all();
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            while running.join_next().await.is_some() {}
        })
        .await;
    }
}

/// The runner's journal: the Secret `journal_secret` names (which must be readable: a journal
/// that fails only at the first crash is worse than none), else the directory `journal_dir`
/// (a warning when it cannot be made: the runner runs on without).
async fn open_journal(
    runner: &RunnerConfig,
    kube: &kube::Client,
) -> Result<Option<Journal>, ServiceError> {
    let label = crate::pod::label_value(&runner.name);
    if let Some(value) = &runner.keyhole.journal_secret {
        let (namespace, name) = crate::config::journal_secret_parts(value).ok_or_else(|| {
            ServiceError::JournalSecretName {
                value: value.clone(),
            }
        })?;
        let journal = SecretJournal::open(kube.clone(), namespace, name, &label)
            .await
            .map_err(|source| ServiceError::Journal {
                value: value.clone(),
                source,
            })?;
        return Ok(Some(Journal::Secret(Box::new(journal))));
    }
    let dir = PathBuf::from(&runner.keyhole.journal_dir);
    match DirJournal::open_for_runner(&dir, &label) {
        Ok(j) => Ok(Some(Journal::Dir(j))),
        Err(e) => {
            warn!(dir = %runner.keyhole.journal_dir, error = %e, "no job journal: jobs of a crashed runner will not be reported until GitLab times them out");
            Ok(None)
        }
    }
}

/// Runners label their pods (and find their orphans) by name, so two entries must not share
/// one.
fn check_runner_names(runners: &[RunnerConfig]) -> Result<(), ServiceError> {
    let mut seen = BTreeMap::new();
    for (i, r) in runners.iter().enumerate() {
        let label = crate::pod::label_value(&r.name);
        if let Some(first) = seen.insert(label.clone(), i) {
            return Err(ServiceError::SameName {
                first,
                second: i,
                label,
            });
        }
    }
    Ok(())
}

/// One of the runner's own job slots and one of the shared ones, held together for a job.
async fn acquire_both(
    own: &Arc<Semaphore>,
    shared: &Arc<Semaphore>,
) -> Result<
    (
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    ),
    ServiceError,
> {
    let mine = own
        .clone()
        .acquire_owned()
        .await
        .map_err(ServiceError::SlotsClosed)?;
    let all = shared
        .clone()
        .acquire_owned()
        .await
        .map_err(ServiceError::SlotsClosed)?;
    Ok((mine, all))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// GitLab's failure reason for an outcome.
pub fn failure_reason(kind: FailureKind) -> FailureReason {
    match kind {
        FailureKind::Script | FailureKind::Canceled => FailureReason::ScriptFailure,
        FailureKind::Timeout => FailureReason::JobExecutionTimeout,
        FailureKind::ImagePull => FailureReason::ImagePullFailure,
        FailureKind::Configuration => FailureReason::RunnerConfigurationError,
        FailureKind::Unschedulable => FailureReason::StuckOrTimeoutFailure,
        FailureKind::System => FailureReason::RunnerSystemFailure,
    }
}

/// GitLab's word on the job (from every PUT/PATCH answer) drives cancel and abort.
fn follow_gitlab_status(
    mut status: watch::Receiver<RemoteStatus>,
    control: watch::Sender<Control>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let s = *status.borrow();
            if s.must_abort() {
                let _ = control.send(Control::Abort);
            } else if s.cancel_requested() {
                let _ = control.send(Control::Cancel);
            }
        }
    })
}

/// Sends the job's trace to GitLab in order. If GitLab drops the job, the rest is drained so
/// the executor never blocks on a full channel.
fn forward_trace(
    sender: TraceSender,
    mut chunks: mpsc::Receiver<TraceChunk>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(chunk) = chunks.recv().await {
            if sender.append(&chunk.into_bytes(true)).await.is_err() {
                while chunks.recv().await.is_some() {}
                break;
            }
        }
    })
}

/// The trace's last line and the state GitLab is told.
async fn last_words(trace: &TraceWriter, outcome: &Outcome) -> JobOutcome {
    match outcome {
        Outcome::Success => {
            trace.info("Job succeeded").await;
            JobOutcome::Success
        }
        Outcome::Failed {
            kind,
            exit_code,
            message,
        } => {
            trace.error(&format!("Job failed: {message}")).await;
            JobOutcome::Failed {
                reason: failure_reason(*kind),
                exit_code: *exit_code,
            }
        }
    }
}

/// GitLab's failure reason for a job whose payload this runner cannot read: a feature it does
/// not implement is `runner_unsupported` (the job asks too much, the runner is fine); a payload
/// it cannot make sense of is the runner's (or GitLab's) fault, `runner_system_failure`.
fn unreadable_reason(error: &PayloadError) -> FailureReason {
    match error {
        PayloadError::Unsupported { .. } => FailureReason::RunnerUnsupported,
        _ => FailureReason::RunnerSystemFailure,
    }
}

impl Service {
    /// Checks a runner's GitLab token and cluster, and opens its journal.
    async fn connect(
        runner: RunnerConfig,
        kube: Option<kube::Client>,
        process: &Process,
    ) -> Result<Self, ServiceError> {
        let kube = match kube {
            Some(k) => k,
            None => kube_client(&runner).await?,
        };
        let gitlab = gitlab_client(&runner)?;
        gitlab
            .verify()
            .await
            .map_err(|source| ServiceError::Verify {
                url: runner.url.clone(),
                source,
            })?;
        kube.apiserver_version()
            .await
            .map_err(ServiceError::ApiServer)?;
        if runner.keyhole.user_namespace_root != crate::config::UserNamespaceRoot::Off
            && let Err(problem) = crate::verify::user_namespace_probe(&kube, &runner).await
        {
            warn!(runner = %runner.name, "{problem}");
        }
        let ns = &runner.kubernetes.namespace;
        crate::instance::renew(&kube, ns, &process.instance)
            .await
            .map_err(|source| ServiceError::Lease {
                namespace: ns.clone(),
                source,
            })?;
        info!(runner = %runner.name, url = %runner.url, namespace = %runner.kubernetes.namespace, "runner ready");
        let journal = open_journal(&runner, &kube).await?;
        Ok(Self {
            runner: Arc::new(runner),
            gitlab,
            kube,
            metrics: process.metrics.clone(),
            journal,
            instance: process.instance.clone(),
            active: process.active.clone(),
            pod_watch: None,
        })
    }

    /// Starts the one watch of this process's job pods in the runner's namespace (its
    /// instance label), which its jobs share.
    fn watch_pods(&self) -> PodWatch {
        let pods = kube::Api::namespaced(self.kube.clone(), &self.runner.kubernetes.namespace);
        let selector = format!(
            "{}={},{}={}",
            crate::pod::MANAGED_BY_LABEL,
            crate::pod::MANAGED_BY,
            crate::instance::INSTANCE_LABEL,
            self.instance
        );
        PodWatch::start(pods, &selector)
    }

    /// Whether `other` keeps its instance Lease where this one does (same cluster, same
    /// namespace), so one renewal serves both.
    fn same_lease_as(&self, other: &Service) -> bool {
        self.runner.kubernetes.host == other.runner.kubernetes.host
            && self.runner.kubernetes.namespace == other.runner.kubernetes.namespace
    }

    /// This runner's key for a job in [`ActiveJobs`], as the reaper reads it off a pod.
    fn job_key(&self, job_id: u64) -> ActiveJob {
        (crate::pod::label_value(&self.runner.name), job_id)
    }

    /// Jobs this runner may take at once: its `limit`, within `concurrent`.
    fn own_slots(&self, concurrent: usize) -> usize {
        match self.runner.limit {
            0 => concurrent,
            n => n.min(concurrent),
        }
    }

    /// Asks GitLab for jobs and starts each, until `stop`; returns the jobs still running.
    /// A job holds one of the runner's own slots and one of the shared `concurrent` ones.
    async fn poll(
        self,
        own: Arc<Semaphore>,
        shared: Arc<Semaphore>,
        mut stop: watch::Receiver<bool>,
        check_interval: u64,
    ) -> Result<tokio::task::JoinSet<()>, ServiceError> {
        let reaper = self.spawn_reaper();
        let mut running = tokio::task::JoinSet::new();
        let mut last_update: Option<String> = None;
        let mut backoff = Duration::from_secs(1);
        loop {
            let permits = tokio::select! {
                p = acquire_both(&own, &shared) => p?,
                _ = stop.changed() => break,
            };
            let asked = Instant::now();
            let answer = tokio::select! {
                a = self.gitlab.request_job(last_update.as_deref()) => a,
                _ = stop.changed() => break,
            };
            match answer {
                Ok(JobRequest::Job(payload)) => {
                    backoff = Duration::from_secs(1);
                    let s = self.clone();
                    let received = Instant::now();
                    running.spawn(async move {
                        s.handle(*payload, received).await;
                        drop(permits);
                    });
                }
                Ok(JobRequest::NoJob { last_update: lu }) => {
                    backoff = Duration::from_secs(1);
                    if lu.is_some() {
                        last_update = lu;
                    }
                    drop(permits);
                    // GitLab answered at once (no long poll in front of it): wait check_interval.
                    if asked.elapsed() < Duration::from_secs(1) {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(check_interval)) => {}
                            _ = stop.changed() => break,
                        }
                    }
                }
                Ok(JobRequest::Unreadable {
                    job_id,
                    token,
                    error,
                }) => {
                    drop(permits);
                    self.fail_unreadable(job_id, token, &error).await;
                }
                Err(e) => {
                    drop(permits);
                    self.metrics.gitlab_error("jobs/request");
                    warn!(runner = %self.runner.name, error = %e, retry_in = ?backoff, "requesting a job failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        reaper.abort();
        info!(runner = %self.runner.name, jobs = running.len(), "no new jobs for this runner");
        Ok(running)
    }

    /// Sweeps for orphaned and long-ended pods in the background.
    fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        let s = self.clone();
        tokio::spawn(async move {
            let mut orphans = tokio::time::interval(REAP_INTERVAL);
            let mut ended = tokio::time::interval(crate::reaper::ENDED_SWEEP_INTERVAL);
            orphans.tick().await;
            loop {
                tokio::select! {
                    _ = orphans.tick() => s.reap().await,
                    _ = ended.tick() => s.reap_ended().await,
                }
            }
        })
    }

    /// Fails a job whose payload cannot be read, saying why in its trace.
    async fn fail_unreadable(&self, job_id: u64, token: SecretString, error: &PayloadError) {
        self.metrics.gitlab_error("jobs/request");
        warn!(job = job_id, error = %error, "job payload unreadable; failing the job");
        let session = self.gitlab.job_session(job_id, token);
        let _ = session
            .trace()
            .append(
                format!("\x1b[31;1mERROR: keyhole-runner cannot read this job: {error}\x1b[0;m\n")
                    .as_bytes(),
            )
            .await;
        let _ = session
            .finish(JobOutcome::Failed {
                reason: unreadable_reason(error),
                exit_code: None,
            })
            .await;
    }

    /// Tells every running job of this runner to stop now (shutdown grace is over).
    fn abort_all(&self) {
        for control in self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = control.send(Control::Abort);
        }
    }

    /// Reports the jobs a crashed predecessor (a process in this pod) left running, and
    /// deletes their pods.
    async fn recover(&self) {
        let Some(journal) = &self.journal else { return };
        let (entries, problems) = journal.unfinished(&self.instance).await;
        for p in problems {
            warn!("{p}");
        }
        for entry in entries {
            info!(job = entry.job_id, pod = %entry.pod_name, "reporting a job a previous runner process left running");
            self.report_abandoned(&entry, "keyhole-runner restarted while this job ran")
                .await;
            journal.remove(entry.job_id).await;
        }
    }

    /// Reports the jobs of this runner whose process died (its Lease expired: a replaced or
    /// crashed pod), and deletes their pods. Only the Secret journal outlives a pod.
    async fn take_over_abandoned(&self) {
        let Some(journal @ Journal::Secret(_)) = &self.journal else {
            return;
        };
        let namespace = &self.runner.kubernetes.namespace;
        let live = match crate::instance::live_instances(&self.kube, namespace).await {
            Ok(live) => live,
            Err(e) => {
                warn!(error = %e, "listing live runner instances failed; abandoned jobs wait");
                return;
            }
        };
        let (entries, problems) = journal.abandoned(&self.instance, &live).await;
        for p in problems {
            warn!("{p}");
        }
        for entry in entries {
            info!(job = entry.job_id, pod = %entry.pod_name, instance = %entry.instance, "reporting a job whose runner process is gone");
            let why = format!(
                "the keyhole-runner process that ran this job (instance {}) is gone (its pod was replaced or crashed)",
                entry.instance
            );
            if !self.report_abandoned(&entry, &why).await
                && let Err(e) = journal.record(&entry).await
            {
                warn!(job = entry.job_id, error = %e, "putting the job back into the journal failed; GitLab will time it out");
            }
        }
    }

    /// Deletes the pod of a job no process runs any more and fails the job in GitLab with
    /// `why` in its trace; whether GitLab took the final state.
    async fn report_abandoned(&self, entry: &Entry, why: &str) -> bool {
        let pods = kube::Api::namespaced(self.kube.clone(), &entry.namespace);
        crate::execute::delete_pod(&pods, &entry.pod_name, 0).await;
        let session = self.gitlab.job_session(entry.job_id, entry.token.clone());
        let trace = session.trace();
        // This process does not know how much trace GitLab holds. One byte sent at offset 0
        // learns it: GitLab answers 416 with its size (the byte is dropped) and the trace goes
        // on from there; on an empty trace the byte is simply stored.
        let _ = trace.append(b"\n").await;
        let _ = trace.flush().await;
        let line =
            format!("\x1b[31;1mERROR: {why}; the job was stopped and its pod deleted\x1b[0;m\n");
        let _ = trace.append(line.as_bytes()).await;
        match session
            .finish(JobOutcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                exit_code: None,
            })
            .await
        {
            Ok(()) => {
                info!(job = entry.job_id, "abandoned job reported as failed");
                true
            }
            Err(e) => {
                warn!(job = entry.job_id, error = %e, "reporting an abandoned job failed");
                false
            }
        }
    }

    async fn reap(&self) {
        self.take_over_abandoned().await;
        let active = &self.active;
        let snapshot = || -> BTreeSet<ActiveJob> {
            active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect()
        };
        match crate::reaper::reap(
            &self.kube,
            &self.runner.kubernetes.namespace,
            &self.instance,
            snapshot,
        )
        .await
        {
            Ok(names) if !names.is_empty() => info!(pods = ?names, "deleted orphaned job pods"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "looking for orphaned pods failed"),
        }
    }

    /// Deletes ended job pods that no runner took away (see [`crate::reaper::reap_ended`]).
    async fn reap_ended(&self) {
        match crate::reaper::reap_ended(&self.kube, &self.runner.kubernetes.namespace).await {
            Ok(names) if !names.is_empty() => {
                info!(pods = ?names, "deleted job pods that ended without a runner to delete them");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "looking for ended job pods failed"),
        }
    }

    /// Makes the job's pod and runs it to an outcome, or fails the job with the reasons it
    /// cannot run here. Returns the outcome, when it became known (for a job that ran: its
    /// exit seen), and the pod's deletion, which may still be under way while the runner
    /// reports.
    async fn prepare_and_run(
        &self,
        job: &crate::job::Job,
        token: &SecretString,
        trace: &TraceWriter,
        trace_tx: mpsc::Sender<TraceChunk>,
        control_rx: watch::Receiver<Control>,
        received: Instant,
    ) -> (Outcome, Instant, Option<tokio::task::JoinHandle<()>>) {
        match prepare(job, &self.runner, Some(&*self.instance)) {
            Err(error) => {
                for line in error.lines() {
                    trace.error(&line).await;
                }
                let outcome = Outcome::Failed {
                    kind: FailureKind::Configuration,
                    exit_code: None,
                    message: "the job cannot run on this runner as configured".into(),
                };
                (outcome, Instant::now(), None)
            }
            Ok(prepared) => {
                for line in prepared.announcements() {
                    trace.info(&line).await;
                }
                for line in &prepared.warnings {
                    trace.warn(line).await;
                }
                let pod_name = prepared
                    .objects
                    .pod
                    .metadata
                    .name
                    .clone()
                    .unwrap_or_default();
                if let Some(j) = &self.journal
                    && let Err(e) = j
                        .record(&Entry {
                            job_id: job.id,
                            namespace: self.runner.kubernetes.namespace.clone(),
                            pod_name: pod_name.clone(),
                            token: token.clone(),
                            instance: self.instance.to_string(),
                        })
                        .await
                {
                    warn!(error = %e, "writing the job journal failed");
                }
                info!(pod = %pod_name, added_ms = received.elapsed().as_millis() as u64, "creating the job pod");
                execute_timed(JobRun {
                    client: self.kube.clone(),
                    objects: prepared.objects,
                    timeout: prepared.timeout,
                    start_timeout: Duration::from_secs(self.runner.kubernetes.poll_timeout),
                    output_limit: self.runner.output_limit,
                    trace: trace_tx,
                    control: control_rx,
                    metrics: Some(self.metrics.clone()),
                    retry: crate::execute::ApiRetry::from_config(&self.runner.kubernetes),
                    // The runner's Role has no right to read Events (docs/deploy.md).
                    image_pulls: false,
                    pod_watch: self.pod_watch.clone(),
                })
                .await
            }
        }
    }

    async fn handle(&self, payload: JobPayload, received: Instant) {
        let job = payload.job;
        let project = job.project.path.as_deref().unwrap_or("(unknown)");
        let span = info_span!("job", id = job.id, name = %job.name, project = %project);
        async move {
            let Some(token) = job.token.clone() else {
                error!("the job has no token; GitLab sent an incomplete job");
                return;
            };
            let session = self
                .gitlab
                .job_session(job.id, token.clone())
                .with_failure_reasons(payload.features.failure_reasons.clone());
            if !self.accepted(&session).await {
                return;
            }
            self.metrics.job_started();
            let (control_tx, control_rx) = watch::channel(Control::Run);
            self.active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.job_key(job.id), control_tx.clone());
            let watcher = follow_gitlab_status(session.status(), control_tx);
            let (trace_tx, trace_rx) = mpsc::channel::<TraceChunk>(256);
            let forwarder = forward_trace(session.trace(), trace_rx);
            let trace = TraceWriter(trace_tx.clone());
            trace
                .info(&format!(
                    "Running with keyhole-runner {} on {} (namespace {})",
                    env!("CARGO_PKG_VERSION"),
                    self.runner.name,
                    self.runner.kubernetes.namespace
                ))
                .await;
            // `ended`: when the outcome became known (for a job that ran: its exit seen).
            // `deletion`: the pod's, which may still be under way while the runner reports.
            let (outcome, ended, deletion) = self
                .prepare_and_run(&job, &token, &trace, trace_tx.clone(), control_rx, received)
                .await;
            let result = last_words(&trace, &outcome).await;
            drop(trace);
            drop(trace_tx);
            let _ = forwarder.await;
            info!(outcome = ?result, "reporting the job");
            let label = match &result {
                JobOutcome::Success => "success",
                JobOutcome::Failed { reason, .. } => reason.as_str(),
            };
            match session.finish(result).await {
                // Job end seen → GitLab holds the whole trace and the final state: what the
                // runner adds to the job's end (the log drain included; the pod's deletion
                // runs meanwhile and is awaited below).
                Ok(()) => info!(
                    final_ms = ended.elapsed().as_millis() as u64,
                    "reported the job"
                ),
                Err(e) => {
                    self.metrics.gitlab_error("jobs/:id");
                    warn!(error = %e, "GitLab did not take the final state");
                }
            }
            watcher.abort();
            self.forget(job.id, deletion).await;
            self.metrics.job_finished(label, received.elapsed());
        }
        .instrument(span)
        .await;
    }

    /// Takes the job from GitLab (the first `running` update): false when GitLab withdrew it
    /// or cannot be told, and the job stays GitLab's.
    async fn accepted(&self, session: &JobSession) -> bool {
        match session.keep_alive().await {
            Ok(RemoteStatus::Gone) => {
                warn!("GitLab withdrew the job before it started");
                false
            }
            Ok(_) => true,
            Err(e) => {
                self.metrics.gitlab_error("jobs/:id");
                warn!(error = %e, "accepting the job failed; it stays with GitLab");
                false
            }
        }
    }

    /// Lets the job go once its pod is deleted (or left to the reaper): out of the journal and
    /// the active jobs.
    async fn forget(&self, job_id: u64, deletion: Option<tokio::task::JoinHandle<()>>) {
        if let Some(d) = deletion {
            let _ = d.await;
        }
        if let Some(j) = &self.journal {
            j.remove(job_id).await;
        }
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.job_key(job_id));
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("runner", &self.runner.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsupported_feature_is_runner_unsupported_and_a_broken_payload_a_system_failure() {
        let unsupported = PayloadError::Unsupported {
            field: "run".into(),
            reason: "CI steps (`run:`) are not implemented; use `script:`".into(),
        };
        assert!(matches!(
            unreadable_reason(&unsupported),
            FailureReason::RunnerUnsupported
        ));
        let broken = PayloadError::Missing {
            field: "job_info".into(),
        };
        assert!(matches!(
            unreadable_reason(&broken),
            FailureReason::RunnerSystemFailure
        ));
    }
}
