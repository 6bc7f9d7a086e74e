//! README's "Run it on your cluster", run on the bed as written: the test reads the section's
//! shell blocks and runs them in order (namespace, token and pull Secrets, values file, `helm
//! install --wait`, the Vault secret and role, `keyhole-runner verify` in the runner pod), then
//! hands GitLab's side of the section's `.gitlab-ci.yml` to the runner through the coordinator.
//! So the quick start cannot drift from what works. And the images as they ship: no shell, a
//! numeric non-root user (docs/security.md).
//!
//! What the test supplies, and why:
//! - The settings block's variables: the bed's registry, coordinator, Vault and a namespace of
//!   its own. The test fails when the README defines a setting it does not know.
//! - Step 1 (`scripts/build-images --push`) is not run here: `scripts/test-all` runs it against
//!   the bed's registry (tag `dev`) before the tests (a build inside `cargo test` would wait on
//!   cargo's lock). The images are pulled from that registry, with the README's pull Secret.
//! - `helm install` gets one more values file, for what a bed differs in from a cluster: the
//!   apiserver is not behind a `kubernetes` Service (`runner.kubernetes.host`, `jobs.kubeApi`),
//!   GitLab and Vault listen on other ports, Vault's certificate is from the bed's own CA, the job
//!   image is the checkout image from the registry (the bed reaches no other registry), and every
//!   pull policy is `Always`, so that each image is pulled from the registry with the login.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use keyhole_tests::coordinator::FinalStatus;
use keyhole_tests::{
    BedEnv, Coordinator, CoordinatorOptions, TestBed, TestNamespace, bed_command, bed_script,
    pod_logs, repo_dir, run, run_ok, run_pod_to_completion,
};
use kube::Api;
use serde_json::{Value, json};

/// The section of README.md the test runs.
const SECTION: &str = "## Run it on your cluster";
/// The settings the README's first block defines; the test supplies each.
const SETTINGS: [&str; 10] = [
    "REGISTRY",
    "REGISTRY_AUTH",
    "TAG",
    "NAMESPACE",
    "GITLAB_URL",
    "GITLAB_CIDR",
    "VAULT_ADDR",
    "VAULT_CIDR",
    "PROJECT",
    "RUNNER_TOKEN",
];
/// The tag `scripts/test-all` pushes the bed's images with.
const TAG: &str = "dev";
/// The bed's bridge address: GitLab (the coordinator), Vault and the apiserver listen there.
const BRIDGE: &str = "10.213.0.1";
const JOB_DONE: Duration = Duration::from_secs(240);

/// The fenced blocks of one language in `text`, in order.
fn fenced_blocks(text: &str, language: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match current.as_mut() {
            None if trimmed == format!("```{language}") => current = Some(Vec::new()),
            Some(lines) if trimmed == "```" => {
                blocks.push(dedent(lines));
                current = None;
            }
            Some(lines) => lines.push(line),
            None => {}
        }
    }
    blocks
}

/// Lines of a block nested in a list item lose the item's indentation.
fn dedent(lines: &[&str]) -> String {
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn readme_section() -> String {
    let readme = std::fs::read_to_string(repo_dir().join("README.md")).unwrap();
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let rest = &readme[start + SECTION.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The variables the settings block exports, in order.
fn exported_names(block: &str) -> Vec<String> {
    block
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// A containers-auth.json holding the bed registry's login, as `buildah login --authfile` writes.
fn write_registry_auth(bed: &BedEnv, path: &Path) {
    let registry = bed.registry().expect("the bed's registry is up");
    let login = format!("{}:{}", registry.user, registry.password().unwrap());
    let auth = json!({"auths": {registry.addr.clone(): {"auth": base64_of(&login)}}});
    std::fs::write(path, auth.to_string()).unwrap();
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// `helm` for the README's commands: the bed's helm, with the bed's values file added to
/// `install` (see the module docs).
fn helm_wrapper(bed: &BedEnv, dir: &Path, overrides: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = bed.bin("helm");
    let script = format!(
        "#!/bin/bash\nif [[ ${{1:-}} == install ]]; then exec {real} \"$@\" -f {overrides}; fi\nexec {real} \"$@\"\n",
        real = real.display(),
        overrides = overrides.display()
    );
    let path = bin.join("helm");
    std::fs::write(&path, script).unwrap();
    run_ok(Command::new("chmod").arg("0755").arg(&path)).unwrap();
    bin
}

fn bed_values(bed: &BedEnv, registry: &str, gitlab_port: u16) -> String {
    let ca = serde_json::to_string(&std::fs::read_to_string(&bed.vault_ca_file).unwrap()).unwrap();
    let vault_port = bed
        .vault_tls_pod_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("the bed's Vault address has a port");
    format!(
        r#"
image: {{pullPolicy: Always}}
runner:
  kubernetes:
    host: "{api}"
    image: "{registry}/checkout:{TAG}"
    pull_policy: always
vault: {{caBundle: {ca}}}
jobs: {{kubeApi: "{api}"}}
networkPolicy:
  gitlab: {{ports: [{gitlab_port}]}}
  vault: {{ports: [{vault_port}]}}
  kubernetesApi: {{cidrs: [{BRIDGE}/32], ports: [6443]}}
"#,
        api = bed.apiserver_url,
    )
}

/// Deletes what the README's commands made (the release, both namespaces, the Vault role and
/// policy and the KV secret) when dropped, also on panic.
struct Installed {
    env: BedEnv,
    namespace: String,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let ns = &self.namespace;
        let _ = bed_script(
            &self.env,
            &format!(
                "helm uninstall keyhole -n {ns} --wait --timeout 120s || true\n\
                 kubectl delete namespace {ns} {ns}-jobs --ignore-not-found --wait=false\n\
                 vault delete auth/kubernetes/role/ci-app || true\n\
                 vault policy delete ci-app || true\n\
                 vault kv metadata delete kv/group/app/db || true"
            ),
        )
        .output();
    }
}

/// What the runner's namespace holds and says, for a failure message.
fn describe(env: &BedEnv, namespace: &str) -> String {
    let script = format!(
        "kubectl -n {namespace} get pods -o wide; \
         kubectl -n {namespace} get events --sort-by=.lastTimestamp | tail -n 30; \
         kubectl -n {namespace} logs deploy/keyhole --tail 40 || true"
    );
    match run(&mut bed_script(env, &script)) {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("describing {namespace} failed: {e:#}"),
    }
}

/// The job `.gitlab-ci.yml` defines: its name, variables and script.
fn pipeline_job(yaml: &str) -> (String, Vec<(String, String)>, Vec<String>) {
    let config: Value = serde_saphyr::from_str(yaml).unwrap();
    let (name, job) = config
        .as_object()
        .and_then(|jobs| jobs.iter().next())
        .expect("the README's .gitlab-ci.yml has one job");
    let variables = job["variables"]
        .as_object()
        .map(|vars| {
            vars.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let script = job["script"]
        .as_array()
        .expect("the job has a script")
        .iter()
        .map(|line| line.as_str().unwrap().to_owned())
        .collect();
    (name.clone(), variables, script)
}

#[tokio::test]
async fn the_readmes_quick_start_runs_a_pipeline_with_a_vault_secret() {
    let bed = TestBed::connect().await;
    let registry = bed.env.registry().expect("the bed's registry is up");
    let image_repo = format!("{}/keyhole", registry.addr);
    let section = readme_section();
    let blocks = fenced_blocks(&section, "sh");
    let settings = blocks.first().expect("the section opens with its settings");
    assert_eq!(
        exported_names(settings),
        SETTINGS,
        "the README's settings changed: teach this test the new ones"
    );
    let steps: Vec<&String> = blocks[1..]
        .iter()
        .filter(|block| !block.contains("scripts/build-images"))
        .collect();
    assert_eq!(
        blocks.len() - 1 - steps.len(),
        1,
        "step 1 (scripts/build-images) is the one block test-all runs instead"
    );

    let gitlab = Coordinator::start(CoordinatorOptions::on_bed_bridge(Duration::from_secs(5)))
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    for linked in ["deploy", "scripts"] {
        std::os::unix::fs::symlink(repo_dir().join(linked), work.path().join(linked)).unwrap();
    }
    let auth = work.path().join("keyhole-registry.json");
    write_registry_auth(&bed.env, &auth);
    let overrides = work.path().join("bed-values.yaml");
    std::fs::write(
        &overrides,
        bed_values(&bed.env, &image_repo, gitlab.addr().port()),
    )
    .unwrap();
    let helm_dir = helm_wrapper(&bed.env, work.path(), &overrides);
    let namespace = format!("qs-{}", fastrand::u32(..));
    let _installed = Installed {
        env: bed.env.clone(),
        namespace: namespace.clone(),
    };
    let settings = [
        ("REGISTRY", image_repo.clone()),
        ("REGISTRY_AUTH", auth.display().to_string()),
        ("TAG", TAG.to_owned()),
        ("NAMESPACE", namespace.clone()),
        ("GITLAB_URL", gitlab.url()),
        ("GITLAB_CIDR", format!("{BRIDGE}/32")),
        ("VAULT_ADDR", bed.env.vault_tls_pod_addr.clone()),
        ("VAULT_CIDR", format!("{BRIDGE}/32")),
        ("PROJECT", "group/app".to_owned()),
        ("RUNNER_TOKEN", gitlab.runner_token().to_owned()),
    ];
    let path = format!(
        "{}:{}",
        helm_dir.display(),
        bed_command(&bed.env, "helm")
            .get_envs()
            .find(|(k, _)| *k == "PATH")
            .and_then(|(_, v)| v)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut outputs = Vec::new();
    for block in &steps {
        let mut cmd = bed_script(&bed.env, block);
        cmd.current_dir(work.path())
            .env("PATH", &path)
            .env("VAULT_CACERT", &bed.env.vault_ca_file);
        for (name, value) in &settings {
            cmd.env(name, value);
        }
        // Off the test's thread: the coordinator answers the runner meanwhile.
        let out = tokio::task::spawn_blocking(move || run(&mut cmd))
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "README step failed ({}):\n{block}\nstdout:\n{stdout}\nstderr:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            describe(&bed.env, &namespace)
        );
        outputs.push(stdout);
    }
    // Step 5: `keyhole-runner verify` in the runner pod, one line per check.
    let verify = outputs.last().unwrap();
    for line in [
        format!("ok       GitLab {} accepts the runner token", gitlab.url()),
        format!("ok       the runner may do what it needs in namespace {namespace}-jobs"),
        // The chart's default broker image: imageRegistry's, with imageTag.
        format!("ok       broker image {image_repo}/broker:{TAG}"),
    ] {
        assert!(
            verify.contains(&line),
            "missing {line:?} in verify:\n{verify}"
        );
    }
    assert!(!verify.contains("PROBLEM"), "verify:\n{verify}");

    // Step 6: the pipeline, as GitLab hands its job to the runner.
    let yaml = fenced_blocks(&section, "yaml");
    let (name, variables, script) = pipeline_job(yaml.first().expect("a .gitlab-ci.yml"));
    let sha = gitlab
        .create_repo("group/app", &[(".gitlab-ci.yml", yaml[0].as_str())])
        .unwrap();
    let mut job = gitlab.job().name(&name).project(77, "group/app").sha(&sha);
    for (key, value) in &variables {
        job = job.variable(key, value);
    }
    let job = job.script(script).enqueue().unwrap();
    let done = gitlab.wait_for_final(job.id, JOB_DONE).await;
    let trace = String::from_utf8_lossy(&gitlab.trace(job.id)).into_owned();
    let done = done.unwrap_or_else(|e| panic!("{e:#}\n{trace}"));
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    for line in [
        "Checked out",
        &format!("logging in to Vault at {}", bed.env.vault_tls_pod_addr),
        "the password is a file, /",
        "\n[MASKED]",
    ] {
        assert!(trace.contains(line), "missing {line:?}:\n{trace}");
    }
    // Step 4 made the password; only its mask reached the log.
    let mut read = bed_script(&bed.env, "vault kv get -field=password kv/group/app/db");
    let password = run_ok(&mut read).unwrap();
    assert!(password.trim().len() >= 32, "the password step ran");
    assert!(
        !trace.contains(password.trim()),
        "the password reached the job log"
    );
}

/// The runner and broker images (as `scripts/test-all` pulled them from the bed's registry):
/// their binary runs as the image's own user under `runAsNonRoot` with no `runAsUser` (so the
/// image names a numeric non-root uid), and there is no shell to land in: `/bin/sh` does not
/// start.
#[tokio::test]
async fn the_shipped_images_run_as_a_numeric_non_root_user_and_have_no_shell() {
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(
        &bed,
        "images",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await
    .unwrap();
    let pods: Api<Pod> = ns.api();
    for (image, binary) in [
        ("keyhole.local/runner:dev", "keyhole-runner"),
        ("keyhole.local/broker:dev", "keyhole-broker"),
    ] {
        let pod = |name: &str, command: &[&str]| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "c", "image": image, "imagePullPolicy": "Never", "command": command,
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            }))
            .unwrap()
        };
        let version = format!("{binary}-version");
        let done = run_pod_to_completion(
            &pods,
            &pod(
                &version,
                &[&format!("/usr/local/bin/{binary}"), "--version"],
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            done.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded"),
            "{image}: {:?}",
            done.status
        );
        let log = pod_logs(&pods, &version, "c").await.unwrap();
        assert!(log.contains(env!("CARGO_PKG_VERSION")), "{image}: {log}");
        let shell = format!("{binary}-shell");
        let done = run_pod_to_completion(&pods, &pod(&shell, &["/bin/sh", "-c", "true"]))
            .await
            .unwrap();
        let state = done
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .unwrap_or_else(|| panic!("{image}: /bin/sh did not end: {:?}", done.status));
        assert_eq!(
            state.reason.as_deref(),
            Some("StartError"),
            "{image}: {state:?}"
        );
        assert!(
            state.message.as_deref().unwrap_or("").contains("/bin/sh"),
            "{image}: {state:?}"
        );
    }
}
