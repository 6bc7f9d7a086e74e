//! Faults of the bed's own parts in the middle of a job, each in a real run: the kubelet
//! restarted. Its own test binary, so that no other test's pods meet the fault. Figures are
//! printed as `FIGURE` lines and collected in docs/reliability.md.

use std::time::{Duration, Instant};

use keyhole_tests::coordinator::FinalStatus;
use keyhole_tests::gitlab_mode::{
    assert_numbered_lines_once, config, numbered_lines_script, setup,
};
use keyhole_tests::{repo_dir, run_ok};

/// The kubelet stops for 5 s while a job prints (its containers keep running under
/// containerd) and starts again: the job completes and its trace has every line once, in
/// order, the runner following the log again once the kubelet serves it.
#[tokio::test]
async fn a_kubelet_restart_mid_job_loses_no_line_and_the_job_completes() {
    let s = setup("kubeletrs").await;
    let (bed, gitlab, journal) = (&s.bed, &s.gitlab, &s.journal);
    let mut config = config(&s);
    config.concurrent = 2;
    let job = gitlab
        .job()
        .variable("GIT_STRATEGY", "none")
        .script([numbered_lines_script(50, "0.5")])
        .enqueue()
        .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let service = tokio::spawn(keyhole_runner::service::run_until(
        config,
        rx,
        Some(bed.client.clone()),
    ));
    let trace = || String::from_utf8_lossy(&gitlab.trace(job.id)).into_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !trace().contains("line 5 of 50") {
        assert!(
            Instant::now() < deadline,
            "the job never printed:\n{}",
            trace()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let line_5_seen = Instant::now();
    let restart = tokio::task::spawn_blocking(|| {
        run_ok(
            std::process::Command::new(repo_dir().join("scripts/testbed"))
                .args(["restart", "kubelet", "5"]),
        )
    });
    restart.await.unwrap().unwrap();
    let back = Instant::now();
    // The line the job printed by the time the kubelet was back (one each half second from
    // line 5 on, one less to be safe): how long the trace takes to catch up with it.
    let printed = (5 + (back - line_5_seen).as_millis() / 500)
        .saturating_sub(1)
        .min(50);
    let marker = format!("line {printed} of 50");
    while !trace().contains(&marker) {
        assert!(
            back.elapsed() < Duration::from_secs(120),
            "{marker:?} never came:\n{}",
            trace()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = back.elapsed();
    let done = gitlab
        .wait_for_final(job.id, Duration::from_secs(180))
        .await
        .unwrap();
    let text = trace();
    tx.send(true).unwrap();
    service.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(journal);
    assert_eq!(done.status, FinalStatus::Success, "{text}");
    assert_numbered_lines_once(&text, 50);
    println!(
        "FIGURE kubelet-restart-5s: the trace caught up {:.1} s after the kubelet was back; no line lost or doubled",
        caught_up.as_secs_f64()
    );
}
