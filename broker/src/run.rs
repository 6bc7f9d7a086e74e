//! `keyhole-broker run`: resolve → write (secrets and job variables) → ready → mask the log
//! and renew leases → on SIGTERM drain, wipe, revoke leases and token. The I/O edge that ties
//! the pure modules together.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretSlice;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

use crate::blame::Blame;
use crate::contract::{self, exit_code};
use crate::delivery::{DeliveryError, Ownership, Resolved, SecretFiles, WriteOptions};
use crate::inputs;
use crate::job_vars::{self, JobVariable, VariableKind};
use crate::kube_secrets::service_account_of;
use crate::leases::VaultSession;
use crate::log_budget::LogLimits;
use crate::mask::{MaskPlan, StreamMasker};
use crate::reference::Source;
use crate::resolve::{AuditEntry, KubeSource, Outcome, VaultSource, resolve_all};
use crate::vault::{LoginMethod, RetryPolicy, VaultConfig};

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
    let log_end = inputs::read_log_end_token(&config.inputs_dir);
    let mut stdout = tokio::io::stdout();
    let mut terminated = None;
    let mut own_stderr = None;
    let closing = Closing {
        onto_stdout: log_end.is_some(),
        terminated: &mut terminated,
        own_stderr: &mut own_stderr,
    };
    let code = run_job(config, &mut stdout, closing).await;
    if let Some(token) = log_end {
        // Both streams end with a marker: the kubelet interleaves them, each in order.
        let marker = contract::log_end_marker(contract::LogStream::Stdout, &token);
        let _ = stdout.write_all(marker.as_bytes()).await;
        let _ = stdout.flush().await;
        let marker = contract::log_end_marker(contract::LogStream::Stderr, &token);
        match own_stderr {
            Some(fd) => {
                let _ = std::io::Write::write_all(&mut std::fs::File::from(fd), marker.as_bytes());
            }
            None => eprint!("{marker}"),
        }
    }
    // The job said it was over before the kubelet stopped the pod: a native sidecar that exits
    // now would be restarted, so wait for the SIGTERM.
    if let Some(mut term) = terminated {
        while !*term.borrow_and_update() {
            if term.changed().await.is_err() {
                break;
            }
        }
    }
    code
}

/// How the job's end is handled, for [`run`] to finish after [`run_job`].
struct Closing<'a> {
    /// Write the closing lines to stdout (only when the runner reads the log to the markers;
    /// a broker run by hand keeps them on stderr).
    onto_stdout: bool,
    /// Set when the job's script reported its end (the `done` pipe) before any SIGTERM;
    /// turns true at SIGTERM.
    terminated: &'a mut Option<watch::Receiver<bool>>,
    /// The original stderr once the closing lines go to stdout.
    own_stderr: &'a mut Option<std::os::fd::OwnedFd>,
}

async fn run_job(config: RunConfig, stdout: &mut tokio::io::Stdout, closing: Closing<'_>) -> i32 {
    let annotations = match inputs::read_annotations(&config.inputs_dir) {
        Ok(a) => a,
        Err(e) => return fail(exit_code::BAD_INPUTS, &[e.to_string()]),
    };
    let refs = match inputs::references_from_annotations(&annotations) {
        Ok(r) => r,
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return fail(exit_code::SECRETS_FAILED, &lines);
        }
    };
    let job_secret = match inputs::read_job_secret(&config.inputs_dir) {
        Ok(s) => s,
        Err(e) => return fail(exit_code::BAD_INPUTS, &[e.to_string()]),
    };
    let variables = match job_vars::job_variables(&job_secret)
        .and_then(|v| job_vars::check_clashes(&v, &refs).map(|()| v))
    {
        Ok(v) => v,
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return fail(exit_code::BAD_INPUTS, &lines);
        }
    };
    eprintln!(
        "keyhole-broker: resolving {} secret(s); {} job variable(s) from the per-job Secret",
        refs.len(),
        variables.len()
    );
    let vault = match config
        .vault
        .as_ref()
        .map(|v| vault_source(v, &config, &job_secret))
        .transpose()
    {
        Ok(v) => v,
        Err(e) => return fail(exit_code::BAD_INPUTS, &[e]),
    };
    // The Kubernetes client is built only when a reference needs it: its set-up (CA bundle,
    // TLS configuration, client stack) costs start-up time and memory for nothing otherwise.
    let needs_kube = refs
        .iter()
        .any(|r| matches!(r.source, Source::Kubernetes { .. }));
    let kube = match config.kube.as_ref().filter(|_| needs_kube) {
        None => None,
        Some(k) => match kube_source(k, &config).await {
            Ok(k) => Some(k),
            Err(e) => return fail(exit_code::BAD_INPUTS, &[e]),
        },
    };
    let outcome = match resolve_all(refs, vault, kube, config.concurrency).await {
        Ok(o) => o,
        Err(failures) => {
            let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
            return fail(
                Blame::exit_code_of(failures.iter().map(|f| f.blame)),
                &lines,
            );
        }
    };
    let Outcome {
        resolved,
        audit,
        vault: mut session,
    } = outcome;
    let secret_count = resolved.len();
    // Secrets first, then variables: one all-or-nothing write.
    let mut deliveries = resolved;
    deliveries.extend(variables.iter().map(JobVariable::to_resolved));
    let write = WriteOptions {
        dir: config.secrets_dir.clone(),
        owner: config.owner,
        allow_disk: config.allow_disk,
    };
    let mut files = match SecretFiles::write_all(&write, &deliveries) {
        Ok(f) => f,
        Err(e) => {
            end_session(session).await;
            let code = match e {
                DeliveryError::EnvFile(_) => exit_code::SECRETS_FAILED,
                _ => exit_code::BAD_INPUTS,
            };
            return fail(code, &[e.to_string()]);
        }
    };
    log_audit(&config, &audit, &variables);
    let plan = mask_plan(&deliveries[..secret_count], &variables, &job_secret);
    // On stderr before the job starts: the runner follows this log from its first line, so
    // the warnings are in the job's trace above its output.
    for warning in plan.warnings() {
        eprintln!("keyhole-broker: warning: {warning}");
    }
    let masker = StreamMasker::new(Arc::new(plan.build()));
    drop(plan);
    let fifo = config.runtime_dir.join(contract::LOG_FIFO);
    if let Err(e) = crate::pump::create_fifo(&fifo) {
        files.wipe();
        end_session(session).await;
        return fail(
            exit_code::BAD_INPUTS,
            &[format!("creating the log pipe {}: {e}", fifo.display())],
        );
    }
    let ready = config.secrets_dir.join(contract::READY_MARKER);
    if let Err(e) = std::fs::write(&ready, b"") {
        files.wipe();
        let _ = std::fs::remove_file(&fifo);
        end_session(session).await;
        return fail(
            exit_code::BAD_INPUTS,
            &[format!("writing {}: {e}", ready.display())],
        );
    }
    eprintln!(
        "keyhole-broker: {secret_count} secret(s) and {} job variable(s) delivered; ready",
        variables.len()
    );

    // The job ends at SIGTERM or when its script says so, whichever comes first.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (term_tx, term_rx) = watch::channel(false);
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            wait_for_termination().await;
            let _ = term_tx.send(true);
            let _ = stop_tx.send(true);
        }
    });
    let done = config.runtime_dir.join(contract::DONE_FIFO);
    match crate::pump::create_fifo(&done) {
        Ok(()) => {
            let done = done.clone();
            tokio::spawn(async move {
                if crate::pump::wait_for_done(&done).await.is_ok() {
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
    // Leases are renewed while the job runs; both stop at the job's end.
    let keep_alive = async {
        if let Some(s) = session.as_mut() {
            s.keep_alive(stop_rx.clone()).await;
        }
    };
    let (pumped, ()) = tokio::join!(
        crate::pump::pump(&fifo, masker, config.log_limits, stdout, stop_rx.clone()),
        keep_alive
    );
    // The closing lines follow the job's last output in the log: on stdout, the same stream
    // (the kubelet interleaves the two streams in no fixed order). The stderr marker still
    // goes to the real stderr, after everything written there before.
    if closing.onto_stdout {
        *closing.own_stderr = stderr_onto_stdout();
    }
    eprintln!("{}", contract::LOG_END_LINE);
    files.wipe();
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_file(&done);
    end_session(session).await;
    if !*term_rx.borrow() {
        *closing.terminated = Some(term_rx);
    }
    match pumped {
        Ok(()) => exit_code::OK,
        Err(e) => fail(
            exit_code::BAD_INPUTS,
            &[format!("relaying the job log: {e}")],
        ),
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

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
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
    use crate::reference::SecretName;

    fn value(text: &str) -> SecretSlice<u8> {
        SecretSlice::from(text.as_bytes().to_vec())
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
