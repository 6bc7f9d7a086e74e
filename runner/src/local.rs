//! `keyhole-runner exec`: one job of a local `.gitlab-ci.yml` on the cluster, no GitLab. The
//! job's log goes to stdout as it happens, byte for byte, for scripts to pipe; the runner's own
//! lines go to stderr from the first moment: the pod being made, why it is still pending
//! (scheduling, image pulls, the broker delivering secrets, checkout), warnings, errors, and at
//! the end one summary line.

use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::config::RunnerConfig;
use crate::execute::{Control, FailureKind, JobRun, Outcome, TraceChunk, TraceWriter, execute};
use crate::job::Job;
use crate::prepare::{Prepared, prepare};

/// Where `exec` writes: the job's log, the runner's lines, and whether those are coloured
/// (GitLab's colours, for a terminal).
#[derive(Debug)]
pub struct Terminal<O, E> {
    pub stdout: O,
    pub stderr: E,
    pub colour: bool,
}

/// Runs `job`: its log to `term.stdout`, the runner's lines and the summary to `term.stderr`.
/// Ctrl-C cancels it (after_script still runs); a second Ctrl-C aborts.
pub async fn exec_job<O, E>(
    job: &Job,
    runner: &RunnerConfig,
    client: kube::Client,
    term: Terminal<O, E>,
) -> Outcome
where
    O: AsyncWrite + Unpin + Send + 'static,
    E: AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let colour = term.colour;
    let (tx, rx) = mpsc::channel::<TraceChunk>(256);
    let printer = spawn_printer(term, rx);
    let trace = TraceWriter(tx.clone());
    trace
        .info(&format!(
            "Running job {:?} with keyhole-runner {} in namespace {}",
            job.name,
            env!("CARGO_PKG_VERSION"),
            runner.kubernetes.namespace
        ))
        .await;
    let mut pod = None;
    let outcome = match prepare(job, runner, None) {
        Err(error) => {
            for line in error.lines() {
                trace.error(&line).await;
            }
            Outcome::Failed {
                kind: FailureKind::Configuration,
                exit_code: None,
                message: "the job was not started".into(),
            }
        }
        Ok(prepared) => {
            announce(&trace, &prepared).await;
            pod = Some(pod_ref(&prepared));
            run_prepared(prepared, runner, client, tx.clone()).await
        }
    };
    if let Outcome::Failed {
        kind: FailureKind::Script,
        exit_code: Some(_),
        message,
    } = &outcome
        && message.len() > SHORT_REASON
    {
        // Said nowhere else (the other failures' messages are in the lines above), and too
        // long for the summary: e.g. the build container ran out of memory.
        trace.error(message).await;
    }
    drop(trace);
    drop(tx);
    if let Ok(mut stderr) = printer.await {
        let line = summary(&job.name, &outcome, started.elapsed(), pod.as_deref());
        let line = match (&outcome, colour) {
            (_, false) => format!("{line}\n"),
            (Outcome::Success, true) => format!("\x1b[32;1m{line}\x1b[0;m\n"),
            (Outcome::Failed { .. }, true) => format!("\x1b[31;1m{line}\x1b[0;m\n"),
        };
        let _ = stderr.write_all(line.as_bytes()).await;
        let _ = stderr.flush().await;
    }
    outcome
}

/// One printer for the job's log (stdout) and the runner's lines (stderr), so the two keep
/// their order; it hands stderr back for the summary once every sender is gone.
fn spawn_printer<O, E>(
    term: Terminal<O, E>,
    mut rx: mpsc::Receiver<TraceChunk>,
) -> tokio::task::JoinHandle<E>
where
    O: AsyncWrite + Unpin + Send + 'static,
    E: AsyncWrite + Unpin + Send + 'static,
{
    let Terminal {
        mut stdout,
        mut stderr,
        colour,
    } = term;
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            let out: &mut (dyn AsyncWrite + Unpin + Send) = match &chunk {
                TraceChunk::Log(_) => &mut stdout,
                TraceChunk::Runner { .. } => &mut stderr,
            };
            let _ = out.write_all(&chunk.into_bytes(colour)).await;
            let _ = out.flush().await;
        }
        stderr
    })
}

/// What the runner tells before the pod exists: who the job runs as, whose registry logins,
/// what it left out, which secrets it will resolve (names only).
async fn announce(trace: &TraceWriter, prepared: &Prepared) {
    for line in prepared.announcements() {
        trace.info(&line).await;
    }
    for line in &prepared.warnings {
        trace.warn(line).await;
    }
    if !prepared.secrets.references.is_empty() {
        let names: Vec<&str> = prepared
            .secrets
            .references
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        trace
            .info(&format!("Secrets to resolve: {}", names.join(", ")))
            .await;
    }
}

/// `namespace/name` of the job's pod, for the summary line.
fn pod_ref(prepared: &Prepared) -> String {
    let meta = &prepared.objects.pod.metadata;
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Runs the prepared job's pod to its end. A first Ctrl-C cancels the job as GitLab's cancel
/// does, a second one aborts it.
async fn run_prepared(
    prepared: Prepared,
    runner: &RunnerConfig,
    client: kube::Client,
    trace: mpsc::Sender<TraceChunk>,
) -> Outcome {
    let (control_tx, control_rx) = watch::channel(Control::Run);
    let interrupt = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = control_tx.send(Control::Cancel);
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = control_tx.send(Control::Abort);
        }
        control_tx
    });
    let outcome = execute(JobRun {
        client,
        objects: prepared.objects,
        timeout: prepared.timeout,
        start_timeout: Duration::from_secs(runner.kubernetes.poll_timeout),
        output_limit: runner.output_limit,
        trace,
        control: control_rx,
        metrics: None,
        retry: crate::execute::ApiRetry::from_config(&runner.kubernetes),
        image_pulls: true,
        // One job: a watch of its pod alone.
        pod_watch: None,
    })
    .await;
    interrupt.abort();
    outcome
}

/// Failure messages up to this long are the summary's reason as they are; longer ones are in
/// the lines above it, and the summary says the kind of failure.
const SHORT_REASON: usize = 60;

/// The line `exec` ends with: `Job build succeeded in 6.2 s (pod keyhole-jobs/kh-1-abc)`, or
/// `Job build failed (exit code 1) in ...`; no pod when none was made.
pub fn summary(job: &str, outcome: &Outcome, took: Duration, pod: Option<&str>) -> String {
    let verdict = match outcome {
        Outcome::Success => "succeeded".to_string(),
        Outcome::Failed {
            kind,
            exit_code,
            message,
        } => format!("failed ({})", reason(*kind, *exit_code, message)),
    };
    let pod = pod.map(|p| format!(" (pod {p})")).unwrap_or_default();
    format!("Job {job} {verdict} in {}{pod}", human_duration(took))
}

/// Why a job failed, in a few words.
fn reason(kind: FailureKind, exit_code: Option<i32>, message: &str) -> String {
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if !message.is_empty() && message.len() <= SHORT_REASON {
        return message;
    }
    match (kind, exit_code) {
        (_, Some(code)) => format!("exit code {code}"),
        (FailureKind::Script, None) => "script failure".into(),
        (FailureKind::Timeout, None) => "timed out".into(),
        (FailureKind::Canceled, None) => "canceled".into(),
        (FailureKind::ImagePull, None) => "image pull failed".into(),
        (FailureKind::Configuration, None) => "configuration error".into(),
        (FailureKind::Unschedulable, None) => "not scheduled".into(),
        (FailureKind::System, None) => "system failure".into(),
    }
}

/// A duration as people read it: `850 ms`, `6.2 s`, `2 min 5 s`, `1 h 3 min`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let tenths = (ms + 50) / 100;
    if tenths < 600 {
        return format!("{}.{} s", tenths / 10, tenths % 10);
    }
    let secs = (ms + 500) / 1000;
    if secs < 3600 {
        return format!("{} min {} s", secs / 60, secs % 60);
    }
    let mins = (secs + 30) / 60;
    format!("{} h {} min", mins / 60, mins % 60)
}

/// The process exit code for an outcome: the script's own code when it failed, 1 otherwise.
pub fn exit_code(outcome: &Outcome) -> i32 {
    match outcome {
        Outcome::Success => 0,
        Outcome::Failed {
            exit_code: Some(c), ..
        } if *c != 0 => *c,
        Outcome::Failed { .. } => 1,
    }
}

/// Jobs given to `exec` get ids from the clock, so repeated runs never share pod names.
pub fn local_job_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() % 1_000_000_000)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        let ms = Duration::from_millis;
        assert_eq!(human_duration(ms(0)), "0 ms");
        assert_eq!(human_duration(ms(850)), "850 ms");
        assert_eq!(human_duration(ms(999)), "999 ms");
        assert_eq!(human_duration(ms(1000)), "1.0 s");
        assert_eq!(human_duration(ms(6_240)), "6.2 s");
        assert_eq!(human_duration(ms(6_250)), "6.3 s");
        assert_eq!(human_duration(ms(59_940)), "59.9 s");
        // Never `60.0 s`.
        assert_eq!(human_duration(ms(59_960)), "1 min 0 s");
        assert_eq!(human_duration(ms(125_000)), "2 min 5 s");
        assert_eq!(human_duration(ms(125_600)), "2 min 6 s");
        assert_eq!(human_duration(ms(3_599_400)), "59 min 59 s");
        assert_eq!(human_duration(ms(3_600_000)), "1 h 0 min");
        assert_eq!(human_duration(ms(3_780_000)), "1 h 3 min");
    }

    #[test]
    fn the_summary_says_how_the_job_ended_how_long_it_took_and_its_pod() {
        let pod = Some("keyhole-jobs/kh-local-abc");
        assert_eq!(
            summary(
                "build",
                &Outcome::Success,
                Duration::from_millis(6_200),
                pod
            ),
            "Job build succeeded in 6.2 s (pod keyhole-jobs/kh-local-abc)"
        );
        let failed = |message: &str| Outcome::Failed {
            kind: FailureKind::Script,
            exit_code: Some(1),
            message: message.into(),
        };
        assert_eq!(
            summary(
                "test",
                &failed("exit code 1"),
                Duration::from_secs(125),
                pod
            ),
            "Job test failed (exit code 1) in 2 min 5 s (pod keyhole-jobs/kh-local-abc)"
        );
        assert_eq!(
            summary(
                "lint",
                &failed("the job\nwas not started"),
                Duration::from_millis(850),
                None
            ),
            "Job lint failed (the job was not started) in 850 ms"
        );
        // A long message is in the lines above; the summary names the kind of failure.
        let long = "creating the job pod ns/kh-1-abc failed: ApiError: pods \"kh-1-abc\" is forbidden: error looking up service account";
        let cases = [
            (FailureKind::Script, Some(137), "exit code 137"),
            (FailureKind::Script, None, "script failure"),
            (FailureKind::ImagePull, None, "image pull failed"),
            (FailureKind::Configuration, None, "configuration error"),
            (FailureKind::Unschedulable, None, "not scheduled"),
            (FailureKind::System, None, "system failure"),
            (FailureKind::Timeout, None, "timed out"),
        ];
        for (kind, exit_code, reason) in cases {
            let outcome = Outcome::Failed {
                kind,
                exit_code,
                message: long.into(),
            };
            assert_eq!(
                summary("j", &outcome, Duration::from_millis(70), None),
                format!("Job j failed ({reason}) in 70 ms")
            );
        }
    }

    #[test]
    fn exit_codes_follow_the_script() {
        assert_eq!(exit_code(&Outcome::Success), 0);
        let failed = |c| Outcome::Failed {
            kind: FailureKind::Script,
            exit_code: c,
            message: String::new(),
        };
        assert_eq!(exit_code(&failed(Some(3))), 3);
        assert_eq!(exit_code(&failed(None)), 1);
    }
}
