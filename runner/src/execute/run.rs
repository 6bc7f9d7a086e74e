//! Running one job pod on the cluster (the I/O edge): create → watch (no polling) → follow the
//! broker's masked log into the trace → exit code → delete. The Secret is owned by the pod, so
//! deleting the pod removes it too.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keyhole_contract as contract;
use kube::api::{DeleteParams, LogParams, PostParams, PropagationPolicy};
use kube::{Api, Client};
use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::follow::follow_log;
use super::pod_watch::{PodEvent, PodEvents, PodWatch};
use super::status::{
    self, ContainerView, FailureKind, Outcome, PodView, observe, progress_line,
    service_stop_warning, verdict,
};
use super::trace::{TraceChunk, TraceWriter};
use crate::pod::JobObjects;

/// What the job's controller (GitLab's `Job-Status`, a signal) asks of a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Run,
    /// Stop the script, still run `after_script`.
    Cancel,
    /// Stop now; no `after_script`.
    Abort,
}

/// One job to run.
pub struct JobRun {
    pub client: Client,
    pub objects: JobObjects,
    pub timeout: Duration,
    /// How long the pod may take to start (scheduling, image pull, secrets).
    pub start_timeout: Duration,
    /// Trace bytes beyond this are dropped with a note (gitlab-runner's `output_limit`).
    pub output_limit: u64,
    /// Where the trace goes (the GitLab trace sender, or the terminal).
    pub trace: mpsc::Sender<TraceChunk>,
    pub control: watch::Receiver<Control>,
    /// Where to record the pod start latency, if anywhere.
    pub metrics: Option<crate::metrics::Metrics>,
    /// How creating the pod and its Secret retries an apiserver that does not answer.
    pub retry: super::ApiRetry,
    /// Also tell the kubelet's image pulls, read from the pod's Events (see
    /// [`super::events`]). Needs `list` and `watch` on events, which the service's Role does
    /// not have (docs/deploy.md); `exec` runs with its user's rights and asks for them.
    pub image_pulls: bool,
    /// The process's shared watch of its job pods in the pod's namespace; `None` watches
    /// this pod alone (one request more to list it, one to watch it).
    pub pod_watch: Option<PodWatch>,
}

impl std::fmt::Debug for JobRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRun")
            .field("pod", &self.objects.pod.metadata.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The grace a finished job's pod gets (its build container exited, after_script included):
/// enough for the broker to drain the log and revoke (bounded to 10 s), not the
/// `pod_termination_grace_period_seconds` that a canceled job's after_script needs.
pub const FINISHED_POD_GRACE_SECONDS: i64 = 15;

/// Trace bytes the broker's own lines (audit, renewals, revocations) may add to the job's
/// output, which the broker cuts at `output_limit`.
const BROKER_LINES_ALLOWANCE: u64 = 64 * 1024;

fn failed(kind: FailureKind, exit_code: Option<i32>, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        kind,
        exit_code,
        message: message.into(),
    }
}

/// The broker's log when it ended before we could follow it (its error lines say why).
async fn broker_log_after_exit(pods: &Api<Pod>, name: &str) -> String {
    for previous in [false, true] {
        let params = LogParams {
            container: Some(contract::BROKER_CONTAINER.into()),
            previous,
            ..LogParams::default()
        };
        if let Ok(text) = pods.logs(name, &params).await
            && !text.is_empty()
        {
            return text;
        }
    }
    String::new()
}

/// Runs the job to an outcome and always deletes its pod.
pub async fn execute(run: JobRun) -> Outcome {
    let (outcome, _, deletion) = execute_timed(run).await;
    if let Some(d) = deletion {
        let _ = d.await;
    }
    outcome
}

/// [`execute`], also returning when the outcome became known (the build container's exit
/// seen, a deadline, a cancel), before the log was drained: the service measures from there
/// what it adds to a job's end (`final_ms`). Returns once the trace is complete, with the
/// pod's deletion possibly still under way: the job's result need not wait for the API
/// server's answer, but the caller must await it before it forgets the job (the reaper is
/// the backstop when it failed). None: the deletion is done already.
pub async fn execute_timed(mut run: JobRun) -> (Outcome, Instant, Option<JoinHandle<()>>) {
    let trace = TraceWriter(run.trace.clone());
    let pod = &run.objects.pod;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(run.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(run.client.clone(), &ns);

    // Subscribed before the pod exists, so that none of its events is missed.
    let mut events = PodEvents::open(run.pod_watch.as_ref(), &pods, &name);
    if let Err((message, ended)) = create_objects(&run, &pods, &secrets, &trace).await {
        return (failed(FailureKind::System, None, message), ended, None);
    }
    // Image pulls come after the build container started too (services'): followed to the
    // end of the job.
    let image_pulls = run.image_pulls.then(|| {
        let events = Api::namespaced(run.client.clone(), &ns);
        AbortOnDrop(tokio::spawn(super::events::follow_image_pulls(
            events,
            name.clone(),
            trace.clone(),
        )))
    });
    let mut watching = Watching {
        pods: pods.clone(),
        name: name.clone(),
        trace: trace.clone(),
        metrics: run.metrics.clone(),
        // The broker cuts the job's output at the limit; its own lines come on top.
        log_limit: run
            .output_limit
            .saturating_mul(1024)
            .saturating_add(BROKER_LINES_ALLOWANCE),
        log_end_token: run.objects.log_end_token.clone(),
        created_at: Instant::now(),
        started: false,
        last_progress: String::new(),
        last_view: None,
        log_task: None,
        script_status: None,
        warned_services: BTreeSet::new(),
    };
    let (outcome, delete_grace) = watch_to_outcome(&mut run, &mut events, &mut watching).await;
    let ended = Instant::now();
    drop((image_pulls, events));
    let log_task = watching.log_task.take();
    let deletion = wind_down(&pods, &name, &outcome, log_task, delete_grace, &trace).await;
    (outcome, ended, deletion)
}

/// Follows the pod's events, the job's deadlines and its controller until the job's outcome
/// is known; returns it with the grace period the pod's deletion gets (0 after an abort).
async fn watch_to_outcome(
    run: &mut JobRun,
    events: &mut PodEvents,
    w: &mut Watching,
) -> (Outcome, i64) {
    let grace = run
        .objects
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    let deadline = tokio::time::sleep(run.timeout);
    let mut deadline = std::pin::pin!(deadline);
    let start_deadline = tokio::time::sleep(run.start_timeout);
    let mut start_deadline = std::pin::pin!(start_deadline);
    let system = |message: &str| failed(FailureKind::System, None, message);
    // The script's status from the log's end; only for a job whose script is its end.
    let (status_tx, mut script_status) = oneshot::channel();
    let mut status_open = !has_store_container(&run.objects.pod);
    if status_open {
        w.script_status = Some(status_tx);
    }
    loop {
        tokio::select! {
            status = &mut script_status, if status_open => {
                status_open = false;
                if let Some(outcome) = status.ok().and_then(status::outcome_of_script_status) {
                    w.started = true;
                    return (outcome, grace);
                }
            }
            event = events.next() => match event {
                PodEvent::Applied(pod) => {
                    if let Some(outcome) = w.on_pod(&pod).await {
                        return (outcome, grace);
                    }
                }
                PodEvent::Deleted => return (system("the job pod was deleted by someone else"), grace),
                PodEvent::Trouble(e) => w.trace.warn(&format!("watching the pod: {e}; retrying")).await,
                PodEvent::Ended => return (system("the pod watch ended"), grace),
            },
            _ = &mut deadline => {
                let secs = run.timeout.as_secs();
                w.trace.error(&format!("Job timed out after {secs}s; stopping it (after_script still runs)")).await;
                return (failed(FailureKind::Timeout, None, format!("execution took longer than {secs}s")), grace);
            }
            _ = &mut start_deadline, if !w.started => return (w.start_timeout(run.start_timeout), grace),
            changed = run.control.changed() => {
                let control = if changed.is_ok() { *run.control.borrow() } else { Control::Abort };
                match control {
                    Control::Run => {}
                    Control::Cancel => {
                        w.trace.info("Job canceled: stopping the script; after_script still runs").await;
                        return (failed(FailureKind::Canceled, None, "canceled"), grace);
                    }
                    Control::Abort => return (failed(FailureKind::Canceled, None, "aborted"), 0),
                }
            }
        }
    }
}

/// What a running job knows of its pod, and what it does as the pod changes: progress lines
/// until the build container starts, the log follower once the broker runs, a warning per
/// failed service, the outcome once the pod's state says it.
struct Watching {
    pods: Api<Pod>,
    name: String,
    trace: TraceWriter,
    metrics: Option<crate::metrics::Metrics>,
    log_limit: u64,
    log_end_token: SecretString,
    created_at: Instant,
    /// The build container runs (or ran): its output is in the trace from here on.
    started: bool,
    last_progress: String,
    last_view: Option<PodView>,
    log_task: Option<JoinHandle<bool>>,
    /// Handed to the log follower: the script's exit status when its log ends.
    script_status: Option<oneshot::Sender<u8>>,
    warned_services: BTreeSet<String>,
}

/// Whether the pod uploads artifacts or cache after the script: then the job's end is the
/// uploads', not the script's.
fn has_store_container(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .any(|c| c.name == contract::transfer::STORE_CONTAINER)
    })
}

impl Watching {
    /// Takes one state of the pod; the job's outcome once it has one.
    async fn on_pod(&mut self, pod: &Pod) -> Option<Outcome> {
        let v = observe(pod);
        if !self.started
            && matches!(
                v.build,
                ContainerView::Running { .. } | ContainerView::Terminated { .. }
            )
        {
            self.started = true;
            let latency = self.created_at.elapsed();
            tracing::info!(pod = %self.name, start_ms = latency.as_millis() as u64, "build container started");
            if let Some(m) = &self.metrics {
                m.pod_started(latency);
            }
        }
        // Once the build container runs, its output is in the trace: a progress line now
        // would land in the middle of it (e.g. `build exited 0` when the watch never showed
        // the container running).
        if !self.started {
            let line = progress_line(&v);
            if line != self.last_progress {
                self.trace.info(&line).await;
                self.last_progress = line;
            }
        }
        if self.log_task.is_none() && matches!(v.broker, ContainerView::Running { .. }) {
            self.log_task = Some(tokio::spawn(follow_log(
                self.pods.clone(),
                self.name.clone(),
                self.trace.clone(),
                self.log_limit,
                self.log_end_token.clone(),
                self.script_status.take(),
            )));
        }
        for stop in &v.service_stops {
            if self.warned_services.insert(stop.container.clone()) {
                self.trace.warn(&service_stop_warning(stop)).await;
            }
        }
        if let Some(outcome) = verdict(&v, self.started) {
            if let Outcome::Failed {
                kind: FailureKind::Script,
                exit_code: None,
                message,
            } = &outcome
            {
                // A build container that could not start: printed at the end for the other
                // kinds; a script failure's own output usually says why, this one has none.
                self.trace.error(message).await;
            }
            return Some(outcome);
        }
        self.last_view = Some(v);
        None
    }

    /// The outcome of a pod that did not start within `limit`.
    fn start_timeout(&self, limit: Duration) -> Outcome {
        let view = self.last_view.as_ref();
        let detail = view.map_or_else(|| "no status yet".into(), progress_line);
        let kind = if view.is_some_and(|v| v.unschedulable.is_some()) {
            FailureKind::Unschedulable
        } else {
            FailureKind::System
        };
        failed(
            kind,
            None,
            format!(
                "the pod did not start within {}s ({detail})",
                limit.as_secs()
            ),
        )
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Creates the job's pod, then its Secrets owned by it. On failure: the message (already in
/// the trace), when the job ended, and the pod deleted again if it was made.
async fn create_objects(
    run: &JobRun,
    pods: &Api<Pod>,
    secrets: &Api<Secret>,
    trace: &TraceWriter,
) -> Result<(), (String, Instant)> {
    let pod = &run.objects.pod;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    trace.info(&format!("Creating pod {ns}/{name}")).await;
    let created = match create_retrying(pods, pod, &name, run.retry, trace).await {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("creating the job pod {ns}/{name} failed: {e}");
            trace.error(&msg).await;
            return Err((msg, Instant::now()));
        }
    };
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: name.clone(),
        uid: created.metadata.uid.clone().unwrap_or_default(),
        ..OwnerReference::default()
    };
    // The pull Secret before the per-job one: the broker waits for the latter, and the job's
    // and services' images are pulled only once the broker is up, so the kubelet finds it.
    let own_secrets = run.objects.pull_secret.iter().chain([&run.objects.secret]);
    for secret in own_secrets {
        let mut secret = secret.clone();
        secret.metadata.owner_references = Some(vec![owner.clone()]);
        let secret_name = secret.metadata.name.clone().unwrap_or_default();
        let Err(e) = create_retrying(secrets, &secret, &secret_name, run.retry, trace).await else {
            continue;
        };
        let msg = format!("creating the job's Secret {ns}/{secret_name}: {e}");
        trace.error(&msg).await;
        let ended = Instant::now();
        delete_pod(pods, &name, 0).await;
        return Err((msg, ended));
    }
    Ok(())
}

/// After the outcome is known: deletes the pod (a finished job's with a short grace) and
/// drains the job log into the trace, or, when the log was never followed, shows the broker's
/// own lines. Returns the deletion when it is still under way.
async fn wind_down(
    pods: &Api<Pod>,
    name: &str,
    outcome: &Outcome,
    log_task: Option<JoinHandle<bool>>,
    mut delete_grace: i64,
    trace: &TraceWriter,
) -> Option<JoinHandle<()>> {
    let mut deletion = None;
    // The build container ended by itself: the broker then relays all of its output and
    // writes its closing line (an abort kills it before that).
    let exited = matches!(
        outcome,
        Outcome::Success
            | Outcome::Failed {
                kind: FailureKind::Script,
                ..
            }
    );
    if exited {
        // after_script has run (it is part of the build container's script): only the broker
        // needs time now, to drain and revoke. A service that ignores SIGTERM would otherwise
        // hold the pod, and its per-job Secret, for the whole grace period.
        delete_grace = delete_grace.min(FINISHED_POD_GRACE_SECONDS);
    }

    match log_task {
        Some(task) => {
            // The log ends with the broker's markers, once it has drained the job's output
            // and revoked its leases; the pod's deletion need not wait for that, nor that for
            // the deletion.
            let wait = Duration::from_secs(u64::try_from(delete_grace).unwrap_or(0) + 15);
            deletion = Some(tokio::spawn({
                let (pods, name) = (pods.clone(), name.to_owned());
                async move { delete_pod(&pods, &name, delete_grace).await }
            }));
            let drained = tokio::time::timeout(wait, task).await;
            match drained {
                Err(_) => {
                    trace
                        .warn("the job log did not end in time; the trace may miss its last lines")
                        .await;
                }
                Ok(Ok(false)) if exited => {
                    tracing::warn!(pod = %name, "the job log stream ended before the broker's end-of-log markers; the trace may miss the job's last lines");
                    trace
                        .warn("the job log may be incomplete: its stream ended before the broker's end-of-log markers. Kubernetes drops a container's last log lines when its log file was rotated (kubelet containerLogMaxSize) while the log stream lagged behind the job's output")
                        .await;
                }
                Ok(_) => {}
            }
        }
        None => {
            delete_pod(pods, name, delete_grace).await;
            if let Outcome::Failed {
                kind: FailureKind::Configuration | FailureKind::System,
                ..
            } = outcome
            {
                let log = broker_log_after_exit(pods, name).await;
                if !log.is_empty() {
                    trace.log(log.into_bytes()).await;
                }
            }
        }
    }
    if let Outcome::Failed { kind, message, .. } = outcome
        && *kind != FailureKind::Script
    {
        trace.error(message).await;
    }
    deletion
}

/// Creates one of the job's objects, retrying an apiserver that does not answer (see
/// [`super::retry`]). The names are the job's own (random per job), so "already exists"
/// after a retry means an earlier attempt got through with its answer lost: that object is
/// read back instead.
async fn create_retrying<K>(
    api: &Api<K>,
    object: &K,
    name: &str,
    policy: super::ApiRetry,
    trace: &TraceWriter,
) -> Result<K, kube::Error>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut retried = false;
    let params = PostParams::default();
    let created = super::with_retry(
        policy,
        || api.create(&params, object),
        |e, wait| {
            retried = true;
            let line = format!(
                "the Kubernetes API server did not take {} {name} ({e}); retrying in {:.1}s",
                K::kind(&()),
                wait.as_secs_f64()
            );
            async move { trace.warn(&line).await }
        },
    )
    .await;
    match created {
        Err(kube::Error::Api(s)) if retried && s.code == 409 => api.get(name).await,
        other => other,
    }
}

/// Deletes the job pod (background propagation: its Secret follows), retrying an apiserver
/// that does not answer. A pod that is already gone is fine.
pub async fn delete_pod(pods: &Api<Pod>, name: &str, grace_seconds: i64) {
    let params = DeleteParams {
        grace_period_seconds: Some(u32::try_from(grace_seconds).unwrap_or(0)),
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    let deleted = super::with_retry(
        super::ApiRetry::default(),
        || pods.delete(name, &params),
        |_, _| async {},
    )
    .await;
    if let Err(e) = deleted
        && !matches!(&e, kube::Error::Api(s) if s.code == 404)
    {
        tracing::warn!(pod = name, error = %e, "deleting the job pod failed; the reaper will retry");
    }
}
