//! `keyhole-runner exec`: one job of a local `.gitlab-ci.yml` on the cluster, no GitLab. The
//! trace goes to the terminal as it happens, progress lines included.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::config::RunnerConfig;
use crate::execute::{Control, FailureKind, JobRun, Outcome, TraceWriter, execute};
use crate::job::Job;
use crate::prepare::prepare;

/// Runs `job` and writes its trace to `out`. Ctrl-C cancels it (after_script still runs); a
/// second Ctrl-C aborts.
pub async fn exec_job<W>(
    job: &Job,
    runner: &RunnerConfig,
    client: kube::Client,
    mut out: W,
) -> Outcome
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    let printer = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if out.write_all(&chunk).await.is_err() {
                break;
            }
            let _ = out.flush().await;
        }
    });
    let trace = TraceWriter(tx.clone());
    trace
        .info(&format!(
            "Running job {:?} with keyhole-runner {} in namespace {}",
            job.name,
            env!("CARGO_PKG_VERSION"),
            runner.kubernetes.namespace
        ))
        .await;
    let outcome = match prepare(job, runner, None) {
        Err(errors) => {
            for e in &errors {
                trace.error(e).await;
            }
            Outcome::Failed {
                kind: FailureKind::Configuration,
                exit_code: None,
                message: "the job was not started".into(),
            }
        }
        Ok(prepared) => {
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
                trace: tx.clone(),
                control: control_rx,
                metrics: None,
                retry: crate::execute::ApiRetry::from_config(&runner.kubernetes),
            })
            .await;
            interrupt.abort();
            outcome
        }
    };
    let secs = started.elapsed().as_secs_f64();
    match &outcome {
        Outcome::Success => trace.info(&format!("Job succeeded in {secs:.1}s")).await,
        Outcome::Failed { message, .. } => {
            trace
                .error(&format!("Job failed: {message} ({secs:.1}s)"))
                .await
        }
    }
    drop(trace);
    drop(tx);
    let _ = printer.await;
    outcome
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
