//! keyhole-runner's GitLab client against the coordinator (a fake GitLab speaking the Runner
//! API): verify, job long poll, keep-alive and cancel, trace streaming through faults, the
//! final update's retries, a job taken away, and git clones with the job token.
//! No Kubernetes needed.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use keyhole_runner::gitlab::{
    ClientConfig, FailureReason, GitlabClient, GitlabError, JobOutcome, JobPayload, JobRequest,
    JobSession, RemoteStatus, RetryPolicy,
};
use keyhole_tests::coordinator::{Endpoint, Fault, FinalStatus};
use keyhole_tests::{Coordinator, CoordinatorOptions};
use secrecy::{ExposeSecret, SecretString};

/// Upper bound for waits; only reached when something is broken.
const WAIT: Duration = Duration::from_secs(60);

fn config(coordinator: &Coordinator, token: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(coordinator.url(), SecretString::from(token.to_owned()));
    cfg.request_timeout = Duration::from_secs(10);
    cfg.long_poll_timeout = Duration::from_secs(90);
    cfg.retry = RetryPolicy {
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
        deadline: Duration::from_secs(30),
    };
    cfg.final_update_deadline = Duration::from_secs(60);
    cfg.trace.update_interval = Duration::from_millis(100);
    cfg
}

async fn start(long_poll: Duration) -> (Coordinator, GitlabClient) {
    let coordinator = Coordinator::start(CoordinatorOptions {
        long_poll,
        ..CoordinatorOptions::default()
    })
    .await
    .expect("starting the coordinator");
    let client = GitlabClient::new(config(&coordinator, coordinator.runner_token())).unwrap();
    (coordinator, client)
}

/// A coordinator answering at once and a client with `adjust` made to [`config`].
async fn start_adjusted(adjust: impl FnOnce(&mut ClientConfig)) -> (Coordinator, GitlabClient) {
    let coordinator = Coordinator::start(CoordinatorOptions::default())
        .await
        .unwrap();
    let mut cfg = config(&coordinator, coordinator.runner_token());
    adjust(&mut cfg);
    let client = GitlabClient::new(cfg).unwrap();
    (coordinator, client)
}

/// The state each of the job's updates reported, in order.
fn update_states(coordinator: &Coordinator, job_id: u64) -> Vec<String> {
    coordinator
        .updates(job_id)
        .into_iter()
        .map(|u| u.state)
        .collect()
}

/// The script failed with `exit_code`.
fn script_failure(exit_code: i32) -> JobOutcome {
    JobOutcome::Failed {
        reason: FailureReason::ScriptFailure,
        exit_code: Some(exit_code),
    }
}

/// Requests the next job, which the test has queued.
async fn take_job(client: &GitlabClient) -> JobPayload {
    match client.request_job(None).await.unwrap() {
        JobRequest::Job(payload) => *payload,
        other => panic!("expected a job, got {other:?}"),
    }
}

/// Takes the queued job and confirms it, as the runner does after a 201.
async fn start_job(client: &GitlabClient) -> (JobPayload, JobSession) {
    let payload = take_job(client).await;
    let session = client
        .session_for(&payload)
        .expect("a GitLab job has a token");
    assert_eq!(session.keep_alive().await.unwrap(), RemoteStatus::Running);
    (payload, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_accepts_the_runner_token_and_refuses_others() {
    let (coordinator, client) = start(Duration::from_secs(1)).await;
    client.verify().await.unwrap();

    let wrong = GitlabClient::new(config(&coordinator, "glrt-not-registered")).unwrap();
    let err = wrong.verify().await.unwrap_err();
    assert!(
        matches!(err, GitlabError::InvalidRunnerToken { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("register the runner again"));
    assert!(!err.to_string().contains("glrt-not-registered"));
    assert!(!format!("{client:?}{wrong:?}").contains(coordinator.runner_token()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_retries_transient_errors() {
    let (coordinator, client) = start(Duration::from_secs(1)).await;
    coordinator.inject(Endpoint::Verify, Fault::Status(502), 2);
    coordinator.inject(Endpoint::Verify, Fault::Status(429), 1);
    client.verify().await.unwrap();
    let counters = coordinator.counters();
    assert_eq!(counters.faults(Endpoint::Verify), 3);
    assert_eq!(counters.requests(Endpoint::Verify), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_gives_last_update_which_the_next_request_sends() {
    let (coordinator, client) = start(Duration::from_millis(200)).await;
    let last_update = match client.request_job(None).await.unwrap() {
        JobRequest::NoJob { last_update } => last_update.expect("204 carries X-GitLab-Last-Update"),
        other => panic!("expected no job, got {other:?}"),
    };

    let queued = coordinator
        .job()
        .script(["make test"])
        .after_script(["echo bye"])
        .image("keyhole.local/busybox:1")
        .secret_variable("DB_PASSWORD", "hunter2-hunter2")
        .enqueue()
        .unwrap();
    let payload = match client.request_job(Some(&last_update)).await.unwrap() {
        JobRequest::Job(p) => p,
        other => panic!("expected a job, got {other:?}"),
    };
    let job = &payload.job;
    assert_eq!(job.id, queued.id);
    assert_eq!(job.token.as_ref().unwrap().expose_secret(), queued.token);
    assert_eq!(
        job.git.repo_url.as_deref(),
        Some(format!("{}/acme/demo-app.git", coordinator.url()).as_str())
    );
    assert_eq!(job.script, ["make test"]);
    assert_eq!(job.after_script, ["echo bye"]);
    assert_eq!(job.image.as_ref().unwrap().name, "keyhole.local/busybox:1");
    let db = job
        .variables
        .iter()
        .find(|v| v.key == "DB_PASSWORD")
        .unwrap();
    assert!(!db.public && db.masked);
    assert!(!format!("{payload:?}").contains(&queued.token));

    let requests = coordinator.job_requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].last_update, None);
    assert_eq!(
        requests[1].last_update.as_deref(),
        Some(last_update.as_str())
    );
    assert_eq!(requests[1].info["executor"], "kubernetes");
    assert_eq!(requests[1].info["name"], "keyhole-runner");
    assert_eq!(requests[1].info["features"]["cancelable"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_is_answered_when_a_job_arrives() {
    let (coordinator, client) = start(Duration::from_secs(120)).await;
    let poll = tokio::spawn({
        let client = client.clone();
        async move { client.request_job(None).await }
    });
    coordinator.wait_for_pollers(1, WAIT).await.unwrap();
    let queued = coordinator.job().enqueue().unwrap();
    match poll.await.unwrap().unwrap() {
        JobRequest::Job(p) => assert_eq!(p.job.id, queued.id),
        other => panic!("expected a job, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_payload_still_gives_what_is_needed_to_fail_the_job() {
    let (coordinator, client) = start(Duration::from_secs(1)).await;
    let mut payload = coordinator.job().payload();
    payload["git_info"].as_object_mut().unwrap().remove("sha");
    let queued = coordinator.enqueue(payload).unwrap();
    match client.request_job(None).await.unwrap() {
        JobRequest::Unreadable {
            job_id,
            token,
            error,
        } => {
            assert_eq!(job_id, queued.id);
            assert_eq!(token.expose_secret(), queued.token);
            assert!(error.to_string().contains("git_info.sha"), "{error}");
            let session = client.job_session(job_id, token);
            session
                .trace()
                .append(format!("{error}\n").as_bytes())
                .await
                .unwrap();
            session
                .finish(JobOutcome::Failed {
                    reason: FailureReason::RunnerSystemFailure,
                    exit_code: None,
                })
                .await
                .unwrap();
        }
        other => panic!("expected an unreadable job, got {other:?}"),
    }
    let fin = coordinator.wait_for_final(queued.id, WAIT).await.unwrap();
    assert_eq!(fin.status, FinalStatus::Failed);
    assert!(String::from_utf8_lossy(&coordinator.trace(queued.id)).contains("git_info.sha"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_sees_canceling_and_the_job_ends_canceled() {
    let (coordinator, client) = start(Duration::from_secs(1)).await;
    let queued = coordinator.job().enqueue().unwrap();
    let (_payload, session) = start_job(&client).await;
    let mut status = session.status();

    coordinator.cancel(queued.id);
    assert_eq!(session.keep_alive().await.unwrap(), RemoteStatus::Canceling);
    status.wait_for(|s| s.cancel_requested()).await.unwrap();

    session.trace().append(b"canceled by user\n").await.unwrap();
    session.finish(script_failure(143)).await.unwrap();
    let fin = coordinator.wait_for_final(queued.id, WAIT).await.unwrap();
    assert_eq!(fin.status, FinalStatus::Canceled);
    assert_eq!(fin.exit_code, Some(143));
    assert_eq!(
        update_states(&coordinator, queued.id),
        ["running", "running", "failed"]
    );
    assert_eq!(coordinator.trace(queued.id), b"canceled by user\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_arrives_byte_exact_through_5xx_lost_answers_and_416() {
    let (coordinator, client) = start_adjusted(|cfg| {
        // Smaller than the log: appends must wait for GitLab (backpressure).
        cfg.trace.buffer_limit = 3 * 1024 * 1024;
        cfg.request_timeout = Duration::from_secs(2);
    })
    .await;
    let queued = coordinator.job().enqueue().unwrap();
    let (_payload, session) = start_job(&client).await;
    let trace = session.trace();

    let mut rng = fastrand::Rng::with_seed(0x006b_6579_686f_6c65);
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 12_345).map(|_| rng.u8(..)).collect();
    let mut written = 0;
    let mut phase = 0;
    while written < data.len() {
        // Odd sizes, some above the 1 MiB patch limit, so that chunks straddle appends.
        let n = rng.usize(1..=1_300_000).min(data.len() - written);
        trace.append(&data[written..written + n]).await.unwrap();
        written += n;
        if phase == 0 && written > 1_000_000 {
            phase = 1;
            coordinator.inject(Endpoint::AppendTrace, Fault::Status(503), 2);
            // Stored, but the answer is lost: the resend must meet a 416 and skip ahead.
            coordinator.inject(Endpoint::AppendTrace, Fault::AcceptThenStatus(502), 1);
            coordinator.inject(Endpoint::AppendTrace, Fault::Status(500), 1);
        } else if phase == 1 && written > 2_500_000 {
            phase = 2;
            coordinator
                .wait_for_faults(Endpoint::AppendTrace, 4, WAIT)
                .await
                .unwrap();
            coordinator.wait_for_trace_416(1, WAIT).await.unwrap();
            coordinator.force_trace_416(queued.id);
            // Longer than the client's timeout: the chunk may or may not land.
            coordinator.inject(
                Endpoint::AppendTrace,
                Fault::Delay(Duration::from_secs(3)),
                1,
            );
        }
    }
    assert_eq!(trace.flush().await.unwrap(), RemoteStatus::Running);
    assert_eq!(trace.sent(), data.len() as u64);
    session.finish(JobOutcome::Success).await.unwrap();

    let stored = coordinator.trace(queued.id);
    assert_eq!(stored.len(), data.len());
    assert!(
        stored == data,
        "the stored trace differs from what was appended"
    );
    let fin = coordinator.wait_for_final(queued.id, WAIT).await.unwrap();
    assert_eq!(fin.status, FinalStatus::Success);
    assert_eq!(
        fin.trace_len,
        data.len(),
        "the final update came before the trace"
    );
    let counters = coordinator.counters();
    assert_eq!(counters.faults(Endpoint::AppendTrace), 5);
    // The one after the lost answer and the forced one.
    assert!(counters.trace_416 >= 2, "{counters:?}");
    assert!(counters.max_patch <= 1024 * 1024, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_update_is_retried_until_gitlab_records_it() {
    let (coordinator, client) = start(Duration::from_secs(1)).await;
    let queued = coordinator.job().enqueue().unwrap();
    let (_payload, session) = start_job(&client).await;
    session.trace().append(b"step 1\nstep 2\n").await.unwrap();

    coordinator.inject(Endpoint::UpdateJob, Fault::Status(503), 3);
    coordinator.inject(Endpoint::UpdateJob, Fault::Status(429), 1);
    // "Accepted, not complete": come back later.
    coordinator.inject(Endpoint::UpdateJob, Fault::Status(202), 1);
    // Recorded, but the answer is lost: the retry must be accepted as the same update.
    coordinator.inject(Endpoint::UpdateJob, Fault::AcceptThenStatus(502), 1);
    session.finish(script_failure(3)).await.unwrap();

    let fin = coordinator.wait_for_final(queued.id, WAIT).await.unwrap();
    assert_eq!(fin.status, FinalStatus::Failed);
    assert_eq!(fin.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(fin.exit_code, Some(3));
    assert_eq!(fin.trace_len, 14);
    let counters = coordinator.counters();
    assert_eq!(counters.faults(Endpoint::UpdateJob), 6);
    // keep-alive + 6 faulted + the one that got through.
    assert_eq!(counters.requests(Endpoint::UpdateJob), 8);
    assert_eq!(
        update_states(&coordinator, queued.id),
        ["running", "failed", "failed"]
    );
    assert!(matches!(
        session.trace().append(b"late").await,
        Err(GitlabError::TraceClosed { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_update_gives_up_at_its_deadline() {
    let (coordinator, client) =
        start_adjusted(|cfg| cfg.final_update_deadline = Duration::from_secs(1)).await;
    coordinator.job().enqueue().unwrap();
    let (_payload, session) = start_job(&client).await;
    coordinator.inject(Endpoint::UpdateJob, Fault::Status(503), 100_000);
    let err = session.finish(JobOutcome::Success).await.unwrap_err();
    match &err {
        GitlabError::GaveUp { last, .. } => assert!(last.is_transient(), "{err}"),
        other => panic!("expected GaveUp, got {other}"),
    }
    assert!(coordinator.counters().faults(Endpoint::UpdateJob) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_job_is_gone_everywhere() {
    let (coordinator, client) = start(Duration::from_secs(1)).await;
    let queued = coordinator.job().enqueue().unwrap();
    let (_payload, session) = start_job(&client).await;
    let trace = session.trace();
    trace.append(b"before\n").await.unwrap();
    assert_eq!(trace.flush().await.unwrap(), RemoteStatus::Running);

    coordinator.forbid(queued.id);
    assert_eq!(session.keep_alive().await.unwrap(), RemoteStatus::Gone);
    assert_eq!(session.current_status(), RemoteStatus::Gone);
    assert!(session.current_status().must_abort());
    assert!(matches!(
        trace.append(b"after\n").await,
        Err(GitlabError::JobGone { status: 403, .. })
    ));
    assert_eq!(trace.flush().await.unwrap(), RemoteStatus::Gone);
    assert!(matches!(
        session.finish(JobOutcome::Success).await,
        Err(GitlabError::JobGone { .. })
    ));
    assert_eq!(coordinator.trace(queued.id), b"before\n");
    assert_eq!(coordinator.final_state(queued.id), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_403_makes_the_job_gone() {
    let (coordinator, client) = start(Duration::from_secs(1)).await;
    let queued = coordinator.job().enqueue().unwrap();
    let (_payload, session) = start_job(&client).await;
    coordinator.forbid(queued.id);
    session.trace().append(b"x").await.unwrap();
    assert_eq!(session.trace().flush().await.unwrap(), RemoteStatus::Gone);
    let mut status = session.status();
    status.wait_for(|s| *s == RemoteStatus::Gone).await.unwrap();
}

/// `git clone` of the job's repository, with the job token when given.
async fn clone(url: &str, token: Option<&str>, into: &Path) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("git");
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env_remove("SSH_ASKPASS");
    if let Some(token) = token {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{token}"));
        cmd.arg("-c")
            .arg(format!("http.extraHeader=Authorization: Basic {basic}"));
    }
    cmd.args(["clone", "-q", url]).arg(into);
    cmd.output().await.expect("running git clone")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_needs_the_job_token_of_a_running_job() {
    let (coordinator, client) = start(Duration::from_secs(1)).await;
    let sha = coordinator
        .create_repo(
            "acme/demo-app",
            &[("README.md", "hello from keyhole\n"), ("src/a.txt", "a")],
        )
        .unwrap();
    let queued = coordinator.job().sha(&sha).enqueue().unwrap();
    let (payload, session) = start_job(&client).await;
    assert_eq!(payload.job.git.sha, sha);
    let url = payload.job.git.repo_url.clone().unwrap();
    assert!(!url.contains(&queued.token));
    let token = payload
        .job
        .token
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();

    let refused = clone(&url, None, &dir.path().join("anonymous")).await;
    assert!(!refused.status.success());
    let wrong = clone(&url, Some("glcbt-wrong"), &dir.path().join("wrong")).await;
    assert!(!wrong.status.success());
    assert!(coordinator.counters().git_unauthorized >= 2);

    let work = dir.path().join("work");
    let out = clone(&url, Some(&token), &work).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(work.join("README.md")).unwrap(),
        "hello from keyhole\n"
    );
    let head = tokio::process::Command::new("git")
        .args(["-C"])
        .arg(&work)
        .args(["rev-parse", "HEAD"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), sha);

    // A finished job's token no longer opens the repository.
    session.finish(JobOutcome::Success).await.unwrap();
    let after = clone(&url, Some(&token), &dir.path().join("after")).await;
    assert!(!after.status.success());
}
