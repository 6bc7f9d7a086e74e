//! The Helm chart (`deploy/helm/keyhole`) and the plain manifests (`deploy/manifests`) on the
//! real bed: lint and schema, install, the rendered runner config, least-privilege RBAC asked of
//! the apiserver's authorizers, the admission policy acting on requests made as the runner's
//! ServiceAccount, the NetworkPolicy's selection of job pods, and the Vault commands in NOTES run
//! against the bed's Vault. Needs `scripts/testbed up`; the runner image is not needed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keyhole_runner::config::load_str;
use keyhole_runner::pod::CHECKOUT_CONTAINER;
use keyhole_runner::pod::samples::sample_jobs;
use keyhole_runner::prepare::prepare;
use keyhole_runner::verify::{NEEDED, UNWANTED};
use keyhole_tests::chart::{
    BUSYBOX, Outcome, POLICY_DEADLINE, RELEASE, RUNNER_SA, from_json, helm_template, job_pod,
    job_secret, refusal, refusal_once_effective, restricted, runner_client, test_values,
    try_create,
};
use keyhole_tests::{
    Access, HelmRelease, TestBed, TestNamespace, VaultAdmin, bed_command, bed_script, chart_dir,
    repo_dir, run_ok, service_account_may, wait_until_allowed,
};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

// === Helpers ===

/// A values file for `helm template`/`lint`, removed when dropped.
struct ValuesFile(std::path::PathBuf);

impl ValuesFile {
    fn new(tag: &str, yaml: &str) -> Self {
        let path = std::env::temp_dir().join(format!("deploy-{tag}-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).unwrap();
        Self(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

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

fn config_text(cm: &ConfigMap) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get("config.toml"))
        .expect("the ConfigMap holds config.toml")
        .clone()
}

fn config_toml(cm: &ConfigMap) -> toml::Table {
    let text = config_text(cm);
    text.parse()
        .unwrap_or_else(|e| panic!("config.toml is not TOML: {e}\n{text}"))
}

/// The objects of a `helm template` output, as JSON.
fn documents(rendered: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Option<Value>>(rendered)
        .unwrap_or_else(|e| panic!("helm template printed no YAML: {e}\n{rendered}"))
        .into_iter()
        .flatten()
        .collect()
}

/// The one rendered object of `kind`.
fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = docs.iter().filter(|d| d["kind"] == kind);
    let found = of_kind
        .next()
        .unwrap_or_else(|| panic!("no {kind} rendered"));
    assert!(of_kind.next().is_none(), "more than one {kind} rendered");
    found
}

// === Lint, schema, rendering (helm alone) ===

#[tokio::test]
async fn chart_passes_lint_and_strict_lint_and_renders_cleanly() {
    let bed = TestBed::connect().await;
    let chart = chart_dir().display().to_string();
    let full = ValuesFile::new("lint", &test_values("keyhole-jobs", true));
    for extra in [vec![], vec!["--values", full.path()]] {
        for strict in [false, true] {
            let mut args = vec!["lint", chart.as_str()];
            if strict {
                args.push("--strict");
            }
            args.extend_from_slice(&extra);
            let out = run_ok(bed_command(&bed.env, "helm").args(&args))
                .unwrap_or_else(|e| panic!("helm {args:?}: {e:#}"));
            assert!(out.contains("0 chart(s) failed"), "{out}");
            assert!(!out.contains("[WARNING]"), "{out}");
            assert!(!out.contains("[ERROR]"), "{out}");
        }
        let rendered = helm_template(&bed, &extra).unwrap_or_else(|e| panic!("{e}"));
        for kind in [
            "kind: Deployment",
            "kind: ConfigMap",
            "kind: Service\n",
            "kind: PodDisruptionBudget",
            "kind: Role\n",
            "kind: RoleBinding",
            "kind: ValidatingAdmissionPolicy\n",
            "kind: ValidatingAdmissionPolicyBinding",
            "kind: NetworkPolicy",
            "kind: Namespace",
        ] {
            assert!(rendered.contains(kind), "{kind} missing from:\n{rendered}");
        }
        assert!(!rendered.contains("ServiceMonitor"), "off by default");
    }
}

#[tokio::test]
async fn schema_and_templates_refuse_bad_values_and_say_which() {
    let bed = TestBed::connect().await;
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--set", "replicas=x"],
            &["replicas", "got string, want integer"],
        ),
        (&["--set", "replicas=0"], &["replicas", "minimum"]),
        (
            &["--set", "replicaCount=2"],
            &["replicaCount", "not allowed"],
        ),
        (
            &["--set", "runner.kubernetes.namespace=elsewhere"],
            &["/runner/kubernetes/namespace"],
        ),
        (
            &["--set", "runner.kubernetes.Bad-Key=1"],
            &["Bad-Key", "does not match pattern"],
        ),
        (
            &["--set", "networkPolicy.gitlab.cidrs[0]=gitlab.example.com"],
            &["cidrs"],
        ),
        (
            &["--set", "admissionPolicy.validationActions[0]=Ignore"],
            &["validationActions"],
        ),
        (&["--set", "tenants[0].serviceAccount=app"], &["tenants"]),
        (
            &["--set", "imageRegistry=https://registry.example.com"],
            &["/imageRegistry", "does not match pattern"],
        ),
        (
            &["--set", "imageTag=v1/2"],
            &["/imageTag", "does not match pattern"],
        ),
        (
            &[
                "--set",
                "tenants[0].project=a/b",
                "--set",
                "tenants[0].serviceAccount=keyhole-job",
            ],
            &["tenants[0].serviceAccount", "default job ServiceAccount"],
        ),
    ];
    for (args, expected) in cases {
        let err = helm_template(&bed, args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} was accepted"));
        for needle in *expected {
            assert!(err.contains(needle), "{args:?}: {needle:?} not in: {err}");
        }
    }
}

/// Issue 13: the chart's images are the three scripts/build-images makes, under
/// `imageRegistry` with `imageTag` (default: the chart's appVersion, the script's default tag);
/// a value naming an image of its own wins for that image only.
#[tokio::test]
async fn the_charts_images_are_those_build_images_makes_unless_named() {
    let bed = TestBed::connect().await;
    let images = |extra: &[&str]| {
        let mut args = vec![
            "--show-only",
            "templates/deployment.yaml",
            "--show-only",
            "templates/configmap.yaml",
        ];
        args.extend_from_slice(extra);
        let rendered = helm_template(&bed, &args).unwrap_or_else(|e| panic!("{e}"));
        let docs = documents(&rendered);
        let runner =
            only(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_owned();
        let config: toml::Table = toml::from_str(
            only(&docs, "ConfigMap")["data"]["config.toml"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let keyhole = &config["runners"].as_array().unwrap()[0]["keyhole"];
        let named = |key: &str| keyhole[key].as_str().unwrap().to_owned();
        (runner, named("broker_image"), named("git_image"))
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        images(&[]),
        (
            format!("registry.example.com/keyhole/runner:{version}"),
            format!("registry.example.com/keyhole/broker:{version}"),
            format!("registry.example.com/keyhole/checkout:{version}"),
        )
    );
    assert_eq!(
        images(&[
            "--set",
            "imageRegistry=reg.internal:5000/ci",
            "--set",
            "imageTag=rc1"
        ]),
        (
            "reg.internal:5000/ci/runner:rc1".to_owned(),
            "reg.internal:5000/ci/broker:rc1".to_owned(),
            "reg.internal:5000/ci/checkout:rc1".to_owned(),
        )
    );
    assert_eq!(
        images(&[
            "--set",
            "image.repository=mirror/runner",
            "--set",
            "image.tag=pinned",
            "--set",
            "broker.image=mirror/broker@sha256:0123",
            "--set",
            "jobs.gitImage=mirror/git:2",
        ]),
        (
            "mirror/runner:pinned".to_owned(),
            "mirror/broker@sha256:0123".to_owned(),
            "mirror/git:2".to_owned(),
        )
    );
}

#[tokio::test]
async fn service_monitor_is_rendered_only_when_enabled() {
    let bed = TestBed::connect().await;
    let show = ["--show-only", "templates/servicemonitor.yaml"];
    let off = helm_template(&bed, &show).expect_err("nothing to show when disabled");
    assert!(off.contains("could not find template"), "{off}");
    let mut on_args = show.to_vec();
    on_args.extend(["--set", "metrics.serviceMonitor.enabled=true"]);
    let on = helm_template(&bed, &on_args).unwrap();
    assert!(on.contains("kind: ServiceMonitor"), "{on}");
    assert!(on.contains("port: http-metrics"), "{on}");
    assert!(on.contains("path: /metrics"), "{on}");
}

/// The runner's config as the chart renders it, with default values and with every setting
/// the chart has: the runner loads it (`load_str`, as `keyhole-runner run` does; a key it
/// would not honour is an error), and the Deployment gives it what it points to.
#[tokio::test]
async fn the_runner_loads_the_charts_config_without_ignoring_a_key() {
    let bed = TestBed::connect().await;
    let full = ValuesFile::new("runner-config", &test_values("keyhole-jobs", true));
    let mut configs = Vec::new();
    for extra in [vec![], vec!["--values", full.path()]] {
        let docs = documents(&helm_template(&bed, &extra).unwrap_or_else(|e| panic!("{e}")));
        let text = only(&docs, "ConfigMap")["data"]["config.toml"]
            .as_str()
            .expect("the ConfigMap holds config.toml");
        let loaded = load_str(text, "config.toml", &|_| None).unwrap_or_else(|e| {
            panic!("{extra:?}: the runner refuses the chart's config: {e}\n{text}")
        });
        let config = loaded.config;
        let runner = &config.runners[0];

        let pod = &only(&docs, "Deployment")["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(
            container["args"],
            json!(["run", "--config", "/etc/keyhole/config.toml"])
        );
        let volume_at = |path: &str| {
            let mount = container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == path)
                .unwrap_or_else(|| panic!("{extra:?}: nothing mounted at {path}"));
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap()
                .clone()
        };
        assert!(volume_at("/etc/keyhole")["configMap"].is_object());
        // The journal of running jobs: the chart's Secret, which outlives the runner pod, in
        // the release namespace.
        let journal = docs
            .iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "kh-keyhole-journal")
            .expect("the journal Secret is rendered");
        assert_eq!(journal["metadata"]["namespace"], "keyhole", "{journal}");
        assert_eq!(
            runner.keyhole.journal_secret.as_deref(),
            Some("keyhole/kh-keyhole-journal")
        );
        assert!(journal.get("data").is_none_or(Value::is_null), "{journal}");
        assert_eq!(
            config.listen_address,
            Some(format!(
                "0.0.0.0:{}",
                container["ports"][0]["containerPort"]
            ))
        );
        // Jobs get shutdown_timeout, then the runner aborts and reports the rest (60 s at most)
        // before Kubernetes kills it.
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            config.shutdown_timeout + 60 < grace,
            "shutdown_timeout {} vs grace {grace}",
            config.shutdown_timeout
        );
        configs.push(config);
    }

    let default = &configs[0].runners[0];
    assert_eq!(default.kubernetes.host, None, "in-cluster by default");
    assert_eq!(default.keyhole.kube_api, "https://kubernetes.default.svc");
    assert_eq!(default.keyhole.vault_addr, None);
    assert_eq!(configs[0].shutdown_timeout, 510);

    let full = &configs[1];
    let runner = &full.runners[0];
    assert_eq!(full.log_level.as_deref(), Some("keyhole_runner=debug,info"));
    assert_eq!(full.shutdown_timeout, 310);
    assert_eq!(
        runner.kubernetes.host.as_deref(),
        Some("https://10.213.0.1:6443")
    );
    assert_eq!(runner.kubernetes.pull_policy.0, ["never"]);
    assert_eq!(
        runner.kubernetes.pod_termination_grace_period_seconds,
        Some(60)
    );
    assert_eq!(runner.keyhole.kube_api, "https://10.213.0.1:6443");
    assert_eq!(runner.keyhole.broker_image, "keyhole.local/broker:dev");
    assert_eq!(runner.keyhole.git_image, "keyhole.local/git:2");
    assert_eq!(
        runner.keyhole.vault_addr.as_deref(),
        Some("http://10.213.0.1:8200")
    );
    assert_eq!(runner.keyhole.vault_allowed, ["http://10.213.0.1:8200"]);
    assert_eq!(runner.keyhole.vault_namespace.as_deref(), Some("team-a"));
    assert_eq!(
        runner.keyhole.vault_role.as_deref(),
        Some("keyhole-jobs-app")
    );
    assert_eq!(runner.keyhole.vault_audience, "vault");
    assert_eq!(runner.keyhole.token_expiration_seconds, 900);
    let rules = &runner.keyhole.service_account_rules;
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[2].ref_regex.as_deref(), Some("main|release-.*"));
}

/// The runner's Role grants exactly what `keyhole-runner verify` checks the runner needs
/// (`NEEDED`), and nothing it must not have (`UNWANTED`).
#[tokio::test]
async fn the_runners_role_grants_exactly_what_the_runner_needs() {
    let bed = TestBed::connect().await;
    let docs =
        documents(&helm_template(&bed, &["--show-only", "templates/rbac-runner.yaml"]).unwrap());
    let rules = only(&docs, "Role")["rules"].as_array().unwrap();
    let mut granted = BTreeSet::new();
    for rule in rules {
        let groups = rule["apiGroups"].as_array().unwrap();
        assert_eq!(groups.len(), 1, "{rule}");
        let group = groups[0].as_str().unwrap();
        assert!(rule.get("resourceNames").is_none(), "{rule}");
        for resource in rule["resources"].as_array().unwrap() {
            let resource = resource.as_str().unwrap();
            let resource = match group {
                "" => resource.to_owned(),
                g => format!("{resource}.{g}"),
            };
            for verb in rule["verbs"].as_array().unwrap() {
                granted.insert((verb.as_str().unwrap().to_owned(), resource.clone()));
            }
        }
    }
    let as_pair = |(verb, resource, sub): &(&str, &str, &str)| {
        let resource = if sub.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}/{sub}")
        };
        (verb.to_string(), resource)
    };
    let needed: BTreeSet<(String, String)> = NEEDED.iter().map(as_pair).collect();
    assert_eq!(granted, needed);
    for unwanted in UNWANTED {
        assert!(!granted.contains(&as_pair(unwanted)), "{unwanted:?}");
    }
}

/// Tenants' Vault settings the runner could not honour fail at render time, saying why.
#[tokio::test]
async fn tenant_vault_roles_the_runner_would_not_use_are_refused() {
    let bed = TestBed::connect().await;
    let tenant = |i: usize, sa: &str, role: Option<&str>| {
        let mut args = vec![
            "--set".to_owned(),
            format!("tenants[{i}].project=acme/p{i}"),
            "--set".to_owned(),
            format!("tenants[{i}].serviceAccount={sa}"),
            "--set".to_owned(),
            format!("tenants[{i}].vault.paths[0]=kv/data/p{i}/*"),
        ];
        if let Some(role) = role {
            args.extend([
                "--set".to_owned(),
                format!("tenants[{i}].vault.role={role}"),
            ]);
        }
        args
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            tenant(0, "deployer", Some("other")),
            "the runner logs in to Vault with the role named like the job's ServiceAccount, \"deployer\"",
        ),
        (
            [tenant(0, "deployer", None), tenant(1, "deployer", None)].concat(),
            "tenants[0] and tenants[1] both have vault settings for ServiceAccount \"deployer\"",
        ),
        (
            [
                vec!["--set".to_owned(), "vault.role=shared".to_owned()],
                tenant(0, "a", None),
                tenant(1, "b", None),
            ]
            .concat(),
            "gives every job the same Vault role, so each could read the other's paths",
        ),
    ];
    for (args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = helm_template(&bed, &args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} was accepted"));
        assert!(
            err.contains(expected),
            "{args:?}: {expected:?} not in: {err}"
        );
    }
    // Without vault.role the runner's config names no role: each job's is its ServiceAccount.
    let args = tenant(0, "deployer", None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rendered = helm_template(&bed, &args).unwrap();
    assert!(!rendered.contains("vault_role"), "{rendered}");
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

// === On the bed ===

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
async fn rbac_gives_the_runner_and_each_job_account_only_what_it_needs() {
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(&bed, "rbac", &[]).await.unwrap();
    let other = TestNamespace::create(&bed, "rbac-other", &[])
        .await
        .unwrap();
    let jobs_ns = format!("{}-jobs", ns.name);
    let _release =
        HelmRelease::install(&bed.env, RELEASE, &ns.name, &test_values(&jobs_ns, true)).unwrap();
    let c = &bed.client;
    let j = jobs_ns.as_str();
    let runner = (ns.name.as_str(), RUNNER_SA);

    wait_until_allowed(c, runner, Access::new("create", "pods", j))
        .await
        .unwrap();
    let runner_allowed = [
        Access::new("create", "pods", j),
        Access::new("get", "pods", j),
        Access::new("list", "pods", j),
        Access::new("watch", "pods", j),
        Access::new("delete", "pods", j),
        Access::new("get", "pods/log", j),
        Access::new("create", "secrets", j),
        // Its journal of running jobs, and only that Secret of its own namespace.
        Access::new("get", "secrets", &ns.name).named("kh-keyhole-journal"),
        Access::new("patch", "secrets", &ns.name).named("kh-keyhole-journal"),
    ];
    let runner_denied = [
        // The per-job Secret goes with its pod; deleting a tenant's would let the runner put
        // its own in its place.
        Access::new("delete", "secrets", j),
        Access::new("delete", "secrets", j).named("app-db"),
        Access::new("get", "secrets", j),
        Access::new("get", "secrets", j).named("app-db"),
        Access::new("list", "secrets", j),
        Access::new("watch", "secrets", j),
        Access::new("patch", "secrets", j),
        Access::new("update", "pods", j),
        Access::new("patch", "pods", j),
        Access::new("create", "pods/exec", j),
        Access::new("update", "pods/ephemeralcontainers", j),
        Access::new("create", "serviceaccounts/token", j),
        Access::new("create", "rolebindings", j),
        // The runner follows pods, not events.
        Access::new("list", "events", j),
        // Nothing outside the jobs namespace: not its own, not another, not cluster-wide.
        Access::new("create", "pods", &ns.name),
        Access::new("get", "secrets", &ns.name).named("kh-keyhole-token"),
        Access::new("patch", "secrets", &ns.name).named("kh-keyhole-token"),
        Access::new("get", "secrets", &ns.name),
        Access::new("list", "secrets", &ns.name),
        Access::new("update", "secrets", &ns.name).named("kh-keyhole-journal"),
        Access::new("delete", "secrets", &ns.name).named("kh-keyhole-journal"),
        Access::new("create", "pods", &other.name),
        Access::new("create", "secrets", &other.name),
        Access::new("list", "events", &other.name),
        Access::cluster_wide("list", "pods"),
        Access::cluster_wide("list", "secrets"),
        Access::cluster_wide("list", "namespaces"),
    ];
    for access in runner_allowed {
        assert!(
            service_account_may(c, runner, access).await.unwrap(),
            "the runner must be allowed to {access}"
        );
    }
    for access in runner_denied {
        assert!(
            !service_account_may(c, runner, access).await.unwrap(),
            "the runner must be denied {access}"
        );
    }

    // Tenants: get on exactly their named Secrets (two tenants share app-deployer: the union).
    let app = (j, "app-deployer");
    wait_until_allowed(c, app, Access::new("get", "secrets", j).named("app-db"))
        .await
        .unwrap();
    for secret in ["app-db", "app-registry", "legacy-db"] {
        assert!(
            service_account_may(c, app, Access::new("get", "secrets", j).named(secret))
                .await
                .unwrap(),
            "app-deployer must get {secret}"
        );
    }
    for access in [
        Access::new("get", "secrets", j).named("other-team-db"),
        Access::new("get", "secrets", j),
        Access::new("list", "secrets", j),
        Access::new("watch", "secrets", j),
        Access::new("update", "secrets", j).named("app-db"),
        Access::new("get", "secrets", &other.name).named("app-db"),
        Access::new("create", "pods", j),
    ] {
        assert!(
            !service_account_may(c, app, access).await.unwrap(),
            "app-deployer must be denied {access}"
        );
    }
    // A tenant without Secrets and the default job account may do nothing at all (an empty
    // resourceNames would have meant every Secret).
    for sa in ["tools", "keyhole-job"] {
        for access in [
            Access::new("get", "secrets", j).named("app-db"),
            Access::new("get", "secrets", j).named("tools-db"),
            Access::new("list", "secrets", j),
            Access::new("get", "pods", j),
            Access::new("create", "pods", j),
            Access::new("get", "configmaps", j),
        ] {
            assert!(
                !service_account_may(c, (j, sa), access).await.unwrap(),
                "{sa} must be denied {access}"
            );
        }
    }

    // The same with real tokens against real Secrets.
    let secrets: Api<Secret> = Api::namespaced(c.clone(), j);
    for name in ["app-db", "other-team-db"] {
        secrets
            .create(
                &PostParams::default(),
                &from_json(json!({"metadata": {"name": name}, "stringData": {"password": "not-real-123456"}})),
            )
            .await
            .unwrap();
    }
    let token = bed
        .service_account_token(j, "app-deployer", &[])
        .await
        .unwrap();
    let as_app: Api<Secret> = Api::namespaced(bed.client_with_token(&token).unwrap(), j);
    as_app
        .get("app-db")
        .await
        .expect("app-deployer gets app-db");
    let denied = as_app
        .get("other-team-db")
        .await
        .expect_err("not its Secret");
    assert!(
        matches!(denied, kube::Error::Api(ref s) if s.code == 403),
        "{denied:?}"
    );
    let token = bed
        .service_account_token(&ns.name, RUNNER_SA, &[])
        .await
        .unwrap();
    let as_runner: Api<Secret> = Api::namespaced(bed.client_with_token(&token).unwrap(), j);
    let denied = as_runner
        .get("app-db")
        .await
        .expect_err("the runner reads no Secret");
    assert!(
        matches!(denied, kube::Error::Api(ref s) if s.code == 403),
        "{denied:?}"
    );
    let denied = as_runner
        .list(&ListParams::default())
        .await
        .expect_err("the runner lists no Secret");
    assert!(
        matches!(denied, kube::Error::Api(ref s) if s.code == 403),
        "{denied:?}"
    );
}

/// The policy on its own: the jobs namespace here has no PodSecurity labels, so every refusal
/// comes from the policy (PodSecurity, when enforced, refuses hostPath and privileged pods
/// first; the policy still holds where those labels are missing or weakened).
#[tokio::test]
async fn admission_policy_refuses_what_runner_made_pods_must_not_do_and_admits_a_job_pod() {
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(&bed, "vap", &[]).await.unwrap();
    let jobs = TestNamespace::create(&bed, "vap-jobs", &[]).await.unwrap();
    let _release =
        HelmRelease::install(&bed.env, RELEASE, &ns.name, &test_values(&jobs.name, false)).unwrap();
    let admin: Api<Pod> = jobs.api();
    let runner = runner_client(&bed, &ns.name).await;
    let as_runner: Api<Pod> = Api::namespaced(runner.clone(), &jobs.name);
    let policy = format!("kh-keyhole-{}-job-pods", ns.name);

    // A Secret volume naming a foreign Secret: the first refusal shows the policy is effective.
    let name = "kh-4242-a1b2c3";
    let mut pod = job_pod(name, "app-deployer");
    pod["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "stolen", "secret": {"secretName": "app-db"}}));
    let refused = refusal_once_effective(&as_runner, &admin, &pod).await;
    assert!(refused.message.contains(&policy), "{refused:?}");
    assert!(
        refused.message.contains("stolen (Secret app-db)")
            && refused.message.contains("not named like the pod"),
        "{}",
        refused.message
    );
    assert_eq!(refused.code, 403);

    let variants: Vec<(&str, Value, &[&str])> = vec![
        (
            "projected source naming a foreign Secret",
            {
                let mut p = job_pod(name, "app-deployer");
                p["spec"]["volumes"][0]["projected"]["sources"][3]["secret"]["name"] =
                    json!("app-db");
                p
            },
            &[
                "keyhole-inputs (Secret app-db)",
                "may mount only its own per-job Secret kh-4242-a1b2c3",
            ],
        ),
        (
            "hostPath volume",
            {
                let mut p = job_pod(name, "app-deployer");
                p["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "host", "hostPath": {"path": "/etc"}}));
                p
            },
            &["hostPath volume(s) host (/etc)"],
        ),
        (
            "a tenant's volume claim",
            {
                let mut p = job_pod(name, "app-deployer");
                p["spec"]["volumes"].as_array_mut().unwrap().push(
                    json!({"name": "tenant-data", "persistentVolumeClaim": {"claimName": "app-data"}}),
                );
                p
            },
            &["volume(s) tenant-data are of a type job pods do not use"],
        ),
        (
            "a volume plugin handed a foreign Secret",
            {
                let mut p = job_pod(name, "app-deployer");
                p["spec"]["volumes"].as_array_mut().unwrap().push(json!({"name": "iscsi",
                    "iscsi": {"targetPortal": "10.213.0.1:3260", "iqn": "iqn.2001-04.com.example:x", "lun": 0,
                              "chapAuthSession": true, "secretRef": {"name": "app-db"}}}));
                p
            },
            &["volume(s) iscsi are of a type job pods do not use"],
        ),
        (
            "privileged sidecar",
            {
                let mut p = job_pod(name, "app-deployer");
                p["spec"]["initContainers"][0]["securityContext"] = json!({"privileged": true});
                p
            },
            &["container(s) keyhole-broker are privileged"],
        ),
        (
            "privileged build container",
            {
                let mut p = job_pod(name, "app-deployer");
                p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true);
                p["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] =
                    json!(true);
                p
            },
            &["container(s) build are privileged"],
        ),
        (
            "host network",
            {
                let mut p = job_pod(name, "app-deployer");
                p["spec"]["hostNetwork"] = json!(true);
                p
            },
            &["hostNetwork"],
        ),
        (
            "a ServiceAccount not on the list",
            { job_pod(name, "default") },
            &[
                "ServiceAccount default is not one job pods may run as",
                "app-deployer, keyhole-job, tools",
            ],
        ),
        (
            "a Secret in the environment",
            {
                let mut p = job_pod(name, "app-deployer");
                p["spec"]["containers"][0]["env"] = json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "app-db", "key": "password"}}}]);
                p
            },
            &["container(s) build take a Secret into their environment"],
        ),
        (
            "no job labels (the NetworkPolicy would not select it)",
            {
                let mut p = job_pod(name, "app-deployer");
                p["metadata"]["labels"] = json!({"app": "x"});
                p
            },
            &[
                "must carry the labels app.kubernetes.io/managed-by=keyhole-runner keyhole.dev/runner=keyhole",
            ],
        ),
        (
            "an image pull Secret not on the list",
            {
                let mut p = job_pod(name, "app-deployer");
                p["spec"]["imagePullSecrets"] = json!([{"name": "app-db"}]);
                p
            },
            &["imagePullSecrets app-db are not allowed"],
        ),
    ];
    for (what, pod, needles) in &variants {
        let message = refusal(&as_runner, &admin, pod, what).await;
        for needle in *needles {
            assert!(
                message.contains(needle),
                "{what}: {needle:?} not in: {message}"
            );
        }
    }

    // The proper job pod is admitted; then its Secret, owned by it, is too.
    let created = as_runner
        .create(
            &PostParams::default(),
            &from_json(job_pod(name, "app-deployer")),
        )
        .await
        .expect("a job pod of the runner's shape is admitted");
    let secrets: Api<Secret> = Api::namespaced(runner.clone(), &jobs.name);
    let unowned = secrets
        .create(&PostParams::default(), &job_secret(&created, false))
        .await
        .expect_err("a per-job Secret without its owner pod is refused");
    assert!(
        matches!(&unowned, kube::Error::Api(s) if s.message.contains("must be owned by its pod (ownerReference apiVersion v1, kind Pod")),
        "{unowned:?}"
    );
    secrets
        .create(&PostParams::default(), &job_secret(&created, true))
        .await
        .expect("the per-job Secret owned by its pod is admitted");
    // The default job account is allowed too.
    let default_sa = as_runner
        .create(
            &PostParams::default(),
            &from_json(job_pod("kh-4243-d4e5f6", "keyhole-job")),
        )
        .await;
    assert!(default_sa.is_ok(), "{default_sa:?}");
    as_runner
        .delete(name, &DeleteParams::default())
        .await
        .expect("the runner deletes its pods");

    // The pods the runner really builds, from the release's own config.toml: every sample job
    // (plain; Vault and k8s references, a service, masked and file variables; a repository to
    // check out, with GitLab `secrets:`), each with its per-job Secret owned by it.
    let config = config_text(
        &Api::<ConfigMap>::namespaced(bed.client.clone(), &ns.name)
            .get("kh-keyhole-config")
            .await
            .unwrap(),
    );
    let loaded = load_str(&config, "config.toml", &|_| None).unwrap();
    let runner_config = &loaded.config.runners[0];
    let vault_addr = runner_config.keyhole.vault_addr.clone().unwrap();
    let mut checked_out = false;
    for (what, job) in sample_jobs(&vault_addr) {
        let prepared = prepare(&job, runner_config, None)
            .unwrap_or_else(|e| panic!("sample job {what}: {e:?}"));
        let pod = prepared.objects.pod;
        let pod_name = pod.metadata.name.clone().unwrap();
        let init: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .map(|c| c.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        checked_out |= init.iter().any(|c| c == CHECKOUT_CONTAINER);
        let created = as_runner
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| {
                panic!("sample job {what}: the pod the runner builds is refused: {e}")
            });
        let mut secret = prepared.objects.secret;
        secret.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod_name.clone(),
            uid: created.metadata.uid.clone().unwrap(),
            ..OwnerReference::default()
        }]);
        let created_secret = secrets.create(&PostParams::default(), &secret).await;
        admin
            .delete(&pod_name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        created_secret.unwrap_or_else(|e| {
            panic!("sample job {what}: the per-job Secret the runner makes is refused: {e}")
        });
    }
    assert!(
        checked_out,
        "a sample job has a repository, so its pod has the {CHECKOUT_CONTAINER} init container"
    );

    // The policy binds the runner alone: the administrator may still create such a pod here.
    let mut foreign = job_pod("admin-made", "default");
    foreign["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "stolen", "secret": {"secretName": "app-db"}}));
    assert!(matches!(
        try_create(&admin, &admin, &foreign).await,
        Outcome::Admitted
    ));
}

#[tokio::test]
async fn network_policy_selects_runner_made_job_pods_and_allows_only_the_listed_egress() {
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(&bed, "netpol", &[]).await.unwrap();
    let jobs_ns = format!("{}-jobs", ns.name);
    let _release =
        HelmRelease::install(&bed.env, RELEASE, &ns.name, &test_values(&jobs_ns, true)).unwrap();
    let admin: Api<Pod> = Api::namespaced(bed.client.clone(), &jobs_ns);
    let as_runner: Api<Pod> = Api::namespaced(runner_client(&bed, &ns.name).await, &jobs_ns);

    // The job pod passes PodSecurity restricted and the policy, created as the runner.
    let name = "kh-77-zz9y8x";
    let deadline = tokio::time::Instant::now() + POLICY_DEADLINE;
    let job = loop {
        match as_runner
            .create(&PostParams::default(), &from_json(job_pod(name, "tools")))
            .await
        {
            Ok(pod) => break pod,
            // The runner's RoleBinding reaches the authorizer a moment after install.
            Err(kube::Error::Api(s)) if s.message.contains("cannot create resource") => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "RBAC never allowed the runner: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(other) => panic!("the job pod must be admitted: {other:?}"),
        }
    };
    // PodSecurity restricted is enforced in the chart's jobs namespace.
    let mut privileged = job_pod("admin-privileged", "tools");
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    match try_create(&admin, &admin, &privileged).await {
        Outcome::Refused(s) => assert!(s.message.contains("violates PodSecurity"), "{s:?}"),
        Outcome::Admitted => panic!("PodSecurity restricted must refuse a privileged pod"),
    }
    let plain: Pod = from_json(json!({
        "metadata": {"name": "not-a-job", "labels": {"app.kubernetes.io/managed-by": "someone-else"}},
        "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sleep", "5"],
                "securityContext": restricted()}]}
    }));
    admin.create(&PostParams::default(), &plain).await.unwrap();

    let policy = Api::<NetworkPolicy>::namespaced(bed.client.clone(), &jobs_ns)
        .get("kh-keyhole-jobs")
        .await
        .unwrap();
    let spec = policy.spec.unwrap();
    let selector: Vec<String> = spec
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let selected: Vec<String> = admin
        .list(&ListParams::default().labels(&selector.join(",")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(
        selected,
        [job.metadata.name.clone().unwrap()],
        "selector {selector:?}"
    );

    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
    );
    assert!(
        spec.ingress.is_none_or(|i| i.is_empty()),
        "no ingress at all"
    );
    // Egress: (peer, ports) per rule, compared as text.
    let rules: Vec<(Vec<String>, Vec<String>)> = spec
        .egress
        .unwrap()
        .into_iter()
        .map(|r| {
            let peers =
                r.to.unwrap_or_default()
                    .into_iter()
                    .map(|p| match (p.ip_block, p.pod_selector) {
                        (Some(b), _) => b.cidr,
                        (None, Some(s)) => format!("pods {:?}", s.match_labels.unwrap_or_default()),
                        _ => "?".to_owned(),
                    })
                    .collect();
            let ports = r
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p.protocol.unwrap_or_default(),
                        serde_json::to_string(&p.port).unwrap()
                    )
                })
                .collect();
            (peers, ports)
        })
        .collect();
    let dns_pods = format!(
        "pods {:?}",
        BTreeMap::from([("k8s-app".to_owned(), "kube-dns".to_owned())])
    );
    assert_eq!(
        rules,
        vec![
            (
                vec![dns_pods, "10.213.0.53/32".to_owned()],
                vec!["UDP/53".to_owned(), "TCP/53".to_owned()]
            ),
            (vec!["10.213.0.1/32".to_owned()], vec!["TCP/443".to_owned()]),
            (
                vec!["10.213.0.1/32".to_owned()],
                vec!["TCP/8200".to_owned()]
            ),
            (
                vec!["10.213.0.1/32".to_owned()],
                vec!["TCP/6443".to_owned()]
            ),
        ]
    );
}

/// Removes a Vault role and policy when dropped.
struct VaultRole {
    env: keyhole_tests::BedEnv,
    role: String,
}

impl Drop for VaultRole {
    fn drop(&mut self) {
        let _ = bed_script(
            &self.env,
            &format!(
                "vault delete auth/kubernetes/role/{0}; vault policy delete {0}",
                self.role
            ),
        )
        .output();
    }
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
    let _cleanup = VaultRole {
        env: bed.env.clone(),
        role: role.clone(),
    };
    let notes = release.notes().unwrap();
    let block = notes
        .split_once("# --- keyhole: vault setup ---")
        .and_then(|(_, rest)| rest.split_once("# --- keyhole: end ---"))
        .map(|(block, _)| block)
        .unwrap_or_else(|| panic!("no Vault block in NOTES:\n{notes}"));
    assert!(block.contains("audience=vault"), "{block}");
    assert!(
        block.contains(&format!("bound_service_account_namespaces={jobs_ns}")),
        "{block}"
    );
    run_ok(&mut bed_script(&bed.env, block)).unwrap();

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

/// `cache:` in the chart's values becomes the runner's `[runners.cache]`, its key pair comes
/// from the Secret named in `cache.secretName` (never from the values), and job pods may reach
/// the store when its addresses are given.
#[tokio::test]
async fn the_charts_cache_store_reaches_the_runner_with_its_keys_from_a_secret() {
    let bed = TestBed::connect().await;
    let rendered = helm_template(
        &bed,
        &[
            "--set",
            "cache.s3.serverAddress=10.213.0.1:9000",
            "--set",
            "cache.s3.bucketName=keyhole-cache",
            "--set",
            "cache.s3.insecure=true",
            "--set",
            "cache.path=ci",
            "--set",
            "cache.secretName=cache-keys",
            "--set",
            "networkPolicy.cache.cidrs={10.213.0.1/32}",
            "--set",
            "networkPolicy.cache.ports={9000}",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let docs = documents(&rendered);
    let text = only(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap();
    let env = |name: &str| match name {
        "CACHE_S3_ACCESS_KEY" => Some("AKIDFROMSECRET".to_owned()),
        "CACHE_S3_SECRET_KEY" => Some("secret-from-secret".to_owned()),
        _ => None,
    };
    let loaded = load_str(text, "config.toml", &env).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let cache = loaded.config.runners[0]
        .cache
        .clone()
        .expect("a cache store");
    assert_eq!(cache.path, "ci");
    assert_eq!(cache.s3.server_address, "10.213.0.1:9000");
    assert!(cache.s3.insecure);
    assert!(cache.s3.access_key.is_some() && cache.s3.secret_key.is_some());
    assert!(!text.contains("secret-from-secret") && !text.contains("SecretKey"));
    // Without the Secret's keys the runner refuses to start, naming what is missing.
    let err = load_str(text, "config.toml", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache.s3.AccessKey"), "{err}");

    let container = &only(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    for (name, key) in [
        ("CACHE_S3_ACCESS_KEY", "accesskey"),
        ("CACHE_S3_SECRET_KEY", "secretkey"),
    ] {
        let var = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {container}"));
        assert_eq!(
            var["valueFrom"]["secretKeyRef"],
            json!({"name": "cache-keys", "key": key})
        );
    }
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy")
        .expect("the jobs' NetworkPolicy");
    let egress = serde_json::to_string(&policy["spec"]["egress"]).unwrap();
    assert!(
        egress.contains("10.213.0.1/32") && egress.contains("9000"),
        "{egress}"
    );
}

/// What Argo CD and CI linters run: `helm template` and `helm lint` offline, without
/// `--kube-version` or any value.
#[tokio::test]
async fn helm_template_and_lint_work_without_flags() {
    let bed = TestBed::connect().await;
    let chart = keyhole_tests::chart_dir().display().to_string();
    for args in [
        vec!["template", "keyhole", chart.as_str()],
        vec!["lint", chart.as_str()],
    ] {
        let out =
            keyhole_tests::run(keyhole_tests::bed_command(&bed.env, "helm").args(&args)).unwrap();
        assert!(
            out.status.success(),
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
