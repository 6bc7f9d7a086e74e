//! The coordinator's job artifacts endpoints, driven over HTTP as gitlab-runner's
//! `artifacts-uploader` and `artifacts-downloader` call them: multipart upload with the job
//! token, download with a dependent job's token, the size limit, expiry, one artifact per
//! type, injected faults, and a 1 GiB upload through bounded memory. No Kubernetes needed.

use std::time::Duration;

use futures::StreamExt;
use keyhole_tests::coordinator::{Endpoint, EnqueuedJob, Fault};
use keyhole_tests::{Coordinator, CoordinatorOptions};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Upper bound for waits; only reached when something is broken.
const WAIT: Duration = Duration::from_secs(60);

async fn start(max_artifacts_size: u64) -> Coordinator {
    Coordinator::start(CoordinatorOptions {
        long_poll: Duration::from_millis(200),
        max_artifacts_size,
        ..CoordinatorOptions::default()
    })
    .await
    .expect("starting the coordinator")
}

/// gitlab-runner's side of the Runner API: takes jobs, finishes them, and uploads and downloads
/// artifacts as `artifacts-uploader` and `artifacts-downloader` do.
struct Runner<'a> {
    gitlab: &'a Coordinator,
    http: reqwest::Client,
}

impl<'a> Runner<'a> {
    fn of(gitlab: &'a Coordinator) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        Self { gitlab, http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v4/{path}", self.gitlab.url())
    }

    /// Takes the next queued job (`jobs/request`), which makes it running; returns its payload.
    async fn take(&self, queued: &EnqueuedJob) -> Value {
        let response = self
            .http
            .post(self.url("jobs/request"))
            .json(&json!({ "token": self.gitlab.runner_token() }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let payload: Value = response.json().await.unwrap();
        assert_eq!(payload["id"], queued.id);
        payload
    }

    /// Queues a job and takes it.
    async fn running(&self) -> EnqueuedJob {
        let queued = self.gitlab.job().enqueue().unwrap();
        self.take(&queued).await;
        queued
    }

    /// The final update: the job succeeded.
    async fn finish(&self, job: &EnqueuedJob) {
        let response = self
            .http
            .put(self.url(&format!("jobs/{}", job.id)))
            .header("JOB-TOKEN", &job.token)
            .json(&json!({ "token": job.token, "state": "success", "exit_code": 0 }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// `POST jobs/:id/artifacts` as gitlab-runner sends it; `token` None sends no `JOB-TOKEN`.
    async fn upload_with(
        &self,
        job_id: u64,
        token: Option<&str>,
        query: &[(&str, &str)],
        part: Part,
    ) -> reqwest::Response {
        let url =
            reqwest::Url::parse_with_params(&self.url(&format!("jobs/{job_id}/artifacts")), query)
                .unwrap();
        let mut request = self
            .http
            .post(url)
            .multipart(Form::new().part("file", part));
        if let Some(token) = token {
            request = request.header("JOB-TOKEN", token);
        }
        request.send().await.unwrap()
    }

    /// [`Self::upload_with`] the job's own token.
    async fn upload(
        &self,
        job: &EnqueuedJob,
        query: &[(&str, &str)],
        part: Part,
    ) -> reqwest::Response {
        self.upload_with(job.id, Some(&job.token), query, part)
            .await
    }

    /// Uploads `bytes` as the job's `artifacts.zip` archive ([`archive_query`]).
    async fn upload_archive(&self, job: &EnqueuedJob, bytes: Vec<u8>) -> StatusCode {
        self.upload(job, &archive_query(), file(bytes, "artifacts.zip"))
            .await
            .status()
    }

    /// [`Self::upload_archive`], which must be taken (201).
    async fn store_archive(&self, job: &EnqueuedJob, bytes: Vec<u8>) {
        assert_eq!(self.upload_archive(job, bytes).await, StatusCode::CREATED);
    }

    /// `GET jobs/:id/artifacts`; `token` None sends no `JOB-TOKEN`.
    async fn download(&self, job_id: u64, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(&format!("jobs/{job_id}/artifacts")));
        if let Some(token) = token {
            request = request.header("JOB-TOKEN", token);
        }
        request.send().await.unwrap()
    }
}

fn archive_query() -> Vec<(&'static str, &'static str)> {
    vec![
        ("artifact_format", "zip"),
        ("artifact_type", "archive"),
        ("expire_in", "1 week"),
    ]
}

fn file(bytes: Vec<u8>, name: &str) -> Part {
    Part::bytes(bytes).file_name(name.to_owned())
}

/// Bytes that differ from chunk to chunk and seed to seed.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = vec![0; len];
    rng.fill(&mut out);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Files in the coordinator's artifact root.
fn stored_files(coordinator: &Coordinator) -> usize {
    std::fs::read_dir(coordinator.artifacts_dir())
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_then_download_is_byte_exact_also_for_a_dependent_job() {
    let coordinator = start(100 * 1024 * 1024).await;
    let runner = Runner::of(&coordinator);
    let build = runner.running().await;
    let archive = bytes(3 * 1024 * 1024 + 17, 1);

    runner.store_archive(&build, archive.clone()).await;
    let stored = coordinator
        .wait_for_artifacts(build.id, 1, WAIT)
        .await
        .unwrap();
    let [stored] = stored.as_slice() else {
        panic!("one artifact expected: {stored:?}")
    };
    assert_eq!(stored.job_id, build.id);
    assert_eq!(stored.artifact_type, "archive");
    assert_eq!(stored.artifact_format, "zip");
    assert_eq!(stored.filename, "artifacts.zip");
    assert_eq!(stored.expire_in.as_deref(), Some("1 week"));
    assert_eq!(stored.size, archive.len() as u64);
    assert_eq!(stored.sha256, sha256_hex(&archive));
    assert!(!stored.expired);
    assert!(stored.path.starts_with(coordinator.artifacts_dir()));
    assert!(stored.read().unwrap() == archive);

    // The job itself may fetch them while it runs.
    let response = runner.download(build.id, Some(&build.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/zip");
    assert_eq!(
        headers["content-length"],
        archive.len().to_string().as_str()
    );
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"artifacts.zip\"; filename*=UTF-8''artifacts.zip"
    );
    assert!(response.bytes().await.unwrap() == archive);
    runner.finish(&build).await;

    // A later job depends on it: GitLab puts the later job's own token in `dependencies[]`,
    // with the archive's name and size.
    let test = coordinator
        .job()
        .name("test")
        .artifacts(json!([{
            "name": "reports", "untracked": false, "paths": ["out/"], "exclude": [],
            "when": "always", "artifact_type": "archive", "artifact_format": "zip",
            "expire_in": "1 day"
        }]))
        .dependency(build.id, "build")
        .enqueue()
        .unwrap();
    let payload = runner.take(&test).await;
    assert_eq!(
        payload["dependencies"],
        json!([{
            "id": build.id, "token": test.token, "name": "build",
            "artifacts_file": { "filename": "artifacts.zip", "size": archive.len() }
        }])
    );
    assert_eq!(payload["artifacts"][0]["paths"], json!(["out/"]));
    assert_eq!(payload["artifacts"][0]["when"], "always");

    let response = runner.download(build.id, Some(&test.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.unwrap() == archive);

    // `direct_download` is taken (and answered from the coordinator itself).
    let response = runner
        .http
        .get(runner.url(&format!("jobs/{}/artifacts?direct_download=true", build.id)))
        .header("JOB-TOKEN", &test.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.unwrap() == archive);

    // Once the dependent job is over, its token is no good.
    runner.finish(&test).await;
    let response = runner.download(build.id, Some(&test.token)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let counters = coordinator.counters();
    assert_eq!(counters.requests(Endpoint::UploadArtifacts), 1);
    assert_eq!(counters.requests(Endpoint::DownloadArtifacts), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_needs_the_token_of_the_job_while_it_runs() {
    let coordinator = start(1024 * 1024).await;
    let runner = Runner::of(&coordinator);
    let job = runner.running().await;
    let other = runner.running().await;
    let queued = coordinator.job().enqueue().unwrap();
    let archive = bytes(1000, 2);
    let query = archive_query();
    let send = |id: u64, token: Option<String>| {
        let (runner, archive, query) = (&runner, archive.clone(), &query);
        async move {
            runner
                .upload_with(id, token.as_deref(), query, file(archive, "artifacts.zip"))
                .await
                .status()
        }
    };

    // Another running job's token, none, a made-up one.
    assert_eq!(
        send(job.id, Some(other.token.clone())).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(job.id, None).await, StatusCode::FORBIDDEN);
    assert_eq!(
        send(job.id, Some("glcbt-made-up".into())).await,
        StatusCode::FORBIDDEN
    );
    // A job not yet handed to a runner, and one GitLab does not know.
    assert_eq!(
        send(queued.id, Some(queued.token.clone())).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(999_999, Some(job.token.clone())).await,
        StatusCode::FORBIDDEN
    );
    // A finished job.
    runner.finish(&other).await;
    assert_eq!(
        send(other.id, Some(other.token.clone())).await,
        StatusCode::FORBIDDEN
    );
    // A job made to disappear.
    coordinator.forbid(job.id);
    assert_eq!(
        send(job.id, Some(job.token.clone())).await,
        StatusCode::FORBIDDEN
    );

    for id in [job.id, other.id, queued.id] {
        assert_eq!(coordinator.artifacts(id), []);
    }
    assert_eq!(stored_files(&coordinator), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_needs_a_known_token_of_a_running_job() {
    let coordinator = start(1024 * 1024).await;
    let runner = Runner::of(&coordinator);
    let build = runner.running().await;
    runner.store_archive(&build, bytes(5000, 3)).await;
    runner.finish(&build).await;
    let test = runner.running().await;

    let status = |token: Option<String>| {
        let (runner, id) = (&runner, build.id);
        async move { runner.download(id, token.as_deref()).await.status() }
    };
    // No token, an unknown one: 401.
    assert_eq!(status(None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(Some("glcbt-made-up".into())).await,
        StatusCode::UNAUTHORIZED
    );
    // The token of a finished job (the build's own): 403.
    assert_eq!(
        status(Some(build.token.clone())).await,
        StatusCode::FORBIDDEN
    );
    // A running job's token: 200.
    assert_eq!(status(Some(test.token.clone())).await, StatusCode::OK);

    // No such job: 403, as GitLab's `authenticate_job_via_dependent_job!` answers.
    let response = runner.download(999_999, Some(&test.token)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // A job with reports but no archive: 404.
    let reports = runner.running().await;
    let response = runner
        .upload(
            &reports,
            &[("artifact_format", "gzip"), ("artifact_type", "junit")],
            file(bytes(300, 4), "junit.xml.gz"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = runner.download(reports.id, Some(&test.token)).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // And a job without anything.
    let response = runner.download(test.id, Some(&test.token)).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_413_and_leaves_nothing_behind() {
    const MAX: u64 = 1024 * 1024;
    let coordinator = start(MAX).await;
    let runner = Runner::of(&coordinator);
    let job = runner.running().await;

    // Known length (Content-Length), far over the limit: refused before reading.
    let response = runner
        .upload(
            &job,
            &archive_query(),
            file(bytes(4 * MAX as usize, 5), "artifacts.zip"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "file size has reached maximum size limit");

    // Unknown length (chunked, as gitlab-runner streams an archive it is still
    // writing): refused once the file passes the limit by one byte.
    let over = bytes(MAX as usize + 1, 6);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        over.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let part = Part::stream(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .file_name("artifacts.zip");
    let response = runner.upload(&job, &archive_query(), part).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(coordinator.artifacts(job.id), []);
    assert_eq!(stored_files(&coordinator), 0);

    // Exactly the limit is taken.
    let exact = bytes(MAX as usize, 7);
    runner.store_archive(&job, exact.clone()).await;
    let stored = coordinator.artifacts(job.id);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].size, MAX);
    assert!(stored[0].read().unwrap() == exact);
    assert_eq!(stored_files(&coordinator), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_artifacts_are_not_found_nor_offered_to_dependent_jobs() {
    let coordinator = start(1024 * 1024).await;
    let runner = Runner::of(&coordinator);
    let build = runner.running().await;
    let first = bytes(2000, 8);
    runner.store_archive(&build, first.clone()).await;
    let test = runner.running().await;
    let response = runner.download(build.id, Some(&test.token)).await;
    assert_eq!(response.status(), StatusCode::OK);

    coordinator.expire_artifacts(build.id);
    let response = runner.download(build.id, Some(&test.token)).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let stored = coordinator.artifacts(build.id);
    assert!(stored.iter().all(|a| a.expired), "{stored:?}");
    assert!(stored[0].read().unwrap() == first);

    // GitLab leaves `artifacts_file` out for a dependency without (available) artifacts.
    let later = coordinator
        .job()
        .dependency(build.id, "build")
        .enqueue()
        .unwrap();
    let payload = runner.take(&later).await;
    assert_eq!(
        payload["dependencies"],
        json!([{ "id": build.id, "token": later.token, "name": "build" }])
    );

    // The expired archive no longer stands in the way of a new one.
    let second = bytes(2500, 9);
    runner.store_archive(&build, second.clone()).await;
    let response = runner.download(build.id, Some(&later.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.unwrap() == second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_artifact_per_type_and_only_types_and_formats_gitlab_knows() {
    let coordinator = start(1024 * 1024).await;
    let runner = Runner::of(&coordinator);
    let job = runner.running().await;
    let archive = bytes(4000, 10);
    runner.store_archive(&job, archive.clone()).await;
    // The same bytes again (a retry after a lost answer): accepted, stored once.
    runner.store_archive(&job, archive.clone()).await;
    // Other bytes: 400 with GitLab's message.
    let response = runner
        .upload(
            &job,
            &archive_query(),
            file(bytes(4000, 11), "artifacts.zip"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["message"],
        "another artifact of the same type already exists"
    );

    // Reports are kept by type, one of each; no type nor format means archive and zip.
    let report = |kind: &'static str, format: &'static str, seed: u64| {
        let (runner, job) = (&runner, &job);
        async move {
            runner
                .upload(
                    job,
                    &[("artifact_type", kind), ("artifact_format", format)],
                    file(bytes(100, seed), &format!("{kind}.gz")),
                )
                .await
                .status()
        }
    };
    assert_eq!(report("junit", "gzip", 12).await, StatusCode::CREATED);
    assert_eq!(report("dotenv", "gzip", 13).await, StatusCode::CREATED);
    assert_eq!(report("junit", "gzip", 14).await, StatusCode::BAD_REQUEST);
    assert_eq!(
        report("nonsense", "gzip", 15).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(report("sast", "tarzstd", 16).await, StatusCode::BAD_REQUEST);

    let other = runner.running().await;
    let response = runner
        .upload(&other, &[], file(bytes(10, 17), "a.zip"))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let defaults = coordinator.artifacts(other.id);
    assert_eq!(
        (
            defaults[0].artifact_type.as_str(),
            defaults[0].artifact_format.as_str(),
            defaults[0].expire_in.as_deref()
        ),
        ("archive", "zip", None)
    );

    // No `file` part: 400.
    let response = runner
        .http
        .post(runner.url(&format!("jobs/{}/artifacts", other.id)))
        .header("JOB-TOKEN", &other.token)
        .multipart(Form::new().text("metadata", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let stored: Vec<(String, String, u64)> = coordinator
        .artifacts(job.id)
        .into_iter()
        .map(|a| (a.artifact_type, a.artifact_format, a.size))
        .collect();
    assert_eq!(
        stored,
        [
            ("archive".into(), "zip".into(), 4000),
            ("junit".into(), "gzip".into(), 100),
            ("dotenv".into(), "gzip".into(), 100),
        ]
    );
    assert_eq!(stored_files(&coordinator), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_hit_uploads_and_downloads() {
    let coordinator = start(1024 * 1024).await;
    let runner = Runner::of(&coordinator);
    let job = runner.running().await;
    let archive = bytes(6000, 20);

    coordinator.inject(Endpoint::UploadArtifacts, Fault::Status(503), 2);
    for _ in 0..2 {
        assert_eq!(
            runner.upload_archive(&job, archive.clone()).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(coordinator.artifacts(job.id), []);
    // Stored, but the answer is lost; the retry with the same bytes is taken.
    coordinator.inject(Endpoint::UploadArtifacts, Fault::AcceptThenStatus(500), 1);
    assert_eq!(
        runner.upload_archive(&job, archive.clone()).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(coordinator.artifacts(job.id).len(), 1);
    runner.store_archive(&job, archive.clone()).await;
    assert_eq!(coordinator.artifacts(job.id).len(), 1);
    assert_eq!(stored_files(&coordinator), 1);

    coordinator.inject(Endpoint::DownloadArtifacts, Fault::Status(503), 1);
    let response = runner.download(job.id, Some(&job.token)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    coordinator
        .wait_for_faults(Endpoint::DownloadArtifacts, 1, WAIT)
        .await
        .unwrap();
    let response = runner.download(job.id, Some(&job.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.unwrap() == archive);

    let counters = coordinator.counters();
    assert_eq!(counters.faults(Endpoint::UploadArtifacts), 3);
    assert_eq!(counters.requests(Endpoint::UploadArtifacts), 4);
    assert_eq!(counters.faults(Endpoint::DownloadArtifacts), 1);
    assert_eq!(counters.requests(Endpoint::DownloadArtifacts), 2);
}

/// The peak resident set of this process (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// 1 MiB block `i` of the big upload: a fixed random block with `i` written over its start.
fn block(base: &[u8], i: u64) -> Vec<u8> {
    let mut b = base.to_vec();
    b[..8].copy_from_slice(&i.to_le_bytes());
    b
}

/// A 1 GiB archive, streamed up with unknown length and down again, with the process's peak
/// memory growing by far less than the file: nothing holds it whole. Slow in a debug build
/// (SHA-256 of 1 GiB) and needs 1 GiB of free disk: run it on purpose, alone:
/// `cargo test -p keyhole-tests --test coordinator_artifacts -- --ignored --exact
/// a_one_gib_upload_and_download_stream_through_bounded_memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "1 GiB through loopback and disk; run alone on purpose"]
async fn a_one_gib_upload_and_download_stream_through_bounded_memory() {
    const BLOCK: u64 = 1024 * 1024;
    const BLOCKS: u64 = 1024;
    let coordinator = start(2 * BLOCKS * BLOCK).await;
    let runner = Runner::of(&coordinator);
    let job = runner.running().await;
    let base = bytes(BLOCK as usize, 30);
    let before = peak_rss();

    let stream = futures::stream::iter(0..BLOCKS).map({
        let base = base.clone();
        move |i| Ok::<_, std::io::Error>(block(&base, i))
    });
    let part = Part::stream(reqwest::Body::wrap_stream(stream)).file_name("big.zip".to_owned());
    let response = runner.upload(&job, &archive_query(), part).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let stored = coordinator.artifacts(job.id);
    assert_eq!(stored[0].size, BLOCKS * BLOCK);

    let response = runner.download(job.id, Some(&job.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let (mut offset, mut pending) = (0u64, Vec::new());
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.unwrap());
        while pending.len() as u64 >= BLOCK {
            let rest = pending.split_off(BLOCK as usize);
            assert!(pending == block(&base, offset / BLOCK), "block at {offset}");
            offset += BLOCK;
            pending = rest;
        }
    }
    assert!(pending.is_empty());
    assert_eq!(offset, BLOCKS * BLOCK);

    let growth = peak_rss().saturating_sub(before);
    assert!(
        growth < 128 * 1024 * 1024,
        "peak memory grew by {} MiB for a 1 GiB artifact",
        growth / 1024 / 1024
    );
}
