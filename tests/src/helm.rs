use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::BedEnv;

/// The repository's root (the tests crate sits in `tests/`).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Keyhole Helm chart in this repository.
pub fn chart_dir() -> PathBuf {
    repo_dir().join("deploy/helm/keyhole")
}

/// A command-line tool the bed built (`helm`, `kubectl`, `vault`), set up to talk to the bed.
pub fn bed_command(env: &BedEnv, program: &str) -> Command {
    let mut cmd = Command::new(env.bin(program));
    with_bed_env(&mut cmd, env);
    cmd
}

/// `bash -c SCRIPT` (under `set -euo pipefail`), set up like [`bed_command`].
pub fn bed_script(env: &BedEnv, script: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &format!("set -euo pipefail\n{script}")]);
    with_bed_env(&mut cmd, env);
    cmd
}

/// Sets `cmd` up to talk to the bed: the bed's `bin/` first on PATH, KUBECONFIG, VAULT_ADDR and
/// VAULT_TOKEN, run from the repository.
pub fn with_bed_env<'c>(cmd: &'c mut Command, env: &BedEnv) -> &'c mut Command {
    let path = format!(
        "{}:{}",
        env.testbed_dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.current_dir(repo_dir())
        .env("PATH", path)
        .env("KUBECONFIG", &env.kubeconfig)
        .env("VAULT_ADDR", &env.vault_addr)
        .env("VAULT_TOKEN", &env.vault_token)
}

/// Runs a command, failing with its stderr unless it exits 0; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}\n{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs a command and returns whatever it did.
pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.output()
        .with_context(|| format!("starting {}", describe(cmd)))
}

/// Program and arguments, never the environment (it holds the bed's Vault root token).
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Helm release of the Keyhole chart on the bed, uninstalled when dropped (also on panic),
/// which deletes the jobs namespace the chart created and the cluster-scoped admission policy.
#[derive(Debug)]
pub struct HelmRelease {
    env: BedEnv,
    pub name: String,
    pub namespace: String,
    /// What `helm install` printed (includes NOTES).
    pub output: String,
    /// Set by [`HelmRelease::uninstall`], so that Drop does not uninstall again.
    uninstalled: bool,
}

impl HelmRelease {
    /// `helm install NAME chart -n NAMESPACE --values VALUES` (YAML text) and waits for nothing:
    /// the runner image need not exist for the chart's objects to be created.
    pub fn install(env: &BedEnv, name: &str, namespace: &str, values_yaml: &str) -> Result<Self> {
        let values = write_values(&format!("{namespace}-{name}"), values_yaml)?;
        let result = run_ok(bed_command(env, "helm").args([
            "install",
            name,
            &chart_dir().display().to_string(),
            "--namespace",
            namespace,
            "--values",
            &values.display().to_string(),
        ]));
        let _ = std::fs::remove_file(&values);
        Ok(Self {
            env: env.clone(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            output: result?,
            uninstalled: false,
        })
    }

    /// `helm upgrade` with new values (`--reset-values`: only these apply). Waits for no
    /// rollout: old runner pods may drain their jobs for up to their grace period.
    pub fn upgrade(&self, values_yaml: &str) -> Result<String> {
        let values = write_values(&format!("{}-{}", self.namespace, self.name), values_yaml)?;
        let result = run_ok(bed_command(&self.env, "helm").args([
            "upgrade",
            &self.name,
            &chart_dir().display().to_string(),
            "--namespace",
            &self.namespace,
            "--reset-values",
            "--values",
            &values.display().to_string(),
        ]));
        let _ = std::fs::remove_file(&values);
        result
    }

    /// The release's NOTES as Helm stores them.
    pub fn notes(&self) -> Result<String> {
        run_ok(bed_command(&self.env, "helm").args([
            "get",
            "notes",
            &self.name,
            "--namespace",
            &self.namespace,
        ]))
    }

    /// The Vault commands the release's NOTES print for the Vault admin: the block between
    /// `# --- keyhole: vault setup ---` and `# --- keyhole: end ---`.
    pub fn notes_vault_setup(&self) -> Result<String> {
        let notes = self.notes()?;
        notes
            .split_once("# --- keyhole: vault setup ---")
            .and_then(|(_, rest)| rest.split_once("# --- keyhole: end ---"))
            .map(|(block, _)| block.to_owned())
            .with_context(|| format!("no Vault block in NOTES:\n{notes}"))
    }

    /// `helm uninstall --wait` now, for tests that watch what an uninstall does (Drop would do
    /// it at the end). Blocks: call it from `spawn_blocking` when something must go on meanwhile.
    pub fn uninstall(mut self) -> Result<String> {
        self.uninstalled = true;
        run_ok(&mut self.uninstall_command())
    }

    fn uninstall_command(&self) -> Command {
        let mut cmd = bed_command(&self.env, "helm");
        cmd.args([
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            "120s",
        ]);
        cmd
    }
}

impl Drop for HelmRelease {
    fn drop(&mut self) {
        if !self.uninstalled {
            let _ = self.uninstall_command().output();
        }
    }
}

fn write_values(tag: &str, yaml: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{tag}-{}-values.yaml", std::process::id()));
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
