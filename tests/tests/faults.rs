//! Faults of the bed's own parts in the middle of a job, each in a real run: the kubelet
//! restarted, the node out of pods. Its own test binary, so that no other test's pods meet the
//! fault; the faults take turns ([`SERIAL`]). Figures are printed as `FIGURE` lines and
//! collected in docs/reliability.md.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

use keyhole_tests::coordinator::FinalStatus;
use keyhole_tests::gitlab_mode::{
    RunningService, Setup, assert_numbered_lines_once, config, numbered_lines_script, setup,
    start_runner_with, stop, trace_text, wait_for_trace,
};
use keyhole_tests::{
    eventually, repo_dir, restricted_container_security, restricted_pod_security, run_ok,
};

/// The kubelet stops for 5 s while a job prints (its containers keep running under
/// containerd) and starts again: the job completes and its trace has every line once, in
/// order, the runner following the log again once the kubelet serves it.
/// One fault at a time: each would disturb the other's job.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits (up to `within`) for the job's final state, stops the runner and removes its journal;
/// the job must have succeeded. Returns its trace.
async fn succeeded(s: &Setup, job_id: u64, runner: RunningService, within: Duration) -> String {
    let done = s.gitlab.wait_for_final(job_id, within).await.unwrap();
    let text = trace_text(s, job_id);
    let (tx, service) = runner;
    stop(tx, service).await;
    let _ = std::fs::remove_dir_all(&s.journal);
    assert_eq!(done.status, FinalStatus::Success, "{text}");
    text
}

#[tokio::test]
async fn a_kubelet_restart_mid_job_loses_no_line_and_the_job_completes() {
    let _turn = SERIAL.lock().await;
    let s = setup("kubeletrs").await;
    let mut config = config(&s);
    config.concurrent = 2;
    let job = s
        .gitlab
        .job()
        .variable("GIT_STRATEGY", "none")
        .script([numbered_lines_script(50, "0.5")])
        .enqueue()
        .unwrap();
    let runner = start_runner_with(&s, config);
    let trace = || trace_text(&s, job.id);
    wait_for_trace(&s, job.id, "line 5 of 50").await;
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
    let came = eventually(
        Duration::from_secs(120),
        Duration::from_millis(100),
        async || trace().contains(&marker).then_some(()),
    )
    .await;
    assert!(came.is_some(), "{marker:?} never came:\n{}", trace());
    let caught_up = back.elapsed();
    let text = succeeded(&s, job.id, runner, Duration::from_secs(180)).await;
    assert_numbered_lines_once(&text, 50);
    println!(
        "FIGURE kubelet-restart-5s: the trace caught up {:.1} s after the kubelet was back; no line lost or doubled",
        caught_up.as_secs_f64()
    );
}

/// How many more pods the bed's node admits: its allocatable `pods` (the kubelet's `maxPods`)
/// less the pods bound to it that have not ended.
async fn free_pod_slots(client: &kube::Client, node: &str) -> usize {
    let allocatable = Api::<Node>::all(client.clone())
        .get(node)
        .await
        .unwrap()
        .status
        .and_then(|s| s.allocatable)
        .and_then(|a| a.get("pods").and_then(|q| q.0.parse::<usize>().ok()))
        .expect("the node reports allocatable pods");
    let bound = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .count();
    allocatable.saturating_sub(bound)
}

/// Fillers beyond the node's free slots (see the test).
const SPARE_FILLERS: usize = 2;

/// How many of the pods `selector` finds are bound to a node, and how many wait for one.
async fn bound_and_waiting(pods: &Api<Pod>, selector: &ListParams) -> (usize, usize) {
    let items = pods.list(selector).await.unwrap().items;
    let bound = items
        .iter()
        .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
        .count();
    (bound, items.len() - bound)
}

/// A pod that only takes a slot of the node: restricted, ends at once when deleted.
fn filler(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"keyhole-test": "filler"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "securityContext": restricted_pod_security(),
            "containers": [{"name": "sleep", "image": "keyhole.local/busybox:1",
                "imagePullPolicy": "Never", "command": ["sleep", "3600"],
                "securityContext": restricted_container_security()}]
        }
    }))
    .unwrap()
}

/// The node is out of pods (`maxPods` reached) when a job comes: the job's pod waits Pending
/// with the scheduler's reason in the trace, and runs as soon as a pod of the node goes.
#[tokio::test]
async fn a_full_node_makes_the_job_wait_with_the_reason_and_run_when_room_frees() {
    let _turn = SERIAL.lock().await;
    let s = setup("fullnode").await;
    let (bed, gitlab) = (&s.bed, &s.gitlab);
    let node = bed.env.node_name.clone();
    let pods: Api<Pod> = s.ns.api();
    // Two fillers more than there are slots: they wait Pending and take any slot that frees
    // meanwhile (a pod of an earlier test still terminating), so the node stays full until
    // the test frees one itself.
    let free = free_pod_slots(&bed.client, &node).await;
    let fill_started = Instant::now();
    for i in 0..free + SPARE_FILLERS {
        pods.create(&PostParams::default(), &filler(&format!("filler-{i}")))
            .await
            .unwrap();
    }
    let fillers = ListParams::default().labels("keyhole-test=filler");
    let full = eventually(
        Duration::from_secs(300),
        Duration::from_millis(500),
        async || {
            let (bound, waiting) = bound_and_waiting(&pods, &fillers).await;
            (free_pod_slots(&bed.client, &node).await == 0 && waiting > 0)
                .then_some((bound, waiting))
        },
    )
    .await;
    let Some((bound, waiting)) = full else {
        let (bound, waiting) = bound_and_waiting(&pods, &fillers).await;
        panic!(
            "the node never filled up ({bound} fillers bound, {waiting} waiting, {free} slots free at first)"
        );
    };
    println!(
        "node full: {bound} filler pods bound, {waiting} waiting, in {:.1} s",
        fill_started.elapsed().as_secs_f64()
    );

    let mut config = config(&s);
    config.runners[0].kubernetes.poll_timeout = 600;
    let job = gitlab
        .job()
        .variable("GIT_STRATEGY", "none")
        .script(["echo running on a node with room"])
        .enqueue()
        .unwrap();
    let runner = start_runner_with(&s, config);
    let trace = || trace_text(&s, job.id);
    wait_for_trace(&s, job.id, "Too many pods").await;
    // Still waiting a few seconds later, not failed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(gitlab.final_state(job.id).is_none(), "{}", trace());

    // Room frees: fillers that never got a slot go first (they would take it), then one that
    // has one.
    let (bound, unbound): (Vec<Pod>, Vec<Pod>) = pods
        .list(&fillers)
        .await
        .unwrap()
        .items
        .into_iter()
        .partition(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()));
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    for p in unbound.iter().chain(bound.first()) {
        pods.delete(p.metadata.name.as_deref().unwrap(), &now)
            .await
            .unwrap();
    }
    let freed = Instant::now();
    let ran = eventually(
        Duration::from_secs(180),
        Duration::from_millis(100),
        async || {
            trace()
                .contains("\nrunning on a node with room")
                .then_some(())
        },
    )
    .await;
    assert!(
        ran.is_some(),
        "the job did not run once room freed:\n{}",
        trace()
    );
    let ran_after = freed.elapsed();
    let text = succeeded(&s, job.id, runner, Duration::from_secs(120)).await;
    pods.delete_collection(&now, &fillers).await.unwrap();
    assert!(text.contains("Too many pods"), "{text}");
    println!(
        "FIGURE node-out-of-pods: the job waited Pending with the scheduler's reason; it ran {:.1} s after a pod of the node was deleted",
        ran_after.as_secs_f64()
    );
}
