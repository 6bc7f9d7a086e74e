//! `keyhole-broker run`: resolve → write (secrets and job variables) → ready → mask the log
//! and renew leases → on SIGTERM drain, wipe, revoke leases and token. The I/O edge that ties
//! the pure modules together.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretSlice;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

use crate::blame::Blame;
use crate::delivery::{DeliveryError, Ownership, Resolved, SecretFiles, WriteOptions};
use crate::inputs;
use crate::job_vars::{self, JobVariable, VariableKind};
use crate::kube_secrets::service_account_of;
use crate::leases::VaultSession;
use crate::log_budget::LogLimits;
use crate::mask::{MaskPlan, StreamMasker};
use crate::pump::ScriptLife;
use crate::resolve::{AuditEntry, KubeSource, Outcome, Unresolved, VaultSource, resolve_all};
use crate::vault::{LoginMethod, RetryPolicy, VaultConfig};
use keyhole_contract::reference::Source;
use keyhole_contract::{self as contract, exit_code};

/// Settings of one broker run (from flags and `KEYHOLE_*` environment variables).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub inputs_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub vault: Option<VaultSettings>,
    pub kube: Option<KubeSettings>,
    pub owner: Option<Ownership>,
    pub allow_disk: bool,
    pub concurrency: usize,
    pub vault_deadline: Duration,
    /// Size limit and pace of the job's output in the container log.
    pub log_limits: LogLimits,
    /// Services the job's script waits for (empty: it starts at once), and for how long.
    pub service_waits: Vec<contract::ServiceWait>,
    pub services_timeout: Duration,
    /// Preparation steps (their container names) the script waits for, in its gate.
    pub steps: Vec<String>,
    /// After SIGTERM, how long a started script may still take to say it is done.
    pub cancel_wait: Duration,
}

impl RunConfig {
    /// Whether the job's script waits at [`contract::GATE_FIFO`] before its first command.
    fn has_gate(&self) -> bool {
        !self.service_waits.is_empty() || !self.steps.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct VaultSettings {
    pub addr: String,
    pub allowed_addresses: Vec<String>,
    pub namespace: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub auth_mount: String,
    pub role: String,
    pub method: AuthMethod,
}

/// How the broker logs in to Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// Kubernetes auth with the pod's projected ServiceAccount token.
    Kubernetes,
    /// JWT auth with a GitLab ID token the runner put in the per-job Secret under this key.
    Jwt { input_key: String },
}

#[derive(Debug, Clone)]
pub struct KubeSettings {
    pub api_url: String,
    pub ca_file: PathBuf,
    pub namespace: String,
}

/// Runs the sidecar to completion and returns its exit code (see [`contract::exit_code`]).
/// Its last output, success or not, is the log-end markers, so the runner knows the log is
/// complete without waiting for the kubelet to notice the exit.
pub async fn run(config: RunConfig) -> i32 {
    // First of all: until the handlers exist, SIGTERM to this PID 1 is dropped.
    let terminated = crate::termination::listen();
    let log_end = inputs::read_log_end_token(&config.inputs_dir);
    let mut stdout = tokio::io::stdout();
    let mut closing = Closing {
        onto_stdout: log_end.is_some(),
        own_stderr: None,
        job_ran: false,
        script_status: None,
    };
    let code = run_job(&config, &mut stdout, &mut closing, terminated.clone()).await;
    if let Some(token) = log_end {
        // The script's status just before the stdout marker: once the runner has both
        // markers it has the status too, without waiting for the pod's.
        if let Some(status) = closing.script_status {
            let line = contract::script_exit_line(&token, status);
            let _ = stdout.write_all(line.as_bytes()).await;
        }
        // Both streams end with a marker: the kubelet interleaves them, each in order.
        let marker = contract::log_end_marker(contract::LogStream::Stdout, &token);
        let _ = stdout.write_all(marker.as_bytes()).await;
        let _ = stdout.flush().await;
        let marker = contract::log_end_marker(contract::LogStream::Stderr, &token);
        match closing.own_stderr {
            Some(fd) => {
                let _ = std::io::Write::write_all(&mut std::fs::File::from(fd), marker.as_bytes());
            }
            None => eprint!("{marker}"),
        }
    }
    // The job said it was over before the pod's deletion: wait for its SIGTERM (a broker run
    // as a native sidecar, as it can be, would be restarted if it exited now).
    if closing.job_ran {
        let mut terminated = terminated;
        crate::termination::stopped(&mut terminated).await;
    }
    code
}

/// How the job's end is handled, for [`run`] to finish after [`run_job`].
struct Closing {
    /// Write the closing lines to stdout (only when the runner reads the log to the markers;
    /// a broker run by hand keeps them on stderr).
    onto_stdout: bool,
    /// The original stderr once the closing lines go to stdout.
    own_stderr: Option<std::os::fd::OwnedFd>,
    /// The job's script ran (the log was relayed until its end).
    job_ran: bool,
    /// The exit status the script wrote to its `done` FIFO, if it did.
    script_status: Option<u8>,
}

/// Why a run ends before or instead of a clean shutdown.
enum Stop {
    Failed {
        code: i32,
        lines: Vec<String>,
    },
    /// A signal came before the job's script ran; `during` names the phase.
    Terminated {
        during: &'static str,
    },
}

impl Stop {
    fn failed(code: i32, lines: Vec<String>) -> Self {
        Stop::Failed { code, lines }
    }

    /// Prints what happened and returns the exit code.
    fn report(self) -> i32 {
        match self {
            Stop::Failed { code, lines } => fail(code, &lines),
            Stop::Terminated { during } => {
                eprintln!(
                    "keyhole-broker: terminated during {during}; nothing is delivered, what was issued is revoked"
                );
                exit_code::TERMINATED
            }
        }
    }
}

/// What a run holds that must be given back however it ends: the Vault session (token and
/// leases), the delivered files, and the marker and pipes in the shared volumes. Each phase
/// puts what it acquires here at once; [`Held::release`] runs on every path, including a
/// panic (caught in [`run_job`]) and a signal at any point.
#[derive(Default)]
struct Held {
    session: Option<VaultSession>,
    files: Option<SecretFiles>,
    paths: Vec<PathBuf>,
}

impl Held {
    async fn release(self) {
        if let Some(mut files) = self.files {
            files.wipe();
        }
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
        end_session(self.session).await;
    }
}

/// Runs the phases, then releases what they hold, whatever happened: success, failure, a
/// signal, or a panic (the broker's profile unwinds so that this clean-up always runs).
async fn run_job(
    config: &RunConfig,
    stdout: &mut tokio::io::Stdout,
    closing: &mut Closing,
    terminated: watch::Receiver<bool>,
) -> i32 {
    let mut held = Held::default();
    let outcome = guarded(
        |held| phases(config, stdout, closing, held, terminated),
        &mut held,
    )
    .await;
    held.release().await;
    outcome
}

/// Runs `phases` with `held`, turning a panic into an exit code so that the caller's release
/// of `held` still runs: no panic may skip the revocation of the Vault token or the wipe.
async fn guarded<'h, F, Fut>(phases: F, held: &'h mut Held) -> i32
where
    F: FnOnce(&'h mut Held) -> Fut,
    Fut: std::future::Future<Output = Result<(), Stop>> + 'h,
{
    use futures::FutureExt as _;
    match std::panic::AssertUnwindSafe(phases(held))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => exit_code::OK,
        Ok(Err(stop)) => stop.report(),
        Err(_) => fail(
            exit_code::BAD_INPUTS,
            &[
                "internal error (a bug in keyhole-broker); revoking and wiping what was issued"
                    .into(),
            ],
        ),
    }
}

/// The job's inputs: its references, its per-job Secret and the variables in it.
struct JobInputs {
    refs: Vec<keyhole_contract::reference::SecretRef>,
    job_secret: std::collections::BTreeMap<String, SecretSlice<u8>>,
    variables: Vec<JobVariable>,
}

async fn phases(
    config: &RunConfig,
    stdout: &mut tokio::io::Stdout,
    closing: &mut Closing,
    held: &mut Held,
    terminated: watch::Receiver<bool>,
) -> Result<(), Stop> {
    let job = read_inputs(config)?;
    eprintln!(
        "keyhole-broker: resolving {} secret(s); {} job variable(s) from the per-job Secret",
        job.refs.len(),
        job.variables.len()
    );
    let vault = config
        .vault
        .as_ref()
        .map(|v| vault_source(v, config, &job.job_secret))
        .transpose()
        .map_err(|e| Stop::failed(exit_code::BAD_INPUTS, vec![e]))?;
    let kube = kube_source_if_needed(config, &job.refs).await?;
    let outcome = resolve_all(
        job.refs.clone(),
        vault,
        kube,
        config.concurrency,
        &mut held.session,
        terminated.clone(),
    )
    .await
    .map_err(|u| match u {
        Unresolved::Failed(failures) => Stop::failed(
            Blame::exit_code_of(failures.iter().map(|f| f.blame)),
            failures.iter().map(ToString::to_string).collect(),
        ),
        Unresolved::Terminated => Stop::Terminated {
            during: "resolution",
        },
    })?;
    if *terminated.borrow() {
        return Err(Stop::Terminated { during: "delivery" });
    }
    let masker = deliver(config, &job, outcome, held)?;
    relay_until_the_end(config, stdout, closing, held, masker, terminated).await
}

fn read_inputs(config: &RunConfig) -> Result<JobInputs, Stop> {
    let lines = |errors: &[_]| -> Vec<String> { errors.iter().map(ToString::to_string).collect() };
    let annotations = inputs::read_annotations(&config.inputs_dir)
        .map_err(|e| Stop::failed(exit_code::BAD_INPUTS, vec![e.to_string()]))?;
    let refs = inputs::references_from_annotations(&annotations)
        .map_err(|errors| Stop::failed(exit_code::SECRETS_FAILED, lines(&errors)))?;
    let job_secret = inputs::read_job_secret(&config.inputs_dir)
        .map_err(|e| Stop::failed(exit_code::BAD_INPUTS, vec![e.to_string()]))?;
    let variables = job_vars::job_variables(&job_secret)
        .and_then(|v| job_vars::check_clashes(&v, &refs).map(|()| v))
        .map_err(|errors| {
            Stop::failed(
                exit_code::BAD_INPUTS,
                errors.iter().map(ToString::to_string).collect(),
            )
        })?;
    Ok(JobInputs {
        refs,
        job_secret,
        variables,
    })
}

/// The Kubernetes client, built only when a reference needs it: its set-up (CA bundle, TLS
/// configuration, client stack) costs start-up time and memory for nothing otherwise.
async fn kube_source_if_needed(
    config: &RunConfig,
    refs: &[keyhole_contract::reference::SecretRef],
) -> Result<Option<KubeSource>, Stop> {
    let needs_kube = refs
        .iter()
        .any(|r| matches!(r.source, Source::Kubernetes { .. }));
    match config.kube.as_ref().filter(|_| needs_kube) {
        None => Ok(None),
        Some(k) => kube_source(k, config)
            .await
            .map(Some)
            .map_err(|e| Stop::failed(exit_code::BAD_INPUTS, vec![e])),
    }
}

/// Writes secrets and variables (all or nothing), the log pipe and the ready marker; returns
/// the masker for every value the job may print.
fn deliver(
    config: &RunConfig,
    job: &JobInputs,
    outcome: Outcome,
    held: &mut Held,
) -> Result<StreamMasker, Stop> {
    let Outcome { resolved, audit } = outcome;
    let secret_count = resolved.len();
    // Secrets first, then variables: one all-or-nothing write.
    let mut deliveries = resolved;
    deliveries.extend(job.variables.iter().map(JobVariable::to_resolved));
    let write = WriteOptions {
        dir: config.secrets_dir.clone(),
        owner: config.owner,
        allow_disk: config.allow_disk,
    };
    let files = SecretFiles::write_all(&write, &deliveries).map_err(|e| {
        let code = match e {
            DeliveryError::EnvFile(_) => exit_code::SECRETS_FAILED,
            _ => exit_code::BAD_INPUTS,
        };
        Stop::failed(code, vec![e.to_string()])
    })?;
    held.files = Some(files);
    log_audit(config, &audit, &job.variables);
    let plan = mask_plan(&deliveries[..secret_count], &job.variables, &job.job_secret);
    // On stderr before the job starts: the runner follows this log from its first line, so
    // the warnings are in the job's trace above its output.
    for warning in plan.warnings() {
        eprintln!("keyhole-broker: warning: {warning}");
    }
    let masker = StreamMasker::new(Arc::new(plan.build()));
    drop(plan);
    create_pipe(held, &config.runtime_dir, contract::LOG_FIFO, 0o620, "log")?;
    if config.has_gate() {
        create_pipe(
            held,
            &config.runtime_dir,
            contract::GATE_FIFO,
            0o640,
            "gate",
        )?;
    }
    // The script opens it read-write (so it never blocks): the group needs both.
    create_pipe(
        held,
        &config.runtime_dir,
        contract::ALIVE_FIFO,
        0o660,
        "alive",
    )?;
    let ready = config.secrets_dir.join(contract::READY_MARKER);
    std::fs::write(&ready, b"").map_err(|e| {
        Stop::failed(
            exit_code::BAD_INPUTS,
            vec![format!("writing {}: {e}", ready.display())],
        )
    })?;
    held.paths.push(ready);
    eprintln!(
        "keyhole-broker: {secret_count} secret(s) and {} job variable(s) delivered; ready",
        job.variables.len()
    );
    Ok(masker)
}

/// Creates the FIFO `name` in `dir` with `mode` (see [`crate::pump::create_fifo`])
/// and hands it to `held`, which removes it at the end; `what` names it in the error.
fn create_pipe(held: &mut Held, dir: &Path, name: &str, mode: u32, what: &str) -> Result<(), Stop> {
    let path = dir.join(name);
    crate::pump::create_fifo(&path, mode).map_err(|e| {
        Stop::failed(
            exit_code::BAD_INPUTS,
            vec![format!("creating the {what} pipe {}: {e}", path.display())],
        )
    })?;
    held.paths.push(path);
    Ok(())
}

/// Relays the job's masked log and keeps its leases alive until the job ends (its `done` pipe
/// or a signal), then moves the closing lines onto stdout.
async fn relay_until_the_end(
    config: &RunConfig,
    stdout: &mut tokio::io::Stdout,
    closing: &mut Closing,
    held: &mut Held,
    masker: StreamMasker,
    mut terminated: watch::Receiver<bool>,
) -> Result<(), Stop> {
    // The job ends when its script says so, or at SIGTERM: at once when the script is not
    // running the job's commands, else once it is done or gone or `cancel_wait` has passed.
    // The kubelet stops every container of the pod together, and a canceled script still
    // runs its after_script, whose output belongs in the trace.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (life_tx, mut life_rx) = watch::channel(ScriptLife::NotYet);
    let alive = config.runtime_dir.join(contract::ALIVE_FIFO);
    tokio::spawn(async move {
        if let Err(e) = crate::pump::follow_script_life(&alive, life_tx).await {
            eprintln!(
                "keyhole-broker: warning: following {}: {e}; a canceled job's after_script may not reach the trace",
                alive.display()
            );
        }
    });
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        let cancel_wait = config.cancel_wait;
        async move {
            crate::termination::stopped(&mut terminated).await;
            if *life_rx.borrow() == ScriptLife::Running {
                let gone = life_rx.wait_for(|l| *l == ScriptLife::Gone);
                let _ = tokio::time::timeout(cancel_wait, gone).await;
            }
            let _ = stop_tx.send(true);
        }
    });
    if config.has_gate() {
        tokio::spawn(let_the_job_start_once_prepared(
            config.clone(),
            stop_rx.clone(),
        ));
    }
    let done = config.runtime_dir.join(contract::DONE_FIFO);
    let (status_tx, status_rx) = watch::channel(None);
    // The script opens it read-write (so it never blocks): the group needs both.
    match crate::pump::create_fifo(&done, 0o660) {
        Ok(()) => {
            held.paths.push(done.clone());
            tokio::spawn(async move {
                if let Ok(status) = crate::pump::wait_for_done(&done).await {
                    let _ = status_tx.send(status);
                    let _ = stop_tx.send(true);
                }
            });
        }
        // Without it the job still ends at SIGTERM.
        Err(e) => eprintln!(
            "keyhole-broker: warning: creating {}: {e}; the job's end is known at SIGTERM only",
            done.display()
        ),
    }
    let fifo = config.runtime_dir.join(contract::LOG_FIFO);
    // Leases are renewed while the job runs; both stop at the job's end.
    let session = &mut held.session;
    let keep_alive = async {
        if let Some(s) = session.as_mut() {
            s.keep_alive(stop_rx.clone()).await;
        }
    };
    let (pumped, ()) = tokio::join!(
        crate::pump::pump(&fifo, masker, config.log_limits, stdout, stop_rx.clone()),
        keep_alive
    );
    closing.job_ran = true;
    closing.script_status = *status_rx.borrow();
    // The closing lines follow the job's last output in the log: on stdout, the same stream
    // (the kubelet interleaves the two streams in no fixed order). The stderr marker still
    // goes to the real stderr, after everything written there before.
    if closing.onto_stdout {
        closing.own_stderr = stderr_onto_stdout();
    }
    eprintln!("{}", contract::LOG_END_LINE);
    pumped.map_err(|e| {
        Stop::failed(
            exit_code::BAD_INPUTS,
            vec![format!("relaying the job log: {e}")],
        )
    })
}

/// Waits for the job's preparation steps (see [`crate::steps`]), then its services (see
/// [`crate::services`]), says how each service wait ended in the trace, then opens the
/// script's gate. A step that fails leaves the gate shut: the runner ends the job from the
/// step container's exit.
async fn let_the_job_start_once_prepared(config: RunConfig, stop: watch::Receiver<bool>) {
    let gate = config.runtime_dir.join(contract::GATE_FIFO);
    let gate = match crate::services::script_at_the_gate(&gate, stop.clone()).await {
        Ok(Some(gate)) => gate,
        Ok(None) => return,
        Err(e) => {
            eprintln!(
                "keyhole-broker: warning: opening {}: {e}; the job's script may not start",
                gate.display()
            );
            return;
        }
    };
    if !crate::steps::wait_for_steps(&config.runtime_dir, &config.steps, &stop).await {
        return;
    }
    let (waits, timeout) = (&config.service_waits, config.services_timeout);
    if !waits.is_empty() {
        eprintln!("{}", crate::services::announce(waits, timeout));
        let outcomes = crate::services::wait_for_services(waits, timeout, stop).await;
        for line in crate::services::report(waits, &outcomes, timeout) {
            eprintln!("{line}");
        }
    }
    if let Err(e) = crate::services::open_gate(gate) {
        eprintln!("keyhole-broker: warning: letting the job's script start: {e}");
    }
}

/// What the job's log is masked for: every delivered secret, every job variable, and every
/// other value of the per-job Secret (the broker's own inputs, such as the ID token).
fn mask_plan(
    secrets: &[Resolved],
    variables: &[JobVariable],
    job_secret: &std::collections::BTreeMap<String, SecretSlice<u8>>,
) -> MaskPlan {
    let mut plan = MaskPlan::new();
    for r in secrets {
        plan.secret(r.name.as_str(), &r.value, r.json_object);
    }
    for v in variables {
        plan.variable(v.name.as_str(), &v.key, &v.value);
    }
    for (key, value) in job_secret {
        if !variables.iter().any(|v| &v.key == key) {
            plan.other(value);
        }
    }
    plan
}

/// Points fd 2 at stdout; returns the original stderr. None (and stderr unchanged) on error.
fn stderr_onto_stdout() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd as _;
    let original = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    nix::unistd::dup2_stderr(std::io::stdout().as_fd()).ok()?;
    Some(original)
}

fn fail(code: i32, lines: &[String]) -> i32 {
    for line in lines {
        eprintln!("keyhole-broker: error: {line}");
    }
    code
}

/// One line per delivered secret and variable: name, source, where it went, version or lease.
/// Never a value.
fn log_audit(config: &RunConfig, audit: &[AuditEntry], variables: &[JobVariable]) {
    for entry in audit {
        let version = entry
            .version
            .map(|v| format!(" version={v}"))
            .unwrap_or_default();
        let lease = entry
            .lease
            .as_ref()
            .map(|l| format!(" lease={l}"))
            .unwrap_or_default();
        eprintln!(
            "keyhole-broker: audit secret={} source={} path={}{version}{lease}",
            entry.name,
            entry.source,
            config.secrets_dir.join(&entry.name).display()
        );
    }
    for v in variables {
        let path = match v.kind {
            VariableKind::Plain => config.secrets_dir.join(contract::ENV_FILE),
            VariableKind::File => config.secrets_dir.join(v.name.as_str()),
        };
        eprintln!(
            "keyhole-broker: audit variable={} source=job-secret:{} path={}",
            v.name,
            v.key,
            path.display()
        );
    }
}

/// Revokes the leases and the token, if Vault was used.
async fn end_session(session: Option<VaultSession>) {
    if let Some(s) = session {
        s.end().await;
    }
}

fn vault_source(
    v: &VaultSettings,
    config: &RunConfig,
    job_secret: &std::collections::BTreeMap<String, SecretSlice<u8>>,
) -> Result<VaultSource, String> {
    let ca_bundle = v
        .ca_file
        .as_ref()
        .map(|p| {
            std::fs::read(p)
                .map_err(|e| format!("reading the Vault CA bundle {}: {e}", p.display()))
        })
        .transpose()?;
    let login = match &v.method {
        AuthMethod::Kubernetes => LoginMethod::Kubernetes {
            mount: v.auth_mount.clone(),
            role: v.role.clone(),
            token_file: config.inputs_dir.join(contract::INPUT_SA_TOKEN),
        },
        AuthMethod::Jwt { input_key } => {
            let token = job_vars::broker_input(job_secret, input_key).ok_or_else(|| {
                format!(
                    "Vault JWT auth needs the ID token {input_key:?} in the job's inputs ({dir}/{var}{input_key} or {dir}/{input_key}), which has neither; declare it under id_tokens",
                    dir = config.inputs_dir.join(contract::INPUT_JOB_SECRET_DIR).display(),
                    var = contract::JOB_VARIABLE_PREFIX,
                )
            })?;
            let text = std::str::from_utf8(secrecy::ExposeSecret::expose_secret(token))
                .map_err(|_| format!("the ID token {input_key:?} is not UTF-8"))?;
            LoginMethod::Jwt {
                mount: v.auth_mount.clone(),
                role: (!v.role.is_empty()).then(|| v.role.clone()),
                jwt: text.trim().into(),
            }
        }
    };
    Ok(VaultSource {
        config: VaultConfig {
            addr: v.addr.clone(),
            allowed_addresses: v.allowed_addresses.clone(),
            namespace: v.namespace.clone(),
            ca_bundle,
            retry: RetryPolicy {
                deadline: config.vault_deadline,
                ..RetryPolicy::default()
            },
            request_timeout: Duration::from_secs(10),
        },
        login,
    })
}

async fn kube_source(k: &KubeSettings, config: &RunConfig) -> Result<KubeSource, String> {
    use kube::config::{
        AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
        NamedContext,
    };
    let token_file = config.inputs_dir.join(contract::INPUT_KUBE_TOKEN);
    let token = std::fs::read_to_string(&token_file).map_err(|e| {
        format!(
            "reading the ServiceAccount token {}: {e}",
            token_file.display()
        )
    })?;
    let account = service_account_of(token.trim()).unwrap_or_else(|| "(unknown)".into());
    drop(zeroize::Zeroizing::new(token));
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "job".into(),
            cluster: Some(Cluster {
                server: Some(k.api_url.clone()),
                certificate_authority: Some(k.ca_file.display().to_string()),
                ..Cluster::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "job".into(),
            auth_info: Some(AuthInfo {
                token_file: Some(token_file.display().to_string()),
                ..AuthInfo::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "job".into(),
            context: Some(Context {
                cluster: "job".into(),
                user: Some("job".into()),
                namespace: Some(k.namespace.clone()),
                ..Context::default()
            }),
            other: Default::default(),
        }],
        current_context: Some("job".into()),
        ..Kubeconfig::default()
    };
    let kube_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("configuring the Kubernetes client: {e}"))?;
    let client = kube::Client::try_from(kube_config)
        .map_err(|e| format!("creating the Kubernetes client: {e}"))?;
    Ok(KubeSource {
        api: kube::Api::namespaced(client, &k.namespace),
        namespace: k.namespace.clone(),
        account,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::delivery::Delivery;
    use crate::mask::mask_all;
    use keyhole_contract::reference::SecretName;

    fn value(text: &str) -> SecretSlice<u8> {
        SecretSlice::from(text.as_bytes().to_vec())
    }

    /// A panic in any phase must not skip the clean-up: what the phase had put in `Held` (here
    /// delivered files) is released after it.
    #[tokio::test]
    async fn a_panic_in_a_phase_still_wipes_and_releases() {
        let dir = std::env::temp_dir().join(format!("keyhole-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = WriteOptions {
            dir: dir.clone(),
            owner: None,
            allow_disk: true,
        };
        let secrets = [Resolved {
            name: SecretName::new("DB").unwrap(),
            value: value("db-pass-0123"),
            delivery: Delivery::File,
            json_object: false,
        }];
        let mut held = Held::default();
        let inner = dir.clone();
        let code = guarded(
            |held| async move {
                let dir = inner;
                held.files = Some(SecretFiles::write_all(&write, &secrets).unwrap());
                held.paths.push(dir.join("marker"));
                std::fs::write(dir.join("marker"), b"").unwrap();
                assert!(dir.join("DB").exists());
                panic!("a bug in a phase");
            },
            &mut held,
        )
        .await;
        assert_eq!(code, exit_code::BAD_INPUTS);
        held.release().await;
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "files left after a panic: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_value_is_masked_and_short_named_ones_are_warned_about() {
        let secrets = [Resolved {
            name: SecretName::new("DB").unwrap(),
            value: value(r#"{"password":"db-pass-0123","pin":"42"}"#),
            delivery: Delivery::File,
            json_object: true,
        }];
        let job_secret: BTreeMap<String, SecretSlice<u8>> = [
            ("var.CI_JOB_TOKEN", "glcbt-64_token-0123"),
            ("var.SHORT", "abc"),
            ("VAULT_ID_TOKEN", "eyJ.id-token.sig"),
            ("log-end", "end"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), value(v)))
        .collect();
        let variables = job_vars::job_variables(&job_secret).unwrap();
        let plan = mask_plan(&secrets, &variables, &job_secret);
        assert_eq!(
            plan.warnings(),
            [
                "secret DB field \"pin\" is shorter than 8 bytes and cannot be masked in the log",
                "job variable SHORT (per-job Secret key \"var.SHORT\") is shorter than 8 bytes and cannot be masked in the log",
            ]
        );
        let set = Arc::new(plan.build());
        let log = "db-pass-0123 glcbt-64_token-0123 eyJ.id-token.sig";
        assert_eq!(
            mask_all(&set, log.as_bytes()),
            b"[MASKED] [MASKED] [MASKED]"
        );
    }
}
