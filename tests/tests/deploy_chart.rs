//! The Helm chart (`deploy/helm/keyhole`) as `helm lint` and `helm template` see it, nothing
//! installed: lint and strict lint, the values schema and the templates' refusals, the images,
//! the rendered runner config the runner loads without ignoring a key, the runner's Role, the
//! tenant Vault roles, the cache store's settings. Needs `scripts/testbed up` (its helm).

use std::collections::BTreeSet;

use keyhole_runner::config::load_str;
use keyhole_runner::verify::{NEEDED, UNWANTED};
use keyhole_tests::chart::{helm_template, test_values};
use keyhole_tests::{TestBed, bed_command, chart_dir, run_ok};
use serde_json::{Value, json};

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
