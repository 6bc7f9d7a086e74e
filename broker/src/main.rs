use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keyhole_broker::delivery::Ownership;
use keyhole_broker::log_budget::{LogLimits, Pace};
use keyhole_broker::run::{AuthMethod, KubeSettings, RunConfig, VaultSettings, run};
use keyhole_broker::transfer;
use keyhole_contract::{self as contract, env};

/// Delivers a job's secrets as files and masks them out of its log. Runs as the first
/// container of each Keyhole job pod; see docs/broker.md.
#[derive(Debug, Parser)]
#[command(name = "keyhole-broker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve, deliver, mask the job log until SIGTERM, then revoke and wipe.
    Run(Box<RunArgs>),
    /// Startup probe: exits 0 once every secret is delivered.
    Ready {
        #[arg(long, env = env::SECRETS_DIR, default_value = contract::SECRETS_DIR)]
        secrets_dir: PathBuf,
        /// Wait up to this many seconds for the delivery instead of answering at once: the
        /// kubelet probes a sidecar once a second, so a probe that answers "not yet" just
        /// before the delivery holds the job's start back by up to a second; one that waits
        /// answers the moment the files are there.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Move the job's artifacts and caches (in a transfer container of the job pod, not the
    /// broker's).
    Transfer {
        #[command(subcommand)]
        verb: TransferVerb,
        /// The plan the runner wrote (job token, what to move).
        #[arg(
            long,
            env = env::TRANSFER_PLAN,
            default_value = contract::transfer::PLAN_PATH
        )]
        plan: PathBuf,
        /// The log pipe and the script's status file.
        #[arg(long, env = env::RUNTIME_DIR, default_value = contract::RUNTIME_DIR)]
        runtime_dir: PathBuf,
        /// Where archives are written on their way.
        #[arg(long, env = env::SCRATCH_DIR, default_value = contract::transfer::SCRATCH_DIR)]
        scratch_dir: PathBuf,
        /// `fetch`: the steps (container names, comma-separated) that must have succeeded
        /// before it starts, e.g. the checkout it extracts into.
        #[arg(long, env = env::WAIT_FOR_STEPS, default_value = "")]
        wait_for_steps: String,
    },
}

#[derive(Debug, Clone, Copy, Subcommand)]
enum TransferVerb {
    /// Before the script: download and extract the dependencies' artifacts.
    Fetch,
    /// After the script: upload the artifacts its result calls for.
    Store,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[arg(long, env = env::INPUTS_DIR, default_value = contract::INPUTS_DIR)]
    inputs_dir: PathBuf,
    #[arg(long, env = env::SECRETS_DIR, default_value = contract::SECRETS_DIR)]
    secrets_dir: PathBuf,
    #[arg(long, env = env::RUNTIME_DIR, default_value = contract::RUNTIME_DIR)]
    runtime_dir: PathBuf,
    /// Vault address; without it `vault:` references fail with a clear message.
    #[arg(long, env = env::VAULT_ADDR)]
    vault_addr: Option<String>,
    /// Comma-separated Vault addresses the broker may send a token to.
    #[arg(long, env = env::VAULT_ALLOWED, value_delimiter = ',')]
    vault_allowed: Vec<String>,
    #[arg(long, env = env::VAULT_NAMESPACE)]
    vault_namespace: Option<String>,
    #[arg(long, env = env::VAULT_CA_FILE)]
    vault_ca_file: Option<PathBuf>,
    #[arg(long, env = env::VAULT_AUTH_MOUNT, default_value = "kubernetes")]
    vault_auth_mount: String,
    /// `kubernetes` (the pod's ServiceAccount token) or `jwt` (the job's GitLab ID token).
    #[arg(long, env = env::VAULT_AUTH_METHOD, default_value = "kubernetes", value_parser = ["kubernetes", "jwt"])]
    vault_auth_method: String,
    /// With `jwt`: the per-job Secret key holding the ID token.
    #[arg(
        long,
        env = env::VAULT_JWT_INPUT,
        default_value = "VAULT_ID_TOKEN"
    )]
    vault_jwt_input: String,
    /// Vault role the job logs in as (for `jwt`, empty means the mount's default role).
    #[arg(long, env = env::VAULT_ROLE, default_value = "")]
    vault_role: String,
    /// Total time to keep retrying an unreachable Vault, in seconds.
    #[arg(long, env = env::VAULT_DEADLINE, default_value_t = 30)]
    vault_deadline: u64,
    /// Kubernetes API URL for `k8s:` references.
    #[arg(long, env = env::KUBE_API)]
    kube_api: Option<String>,
    #[arg(
        long,
        env = env::KUBE_CA_FILE,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    kube_ca_file: PathBuf,
    #[arg(long, env = env::NAMESPACE, default_value = "default")]
    namespace: String,
    /// Owner uid of the secret files (default: the broker's own).
    #[arg(long, env = env::FILE_UID)]
    file_uid: Option<u32>,
    /// Group of the secret files; makes them 0440 instead of 0400.
    #[arg(long, env = env::FILE_GID)]
    file_gid: Option<u32>,
    /// Allow writing secrets to a disk-backed directory (not recommended).
    #[arg(long, env = env::ALLOW_DISK)]
    allow_disk: bool,
    /// Job output passed to the log, in KiB (the runner's `output_limit`); the rest is dropped
    /// after one notice. 0: no limit.
    #[arg(long, env = env::LOG_LIMIT_KIB, default_value_t = 0)]
    log_limit_kib: u64,
    /// Past the burst, pass job output at most this fast, in KiB/s (the job's writes wait),
    /// so the kubelet's log follower keeps up. 0: no pacing.
    #[arg(long, env = env::LOG_RATE_KIB, default_value_t = 0)]
    log_rate_kib: u64,
    /// Output passed at once before the pace applies, in KiB; keep it under the kubelet's
    /// `containerLogMaxSize`.
    #[arg(long, env = env::LOG_BURST_KIB, default_value_t = 8192)]
    log_burst_kib: u64,
    #[arg(long, env = env::CONCURRENCY, default_value_t = 16)]
    concurrency: usize,
    /// Services the job's script waits for (`name:port[+port...]`, comma-separated; see
    /// `contract::GATE_FIFO`). Empty: the script starts at once.
    #[arg(long, env = env::WAIT_FOR_SERVICES, default_value = "")]
    wait_for_services: String,
    /// Seconds to wait for them before the job starts anyway, with a warning.
    #[arg(long, env = env::WAIT_FOR_SERVICES_TIMEOUT, default_value_t = 30)]
    wait_for_services_timeout: u64,
    /// Preparation steps (container names, comma-separated; see `contract::step_done_marker`)
    /// the job's script waits for. Empty: none.
    #[arg(long, env = env::WAIT_FOR_STEPS, default_value = "")]
    wait_for_steps: String,
    /// After SIGTERM, how long to keep relaying a started script's output until it says it
    /// is done (its `after_script` runs at a cancel), in seconds. 0: stop at once.
    #[arg(long, env = env::CANCEL_WAIT, default_value_t = 0)]
    cancel_wait_seconds: u64,
}

/// How often `ready --wait` looks for the marker: well below what a person notices, a few
/// hundred cheap `stat` calls a second at most.
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether `marker` exists now or appears within `wait`.
fn wait_until_ready(marker: &std::path::Path, wait: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if marker.exists() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(READY_POLL);
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Ready { secrets_dir, wait } => i32::from(!wait_until_ready(
            &secrets_dir.join(contract::READY_MARKER),
            std::time::Duration::from_secs(wait),
        )),
        Command::Transfer {
            verb,
            plan,
            runtime_dir,
            scratch_dir,
            wait_for_steps,
        } => match contract::decode_steps(&wait_for_steps) {
            Ok(after) => transfer(
                verb,
                &after,
                transfer::run::Dirs {
                    plan,
                    runtime: runtime_dir,
                    scratch: scratch_dir,
                },
            ),
            Err(e) => {
                eprintln!("keyhole-broker: error: {}: {e}", env::WAIT_FOR_STEPS);
                contract::transfer::EXIT_TRANSFER_FAILED
            }
        },
        Command::Run(args) => {
            let args = *args;
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            // One thread: the work is a few dozen concurrent requests and a pipe; a worker
            // thread would only add memory and hand-offs between threads at start-up. (The
            // stalled revocations once blamed on this runtime were the bed's bridge changing
            // its MAC address, fixed since.)
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("keyhole-broker: error: starting the runtime: {e}");
                    std::process::exit(contract::exit_code::BAD_INPUTS);
                }
            };
            match run_config(args) {
                Ok(config) => runtime.block_on(run(config)),
                Err(e) => {
                    eprintln!("keyhole-broker: error: {e}");
                    contract::exit_code::BAD_INPUTS
                }
            }
        }
    };
    std::process::exit(code);
}

/// `transfer fetch|store` on a runtime of its own (several threads: packing and unpacking
/// run beside the network transfer).
fn transfer(verb: TransferVerb, after: &[String], dirs: transfer::run::Dirs) -> i32 {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyhole-broker: error: starting the runtime: {e}");
            return contract::transfer::EXIT_TRANSFER_FAILED;
        }
    };
    runtime.block_on(async {
        let work = async {
            match verb {
                TransferVerb::Fetch => fetch_after(after, &dirs).await,
                TransferVerb::Store => transfer::run::store(&dirs).await,
            }
        };
        // Pod deletion (a canceled job): stop at once; the job's result is known already.
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            code = work => code,
            () = term => 128 + 15,
        }
    })
}

/// The download step: once the steps it comes `after` succeeded (it extracts into the
/// checkout), then its marker when it succeeded too (see `contract::step_done_marker`).
async fn fetch_after(after: &[String], dirs: &transfer::run::Dirs) -> i32 {
    // Nothing ends this wait but the pod's end (the SIGTERM in `transfer`): a failed step is
    // the runner's to report.
    let (_never, stop) = tokio::sync::watch::channel(false);
    keyhole_broker::steps::wait_for_steps(&dirs.runtime, after, &stop).await;
    let code = transfer::run::fetch(dirs).await;
    if code != 0 {
        return code;
    }
    let step = contract::transfer::FETCH_CONTAINER;
    match keyhole_broker::steps::mark_done(&dirs.runtime, step) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "keyhole-broker: error: marking {step} done in {}: {e}",
                dirs.runtime.display()
            );
            contract::transfer::EXIT_TRANSFER_FAILED
        }
    }
}

/// The run's settings; an error names the malformed setting.
fn run_config(a: RunArgs) -> Result<RunConfig, String> {
    let service_waits = contract::decode_service_waits(&a.wait_for_services)?;
    let steps = contract::decode_steps(&a.wait_for_steps)?;
    let owner = a.file_uid.map(|uid| Ownership {
        uid,
        gid: a.file_gid,
    });
    Ok(RunConfig {
        service_waits,
        services_timeout: Duration::from_secs(a.wait_for_services_timeout),
        steps,
        cancel_wait: Duration::from_secs(a.cancel_wait_seconds),
        inputs_dir: a.inputs_dir,
        secrets_dir: a.secrets_dir,
        runtime_dir: a.runtime_dir,
        vault: a.vault_addr.map(|addr| VaultSettings {
            allowed_addresses: if a.vault_allowed.is_empty() {
                vec![addr.clone()]
            } else {
                a.vault_allowed
            },
            addr,
            namespace: a.vault_namespace,
            ca_file: a.vault_ca_file,
            auth_mount: a.vault_auth_mount,
            role: a.vault_role,
            method: if a.vault_auth_method == "jwt" {
                AuthMethod::Jwt {
                    input_key: a.vault_jwt_input,
                }
            } else {
                AuthMethod::Kubernetes
            },
        }),
        kube: a.kube_api.map(|api_url| KubeSettings {
            api_url,
            ca_file: a.kube_ca_file,
            namespace: a.namespace,
        }),
        owner,
        allow_disk: a.allow_disk,
        concurrency: a.concurrency,
        vault_deadline: Duration::from_secs(a.vault_deadline),
        log_limits: LogLimits {
            max_bytes: (a.log_limit_kib > 0).then(|| a.log_limit_kib.saturating_mul(1024)),
            pace: (a.log_rate_kib > 0).then(|| Pace {
                bytes_per_second: a.log_rate_kib.saturating_mul(1024),
                burst: a.log_burst_kib.saturating_mul(1024),
            }),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_waits_for_the_marker_and_gives_up_at_the_deadline() {
        let dir = std::env::temp_dir().join(format!("keyhole-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join(contract::READY_MARKER);
        let _ = std::fs::remove_file(&marker);
        assert!(!wait_until_ready(&marker, std::time::Duration::ZERO));
        let writer = {
            let marker = marker.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(100));
                std::fs::write(marker, b"").unwrap();
            })
        };
        let started = std::time::Instant::now();
        assert!(wait_until_ready(
            &marker,
            std::time::Duration::from_secs(10)
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        writer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
