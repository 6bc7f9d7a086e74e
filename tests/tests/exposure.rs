//! Proof that a job's secrets go nowhere but where Keyhole puts them.
//!
//! Each test plants unique values (a multi-line PEM-like key and a value full of shell
//! metacharacters in Vault, a non-ASCII value in a Kubernetes Secret, a masked variable, the
//! GitLab job token, and the password of a dynamic Vault secret read back from the pod's tmpfs),
//! runs a real job on the bed (once through the coordinator and the runner's service, once with
//! the `keyhole-runner exec` binary) that prints them all, and then searches for every form of
//! every value in the pod objects and Events, the whole etcd keyspace and every etcd write made
//! meanwhile, every file of the bed's state and log directories (etcd's WAL and db, containerd's
//! and kubelet's logs, the pod log files, containerd's and runc's state), the job trace and the
//! runner's own logs. The job pauses (waiting for a file the test writes into its builds volume)
//! so that the running pod can be searched too.
//!
//! What may hold a value, by design, and nothing else:
//! - the pod's tmpfs volumes: the secrets volume (every delivered value), the broker's inputs
//!   (the per-job Secret: masked variables, the job token), the checkout volume (the job token);
//! - etcd: a `k8s:` value in its own source Secret; the masked variables and the job token in
//!   the per-job Secret (while the pod lives, and in etcd's history and files until compaction);
//! - the runner's job journal (the job token, while the job runs).
//!
//! Positive controls make the negatives count: each search must also find the values where
//! they are by design (the tmpfs files, the two Secrets in etcd, a marker in the pod log).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Pod;
use keyhole_runner::config::{Config, RunnerConfig};
use keyhole_tests::coordinator::FinalStatus;
use keyhole_tests::exposure::{
    Etcd, Finding, Needle, Scanner, audited_leases, bed_state_dirs, lease_exists, report,
    scan_entries, scan_namespace_objects, vault_tokens_of_namespace,
};
use keyhole_tests::output::{collect_output, collected_text};
use keyhole_tests::{
    Coordinator, CoordinatorOptions, JobNamespace, TestBed, TestNamespace, VaultAdmin, VaultRole,
    eventually, runner_binary,
};
use kube::Api;
use kube::api::ListParams;
use secrecy::SecretString;
use serde_json::json;
use tokio::sync::watch;

const SOURCE_SECRET: &str = "source-credentials";
/// The file the test writes into the job's builds volume to let the script go on.
const GO_FILE: &str = ".exposure-go";
/// Needle names are the job's variable names.
const PEM_KEY: &str = "PEM_KEY";
const SHELL_VALUE: &str = "SHELL_VALUE";
const UNICODE_VALUE: &str = "UNICODE_VALUE";
const REDIS_PASSWORD: &str = "REDIS_PASSWORD";
const MASKED_VAR: &str = "MASKED_VAR";
const CI_JOB_TOKEN: &str = "CI_JOB_TOKEN";
/// Values of the per-job Secret.
const JOB_SECRET_VALUES: [&str; 2] = [MASKED_VAR, CI_JOB_TOKEN];
/// A deadline against hangs, not a speed assertion.
const DEADLINE: Duration = Duration::from_secs(180);

/// The values one test plants, unique to it.
struct Values {
    pem: Needle,
    shell: Needle,
    unicode: Needle,
    masked: Needle,
    /// Printed in clear by the job: proves the log files searched are the job's.
    marker: Needle,
}

fn random_hex() -> String {
    format!("{:016x}", fastrand::u64(..))
}

impl Values {
    fn new(tag: &str) -> Self {
        let id = format!("{tag}-{}", random_hex());
        let line = || STANDARD.encode((0..48).map(|_| fastrand::u8(..)).collect::<Vec<u8>>());
        let pem = format!(
            "-----BEGIN KEYHOLE TEST KEY {id}-----\n{}\n{}\n{}\n-----END KEYHOLE TEST KEY {id}-----\n",
            line(),
            line(),
            line()
        );
        Self {
            pem: Needle::new(PEM_KEY, pem),
            shell: Needle::new(
                SHELL_VALUE,
                format!("sh-{} $(x) 'a' \"b\" \\ ; | & `id` end", random_hex()),
            ),
            unicode: Needle::new(UNICODE_VALUE, format!("pässwörd-✓-秘密-{}", random_hex())),
            masked: Needle::new(
                MASKED_VAR,
                format!("masked-{}-{}", random_hex(), random_hex()),
            ),
            marker: Needle::new("MARKER", format!("marker-{id}")),
        }
    }

    /// The planted secrets with `others` (values known only once the job runs).
    fn secrets_and<'a>(&'a self, others: &[&'a Needle]) -> Vec<&'a Needle> {
        let mut all = vec![&self.pem, &self.shell, &self.unicode, &self.masked];
        all.extend(others);
        all
    }
}

struct Setup {
    bed: TestBed,
    ns: TestNamespace,
    vault: VaultAdmin,
}

/// A restricted namespace with the ServiceAccount `job`, the Vault secret (KV v2, fields `pem`
/// and `shell`), a Vault role for `job` that reads it and the bed's dynamic Redis role, and the
/// source Secret `job` may `get`.
async fn setup(tag: &str, v: &Values) -> Setup {
    let JobNamespace { bed, ns, vault } = JobNamespace::builder(tag)
        .restricted()
        .service_account("job")
        .vault_kv("app", json!({"pem": v.pem.text(), "shell": v.shell.text()}))
        .vault_role(
            VaultRole::new("job")
                .read("kv/data/{ns}/*")
                .read("database/creds/short-lived")
                .update("sys/leases/revoke"),
        )
        .secret(SOURCE_SECRET, json!({"unicode": v.unicode.text()}))
        .secret_reader("read-source", "job", SOURCE_SECRET)
        .create()
        .await;
    Setup { bed, ns, vault }
}

/// The job's references, as `KEYHOLE_SECRET_<NAME>` variables.
fn references(ns: &str) -> Vec<(String, String)> {
    [
        (PEM_KEY, format!("vault:kv/{ns}/app#pem")),
        (SHELL_VALUE, format!("vault:kv/{ns}/app?file=false#shell")),
        (UNICODE_VALUE, format!("k8s:{SOURCE_SECRET}/unicode")),
        (
            REDIS_PASSWORD,
            "vault:database/creds/short-lived#password".to_string(),
        ),
    ]
    .into_iter()
    .map(|(name, r)| (format!("KEYHOLE_SECRET_{name}"), r))
    .collect()
}

/// The job: digests of what it sees, every value printed (the log must show it masked), what
/// the build container can reach, then a pause until the test has searched the running pod.
fn script(marker: &Needle, with_token: bool) -> Vec<String> {
    let mut lines = vec![format!("echo {}", marker.text())];
    for name in [PEM_KEY, UNICODE_VALUE, REDIS_PASSWORD] {
        lines.push(format!(
            "echo \"sha {name} $(sha256sum < \"${name}\" | cut -d ' ' -f 1)\""
        ));
    }
    let mut env_values = vec![SHELL_VALUE, MASKED_VAR];
    if with_token {
        env_values.push(CI_JOB_TOKEN);
    }
    for name in &env_values {
        lines.push(format!(
            "echo \"sha {name} $(printf %s \"${name}\" | sha256sum | cut -d ' ' -f 1)\""
        ));
    }
    lines.extend(
        [
            "cat \"$PEM_KEY\"",
            "echo \"unicode=$(cat \"$UNICODE_VALUE\") redis=$(cat \"$REDIS_PASSWORD\")\"",
            "echo \"shell=$SHELL_VALUE masked=$MASKED_VAR\"",
            "echo \"masked-base64=$(printf %s \"$MASKED_VAR\" | base64 -w 0)\"",
            "if [ -e /var/run/secrets/kubernetes.io/serviceaccount ]; then echo sa-token=present; else echo sa-token=absent; fi",
            "echo \"serviceaccount-paths=$(find / -path /proc -prune -o -path '*serviceaccount*' -print 2>/dev/null | wc -l)\"",
            "if ls /keyhole/inputs >/dev/null 2>&1; then echo broker-inputs=visible; else echo broker-inputs=absent; fi",
            "echo \"foreign-inputs=$(ls -d /proc/[0-9]*/root/keyhole/inputs 2>/dev/null | wc -l)\"",
            "awk '$2 == \"/keyhole/secrets\" {print \"secrets-mount=\" $3 \" \" $4}' /proc/mounts",
            "if touch /keyhole/secrets/probe 2>/dev/null; then echo secrets-write=allowed; else echo secrets-write=refused; fi",
        ]
        .map(str::to_string),
    );
    if with_token {
        lines.push("echo \"token=$CI_JOB_TOKEN\"".into());
    }
    lines.extend(
        [
            "echo exposure-ready",
            // Up to 5 minutes; the test writes the file as soon as it has searched.
            "i=0; while [ ! -e /builds/.exposure-go ] && [ \"$i\" -lt 1500 ]; do sleep 0.2; i=$((i+1)); done",
            "if [ -e /builds/.exposure-go ]; then echo exposure-go; else echo exposure-go-missing; fi",
        ]
        .map(str::to_string),
    );
    lines
}

fn has_line(trace: &str, line: &str) -> bool {
    trace.lines().any(|l| l.trim_end_matches('\r') == line)
}

/// The job pod of the namespace (the only one the runner made).
async fn job_pod(s: &Setup) -> Pod {
    let pods: Api<Pod> = s.ns.api();
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=keyhole-runner"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1, "one job pod expected");
    list.items.into_iter().next().unwrap()
}

fn pod_volume(s: &Setup, uid: &str, kind: &str, volume: &str) -> PathBuf {
    s.bed.path(format!(
        "kubelet/pods/{uid}/volumes/kubernetes.io~{kind}/{volume}"
    ))
}

/// The places that may hold each value by design; everything else is a leak.
struct Design {
    namespace: String,
    pod: String,
    uid: String,
    testbed_dir: PathBuf,
    journal: Option<PathBuf>,
}

impl Design {
    /// The design around the namespace's running job pod; `journal` is the runner's job
    /// journal, if it keeps one.
    async fn of_running_job(s: &Setup, journal: Option<PathBuf>) -> Self {
        let pod = job_pod(s).await;
        Self {
            namespace: s.ns.name.clone(),
            pod: pod.metadata.name.clone().unwrap(),
            uid: pod.metadata.uid.clone().unwrap(),
            testbed_dir: s.bed.env.testbed_dir.clone(),
            journal,
        }
    }

    fn allows(&self, f: &Finding) -> bool {
        let job_secret = JOB_SECRET_VALUES.contains(&f.needle.as_str());
        let source = f.needle == UNICODE_VALUE;
        let registry = format!("etcd:/registry/secrets/{}/", self.namespace);
        if let Some(name) = f.place.strip_prefix(&registry) {
            return (name == SOURCE_SECRET && source) || (name == self.pod && job_secret);
        }
        let path = Path::new(&f.place);
        if path.starts_with(self.testbed_dir.join("etcd")) && !f.in_memory {
            return source || job_secret;
        }
        let volumes = self
            .testbed_dir
            .join(format!("kubelet/pods/{}/volumes", self.uid));
        if f.in_memory && path.starts_with(&volumes) {
            return path.starts_with(volumes.join("kubernetes.io~empty-dir/keyhole-secrets"))
                || (path.starts_with(volumes.join("kubernetes.io~projected/keyhole-inputs"))
                    && job_secret)
                || (path.starts_with(volumes.join("kubernetes.io~projected/keyhole-checkout"))
                    && f.needle == CI_JOB_TOKEN);
        }
        if let Some(journal) = &self.journal {
            return path.starts_with(journal) && f.needle == CI_JOB_TOKEN;
        }
        false
    }

    /// Fails with every finding that is not by design; returns the rest.
    fn check(&self, what: &str, findings: Vec<Finding>) -> Vec<Finding> {
        let (ok, leaks): (Vec<_>, Vec<_>) = findings.into_iter().partition(|f| self.allows(f));
        assert!(
            leaks.is_empty(),
            "{what}: secrets where they must not be:\n{}",
            report(&leaks)
        );
        eprintln!("{what}: by design:\n{}", report(&ok));
        ok
    }
}

fn found(findings: &[Finding], needle: &str, place: impl Fn(&str) -> bool) -> bool {
    findings
        .iter()
        .any(|f| f.needle == needle && place(&f.place))
}

/// What the running job's pod, the cluster and the bed's files show, checked against the
/// design, with the positive controls.
async fn search_while_running(
    s: &Setup,
    design: &Design,
    scanner: &Scanner,
    values: &Values,
    etcd: &Etcd,
) {
    let objects = scan_namespace_objects(scanner, &s.bed, &s.ns.name)
        .await
        .unwrap();
    assert!(
        objects.is_empty(),
        "pods or Events hold secrets:\n{}",
        report(&objects)
    );

    let keyspace = design.check(
        "etcd keyspace while the job runs",
        scan_entries(scanner, &etcd.keyspace().await.unwrap()),
    );
    let source_key = format!("etcd:/registry/secrets/{}/{SOURCE_SECRET}", s.ns.name);
    let job_key = format!("etcd:/registry/secrets/{}/{}", s.ns.name, design.pod);
    assert!(
        found(&keyspace, UNICODE_VALUE, |p| p == source_key),
        "control: the source Secret's value must be found in etcd"
    );
    assert!(
        found(&keyspace, MASKED_VAR, |p| p == job_key),
        "control: the per-job Secret's values must be found in etcd"
    );

    let mut roots = bed_state_dirs(&s.bed);
    roots.extend(design.journal.clone());
    let files = design.check(
        "files while the job runs",
        scanner.scan_trees(&roots).unwrap(),
    );
    let secrets_dir = pod_volume(s, &design.uid, "empty-dir", "keyhole-secrets");
    for needle in [
        PEM_KEY,
        SHELL_VALUE,
        UNICODE_VALUE,
        REDIS_PASSWORD,
        MASKED_VAR,
    ] {
        assert!(
            files.iter().any(|f| f.needle == needle
                && f.in_memory
                && f.place.starts_with(secrets_dir.to_str().unwrap())),
            "control: {needle} must be found in the pod's secrets volume (tmpfs)"
        );
    }

    // The job's output reached the pod log files, and they were searched.
    let markers = Scanner::new(&[&values.marker]).unwrap();
    let pod_logs = s.bed.path("pod-logs");
    let seen = markers.scan_tree(&pod_logs).unwrap();
    assert!(
        seen.iter()
            .any(|f| f.place.contains(&design.pod) && f.place.contains("/keyhole-broker/")),
        "control: the job's output must be in the broker's pod log file under {}; found {}",
        pod_logs.display(),
        report(&seen)
    );
}

/// Waits until `line` is a whole line of the text `read` returns.
async fn wait_for_line(read: impl Fn() -> String, line: &str) -> String {
    let waited = eventually(DEADLINE, Duration::from_millis(200), async || {
        let text = read();
        has_line(&text, line).then_some(text)
    })
    .await;
    waited.unwrap_or_else(|| panic!("the job never printed {line:?}:\n{}", read()))
}

/// Controls while the job runs: the broker's Vault token is visible, and the one dynamic lease
/// the trace names exists. Returns the lease.
async fn live_lease(s: &Setup, trace: &str) -> String {
    let tokens = vault_tokens_of_namespace(&s.vault, &s.ns.name)
        .await
        .unwrap();
    assert!(
        !tokens.is_empty(),
        "control: the broker's Vault token must be visible while the job runs"
    );
    let leases = audited_leases(trace);
    assert_eq!(leases.len(), 1, "one dynamic lease expected:\n{trace}");
    assert!(
        lease_exists(&s.vault, &leases[0]).await,
        "control: the lease must exist while the job runs"
    );
    leases[0].clone()
}

/// Lets the paused job go on.
fn release(s: &Setup, uid: &str) {
    let go = pod_volume(s, uid, "empty-dir", "builds").join(GO_FILE);
    std::fs::write(&go, b"").unwrap_or_else(|e| panic!("writing {}: {e}", go.display()));
}

/// The dynamic secret's value, read from the running pod's tmpfs (the test is root on the
/// node), so it can be searched for like the others.
fn read_dynamic(s: &Setup, uid: &str) -> Needle {
    let path = pod_volume(s, uid, "empty-dir", "keyhole-secrets").join(REDIS_PASSWORD);
    let value = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        value.len() >= 8,
        "the dynamic password is too short to search for"
    );
    Needle::new(REDIS_PASSWORD, value)
}

/// The job's own view, from its output: exact bytes, no token, no broker inputs, read-only
/// tmpfs secrets.
fn assert_job_saw(trace: &str, expected: &[&Needle]) {
    for n in expected {
        let line = format!("sha {} {}", n.name(), n.sha256_hex());
        assert!(
            has_line(trace, &line),
            "{}: the job did not see the exact bytes (want {line:?}):\n{trace}",
            n.name()
        );
    }
    for line in [
        "sa-token=absent",
        "serviceaccount-paths=0",
        "broker-inputs=absent",
        "foreign-inputs=0",
        "secrets-write=refused",
        "exposure-go",
    ] {
        assert!(has_line(trace, line), "missing {line:?}:\n{trace}");
    }
    let mount = trace
        .lines()
        .find_map(|l| l.strip_prefix("secrets-mount="))
        .unwrap_or_else(|| panic!("no secrets-mount line:\n{trace}"));
    assert!(
        mount.starts_with("tmpfs ro,") || mount == "tmpfs ro",
        "the secrets directory is not a read-only tmpfs: {mount}"
    );
    for masked in ["shell=[MASKED] masked=[MASKED]", "masked-base64=[MASKED]"] {
        assert!(has_line(trace, masked), "missing {masked:?}:\n{trace}");
    }
    assert!(
        trace.contains("unicode=[MASKED] redis=[MASKED]"),
        "the values were not printed masked:\n{trace}"
    );
}

/// The broker said it revoked the lease and its token (its last lines reach the trace), so
/// neither just ran out.
fn assert_revoked(trace: &str, lease: &str) {
    for line in [
        format!("keyhole-broker: lease {lease} revoked"),
        "keyhole-broker: Vault token revoked".to_string(),
    ] {
        assert!(trace.contains(&line), "missing {line:?}:\n{trace}");
    }
}

/// No pod and no per-job Secret of the runner left in the namespace.
async fn assert_no_job_objects(s: &Setup) {
    let gone = eventually(DEADLINE, Duration::from_millis(500), async || {
        s.ns.runner_objects_left().await.is_empty().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the job's pod or Secret is still there");
}

/// After the job: nothing of it in the cluster or Vault, and the searches again.
async fn search_after(
    s: &Setup,
    design: &Design,
    scanner: &Scanner,
    etcd_history: Vec<keyhole_tests::exposure::EtcdEntry>,
    etcd: &Etcd,
    lease: &str,
) {
    assert_no_job_objects(s).await;
    let tokens = vault_tokens_of_namespace(&s.vault, &s.ns.name)
        .await
        .unwrap();
    assert!(
        tokens.is_empty(),
        "Vault tokens of the job outlive it: {tokens:?}"
    );
    assert!(
        !lease_exists(&s.vault, lease).await,
        "the dynamic secret's lease {lease} outlives the job"
    );

    let history = design.check(
        "every etcd write during the job",
        scan_entries(scanner, &etcd_history),
    );
    let job_key = format!("etcd:/registry/secrets/{}/{}", s.ns.name, design.pod);
    assert!(
        found(&history, MASKED_VAR, |p| p == job_key),
        "control: the per-job Secret's creation must be among the recorded etcd writes"
    );
    let keyspace = design.check(
        "etcd keyspace after the job",
        scan_entries(scanner, &etcd.keyspace().await.unwrap()),
    );
    assert!(
        !keyspace.iter().any(|f| f.place == job_key),
        "the per-job Secret is still in etcd"
    );
    // The kubelet tears the pod's volumes down after the pod object is gone.
    let pod_dir = s.bed.path(format!("kubelet/pods/{}", design.uid));
    let torn_down = eventually(DEADLINE, Duration::from_millis(200), async || {
        (!pod_dir.exists()).then_some(())
    })
    .await;
    assert!(
        torn_down.is_some(),
        "the kubelet did not remove {}",
        pod_dir.display()
    );
    let mut roots = bed_state_dirs(&s.bed);
    roots.extend(design.journal.clone());
    let files = design.check("files after the job", scanner.scan_trees(&roots).unwrap());
    let in_memory: Vec<Finding> = files.into_iter().filter(|f| f.in_memory).collect();
    assert!(
        in_memory.is_empty(),
        "the pod's tmpfs volumes outlive it:\n{}",
        report(&in_memory)
    );
}

// --- GitLab mode: coordinator → service → pod --------------------------------------------------

/// The runner's tracing output of this test process.
fn runner_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_job_leaves_its_secrets_nowhere_but_where_keyhole_puts_them() {
    let log = runner_log();
    let values = Values::new("glexp");
    let s = setup("glexp", &values).await;
    let gitlab = Coordinator::start(CoordinatorOptions::on_bed_bridge(Duration::from_secs(2)))
        .await
        .unwrap();
    let sha = gitlab
        .create_repo("acme/exposure", &[("README", "exposure test\n")])
        .unwrap();
    let mut builder = gitlab
        .job()
        .project(11, "acme/exposure")
        .sha(&sha)
        .script(script(&values.marker, true))
        .secret_variable(MASKED_VAR, &values.masked.text());
    for (key, reference) in references(&s.ns.name) {
        builder = builder.variable(&key, &reference);
    }
    let job = builder.enqueue().unwrap();
    let token = Needle::new(CI_JOB_TOKEN, job.token.clone());

    let journal = std::env::temp_dir().join(format!("keyhole-journal-{}", s.ns.name));
    let mut runner = RunnerConfig {
        name: format!("exposure-{}", s.ns.name),
        url: gitlab.url(),
        token: Some(SecretString::from(gitlab.runner_token().to_string())),
        ..RunnerConfig::default()
    };
    runner.kubernetes.namespace = s.ns.name.clone();
    runner.kubernetes.service_account = "job".into();
    runner.kubernetes.image = "keyhole.local/busybox:1".into();
    runner.kubernetes.pull_policy.0 = vec!["never".into()];
    runner.kubernetes.pod_termination_grace_period_seconds = Some(20);
    runner.keyhole.vault_addr = Some(s.bed.env.vault_pod_addr.clone());
    runner.keyhole.vault_role = Some(s.ns.name.clone());
    runner.keyhole.kube_api = s.bed.env.apiserver_url.clone();
    runner.keyhole.journal_dir = journal.display().to_string();
    let config = Config {
        concurrent: 1,
        runners: vec![runner],
        ..Config::default()
    };

    let etcd = Etcd::new(&s.bed);
    let recorder = etcd.record().await.unwrap();
    let log_start = log.lock().unwrap().len();
    let (stop, stopped) = watch::channel(false);
    let service = tokio::spawn(keyhole_runner::service::run_until(
        config,
        stopped,
        Some(s.bed.client.clone()),
    ));

    let trace_of = || String::from_utf8_lossy(&gitlab.trace(job.id)).into_owned();
    let trace = wait_for_line(trace_of, "exposure-ready").await;
    let design = Design::of_running_job(&s, Some(journal.clone())).await;
    let redis = read_dynamic(&s, &design.uid);
    let all = values.secrets_and(&[&token, &redis]);
    let scanner = Scanner::new(&all).unwrap();
    search_while_running(&s, &design, &scanner, &values, &etcd).await;
    let journal_files = scanner.scan_tree(&journal).unwrap();
    assert!(
        journal_files.iter().any(|f| f.needle == CI_JOB_TOKEN),
        "control: the runner's journal holds the job token while the job runs"
    );
    let lease = live_lease(&s, &trace).await;

    release(&s, &design.uid);
    let done = gitlab.wait_for_final(job.id, DEADLINE).await.unwrap();
    let trace = trace_of();
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert_job_saw(&trace, &all);
    assert_revoked(&trace, &lease);
    assert!(
        has_line(&trace, "token=[MASKED]"),
        "the job token was not printed masked:\n{trace}"
    );
    let in_trace = scanner.scan("trace", trace.as_bytes());
    assert!(
        in_trace.is_empty(),
        "the trace holds secrets:\n{}",
        report(&in_trace)
    );

    stop.send(true).unwrap();
    service.await.unwrap().unwrap();
    let history = recorder.finish().await.unwrap();
    search_after(&s, &design, &scanner, history, &etcd, &lease).await;

    let log_text = log.lock().unwrap()[log_start..].to_vec();
    assert!(
        String::from_utf8_lossy(&log_text).contains("creating the job pod"),
        "control: the runner's log was captured"
    );
    let in_log = scanner.scan("runner log", &log_text);
    assert!(
        in_log.is_empty(),
        "the runner's log holds secrets:\n{}",
        report(&in_log)
    );
    let _ = std::fs::remove_dir_all(&journal);
}

// --- exec mode: the keyhole-runner binary on a local .gitlab-ci.yml ----------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_job_leaves_its_secrets_nowhere_but_where_keyhole_puts_them() {
    let binary = runner_binary().unwrap();
    let values = Values::new("exexp");
    let s = setup("exexp", &values).await;
    let dir = tempfile::tempdir().unwrap();
    let variables: serde_json::Map<String, serde_json::Value> = references(&s.ns.name)
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    // JSON is YAML.
    let pipeline = json!({"exposure": {
        "image": "keyhole.local/busybox:1",
        "variables": variables,
        "script": script(&values.marker, false),
    }});
    let file = dir.path().join(".gitlab-ci.yml");
    std::fs::write(&file, serde_json::to_vec_pretty(&pipeline).unwrap()).unwrap();
    // The masked variable: exec has no GitLab, so it comes as an ID token (masked, non-public).
    let masked_file = dir.path().join("masked");
    std::fs::write(&masked_file, values.masked.value()).unwrap();

    let etcd = Etcd::new(&s.bed);
    let recorder = etcd.record().await.unwrap();
    let mut child = tokio::process::Command::new(&binary)
        .arg("exec")
        .arg(&file)
        .arg("exposure")
        .args(["--namespace", &s.ns.name, "--service-account", "job"])
        .args(["--vault-addr", &s.bed.env.vault_pod_addr])
        .args(["--vault-role", &s.ns.name])
        .args(["--kube-api", &s.bed.env.apiserver_url])
        .args(["--broker-image", "keyhole.local/broker:dev"])
        .args(["--pull-policy", "never"])
        .arg("--id-token")
        .arg(format!("{MASKED_VAR}={}", masked_file.display()))
        .env("KUBECONFIG", &s.bed.env.kubeconfig)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let (stdout, stdout_read) = collect_output(child.stdout.take().unwrap());
    let (stderr, stderr_read) = collect_output(child.stderr.take().unwrap());

    let trace = wait_for_line(|| collected_text(&stdout), "exposure-ready").await;
    let design = Design::of_running_job(&s, None).await;
    let redis = read_dynamic(&s, &design.uid);
    let all = values.secrets_and(&[&redis]);
    let scanner = Scanner::new(&all).unwrap();
    search_while_running(&s, &design, &scanner, &values, &etcd).await;
    let lease = live_lease(&s, &trace).await;

    release(&s, &design.uid);
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("keyhole-runner exec did not finish")
        .unwrap();
    // Let the readers drain the closed pipes.
    let _ = tokio::time::timeout(DEADLINE, async {
        let _ = stdout_read.await;
        let _ = stderr_read.await;
    })
    .await;
    let trace = collected_text(&stdout);
    assert!(
        status.success(),
        "exec failed ({status}):\n{trace}\n{}",
        collected_text(&stderr)
    );
    assert_job_saw(&trace, &all);
    assert_revoked(&trace, &lease);
    let mut output = scanner.scan("exec stdout (the trace)", trace.as_bytes());
    output.extend(scanner.scan("exec stderr", collected_text(&stderr).as_bytes()));
    assert!(
        output.is_empty(),
        "keyhole-runner exec printed secrets:\n{}",
        report(&output)
    );

    let history = recorder.finish().await.unwrap();
    search_after(&s, &design, &scanner, history, &etcd, &lease).await;
}
