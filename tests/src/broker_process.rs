//! The real `keyhole-broker run` binary as a child process on this machine, with its inputs in
//! a temporary directory (annotations, real TokenRequest tokens, per-job Secret keys) and its
//! secrets directory on tmpfs (`/dev/shm`). Faster than a pod and just as honest for what the
//! binary does: its stderr lines, its exit code, the files it leaves.
//!
//! The binary is `$KEYHOLE_BROKER_BIN`, or the newer of `keyhole-broker` in the test binary's
//! target directory (debug or release). Build it first (`cargo build -p keyhole-broker`); a binary older than the
//! broker's sources is refused rather than tested.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::output::{Collected, collect_output, collected_text};
use crate::{JobNamespace, JobNamespaceBuilder, TestBed, TestNamespace, VaultAdmin};

/// A deadline against hangs while waiting for the broker, not a speed assertion.
const WAIT_DEADLINE: Duration = Duration::from_secs(120);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The broker binary to run, checked to be newer than the broker's sources and the pod
/// contract it links.
pub fn broker_binary() -> Result<PathBuf> {
    built_binary(
        "keyhole-broker",
        "KEYHOLE_BROKER_BIN",
        &["broker/src", "contract/src"],
    )
}

/// The `keyhole-runner` binary (`$KEYHOLE_RUNNER_BIN` or next to the tests), checked to be
/// newer than the runner's sources and the pod contract it links (not the broker's: the
/// runner does not link them, so a broker change does not ask for a runner rebuild).
pub fn runner_binary() -> Result<PathBuf> {
    built_binary(
        "keyhole-runner",
        "KEYHOLE_RUNNER_BIN",
        &["runner/src", "contract/src"],
    )
}

/// `$<env_var>`, or the newer of `<name>` in the test binary's target directory (debug or
/// release), refused when older than any file under `sources` (relative to the workspace).
fn built_binary(name: &str, env_var: &str, sources: &[&str]) -> Result<PathBuf> {
    let binary = match std::env::var_os(env_var) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe()?;
            // <target>/<profile>/deps/<test binary>
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .context("test binary has no target directory")?;
            let candidates = [
                profile_dir.join(name),
                profile_dir.with_file_name("release").join(name),
            ];
            // The most recently built of the two.
            candidates
                .into_iter()
                .filter_map(|p| {
                    let built = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
                    Some((built, p))
                })
                .max()
                .map(|(_, p)| p)
                .with_context(|| format!("no {name} binary next to the tests; run `cargo build -p {name}` (or set {env_var})"))?
        }
    };
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .with_context(|| format!("{} is missing", binary.display()))?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in sources {
        if newest_mtime(&workspace.join(dir))? > built {
            bail!(
                "{} is older than the sources in {dir}; rebuild it: cargo build -p {name}",
                binary.display()
            );
        }
    }
    Ok(binary)
}

fn newest_mtime(dir: &Path) -> Result<SystemTime> {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let t = if meta.is_dir() {
            newest_mtime(&entry.path())?
        } else {
            meta.modified()?
        };
        newest = newest.max(t);
    }
    Ok(newest)
}

/// The broker's three directories, removed on drop.
#[derive(Debug)]
pub struct BrokerDirs {
    root: PathBuf,
    /// What the projected volume holds in a pod (`/keyhole/inputs`).
    pub inputs: PathBuf,
    /// Where the FIFO goes (`/keyhole/run`).
    pub runtime: PathBuf,
    /// Memory-backed, as the broker insists (`/keyhole/secrets`).
    pub secrets: PathBuf,
}

impl BrokerDirs {
    pub fn new(tag: &str) -> Result<Self> {
        let unique = format!(
            "kh-broker-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let root = std::env::temp_dir().join(&unique);
        let secrets = PathBuf::from("/dev/shm").join(&unique);
        let dirs = Self {
            inputs: root.join("inputs"),
            runtime: root.join("run"),
            secrets,
            root,
        };
        for d in [&dirs.inputs, &dirs.runtime, &dirs.secrets] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::create_dir_all(dirs.inputs.join("job"))?;
        Ok(dirs)
    }

    /// The downward API's annotations file with one `secrets.keyhole.dev/<NAME>` per reference.
    pub fn write_references(&self, refs: &[(&str, &str)]) -> Result<()> {
        let mut text = String::from("kubernetes.io/config.seen=\"2026-01-01T00:00:00Z\"\n");
        for (name, reference) in refs {
            // JSON string quoting matches Go's strconv.Quote for these ASCII references.
            text.push_str(&format!(
                "secrets.keyhole.dev/{name}={}\n",
                serde_json::to_string(reference)?
            ));
        }
        self.write_input("annotations", text.as_bytes())
    }

    /// A file under the inputs directory, e.g. `token` or `job/var.CI_JOB_TOKEN`.
    pub fn write_input(&self, relative: &str, content: &[u8]) -> Result<()> {
        let path = self.inputs.join(relative);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))
    }

    /// Real tokens of a ServiceAccount from TokenRequest: `token` (audience `vault`, for Vault's
    /// kubernetes auth) and `kube-token` (the API server's audience, for `k8s:` reads).
    pub async fn write_service_account_tokens(
        &self,
        bed: &TestBed,
        namespace: &str,
        service_account: &str,
    ) -> Result<()> {
        let vault = bed
            .service_account_token(namespace, service_account, &["vault"])
            .await?;
        let kube = bed
            .service_account_token(namespace, service_account, &[])
            .await?;
        self.write_input("token", vault.as_bytes())?;
        self.write_input("kube-token", kube.as_bytes())
    }

    /// Names of the files in the secrets directory.
    pub fn secret_files(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.secrets)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        Ok(names)
    }

    /// Writes to the broker's log FIFO, as the job script does.
    pub fn write_job_log(&self, text: &str) -> Result<()> {
        use std::io::Write as _;
        let fifo = self.runtime.join("log");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .with_context(|| format!("opening {}", fifo.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Settings of a broker on this machine against the bed: these directories, the bed's Vault
    /// (loopback listener), its API server and CA, the job namespace; Vault role `role`.
    pub fn bed_settings(
        &self,
        bed: &TestBed,
        namespace: &str,
        role: &str,
    ) -> Vec<(String, String)> {
        let mut env = self.dir_settings();
        env.extend(
            [
                ("KEYHOLE_VAULT_ADDR", bed.env.vault_addr.clone()),
                ("KEYHOLE_VAULT_ROLE", role.to_owned()),
                ("KEYHOLE_VAULT_DEADLINE", "5".to_owned()),
                ("KEYHOLE_KUBE_API", bed.env.apiserver_url.clone()),
                (
                    "KEYHOLE_KUBE_CA_FILE",
                    bed.path("pki/ca.crt").display().to_string(),
                ),
                ("KEYHOLE_NAMESPACE", namespace.to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        env
    }

    /// Only the directory settings.
    pub fn dir_settings(&self) -> Vec<(String, String)> {
        [
            ("KEYHOLE_INPUTS_DIR", &self.inputs),
            ("KEYHOLE_SECRETS_DIR", &self.secrets),
            ("KEYHOLE_RUNTIME_DIR", &self.runtime),
        ]
        .map(|(k, v)| (k.to_owned(), v.display().to_string()))
        .to_vec()
    }
}

impl Drop for BrokerDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

/// A job namespace and a broker's directories for it on this machine, with real tokens of the
/// namespace's ServiceAccount `job`; [`Self::settings`] log in to Vault as the role named after
/// the namespace (the name [`VaultAdmin::grant`] gives it).
#[derive(Debug)]
pub struct BrokerJob {
    pub bed: TestBed,
    pub ns: TestNamespace,
    /// The bed's Vault, as root.
    pub vault: VaultAdmin,
    pub dirs: BrokerDirs,
}

impl BrokerJob {
    /// Sets up the namespace `namespace` describes (it must have the ServiceAccount `job`) and
    /// the broker's directories, tagged with the namespace's prefix; panics on what fails.
    pub async fn create(namespace: JobNamespaceBuilder) -> Self {
        let tag = namespace.prefix().to_owned();
        let JobNamespace { bed, ns, vault } = namespace.create().await;
        let dirs = BrokerDirs::new(&tag).unwrap_or_else(|e| panic!("{e:#}"));
        dirs.write_service_account_tokens(&bed, &ns.name, "job")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            bed,
            ns,
            vault,
            dirs,
        }
    }

    /// [`BrokerDirs::bed_settings`] of the namespace, Vault role the namespace's name.
    pub fn settings(&self) -> Vec<(String, String)> {
        self.dirs
            .bed_settings(&self.bed, &self.ns.name, &self.ns.name)
    }

    /// Writes `refs` as the pod's annotations and starts the broker with `settings`.
    pub fn spawn(&self, refs: &[(&str, &str)], settings: &[(String, String)]) -> BrokerProcess {
        self.dirs
            .write_references(refs)
            .unwrap_or_else(|e| panic!("{e:#}"));
        BrokerProcess::spawn(settings).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Self::spawn`] with `settings` and waits until the broker is ready; returns it and its
    /// stderr so far.
    pub async fn start_with(
        &self,
        refs: &[(&str, &str)],
        settings: &[(String, String)],
    ) -> (BrokerProcess, String) {
        let mut broker = self.spawn(refs, settings);
        let stderr = broker
            .wait_ready()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        (broker, stderr)
    }

    /// [`Self::start_with`] the namespace's [`Self::settings`].
    pub async fn start(&self, refs: &[(&str, &str)]) -> (BrokerProcess, String) {
        self.start_with(refs, &self.settings()).await
    }
}

/// A running `keyhole-broker run`; killed on drop if still running.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    stderr: watch::Receiver<String>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    stdout: Collected,
}

/// How a broker run ended.
#[derive(Debug)]
pub struct BrokerExit {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl BrokerExit {
    /// Panics, showing stderr, unless the broker exited with `code`.
    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{}", self.stderr);
    }

    /// Panics, showing stderr, unless stderr holds `text`.
    pub fn assert_stderr_has(&self, text: &str) {
        assert!(
            self.stderr.contains(text),
            "{text:?} not in stderr:\n{}",
            self.stderr
        );
    }

    /// The `keyhole-broker: error: ` lines of stderr.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("keyhole-broker: error: "))
            .collect()
    }
}

impl BrokerProcess {
    /// Starts `keyhole-broker run` with exactly `settings` as its environment.
    pub fn spawn(settings: &[(String, String)]) -> Result<Self> {
        let binary = broker_binary()?;
        let mut child = Command::new(&binary)
            .arg("run")
            .env_clear()
            .envs(settings.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let (tx, stderr) = watch::channel(String::new());
        let mut lines = BufReader::new(child.stderr.take().context("no stderr")?).lines();
        let stderr_task = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|all| {
                    all.push_str(&line);
                    all.push('\n');
                });
            }
        });
        let (stdout, stdout_task) = collect_output(child.stdout.take().context("no stdout")?);
        Ok(Self {
            child,
            stderr,
            readers: vec![stderr_task, stdout_task],
            stdout,
        })
    }

    /// Waits until the broker's stderr satisfies `cond` (by notification, not polling) and
    /// returns it; fails if the broker's stderr ends first.
    pub async fn wait_for_stderr(
        &mut self,
        what: &str,
        cond: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let waited = tokio::time::timeout(WAIT_DEADLINE, self.stderr.wait_for(|s| cond(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match waited {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => bail!(
                "the broker ended before {what}; its stderr:\n{}",
                self.stderr.borrow().as_str()
            ),
            Err(_) => bail!(
                "no {what} within {WAIT_DEADLINE:?}; the broker's stderr:\n{}",
                self.stderr.borrow().as_str()
            ),
        }
    }

    /// Waits for the broker to report that it delivered everything.
    pub async fn wait_ready(&mut self) -> Result<String> {
        self.wait_for_stderr("readiness", |s| s.contains("delivered; ready"))
            .await
    }

    /// Sends SIGTERM, as the kubelet does when the build container exits.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.child.id().context("the broker already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Sends SIGTERM ([`Self::terminate`]) and waits for the exit ([`Self::wait`]).
    pub async fn stop(self) -> Result<BrokerExit> {
        self.terminate()?;
        self.wait().await
    }

    /// Waits for the broker to exit and collects its output.
    pub async fn wait(mut self) -> Result<BrokerExit> {
        let status = tokio::time::timeout(WAIT_DEADLINE, self.child.wait())
            .await
            .context("the broker did not exit")??;
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        Ok(BrokerExit {
            code: status.code(),
            stdout: collected_text(&self.stdout),
            stderr: self.stderr.borrow().clone(),
        })
    }
}

/// The lease id on a secret's audit line.
pub fn lease_of(stderr: &str, secret: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("audit secret={secret} ")))
        .unwrap_or_else(|| panic!("no audit line for {secret}:\n{stderr}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("lease="))
        .unwrap_or_else(|| panic!("no lease on {line:?}"))
        .to_owned()
}
