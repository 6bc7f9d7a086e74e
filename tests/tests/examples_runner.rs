//! Every example under `examples/` runs as written, so none can rot: its `setup.sh` (the same
//! Vault and RBAC commands the docs show) and its `.gitlab-ci.yml`, through `keyhole-runner
//! exec` (the real binary) and through the coordinator (GitLab mode, the same YAML turned into
//! a job payload, or a whole pipeline of them for the examples that hand files between jobs).

use std::process::Command;
use std::time::Duration;

use keyhole_runner::config::{Config, RunnerConfig, ServiceAccountRule};
use keyhole_runner::job::Job;
use keyhole_runner::pipeline::{LoadOptions, load_job};
use keyhole_tests::coordinator::{FinalStatus, JobBuilder, StoredArtifact};
use keyhole_tests::gitlab_ci::{PipelineJob, pipeline_jobs};
use keyhole_tests::gitlab_mode::{JOB_DEADLINE, RunningService, start_service, stop};
use keyhole_tests::{
    Coordinator, CoordinatorOptions, TestBed, TestNamespace, VaultAdmin, bed_cache_config,
    bed_command, bed_script, repo_dir, run_ok, runner_binary, with_bed_env,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

/// A namespace named after `tag`, with `example`'s `setup.sh` run for it.
async fn example_namespace(tag: &str, example: &str) -> (TestBed, TestNamespace) {
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(&bed, tag, &[]).await.unwrap();
    setup_example(&bed, &ns.name, example);
    (bed, ns)
}

/// Runs the example's `setup.sh` against the bed, for namespace `ns`.
fn setup_example(bed: &TestBed, ns: &str, example: &str) {
    run_ok(bed_script(&bed.env, &format!("bash examples/{example}/setup.sh")).env("NAMESPACE", ns))
        .unwrap_or_else(|e| panic!("{example}/setup.sh failed: {e:#}"));
}

struct Ran {
    code: i32,
    output: String,
}

/// `keyhole-runner exec` of one example's job in `ns`, set up for the bed.
fn exec_command(bed: &TestBed, ns: &str, example: &str, job: &str) -> Command {
    let mut cmd = Command::new(runner_binary().unwrap_or_else(|e| panic!("{e:#}")));
    with_bed_env(&mut cmd, &bed.env).env("NAMESPACE", ns);
    cmd.args(["exec", &format!("examples/{example}/.gitlab-ci.yml"), job])
        .args(["--namespace", ns, "--pull-policy", "never"])
        .args([
            "--vault-addr",
            &bed.env.vault_pod_addr,
            "--kube-api",
            &bed.env.apiserver_url,
        ]);
    cmd
}

fn exec(bed: &TestBed, ns: &str, example: &str, job: &str, extra: &[&str]) -> Ran {
    let mut cmd = exec_command(bed, ns, example, job);
    cmd.args(extra);
    let out = cmd.output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// One line of an `exec` run, as it arrived: on stderr (`progress`) or stdout, and when.
#[derive(Debug)]
struct Line {
    at: std::time::Instant,
    stderr: bool,
    text: String,
}

/// An `exec` run with its stdout and stderr kept apart, each line stamped as it came.
struct Streams {
    code: i32,
    stdout: String,
    lines: Vec<Line>,
}

impl Streams {
    fn stderr(&self) -> String {
        self.lines
            .iter()
            .filter(|l| l.stderr)
            .map(|l| format!("{}\n", l.text))
            .collect()
    }
}

/// [`exec`], reading stdout and stderr as they are written.
fn exec_streams(bed: &TestBed, ns: &str, example: &str, job: &str) -> Streams {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    let mut cmd = exec_command(bed, ns, example, job);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout_bytes = Arc::new(Mutex::new(Vec::new()));
    let read = |pipe: Box<dyn Read + Send>, stderr: bool| {
        let (lines, bytes) = (lines.clone(), stdout_bytes.clone());
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                if !stderr {
                    bytes.lock().unwrap().extend_from_slice(&line);
                }
                lines.lock().unwrap().push(Line {
                    at: std::time::Instant::now(),
                    stderr,
                    text: String::from_utf8_lossy(&line).trim_end().to_string(),
                });
                line.clear();
            }
        })
    };
    let readers = [
        read(Box::new(child.stdout.take().unwrap()), false),
        read(Box::new(child.stderr.take().unwrap()), true),
    ];
    let status = child.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    let mut lines = std::mem::take(&mut *lines.lock().unwrap());
    lines.sort_by_key(|l| l.at);
    let stdout = String::from_utf8_lossy(&stdout_bytes.lock().unwrap()).into_owned();
    Streams {
        code: status.code().unwrap_or(-1),
        stdout,
        lines,
    }
}

/// The summary `exec` ends with: `Job <name> succeeded|failed (<why>) in <duration> (pod
/// <ns>/<name>)`, checked part by part; the pod's name.
fn assert_summary(r: &Streams, job: &str, ns: &str, verdict: &str) -> String {
    let stderr = r.stderr();
    let last = r
        .lines
        .iter()
        .rfind(|l| l.stderr)
        .map(|l| l.text.as_str())
        .unwrap_or_default();
    let prefix = format!("Job {job} {verdict} ");
    assert!(
        last.starts_with(&prefix),
        "the last line on stderr is not the summary {prefix:?}...:\n{stderr}"
    );
    let (took, pod) = last
        .rsplit_once(" (pod ")
        .unwrap_or_else(|| panic!("no pod in the summary {last:?}"));
    let duration = took.rsplit_once(" in ").map(|(_, d)| d).unwrap_or_default();
    let number = duration.split(' ').next().unwrap_or_default();
    assert!(
        number.parse::<f64>().is_ok() && [" ms", " s"].iter().any(|unit| duration.ends_with(unit)),
        "no duration in the summary {last:?}"
    );
    let pod = pod.strip_suffix(')').unwrap_or(pod);
    assert!(
        pod.starts_with(&format!("{ns}/kh-")),
        "pod {pod:?} in the summary {last:?}"
    );
    pod.to_string()
}

/// Job `job_name` of an example's `.gitlab-ci.yml`, as the runner's own parser reads it.
fn example_job(example: &str, job_name: &str) -> Job {
    load_job(
        &repo_dir().join(format!("examples/{example}/.gitlab-ci.yml")),
        job_name,
        &LoadOptions {
            project_dir: repo_dir().join("examples").join(example),
            ci_project_dir: "/builds/acme/app".into(),
            job_id: 1,
        },
    )
    .unwrap()
}

/// A payload for `job` as GitLab makes it: project `acme/app` (no repository: `GIT_STRATEGY`
/// none), before_script and script as one step, after_script, image, and the YAML's variables.
fn job_builder<'c>(gitlab: &'c Coordinator, job: &Job) -> JobBuilder<'c> {
    let mut builder = gitlab
        .job()
        .project(7, "acme/app")
        .name(&job.name)
        .variable("GIT_STRATEGY", "none");
    let mut script = job.before_script.clone();
    script.extend(job.script.clone());
    builder = builder.script(script);
    if !job.after_script.is_empty() {
        builder = builder.after_script(job.after_script.clone());
    }
    if let Some(image) = &job.image {
        builder = builder.image(&image.name);
    }
    // YAML variables as GitLab sends them: public, raw for `expand: false`.
    for v in job
        .variables
        .iter()
        .filter(|v| !v.key.starts_with("CI") && v.key != "GITLAB_CI" && v.key != "GIT_STRATEGY")
    {
        builder = builder.raw_variable(json!({
            "key": v.key, "value": v.value.expose_secret(), "public": true,
            "file": false, "masked": false, "raw": v.raw
        }));
    }
    if let Some(secrets) = &job.gitlab_secrets {
        builder = builder.secrets(secrets.clone());
    }
    builder
}

/// The runner's config for `gitlab`'s jobs: pods in `ns`, project `acme/app` running as
/// `service_account`.
fn runner_config(bed: &TestBed, ns: &str, gitlab: &Coordinator, service_account: &str) -> Config {
    let mut runner = RunnerConfig {
        name: format!("examples-{ns}"),
        url: gitlab.url(),
        token: Some(SecretString::from(gitlab.runner_token().to_string())),
        ..RunnerConfig::default()
    };
    runner.kubernetes.namespace = ns.into();
    runner.kubernetes.pull_policy.0 = vec!["never".into()];
    runner.kubernetes.pod_termination_grace_period_seconds = Some(20);
    runner.keyhole.vault_addr = Some(bed.env.vault_pod_addr.clone());
    runner.keyhole.kube_api = bed.env.apiserver_url.clone();
    runner.keyhole.journal_dir = std::env::temp_dir()
        .join(format!("journal-{ns}"))
        .display()
        .to_string();
    runner.keyhole.service_account_rules = vec![ServiceAccountRule {
        project: Some("acme/app".into()),
        service_account: service_account.into(),
        ..ServiceAccountRule::default()
    }];
    Config {
        concurrent: 2,
        runners: vec![runner],
        ..Config::default()
    }
}

/// The same example as a GitLab job: the YAML becomes a payload the coordinator hands out.
async fn through_gitlab(
    bed: &TestBed,
    ns: &str,
    example: &str,
    job_name: &str,
    service_account: &str,
    extra_variables: &[(&str, &str, bool)],
) -> (FinalStatus, String) {
    let job = example_job(example, job_name);
    let gitlab = Coordinator::start(CoordinatorOptions {
        long_poll: Duration::from_secs(2),
        ..CoordinatorOptions::default()
    })
    .await
    .unwrap();
    let mut builder = job_builder(&gitlab, &job);
    for (key, value, secret) in extra_variables {
        builder = if *secret {
            builder.secret_variable(key, value)
        } else {
            builder.variable(key, value)
        };
    }
    let queued = builder.enqueue().unwrap();
    let config = runner_config(bed, ns, &gitlab, service_account);
    let (tx, service) = start_service(config, bed.client.clone());
    let done = gitlab
        .wait_for_final(queued.id, JOB_DEADLINE)
        .await
        .unwrap();
    let trace = gitlab.trace_text(queued.id);
    stop(tx, service).await;
    (done.status, trace)
}

/// One job of a pipeline run through GitLab mode.
#[derive(Debug)]
struct RanJob {
    name: String,
    id: u64,
    status: FinalStatus,
    trace: String,
}

/// An example's whole `.gitlab-ci.yml` in GitLab mode: one coordinator and one runner (with
/// the bed's S3 store as its cache, objects under the namespace's name) run its pipelines,
/// job by job in stage order, each payload's `artifacts`, `cache` and `dependencies` made as
/// GitLab makes them ([`keyhole_tests::gitlab_ci`]). Pipelines run one after the other share
/// the runner's cache, as pipelines of one project do.
struct GitlabPipelines {
    example: String,
    jobs: Vec<PipelineJob>,
    gitlab: Coordinator,
    service: RunningService,
}

impl GitlabPipelines {
    async fn start(bed: &TestBed, ns: &str, example: &str, service_account: &str) -> Self {
        let file = repo_dir().join(format!("examples/{example}/.gitlab-ci.yml"));
        let yaml: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let jobs = pipeline_jobs(&yaml, false).unwrap();
        // On the bed's bridge: the job pods' transfer containers upload and download
        // artifacts here.
        let gitlab = Coordinator::start(CoordinatorOptions::on_bed_bridge(Duration::from_secs(2)))
            .await
            .unwrap();
        let mut config = runner_config(bed, ns, &gitlab, service_account);
        config.runners[0].cache = Some(bed_cache_config(&bed.env, ns).unwrap());
        Self {
            example: example.into(),
            jobs,
            gitlab,
            service: start_service(config, bed.client.clone()),
        }
    }

    /// Runs a pipeline of branch `git_ref` (unprotected) and returns its jobs in the order they
    /// ran. A failed job ends the pipeline: GitLab skips the later stages' jobs.
    async fn run(&self, git_ref: &str) -> Vec<RanJob> {
        let mut ran: Vec<RanJob> = Vec::new();
        for planned in &self.jobs {
            if ran.iter().any(|r| r.status != FinalStatus::Success) {
                break;
            }
            let job = example_job(&self.example, &planned.name);
            assert_eq!(job.stage, planned.stage, "the runner's parser agrees");
            // The predefined variables GitLab sets for a branch pipeline that this example uses.
            let mut builder = job_builder(&self.gitlab, &job)
                .variable("CI_COMMIT_REF_NAME", git_ref)
                .variable("CI_COMMIT_REF_SLUG", &ref_slug(git_ref))
                .variable("CI_COMMIT_BRANCH", git_ref)
                .variable("CI_JOB_STAGE", &planned.stage)
                .artifacts(planned.artifacts.clone())
                .cache(planned.cache.clone());
            for name in &planned.dependencies {
                let id = ran
                    .iter()
                    .find(|r| &r.name == name)
                    .unwrap_or_else(|| panic!("{} depends on {name}, which did not run", job.name))
                    .id;
                builder = builder.dependency(id, name);
            }
            let mut payload = builder.payload();
            payload["job_info"]["stage"] = planned.stage.clone().into();
            payload["git_info"]["ref"] = git_ref.into();
            payload["git_info"]["refspecs"] = json!([format!(
                "+refs/heads/{git_ref}:refs/remotes/origin/{git_ref}"
            )]);
            let queued = self.gitlab.enqueue(payload).unwrap();
            let done = self
                .gitlab
                .wait_for_final(queued.id, JOB_DEADLINE)
                .await
                .unwrap();
            ran.push(RanJob {
                name: planned.name.clone(),
                id: queued.id,
                status: done.status,
                trace: self.gitlab.trace_text(queued.id),
            });
        }
        ran
    }

    async fn stop(self) {
        let (tx, service) = self.service;
        stop(tx, service).await;
    }
}

/// `CI_COMMIT_REF_SLUG`: lowercased, every character but `a-z0-9` a `-`, at most 63 bytes,
/// no `-` at either end.
fn ref_slug(git_ref: &str) -> String {
    let slug: String = git_ref
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    slug.trim_matches('-').to_owned()
}

fn assert_has(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

fn vault_field(bed: &TestBed, path: &str, field: &str) -> String {
    run_ok(bed_command(&bed.env, "vault").args([
        "kv",
        "get",
        "-mount=kv",
        &format!("-field={field}"),
        path,
    ]))
    .unwrap()
    .trim()
    .to_string()
}

#[tokio::test]
async fn hello_runs_and_cleans_up() {
    let (bed, ns) = example_namespace("exhello", "hello").await;
    let r = exec(&bed, &ns.name, "hello", "hello", &[]);
    assert_eq!(r.code, 0, "{}", r.output);
    assert_has(
        &r.output,
        &[
            "Hello from hello in /builds/local/project",
            "uid=1000",
            "the build container has no ServiceAccount token",
            "Job hello succeeded in ",
        ],
    );
    let (status, trace) =
        through_gitlab(&bed, &ns.name, "hello", "hello", "keyhole-job", &[]).await;
    assert_eq!(status, FinalStatus::Success, "{trace}");
    assert_has(
        &trace,
        &[
            "Hello from hello",
            "the build container has no ServiceAccount token",
        ],
    );
}

/// What a person at a terminal sees: on stderr, from the start, the pod being made and why it is
/// still pending, then one summary line; on stdout only the job's log, for scripts to pipe.
#[tokio::test]
async fn exec_shows_progress_and_a_summary_on_stderr_and_only_the_job_log_on_stdout() {
    let (bed, ns) = example_namespace("exprogress", "hello").await;
    let r = exec_streams(&bed, &ns.name, "hello", "hello");
    let stderr = r.stderr();
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{stderr}", r.stdout);
    let pod = assert_summary(&r, "hello", &ns.name, "succeeded");
    assert!(
        stderr.contains(&format!("Creating pod {pod}\n")),
        "no pod line on stderr:\n{stderr}"
    );
    // Before the job log's first line: the pod line and what it waits for.
    let first_output = r
        .lines
        .iter()
        .position(|l| !l.stderr)
        .unwrap_or_else(|| panic!("nothing on stdout; stderr:\n{stderr}"));
    let before: Vec<&str> = r.lines[..first_output]
        .iter()
        .filter(|l| l.stderr)
        .map(|l| l.text.as_str())
        .collect();
    assert!(
        before.iter().any(|l| l.starts_with("Creating pod "))
            && before.iter().any(|l| l.starts_with("Pod Pending: ")),
        "no progress before the job's output: {before:#?}"
    );
    // The kubelet's image pulls, from the pod's Events (the bed's images are local, pulled
    // `never`: `already present`).
    for line in [
        "keyhole-broker: Container image \"keyhole.local/broker:",
        "build: Container image \"keyhole.local/busybox:1\" already present",
    ] {
        assert!(stderr.contains(line), "no {line:?} on stderr:\n{stderr}");
    }
    // stdout: the job's log, nothing of the runner's.
    assert_has(
        &r.stdout,
        &[
            "Hello from hello in /builds/local/project",
            "uid=1000",
            "the build container has no ServiceAccount token",
        ],
    );
    for runner_text in [
        "Running job",
        "Creating pod",
        "Pod Pending",
        "Job hello",
        "ServiceAccount keyhole-job",
        // The runner's colour; the job log has GitLab's own codes (`$ command` lines).
        "\x1b[36;1m",
    ] {
        assert!(
            !r.stdout.contains(runner_text),
            "stdout holds the runner's {runner_text:?}:\n{}",
            r.stdout
        );
    }
    assert!(
        !stderr.contains("Hello from hello"),
        "the job's output is on stderr too:\n{stderr}"
    );

    setup_example(&bed, &ns.name, "compat");
    let failed = exec_streams(&bed, &ns.name, "compat", "job-status-on-failure");
    let stderr = failed.stderr();
    assert_eq!(
        failed.code, 1,
        "stdout:\n{}\nstderr:\n{stderr}",
        failed.stdout
    );
    assert_summary(
        &failed,
        "job-status-on-failure",
        &ns.name,
        "failed (exit code 1)",
    );
    assert_has(&failed.stdout, &["this job fails on purpose"]);
    assert!(!failed.stdout.contains("Job "), "{}", failed.stdout);
}

#[tokio::test]
async fn vault_kv_delivers_a_file_and_an_env_variable_both_masked() {
    let (bed, ns) = example_namespace("exvault", "vault-kv").await;
    let password = vault_field(&bed, "examples/vault-kv/db", "password");
    let api_key = vault_field(&bed, "examples/vault-kv/api", "key");
    let r = exec(
        &bed,
        &ns.name,
        "vault-kv",
        "read-secrets",
        &["--service-account", "app-deployer"],
    );
    assert_eq!(r.code, 0, "{}", r.output);
    assert_has(
        &r.output,
        &[
            "the password is in the file /keyhole/secrets/DB_PASSWORD",
            "-r--------    1 keyhole  keyhole",
            "tmpfs /keyhole/secrets tmpfs ro",
            "password is [MASKED]",
            "api key is [MASKED]",
            "[MASKED] is masked too",
            "audit secret=DB_PASSWORD source=vault:kv/examples/vault-kv/db",
        ],
    );
    assert!(
        !r.output.contains(&password) && !r.output.contains(&api_key),
        "a value leaked:\n{}",
        r.output
    );
    let (status, trace) = through_gitlab(
        &bed,
        &ns.name,
        "vault-kv",
        "read-secrets",
        "app-deployer",
        &[],
    )
    .await;
    assert_eq!(status, FinalStatus::Success, "{trace}");
    assert_has(&trace, &["password is [MASKED]", "api key is [MASKED]"]);
    assert!(
        !trace.contains(&password) && !trace.contains(&api_key),
        "a value leaked:\n{trace}"
    );
}

#[tokio::test]
async fn k8s_secret_is_read_by_the_allowed_service_account_and_refused_to_another() {
    let (bed, ns) = example_namespace("exk8s", "k8s-secret").await;
    let allowed = exec(
        &bed,
        &ns.name,
        "k8s-secret",
        "push-image",
        &["--service-account", "registry-reader"],
    );
    assert_eq!(allowed.code, 0, "{}", allowed.output);
    assert_has(&allowed.output, &["registry token is [MASKED]"]);
    let denied = exec(
        &bed,
        &ns.name,
        "k8s-secret",
        "push-image",
        &["--service-account", "keyhole-job"],
    );
    assert_ne!(denied.code, 0, "{}", denied.output);
    assert_has(
        &denied.output,
        &[&format!(
            "service account {0}/keyhole-job may not read secret registry-credentials in namespace {0}",
            ns.name
        )],
    );
    assert!(
        !denied.output.contains("registry token is"),
        "the script ran:\n{}",
        denied.output
    );
    let (status, trace) = through_gitlab(
        &bed,
        &ns.name,
        "k8s-secret",
        "push-image",
        "registry-reader",
        &[],
    )
    .await;
    assert_eq!(status, FinalStatus::Success, "{trace}");
    assert_has(&trace, &["registry token is [MASKED]"]);
}

fn id_token(bed: &TestBed, project: &str, protected: bool) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": bed.env.jwt_issuer, "aud": "https://vault.keyhole.test",
        "sub": format!("project_path:{project}:ref_type:branch:ref:main"),
        "project_path": project, "ref": "main", "ref_type": "branch",
        "ref_protected": protected.to_string(),
        "iat": now, "nbf": now, "exp": now + 600
    });
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&bed.env.jwt_signing_key).unwrap()).unwrap();
    encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

#[tokio::test]
async fn gitlab_secrets_log_in_with_the_id_token_and_vault_checks_its_claims() {
    let (bed, ns) = example_namespace("exgitlab", "gitlab-secrets").await;
    let password = vault_field(&bed, "examples/gitlab-secrets/db", "password");
    let token_file = std::env::temp_dir().join(format!("{}.jwt", ns.name));
    std::fs::write(&token_file, id_token(&bed, "acme/app", true)).unwrap();
    let arg = format!("VAULT_ID_TOKEN={}", token_file.display());
    let r = exec(
        &bed,
        &ns.name,
        "gitlab-secrets",
        "deploy",
        &["--id-token", &arg],
    );
    assert_eq!(r.code, 0, "{}", r.output);
    assert_has(&r.output, &["password is [MASKED]"]);
    assert!(!r.output.contains(&password));
    // An ID token of another project is refused by Vault's bound claims.
    std::fs::write(&token_file, id_token(&bed, "evil/app", true)).unwrap();
    let refused = exec(
        &bed,
        &ns.name,
        "gitlab-secrets",
        "deploy",
        &["--id-token", &arg],
    );
    let _ = std::fs::remove_file(&token_file);
    assert_ne!(refused.code, 0, "{}", refused.output);
    assert!(
        !refused.output.contains("password is"),
        "{}",
        refused.output
    );
    // Through GitLab: the payload carries the ID token as a masked variable, as GitLab sends it.
    let jwt = id_token(&bed, "acme/app", true);
    let (status, trace) = through_gitlab(
        &bed,
        &ns.name,
        "gitlab-secrets",
        "deploy",
        "keyhole-job",
        &[("VAULT_ID_TOKEN", &jwt, true)],
    )
    .await;
    assert_eq!(status, FinalStatus::Success, "{trace}");
    assert_has(&trace, &["password is [MASKED]"]);
    assert!(!trace.contains(&password) && !trace.contains(&jwt));
}

#[tokio::test]
async fn dynamic_secret_lease_is_renewed_during_the_job_and_revoked_after() {
    let (bed, ns) = example_namespace("exdyn", "dynamic").await;
    let r = exec(
        &bed,
        &ns.name,
        "dynamic",
        "long-job",
        &["--service-account", "cache-user"],
    );
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(
        r.output.matches("+PONG").count(),
        2,
        "the credential works before and after renewals:\n{}",
        r.output
    );
    assert_has(&r.output, &["renewed; ttl", "revoked"]);
    let lease = r
        .output
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix("lease=")
                .filter(|l| l.starts_with("database/creds/short-lived/"))
        })
        .unwrap_or_else(|| panic!("no lease on the audit line:\n{}", r.output))
        .to_string();
    let vault = VaultAdmin::new(&bed.env);
    let (status, _) = vault
        .write_status("sys/leases/lookup", json!({"lease_id": lease}))
        .await;
    assert_eq!(
        status.as_u16(),
        400,
        "the lease {lease} is still known to Vault after the job"
    );
}

#[tokio::test]
async fn compat_expands_variables_like_gitlab_and_after_script_sees_the_job_status() {
    let (bed, ns) = example_namespace("excompat", "compat").await;
    let expected = [
        "expanded: hello from expand-variables, one dollar: $, unknown: <>",
        "raw: $GREETING ${CI_JOB_NAME} $$ stays as written",
        "shell-like: $(date) and $(GREETING) are text, not commands",
        "lower_case_name: keeps its case",
        "image keyhole.local/busybox:1, CI_SERVER=yes, status while running: running",
        "after_script sees CI_JOB_STATUS=success",
    ];
    let r = exec(&bed, &ns.name, "compat", "expand-variables", &[]);
    assert_eq!(r.code, 0, "{}", r.output);
    assert_has(&r.output, &expected);
    let failed = exec(&bed, &ns.name, "compat", "job-status-on-failure", &[]);
    assert_eq!(failed.code, 1, "{}", failed.output);
    assert_has(
        &failed.output,
        &[
            "this job fails on purpose",
            "after_script sees CI_JOB_STATUS=failed",
        ],
    );
    let ready = exec(&bed, &ns.name, "compat", "service-readiness", &[]);
    assert_eq!(ready.code, 0, "{}", ready.output);
    assert_has(
        &ready.output,
        &[
            "service web is ready (port 8080",
            "served-by-web",
            "the job sees PAGE_TEXT=<>",
        ],
    );
    assert_eq!(
        ready.output.matches("\nserved-by-web").count(),
        2,
        "both aliases answer: {}",
        ready.output
    );
    let cleared = exec(&bed, &ns.name, "compat", "entrypoint-cleared", &[]);
    assert_eq!(cleared.code, 0, "{}", cleared.output);
    assert_has(&cleared.output, &["git version"]);
    let (status, trace) = through_gitlab(
        &bed,
        &ns.name,
        "compat",
        "expand-variables",
        "keyhole-job",
        &[],
    )
    .await;
    assert_eq!(status, FinalStatus::Success, "{trace}");
    assert_has(&trace, &expected);
    let (status, trace) = through_gitlab(
        &bed,
        &ns.name,
        "compat",
        "job-status-on-failure",
        "keyhole-job",
        &[],
    )
    .await;
    assert_eq!(status, FinalStatus::Failed, "{trace}");
    assert_has(&trace, &["after_script sees CI_JOB_STATUS=failed"]);
}

#[tokio::test]
async fn pipeline_passes_artifacts_a_junit_report_and_a_cache_from_build_to_test() {
    let (bed, ns) = example_namespace("expipe", "pipeline").await;
    // Run alone, a job says what it leaves out and runs its script.
    let r = exec(&bed, &ns.name, "pipeline", "build", &[]);
    assert_eq!(r.code, 0, "{}", r.output);
    assert_has(
        &r.output,
        &[
            "this job runs alone: its artifacts, cache are not used",
            "no cache yet: fetching dependencies",
        ],
    );
    let pipelines = GitlabPipelines::start(&bed, &ns.name, "pipeline", "keyhole-job").await;

    // On main, the first pipeline finds no cache: `build` fills and saves it, and `test` gets
    // both `build`'s artifacts and that cache.
    let first = pipelines.run("main").await;
    let [build, test] = &first[..] else {
        panic!("not two jobs: {first:#?}");
    };
    assert_eq!((build.name.as_str(), test.name.as_str()), ("build", "test"));
    assert_eq!(build.status, FinalStatus::Success, "{}", build.trace);
    assert_eq!(test.status, FinalStatus::Success, "{}", test.trace);
    assert_has(
        &build.trace,
        &[
            "Checking cache for deps-main-non_protected...",
            "no cache yet: fetching dependencies",
            "Creating cache deps-main-non_protected...",
            "Created cache",
            "excluded 1 files",
            "Uploading artifacts as \"archive\" to coordinator... 201 Created",
            "Uploading artifacts as \"junit\" to coordinator... 201 Created",
        ],
    );
    assert_has(
        &test.trace,
        &[
            &format!("Downloading artifacts for build ({})", build.id),
            &format!("app 1.0, built by job {} with libgreet 1.2", build.id),
            "Run dist/app to greet.",
            "dist/build.log was left out of the artifacts",
            "Checking cache for deps-main-non_protected...",
            "Successfully extracted cache",
            "dependencies from the cache: libgreet 1.2",
        ],
    );
    assert!(
        !test.trace.contains("Creating cache"),
        "policy pull saved the cache:\n{}",
        test.trace
    );

    // What GitLab keeps of `build`: `dist/` without the log as `app-main.zip`, and the JUnit
    // report, gzipped and typed `junit`, both for a week.
    let stored = pipelines.gitlab.artifacts(build.id);
    assert_eq!(stored.len(), 2, "{stored:?}");
    let archive = StoredArtifact::of_type(&stored, "archive");
    assert_eq!(
        (archive.artifact_format.as_str(), archive.filename.as_str()),
        ("zip", "app-main.zip")
    );
    assert_eq!(archive.expire_in.as_deref(), Some("1 week"));
    let files = archive.unzip().unwrap();
    let dist = files.path().join("dist");
    assert_eq!(
        std::fs::read_to_string(dist.join("app")).unwrap(),
        format!(
            "#!/bin/sh\necho 'app 1.0, built by job {} with libgreet 1.2'\n",
            build.id
        )
    );
    assert_eq!(
        std::fs::read_to_string(dist.join("docs/README.txt")).unwrap(),
        "Run dist/app to greet.\n"
    );
    assert!(
        !dist.join("build.log").exists(),
        "the excluded log was packed"
    );
    let junit = StoredArtifact::of_type(&stored, "junit");
    assert_eq!(junit.artifact_format, "gzip");
    assert_eq!(junit.expire_in.as_deref(), Some("1 week"));
    assert!(
        junit
            .gunzip()
            .unwrap()
            .contains("<testsuite name=\"build\"")
    );
    // `test` has only its report: no `artifacts:paths`, no archive.
    let stored = pipelines.gitlab.artifacts(test.id);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(
        StoredArtifact::of_type(&stored, "junit")
            .gunzip()
            .unwrap()
            .contains("<testsuite name=\"smoke\"")
    );

    // A branch's first pipeline has no cache of its own: `build` starts from main's through
    // the fallback key and saves the branch's, which `test` then restores.
    let second = pipelines.run("feature/login").await;
    let [build, test] = &second[..] else {
        panic!("not two jobs: {second:#?}");
    };
    let stored = pipelines.gitlab.artifacts(build.id);
    pipelines.stop().await;
    assert_eq!(build.status, FinalStatus::Success, "{}", build.trace);
    assert_eq!(test.status, FinalStatus::Success, "{}", test.trace);
    assert_has(
        &build.trace,
        &[
            "Checking cache for deps-feature-login-non_protected...",
            "deps-feature-login-non_protected: cache not found",
            "Checking cache for deps-main-non_protected...",
            "Successfully extracted cache",
            "found the cache: libgreet 1.2",
            "Creating cache deps-feature-login-non_protected...",
        ],
    );
    assert!(
        !build.trace.contains("no cache yet"),
        "the cache was not restored:\n{}",
        build.trace
    );
    assert_has(
        &test.trace,
        &[
            &format!("app 1.0, built by job {} with libgreet 1.2", build.id),
            "Checking cache for deps-feature-login-non_protected...",
            "Successfully extracted cache",
            "dependencies from the cache: libgreet 1.2",
        ],
    );
    assert_eq!(
        StoredArtifact::of_type(&stored, "archive").filename,
        "app-feature-login.zip"
    );
}
