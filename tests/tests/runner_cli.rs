//! The `keyhole-runner` binary's other commands: `render` (no cluster), `verify` (GitLab token,
//! RBAC of the runner's own ServiceAccount, Vault), and the errors a user meets first.

use std::path::Path;
use std::process::Command;

use keyhole_tests::{Coordinator, CoordinatorOptions, JobNamespace, TestBed, repo_dir};
use serde_json::json;

/// `keyhole-runner` as cargo built it, refused when older than its sources.
fn runner() -> Command {
    Command::new(keyhole_tests::runner_binary().unwrap_or_else(|e| panic!("{e:#}")))
}

fn run(args: &[&str], envs: &[(&str, &Path)]) -> (i32, String) {
    let mut cmd = runner();
    cmd.args(args)
        .current_dir(repo_dir())
        .env_remove("KUBECONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn render_prints_the_pod_and_a_redacted_secret_without_a_cluster() {
    let (code, out) = run(
        &[
            "render",
            "examples/vault-kv/.gitlab-ci.yml",
            "read-secrets",
            "--namespace",
            "jobs",
            "--vault-addr",
            "http://vault:8200",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    for needle in [
        "kind: Secret",
        "kind: Pod",
        "secrets.keyhole.dev/DB_PASSWORD: vault:kv/examples/vault-kv/db#password",
        "automountServiceAccountToken: false",
        "postStart:",
        "medium: Memory",
        "namespace: jobs",
    ] {
        assert!(out.contains(needle), "missing {needle:?}:\n{out}");
    }
}

#[test]
fn unknown_jobs_and_bad_files_say_what_to_do() {
    let (code, out) = run(&["render", "examples/vault-kv/.gitlab-ci.yml", "nope"], &[]);
    assert_eq!(code, 64, "EX_USAGE: {out}");
    assert!(
        out.contains("nope") && out.contains("read-secrets"),
        "{out}"
    );
    let (code, out) = run(&["render", "examples/no-such/.gitlab-ci.yml", "x"], &[]);
    assert_eq!(code, 64, "EX_USAGE: {out}");
    assert!(out.contains("examples/no-such/.gitlab-ci.yml"), "{out}");
    let (code, out) = run(&["verify", "--config", "/nonexistent/config.toml"], &[]);
    assert_eq!(code, 64, "EX_USAGE: {out}");
    assert!(out.starts_with("keyhole-runner: error: "), "{out}");
    assert!(
        out.contains("/nonexistent/config.toml") && out.contains("--config"),
        "{out}"
    );
}

/// A gitlab-runner config carried over with a key Keyhole does not honour: `run` stops before
/// it asks GitLab for a job, naming every such key and why.
#[test]
fn run_refuses_a_config_asking_for_what_keyhole_does_not_do() {
    let dir = std::env::temp_dir().join(format!("keyhole-cli-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[[runners]]\nurl = \"http://127.0.0.1:9\"\ntoken = \"glrt-x\"\nexecutor = \"kubernetes\"\n[runners.kubernetes]\nprivileged = true\nvolumes = { empty_dir = [{ name = \"x\", mount_path = \"/x\" }] }\n",
    )
    .unwrap();
    let (code, out) = run(&["run", "--config", config.to_str().unwrap()], &[]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 64, "EX_USAGE: {out}");
    assert!(out.contains("will not start"), "{out}");
    assert!(
        out.contains("runners[0].kubernetes.privileged: job pods always pass PodSecurity"),
        "{out}"
    );
    assert!(out.contains("runners[0].kubernetes.volumes: "), "{out}");
    assert!(!out.contains("requesting a job"), "{out}");
}

/// A kubeconfig for a ServiceAccount token, like the runner has in its pod.
fn kubeconfig(bed: &TestBed, token: &str, path: &Path) {
    let ca = bed.env.testbed_dir.join("pki/ca.crt");
    std::fs::write(
        path,
        serde_json::to_string(&json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "runner",
            "clusters": [{"name": "bed", "cluster": {"server": bed.env.apiserver_url, "certificate-authority": ca}}],
            "users": [{"name": "runner", "user": {"token": token}}],
            "contexts": [{"name": "runner", "context": {"cluster": "bed", "user": "runner"}}]
        }))
        .unwrap(),
    )
    .unwrap();
}

// Multi-threaded: the coordinator keeps serving while the test waits for the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_the_token_the_runners_rights_and_vault() {
    let rules = json!([
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "create", "update", "delete"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["runner-journal"], "verbs": ["get", "patch"]}
    ]);
    // The Role is new: create returns once RBAC serves it, before verify judges it.
    let job = JobNamespace::builder("verify")
        .service_account("runner")
        .secret("runner-journal", json!({}))
        .role("runner", "runner", rules)
        .create()
        .await;
    let (bed, ns) = (&job.bed, &job.ns);
    let gitlab = Coordinator::start(CoordinatorOptions::default())
        .await
        .unwrap();
    let token = bed
        .service_account_token(&ns.name, "runner", &[])
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("verify-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let kube = dir.join("kubeconfig");
    kubeconfig(bed, &token, &kube);
    let write_config = |runner_token: &str, journal: &str| {
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            format!(
                "[[runners]]\nurl = \"{}\"\ntoken = \"{runner_token}\"\n[runners.kubernetes]\nnamespace = \"{}\"\n[runners.keyhole]\nvault_addr = \"{}\"\njournal_secret = \"{}/{journal}\"\n",
                gitlab.url(),
                ns.name,
                bed.env.vault_addr,
                ns.name
            ),
        )
        .unwrap();
        path
    };
    let config = write_config(gitlab.runner_token(), "runner-journal");
    let (code, out) = run(
        &["verify", "--config", config.to_str().unwrap()],
        &[("KUBECONFIG", &kube)],
    );
    assert_eq!(code, 0, "{out}");
    for needle in [
        "accepts the runner token",
        "the runner may do what it needs",
        "cannot read or delete Secrets",
        "is up and unsealed",
        "keeps its journal of running jobs in Secret",
    ] {
        assert!(out.contains(needle), "missing {needle:?}:\n{out}");
    }
    // A wrong token and a runner that may read or delete Secrets are both problems.
    job.role(
        "too-much",
        "runner",
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "delete"]}]),
    )
    .await;
    let config = write_config("glrt-wrong", "no-such-journal");
    let (code, out) = run(
        &["verify", "--config", config.to_str().unwrap()],
        &[("KUBECONFIG", &kube)],
    );
    assert_eq!(code, 1, "problems found: {out}");
    assert!(out.contains("PROBLEM  GitLab"), "{out}");
    assert!(
        out.contains("PROBLEM  the runner may get secrets, delete secrets"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "PROBLEM  the journal Secret {}/no-such-journal",
            ns.name
        )),
        "{out}"
    );
    assert!(!out.contains("glrt-wrong"), "the token was echoed:\n{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn version_names_the_commit_and_completions_cover_every_command() {
    let (code, out) = run(&["--version"], &[]);
    assert_eq!(code, 0, "{out}");
    let commit = out
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no commit in {out:?}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{out}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let (code, script) = run(&["completion", shell], &[]);
        assert_eq!(code, 0, "{shell}: {script}");
        for word in ["exec", "render", "verify", "namespace"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let (code, out) = run(&["completion", "tcsh"], &[]);
    assert_eq!(code, 64, "EX_USAGE: {out}");
    assert!(
        out.contains("bash") && out.contains("fish"),
        "names the shells: {out}"
    );
}

/// The subcommands `keyhole-runner --help` lists (clap's own `help` aside).
fn subcommands() -> Vec<String> {
    let (code, out) = run(&["--help"], &[]);
    assert_eq!(code, 0, "{out}");
    let commands = out
        .split("Commands:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no commands in:\n{out}"));
    commands
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_command_help_ends_with_an_example_of_itself() {
    let commands = subcommands();
    for expected in ["run", "exec", "render", "verify", "completion"] {
        assert!(commands.iter().any(|c| c == expected), "{commands:?}");
    }
    for command in &commands {
        for flag in ["--help", "-h"] {
            let (code, out) = run(&[command, flag], &[]);
            assert_eq!(code, 0, "{command} {flag}: {out}");
            let example = out
                .split("\nExample:\n")
                .nth(1)
                .unwrap_or_else(|| panic!("`{command} {flag}` has no Example section:\n{out}"));
            assert!(
                example.lines().any(|l| l
                    .trim_start()
                    .starts_with(&format!("keyhole-runner {command} "))),
                "the example of `{command}` does not run it:\n{example}"
            );
        }
    }
}

/// `render`'s example works as written: a `.gitlab-ci.yml` with a job `build` in the current
/// directory.
#[test]
fn the_render_example_works_as_written() {
    let (_, help) = run(&["render", "--help"], &[]);
    let example = help
        .split("\nExample:\n")
        .nth(1)
        .and_then(|e| {
            e.lines()
                .map(str::trim)
                .find(|l| l.starts_with("keyhole-runner render "))
        })
        .unwrap_or_else(|| panic!("no example in:\n{help}"))
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".gitlab-ci.yml"),
        "build:\n  image: keyhole.local/busybox:1\n  script: [make]\n",
    )
    .unwrap();
    let args: Vec<&str> = example
        .split_whitespace()
        .skip(1)
        .take_while(|a| *a != ">")
        .collect();
    let out = runner()
        .args(&args)
        .current_dir(dir.path())
        .env_remove("KEYHOLE_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("kind: Pod"),
        "{example}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
