//! Installing Keyhole on the real bed: the plain manifests (`deploy/manifests`) equal the chart's
//! rendering and apply with kustomize, `helm install` runs a restricted runner with its config
//! and rolls it on a change, and the Vault commands in NOTES run against the bed's Vault.
//! `deploy_chart.rs` has the chart as rendered, `deploy_access.rs` RBAC, admission and network
//! policy, `deploy_runner.rs` the runner image taking jobs. Needs `scripts/testbed up`; the
//! runner image is not needed.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use keyhole_tests::chart::{RELEASE, RUNNER_SA, config_text, test_values};
use keyhole_tests::{
    HelmRelease, TestBed, TestNamespace, VaultAdmin, VaultRoleRemoved, bed_command, bed_script,
    repo_dir, run_ok,
};
use kube::Api;
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

/// Waits (by watch) for the first pod matching `selector`.
async fn first_pod(api: &Api<Pod>, selector: &str) -> Pod {
    let stream =
        watcher(api.clone(), watcher::Config::default().labels(selector)).applied_objects();
    let mut stream = std::pin::pin!(stream);
    tokio::time::timeout(Duration::from_secs(60), stream.try_next())
        .await
        .unwrap_or_else(|_| panic!("no pod with {selector} appeared within 60 s"))
        .unwrap()
        .expect("the watch ended")
}

fn config_toml(cm: &ConfigMap) -> toml::Table {
    let text = config_text(cm);
    text.parse()
        .unwrap_or_else(|e| panic!("config.toml is not TOML: {e}\n{text}"))
}

#[tokio::test]
async fn plain_manifests_equal_the_charts_rendering() {
    let bed = TestBed::connect().await;
    let out = std::env::temp_dir().join(format!("deploy-manifests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut script = std::process::Command::new(repo_dir().join("scripts/render-manifests"));
    script
        .args(["--out", out.to_str().unwrap()])
        .env("HELM", bed.env.bin("helm"));
    run_ok(&mut script).unwrap();
    let committed = repo_dir().join("deploy/manifests");
    let files = ["kustomization.yaml", "namespace.yaml", "keyhole.yaml"];
    let fresh: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(out.join(f)).unwrap())
        .collect();
    let _ = std::fs::remove_dir_all(&out);
    for (file, fresh) in files.iter().zip(fresh) {
        let kept = std::fs::read_to_string(committed.join(file))
            .unwrap_or_else(|e| panic!("deploy/manifests/{file}: {e}"));
        assert!(
            fresh == kept,
            "deploy/manifests/{file} differs from the chart's rendering: run scripts/render-manifests and commit"
        );
    }
}

/// Deletes what `kubectl apply -k` created, and waits, when dropped.
struct AppliedKustomization {
    env: keyhole_tests::BedEnv,
    dir: std::path::PathBuf,
}

impl Drop for AppliedKustomization {
    fn drop(&mut self) {
        let _ = bed_command(&self.env, "kubectl")
            .args([
                "delete",
                "-k",
                self.dir.to_str().unwrap(),
                "--ignore-not-found",
                "--wait",
                "--timeout=120s",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The plain manifests use fixed names (namespaces `keyhole` and `keyhole-jobs`), so this is the
/// one test that applies them. A kustomize overlay, as users would write one, stops image pulls
/// (the runner image need not exist on the bed) and, for when it does, points the runner at a
/// GitLab on the pod's own loopback (`KEYHOLE_RUNNER_URL`), so nothing leaves the machine.
#[tokio::test]
async fn plain_manifests_apply_with_kustomize_and_run_a_restricted_runner() {
    let bed = TestBed::connect().await;
    let namespaces: Api<Namespace> = Api::all(bed.client.clone());
    for ns in ["keyhole", "keyhole-jobs"] {
        // A previous run's namespaces may still be terminating.
        tokio::time::timeout(
            Duration::from_secs(120),
            await_condition(namespaces.clone(), ns, |n: Option<&Namespace>| n.is_none()),
        )
        .await
        .unwrap_or_else(|_| panic!("namespace {ns} is still there after 120 s"))
        .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("deploy-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // kustomize takes relative paths only: up from the overlay to `/`, then down.
    let base = format!(
        "{}{}",
        "../".repeat(dir.components().count() - 1),
        repo_dir()
            .join("deploy/manifests")
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    let overlay = format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
patches:
  - target: {{kind: Deployment, name: keyhole}}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: Never
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KEYHOLE_RUNNER_URL, value: "http://127.0.0.1:1"}}
"#
    );
    std::fs::write(dir.join("kustomization.yaml"), overlay).unwrap();
    let applied = AppliedKustomization {
        env: bed.env.clone(),
        dir: dir.clone(),
    };
    let out = run_ok(bed_command(&bed.env, "kubectl").args(["apply", "-k", dir.to_str().unwrap()]))
        .unwrap();
    for object in [
        "namespace/keyhole created",
        "namespace/keyhole-jobs created",
        "deployment.apps/keyhole created",
        "role.rbac.authorization.k8s.io/keyhole-runner created",
        "validatingadmissionpolicy.admissionregistration.k8s.io/keyhole-keyhole-job-pods created",
        "networkpolicy.networking.k8s.io/keyhole-jobs created",
    ] {
        assert!(out.contains(object), "{object:?} not in:\n{out}");
    }
    // The runner pod passes PodSecurity restricted in its namespace: the ReplicaSet could create it.
    let runner = first_pod(
        &Api::namespaced(bed.client.clone(), "keyhole"),
        "app.kubernetes.io/component=runner",
    )
    .await;
    let container = &runner.spec.unwrap().containers[0];
    assert_eq!(container.image_pull_policy.as_deref(), Some("Never"));
    let env = container.env.as_ref().unwrap();
    let from = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.clone())
            .unwrap_or_else(|| panic!("{name} not set from a source: {env:?}"))
    };
    let token = from("KEYHOLE_RUNNER_TOKEN").secret_key_ref.unwrap();
    assert_eq!(token.name, "keyhole-runner-token");
    // The instance id its job pods and Lease bear: the pod's own UID.
    let instance = from("KEYHOLE_INSTANCE").field_ref.unwrap();
    assert_eq!(instance.field_path, "metadata.uid");
    assert!(
        env.iter()
            .any(|e| e.name == "KEYHOLE_RUNNER_URL"
                && e.value.as_deref() == Some("http://127.0.0.1:1")),
        "{env:?}"
    );
    drop(applied);
}

#[tokio::test]
async fn helm_install_runs_a_restricted_runner_with_its_config_and_rolls_it_on_change() {
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(
        &bed,
        "helm",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await
    .unwrap();
    let jobs_ns = format!("{}-jobs", ns.name);
    let release =
        HelmRelease::install(&bed.env, RELEASE, &ns.name, &test_values(&jobs_ns, true)).unwrap();
    assert!(
        release.output.contains("STATUS: deployed"),
        "{}",
        release.output
    );

    // The runner pod was admitted under PodSecurity restricted.
    let runner = first_pod(&ns.api(), "app.kubernetes.io/component=runner").await;
    let spec = runner.spec.unwrap();
    let sc = spec.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(spec.service_account_name.as_deref(), Some(RUNNER_SA));
    let probes = &spec.containers[0];
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&probes.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&probes.readiness_probe).as_deref(), Some("/readyz"));

    // The jobs namespace enforces, warns and audits PodSecurity restricted.
    let jobs: Namespace = Api::<Namespace>::all(bed.client.clone())
        .get(&jobs_ns)
        .await
        .unwrap();
    let labels = jobs.metadata.labels.unwrap();
    for mode in ["enforce", "warn", "audit"] {
        assert_eq!(
            labels
                .get(&format!("pod-security.kubernetes.io/{mode}"))
                .map(String::as_str),
            Some("restricted"),
            "{mode}: {labels:?}"
        );
    }

    // The runner's config, as the runner will read it.
    let configs: Api<ConfigMap> = ns.api();
    let config = config_toml(&configs.get("kh-keyhole-config").await.unwrap());
    assert_eq!(config["concurrent"].as_integer(), Some(4));
    assert_eq!(config["listen_address"].as_str(), Some("0.0.0.0:9252"));
    let runner_cfg = &config["runners"].as_array().unwrap()[0];
    assert_eq!(runner_cfg["executor"].as_str(), Some("kubernetes"));
    let kube_cfg = &runner_cfg["kubernetes"];
    assert_eq!(kube_cfg["namespace"].as_str(), Some(jobs_ns.as_str()));
    assert_eq!(kube_cfg["service_account"].as_str(), Some("keyhole-job"));
    assert_eq!(kube_cfg["cpu_request"].as_str(), Some("100m"));
    assert_eq!(kube_cfg["poll_timeout"].as_integer(), Some(180));
    assert_eq!(
        kube_cfg["node_selector"]["kubernetes.io/os"].as_str(),
        Some("linux")
    );
    let keyhole = &runner_cfg["keyhole"];
    assert_eq!(
        keyhole["vault_addr"].as_str(),
        Some("http://10.213.0.1:8200")
    );
    assert_eq!(
        keyhole["vault_allowed"].as_array().unwrap(),
        &vec![toml::Value::from("http://10.213.0.1:8200")]
    );
    let rules: Vec<String> = keyhole["service_account_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            toml::to_string(r)
                .unwrap()
                .replace('\n', " ")
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(
        rules,
        [
            r#"project = "acme/app" protected = true service_account = "app-deployer""#,
            r#"project_regex = "^acme/tools/.*$" service_account = "tools""#,
            r#"project = "acme/app-legacy" ref_regex = "main|release-.*" service_account = "app-deployer""#,
        ]
    );

    // A config change changes the pod template, so the Deployment rolls its pods.
    let deployments: Api<Deployment> = ns.api();
    let checksum = |d: Deployment| {
        d.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()["checksum/config"]
            .clone()
    };
    let before = checksum(deployments.get("kh-keyhole").await.unwrap());
    release
        .upgrade(&format!(
            "{}\nrunnerConcurrent: 8\n",
            test_values(&jobs_ns, true)
        ))
        .expect_err("the schema refuses unknown keys on upgrade too");
    let changed = test_values(&jobs_ns, true).replace("runner:\n", "runner:\n  concurrent: 8\n");
    release.upgrade(&changed).unwrap();
    let after = checksum(deployments.get("kh-keyhole").await.unwrap());
    assert_ne!(
        before, after,
        "the config checksum must change with the config"
    );
    let config = config_toml(&configs.get("kh-keyhole-config").await.unwrap());
    assert_eq!(config["concurrent"].as_integer(), Some(8));
}

#[tokio::test]
async fn vault_commands_in_notes_let_a_tenant_read_its_paths_and_nothing_else() {
    let bed = TestBed::connect().await;
    let vault = VaultAdmin::new(&bed.env);
    let ns = TestNamespace::create(&bed, "notes", &[]).await.unwrap();
    let jobs_ns = format!("{}-jobs", ns.name);
    let release =
        HelmRelease::install(&bed.env, RELEASE, &ns.name, &test_values(&jobs_ns, true)).unwrap();
    let role = format!("{jobs_ns}-app");
    let _cleanup = VaultRoleRemoved::on_drop(&bed.env, &role);
    let block = release.notes_vault_setup().unwrap();
    assert!(block.contains("audience=vault"), "{block}");
    assert!(
        block.contains(&format!("bound_service_account_namespaces={jobs_ns}")),
        "{block}"
    );
    run_ok(&mut bed_script(&bed.env, &block)).unwrap();

    vault
        .write(
            &format!("kv/data/{jobs_ns}/app/db"),
            json!({"data": {"password": "app-pass-0123456789"}}),
        )
        .await
        .unwrap();
    vault
        .write(
            &format!("kv/data/{jobs_ns}/other/db"),
            json!({"data": {"password": "other-pass-0123456789"}}),
        )
        .await
        .unwrap();

    let login = |sa: &'static str, audience: &'static str| {
        let (bed, vault, role, jobs_ns) = (&bed, &vault, &role, &jobs_ns);
        async move {
            let jwt = bed
                .service_account_token(jobs_ns, sa, &[audience])
                .await
                .unwrap();
            vault
                .login("kubernetes", json!({"role": role, "jwt": jwt}))
                .await
                .unwrap()
        }
    };
    let (status, body) = login("app-deployer", "vault").await;
    assert!(
        status.is_success(),
        "the tenant's account logs in: {status} {body}"
    );
    let token = body["auth"]["client_token"].as_str().unwrap().to_owned();
    let read = |path: String| {
        let (bed, token) = (&bed, &token);
        async move {
            reqwest::Client::new()
                .get(format!("{}/v1/{path}", bed.env.vault_addr))
                .header("X-Vault-Token", token)
                .send()
                .await
                .unwrap()
        }
    };
    let own = read(format!("kv/data/{jobs_ns}/app/db")).await;
    assert!(own.status().is_success(), "{}", own.status());
    let own: Value = own.json().await.unwrap();
    assert_eq!(own["data"]["data"]["password"], "app-pass-0123456789");
    let other = read(format!("kv/data/{jobs_ns}/other/db")).await;
    assert_eq!(
        other.status().as_u16(),
        403,
        "a path outside the tenant's policy"
    );

    let (status, _) = login("keyhole-job", "vault").await;
    assert_eq!(
        status.as_u16(),
        403,
        "the default job account is not bound to the role"
    );
    let (status, _) = login("app-deployer", "not-vault").await;
    assert_eq!(
        status.as_u16(),
        403,
        "a token for another audience is refused"
    );
    let _ = reqwest::Client::new()
        .put(format!("{}/v1/auth/token/revoke-self", bed.env.vault_addr))
        .header("X-Vault-Token", &token)
        .send()
        .await;
}
