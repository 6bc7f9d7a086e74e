//! The `keyhole-runner` binary: flags, logging, exit codes. The work is in the library.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use keyhole_runner::config::{Config, LogFormat, RunnerConfig, load_file, load_str};
use keyhole_runner::job::Job;
use keyhole_runner::pipeline::{LoadOptions, load_job};

/// `0.1.0 (commit 0123abcd4567)`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KEYHOLE_COMMIT"),
    ")"
);

/// Runs GitLab CI jobs as hardened Kubernetes pods whose secrets arrive through the
/// keyhole-broker sidecar. See docs/runner.md.
#[derive(Debug, Parser)]
#[command(name = "keyhole-runner", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Each command's help ends with an example of it; `runner_cli.rs` checks every command has one,
/// and the tests below that each parses.
const RUN_EXAMPLE: &str = "Example:
  keyhole-runner run --config /etc/keyhole/config.toml";
const EXEC_EXAMPLE: &str = "Example:
  # job `build` of ./.gitlab-ci.yml, its pod in namespace keyhole-jobs; ends (on stderr) with
  # Job build succeeded in 6.2 s (pod keyhole-jobs/kh-796382603-gdm44u)
  keyhole-runner exec .gitlab-ci.yml build --namespace keyhole-jobs";
const RENDER_EXAMPLE: &str = "Example:
  keyhole-runner render .gitlab-ci.yml build --namespace keyhole-jobs > build-pod.yaml";
const VERIFY_EXAMPLE: &str = "Example:
  keyhole-runner verify --config /etc/keyhole/config.toml";
const COMPLETION_EXAMPLE: &str = "Example:
  keyhole-runner completion bash > /etc/bash_completion.d/keyhole-runner";

#[derive(Debug, Subcommand)]
enum Command {
    /// Take jobs from GitLab (the runner service).
    #[command(after_help = RUN_EXAMPLE)]
    Run {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Run one job of a local .gitlab-ci.yml on the cluster, without GitLab.
    ///
    /// The job's log goes to stdout; progress (the pod, why it is pending) and a summary line
    /// go to stderr. The exit code is the script's.
    #[command(after_help = EXEC_EXAMPLE)]
    Exec(LocalArgs),
    /// Print the Kubernetes objects a job would get, without a cluster.
    #[command(after_help = RENDER_EXAMPLE)]
    Render(LocalArgs),
    /// Check the config, the GitLab token, cluster permissions and Vault settings.
    #[command(after_help = VERIFY_EXAMPLE)]
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print a shell completion script: `keyhole-runner completion bash >
    /// /etc/bash_completion.d/keyhole-runner` (zsh: into a directory of `$fpath` as
    /// `_keyhole-runner`; fish: `~/.config/fish/completions/keyhole-runner.fish`).
    #[command(after_help = COMPLETION_EXAMPLE)]
    Completion { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// gitlab-runner style config.toml (see docs/configuration.md).
    #[arg(
        long,
        short,
        env = keyhole_contract::env::runner::CONFIG,
        default_value = "/etc/keyhole/config.toml"
    )]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct LocalArgs {
    /// The pipeline file.
    file: PathBuf,
    /// The job to run.
    job: String,
    /// Optional config.toml; without it the defaults and the flags below apply.
    #[arg(long, short, env = keyhole_contract::env::runner::CONFIG)]
    config: Option<PathBuf>,
    /// Namespace for the job pod.
    #[arg(long, short)]
    namespace: Option<String>,
    /// ServiceAccount the job runs as (otherwise the config's rules decide).
    #[arg(long)]
    service_account: Option<String>,
    /// Vault address for `vault:` references.
    #[arg(long)]
    vault_addr: Option<String>,
    /// Vault role for kubernetes auth (default: the ServiceAccount's name).
    #[arg(long)]
    vault_role: Option<String>,
    /// Kubernetes API URL as pods see it, for `k8s:` references.
    #[arg(long)]
    kube_api: Option<String>,
    /// The broker image.
    #[arg(long)]
    broker_image: Option<String>,
    /// Image pull policy for every image (always, if-not-present, never).
    #[arg(long)]
    pull_policy: Option<String>,
    /// Project path the job pretends to belong to (for ServiceAccount rules).
    #[arg(long, default_value = "local/project")]
    project: String,
    /// Treat the ref as protected (for ServiceAccount rules).
    #[arg(long)]
    protected: bool,
    /// An ID token for the job's `id_tokens:` (no GitLab mints one locally): NAME=FILE, the
    /// file holding the JWT. Delivered like GitLab's: a masked variable.
    #[arg(long = "id-token", value_name = "NAME=FILE")]
    id_tokens: Vec<String>,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn load_config(path: &Path) -> Result<Config> {
    Ok(load_file(path, &env)?.config)
}

/// The runner settings for `exec`/`render`: the config file (or defaults), then the flags.
fn local_runner(args: &LocalArgs) -> Result<RunnerConfig> {
    let config = match &args.config {
        Some(path) => load_config(path)?,
        None => load_str("", "(defaults)", &env)?.config,
    };
    let mut runner = config.runners.into_iter().next().unwrap_or_default();
    if let Some(ns) = &args.namespace {
        runner.kubernetes.namespace = ns.clone();
    }
    if let Some(sa) = &args.service_account {
        runner.kubernetes.service_account = sa.clone();
        runner.keyhole.service_account_rules.clear();
    }
    if let Some(v) = &args.vault_addr {
        runner.keyhole.vault_addr = Some(v.clone());
    }
    if let Some(v) = &args.vault_role {
        runner.keyhole.vault_role = Some(v.clone());
    }
    if let Some(v) = &args.kube_api {
        runner.keyhole.kube_api = v.clone();
    }
    if let Some(v) = &args.broker_image {
        runner.keyhole.broker_image = v.clone();
    }
    if let Some(v) = &args.pull_policy {
        runner.kubernetes.pull_policy.0 = vec![v.clone()];
    }
    Ok(runner)
}

fn local_job(args: &LocalArgs, runner: &RunnerConfig) -> Result<Job> {
    let project_dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let opts = LoadOptions {
        project_dir,
        ci_project_dir: format!(
            "{}/{}",
            runner.builds_dir.trim_end_matches('/'),
            args.project
        ),
        job_id: keyhole_runner::local::local_job_id(),
    };
    let mut job = load_job(&args.file, &args.job, &opts)?;
    job.project.path = Some(args.project.clone());
    job.git.protected = args.protected;
    for spec in &args.id_tokens {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--id-token {spec:?}: expected NAME=FILE"))?;
        let jwt = std::fs::read_to_string(file)
            .with_context(|| format!("--id-token {name}: reading {file}"))?;
        job.variables.push(keyhole_runner::job::Variable {
            key: name.to_string(),
            value: secrecy::SecretString::from(jwt.trim().to_string()),
            public: false,
            masked: true,
            file: false,
            raw: true,
        });
    }
    Ok(job)
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn render(args: &LocalArgs) -> Result<()> {
    let runner = local_runner(args)?;
    let job = local_job(args, &runner)?;
    let name = keyhole_runner::pod::pod_name(job.id, "render");
    let prepared = keyhole_runner::prepare::prepare_named(&job, &runner, name, None)
        .context("the job cannot run on this runner as configured")?;
    let mut out = String::new();
    let secrets = [
        (
            Some(prepared.objects.secret),
            "# The per-job Secret (values redacted); owned by the pod once it exists.\n",
        ),
        (
            prepared.objects.pull_secret,
            "# The pod's own image pull Secret (values redacted); owned by the pod once it exists.\n",
        ),
    ];
    for (secret, comment) in secrets {
        let Some(secret) = secret else { continue };
        out.push_str(comment);
        out.push_str(&keyhole_runner::render::to_yaml(&redacted(secret))?);
        out.push_str("---\n");
    }
    out.push_str(&keyhole_runner::render::to_yaml(&prepared.objects.pod)?);
    print!("{out}");
    Ok(())
}

/// A Secret with its keys kept and its values (the job's secrets) replaced.
fn redacted(mut secret: k8s_openapi::api::core::v1::Secret) -> k8s_openapi::api::core::v1::Secret {
    if let Some(data) = secret.data.as_mut() {
        for value in data.values_mut() {
            *value = k8s_openapi::ByteString(b"<redacted>".to_vec());
        }
    }
    secret.metadata.owner_references = None;
    secret
}

async fn exec(args: &LocalArgs) -> Result<i32> {
    let runner = local_runner(args)?;
    let job = local_job(args, &runner)?;
    let client = keyhole_runner::connect::kube_client(&runner).await?;
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let term = keyhole_runner::local::Terminal {
        stdout: tokio::io::stdout(),
        stderr: tokio::io::stderr(),
        colour,
    };
    let outcome = keyhole_runner::local::exec_job(&job, &runner, client, term).await;
    Ok(keyhole_runner::local::exit_code(&outcome))
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; a usage mistake is EX_USAGE.
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                failure::USAGE.into()
            } else {
                0
            });
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let result = match cli.command {
        Command::Render(args) => render(&args).map(|()| 0),
        Command::Exec(args) => runtime().and_then(|rt| rt.block_on(exec(&args))),
        Command::Run { config } => runtime().and_then(|rt| rt.block_on(run(&config.config))),
        Command::Verify { config } => runtime().and_then(|rt| rt.block_on(verify(&config.config))),
        Command::Completion { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "keyhole-runner",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let (code, message) = failure::report(&e);
            eprint!("{message}");
            std::process::exit(code.into());
        }
    }
}

/// How the binary ends when a command fails (not when a job fails: `exec` exits with the
/// script's code). Exit codes from sysexits(3), so scripts and supervisors can tell a mistake to
/// fix from a dependency to wait for; the message is the error and, one per line, its causes.
mod failure {
    use keyhole_runner::config::ConfigError;
    use keyhole_runner::gitlab::GitlabError;
    use keyhole_runner::pipeline::PipelineError;
    use keyhole_runner::prepare::PrepareError;
    use keyhole_runner::service::ServiceError;

    /// EX_USAGE: bad flags, a config file or `.gitlab-ci.yml` the runner refuses (or a job it
    /// will not run as configured), a token GitLab refuses. Fix the input; running again unchanged fails the same way.
    pub const USAGE: u8 = 64;
    /// EX_UNAVAILABLE: GitLab or the Kubernetes API cannot be reached. Running again later may
    /// work.
    pub const UNAVAILABLE: u8 = 69;
    /// Anything else, e.g. `verify` found problems.
    pub const OTHER: u8 = 1;

    /// The exit code and the text for stderr: `keyhole-runner: error: <what>` and a
    /// `  Caused by: <why>` line per cause (ripgrep's and uv's shape).
    pub fn report(err: &anyhow::Error) -> (u8, String) {
        let mut text = format!("keyhole-runner: error: {err}\n");
        for cause in err.chain().skip(1) {
            // A cause of several lines keeps them under its own.
            let cause = cause.to_string().replace('\n', "\n    ");
            text.push_str(&format!("  Caused by: {cause}\n"));
        }
        (exit_code(err), text)
    }

    /// The most telling cause decides: the first one in the chain this knows.
    fn exit_code(err: &anyhow::Error) -> u8 {
        err.chain().find_map(code_of).unwrap_or(OTHER)
    }

    fn code_of(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
        if cause.is::<ConfigError>() || cause.is::<PipelineError>() || cause.is::<PrepareError>() {
            return Some(USAGE);
        }
        if let Some(e) = cause.downcast_ref::<ServiceError>() {
            return service_code(e);
        }
        if let Some(e) = cause.downcast_ref::<GitlabError>() {
            return match e {
                GitlabError::Unreachable { .. } | GitlabError::GaveUp { .. } => Some(UNAVAILABLE),
                GitlabError::InvalidRunnerToken { .. } | GitlabError::Config { .. } => Some(USAGE),
                GitlabError::Status { status, .. } if *status >= 500 => Some(UNAVAILABLE),
                _ => None,
            };
        }
        if let Some(e) = cause.downcast_ref::<kube::Error>() {
            return matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_))
                .then_some(UNAVAILABLE);
        }
        if cause.is::<kube::config::InferConfigError>()
            || cause.is::<kube::config::KubeconfigError>()
        {
            return Some(USAGE);
        }
        None
    }

    /// A `[[runners]]` entry the service refuses is the config's fault; otherwise the cause
    /// it wraps decides (GitLab unreachable, the API server down, a kubeconfig it cannot use).
    fn service_code(err: &ServiceError) -> Option<u8> {
        use ServiceError as S;
        match err {
            S::NoRunners
            | S::SameName { .. }
            | S::NoToken
            | S::NoUrl
            | S::KubeHost { .. }
            | S::JournalSecretName { .. } => Some(USAGE),
            // Transparent: the GitLab error is not a link of its own in the chain.
            S::Gitlab(e) => code_of(e),
            // Boxed: the chain's next link is the box, which does not downcast to the error.
            S::Runner { source, .. } => service_code(source),
            S::Verify { .. }
            | S::FindCluster(_)
            | S::KubeClient(_)
            | S::ApiServer(_)
            | S::Lease { .. }
            | S::Journal { .. }
            | S::Listen { .. }
            | S::SlotsClosed(_)
            | S::JobLoop(_) => None,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use anyhow::Context as _;

        fn refused_config() -> anyhow::Error {
            let text = "[[runners]]\nurl = \"https://gitlab.example.com\"\n[runners.kubernetes]\nprivileged = true\n";
            keyhole_runner::config::load_str(text, "config.toml", &|_| None)
                .map(|_| ())
                .context("loading the runner config")
                .unwrap_err()
        }

        #[test]
        fn a_refused_config_is_a_usage_error_with_its_causes() {
            let (code, text) = report(&refused_config());
            assert_eq!(code, USAGE);
            insta::assert_snapshot!(text);
        }

        #[test]
        fn an_unreachable_gitlab_is_unavailable() {
            let err = anyhow::Error::new(GitlabError::Unreachable {
                action: "verify the runner token".into(),
                reason: "could not connect: Connection refused (os error 111)".into(),
            })
            .context("starting the runner");
            let (code, text) = report(&err);
            assert_eq!(code, UNAVAILABLE);
            insta::assert_snapshot!(text);
        }

        #[test]
        fn a_refused_token_is_a_usage_error_and_a_5xx_is_unavailable() {
            let token = anyhow::Error::new(GitlabError::InvalidRunnerToken {
                action: "verify the runner token".into(),
            });
            assert_eq!(report(&token).0, USAGE);
            let status = |status| {
                anyhow::Error::new(GitlabError::Status {
                    action: "request a job".into(),
                    status,
                    hint: "",
                })
            };
            assert_eq!(report(&status(502)).0, UNAVAILABLE);
            assert_eq!(report(&status(404)).0, OTHER);
        }

        /// A `[[runners]]` entry the service refuses to start with, as `keyhole-runner run` meets
        /// it.
        fn refused_runner(source: ServiceError) -> anyhow::Error {
            anyhow::Error::new(ServiceError::Runner {
                index: 0,
                name: "ci".into(),
                source: Box::new(source),
            })
        }

        #[test]
        fn a_service_config_error_is_a_usage_error() {
            let mut runner = keyhole_runner::config::RunnerConfig::default();
            let no_token = keyhole_runner::connect::gitlab_client(&runner).unwrap_err();
            let (code, text) = report(&refused_runner(no_token));
            assert_eq!(code, USAGE);
            assert_eq!(
                text,
                "keyhole-runner: error: runners[0] (\"ci\")\n  Caused by: no runner token: set \
                 [[runners]] token or KEYHOLE_RUNNER_TOKEN (the glrt-… token from GitLab)\n"
            );
            runner.token = Some("glrt-x".to_string().into());
            runner.url = "https://glrt-x:y@gitlab.example.com".into();
            let credentials_in_url = keyhole_runner::connect::gitlab_client(&runner).unwrap_err();
            assert_eq!(report(&refused_runner(credentials_in_url)).0, USAGE);
        }

        #[test]
        fn two_runners_with_one_name_are_a_usage_error() {
            let mut config = keyhole_runner::config::Config::default();
            let runner = keyhole_runner::config::RunnerConfig::default();
            config.runners = vec![runner.clone(), runner];
            let (_stop, stop) = tokio::sync::watch::channel(false);
            let served = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(keyhole_runner::service::run_until(config, stop, None));
            let (code, text) = report(&anyhow::Error::new(served.unwrap_err()));
            assert_eq!(code, USAGE);
            assert!(
                text.contains("runners[0] and runners[1] are both named"),
                "{text}"
            );
        }

        #[test]
        fn an_unreachable_gitlab_at_service_start_is_unavailable() {
            let err = refused_runner(ServiceError::Verify {
                url: "https://gitlab.example.com".into(),
                source: GitlabError::Unreachable {
                    action: "verify the runner token".into(),
                    reason: "could not connect: Connection refused (os error 111)".into(),
                },
            });
            let (code, text) = report(&err);
            assert_eq!(code, UNAVAILABLE);
            insta::assert_snapshot!(text);
        }

        #[test]
        fn other_errors_exit_1() {
            let err = anyhow::anyhow!("2 problem(s) found");
            assert_eq!(
                report(&err),
                (OTHER, "keyhole-runner: error: 2 problem(s) found\n".into())
            );
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

async fn run(path: &Path) -> Result<i32> {
    let config = load_config(path)?;
    init_logging(config.log_format, config.log_level.as_deref());
    keyhole_runner::service::run(config).await?;
    Ok(0)
}

async fn verify(path: &Path) -> Result<i32> {
    let config = load_config(path)?;
    let report = keyhole_runner::verify::verify(&config).await;
    for line in &report.lines {
        println!("{line}");
    }
    if report.problems == 0 {
        Ok(0)
    } else {
        bail!("{} problem(s) found", report.problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every example parses as written (shell comments and a redirection aside).
    #[test]
    fn every_example_parses() {
        let mut cli = Cli::command();
        cli.build();
        for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
            let help = sub
                .get_after_help()
                .unwrap_or_else(|| panic!("{} has no example", sub.get_name()))
                .to_string();
            let examples: Vec<&str> = help
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("keyhole-runner "))
                .collect();
            assert!(!examples.is_empty(), "{}: {help}", sub.get_name());
            for example in examples {
                let words = example.split_whitespace().take_while(|w| *w != ">");
                let parsed =
                    Cli::try_parse_from(words).unwrap_or_else(|e| panic!("{example}: {e}"));
                let name = match parsed.command {
                    Command::Run { .. } => "run",
                    Command::Exec(_) => "exec",
                    Command::Render(_) => "render",
                    Command::Verify { .. } => "verify",
                    Command::Completion { .. } => "completion",
                };
                assert_eq!(name, sub.get_name(), "{example}");
            }
        }
    }
}
