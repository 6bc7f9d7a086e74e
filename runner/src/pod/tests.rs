use super::samples::{SAMPLE_SECRET_VALUES, sample_jobs, sample_runner};
use super::*;
use crate::job::Variable;
use crate::secrets::collect;
use keyhole_contract as contract;
use serde_json::json;

const VAULT: &str = "http://10.213.0.1:8200";

fn render(name: &str, job: &crate::job::Job) -> JobObjects {
    let runner = sample_runner("jobs", VAULT, "keyhole.local/broker:dev");
    let secrets = collect(job, &runner.keyhole, "keyhole-job").unwrap();
    build_job_objects(&PodRequest {
        job,
        runner: &runner,
        pod_name: pod_name(job.id, name.replace('_', "").get(..6).unwrap_or("abcdef")),
        service_account: "keyhole-job".into(),
        secrets: &secrets,
        log_end_token: "0123456789abcdef0123456789abcdef".to_string().into(),
        pull_auth: None,
        instance: None,
        caches: Vec::new(),
    })
    .unwrap()
}

/// The objects of `job` on `runner`, as pod `kh-<id>-abcdef` of ServiceAccount `keyhole-job`.
/// A fresh log-end token as text.
fn log_end_token_text() -> String {
    secrecy::ExposeSecret::expose_secret(&log_end_token()).to_owned()
}

fn objects_for(
    job: &crate::job::Job,
    runner: &crate::config::RunnerConfig,
    pull_auth: Option<&crate::registry_auth::PullAuth>,
    log_end: &str,
) -> JobObjects {
    let secrets = collect(job, &runner.keyhole, "keyhole-job").unwrap();
    build_job_objects(&PodRequest {
        job,
        runner,
        pod_name: pod_name(job.id, "abcdef"),
        service_account: "keyhole-job".into(),
        secrets: &secrets,
        log_end_token: log_end.to_string().into(),
        pull_auth,
        instance: None,
        caches: Vec::new(),
    })
    .unwrap()
}

#[test]
fn sample_pods_match_their_snapshots() {
    for (name, job) in sample_jobs(VAULT) {
        let objects = render(name, &job);
        insta::assert_yaml_snapshot!(format!("{name}_pod"), objects.pod);
        // The Secret's values are the secrets themselves: snapshot only its keys.
        let keys: Vec<&String> = objects.secret.data.as_ref().unwrap().keys().collect();
        insta::assert_yaml_snapshot!(format!("{name}_secret_keys"), keys);
    }
}

#[test]
fn no_secret_value_reaches_the_pod_spec() {
    for (name, job) in sample_jobs(VAULT) {
        let objects = render(name, &job);
        let pod = serde_json::to_string(&objects.pod).unwrap();
        for value in SAMPLE_SECRET_VALUES {
            assert!(!pod.contains(value), "{name}: {value} in the pod spec");
        }
        let debug = format!("{job:?}");
        for value in SAMPLE_SECRET_VALUES {
            assert!(
                !debug.contains(value),
                "{name}: {value} in Debug of the job"
            );
        }
    }
}

#[test]
fn only_the_broker_mounts_its_inputs_and_the_build_container_reads_secrets_read_only() {
    let (_, job) = sample_jobs(VAULT).remove(1);
    let pod = render("x", &job).pod;
    let spec = pod.spec.unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    for c in spec
        .containers
        .iter()
        .filter(|c| c.name != keyhole_contract::BROKER_CONTAINER)
    {
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        assert!(
            mounts
                .iter()
                .all(|m| m.name != keyhole_contract::INPUTS_VOLUME),
            "{}",
            c.name
        );
        if let Some(m) = mounts
            .iter()
            .find(|m| m.name == keyhole_contract::SECRETS_VOLUME)
        {
            assert_eq!(m.read_only, Some(true), "{}", c.name);
        }
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    }
    // Regular containers only, the broker first: the kubelet starts them in order in one
    // sync, each after the one before's postStart hook returned.
    assert_eq!(spec.init_containers, None);
    let broker = &spec.containers[0];
    assert_eq!(broker.name, keyhole_contract::BROKER_CONTAINER);
    assert_eq!(broker.restart_policy, None);
    assert!(
        broker
            .lifecycle
            .as_ref()
            .is_some_and(|l| l.post_start.is_some())
    );
}

#[test]
fn resource_overrides_are_capped_and_refused_above_the_cap() {
    let (_, mut job) = sample_jobs(VAULT).remove(1);
    let pod = render("x", &job).pod;
    let spec = pod.spec.unwrap();
    let build = spec.containers.iter().find(|c| c.name == "build").unwrap();
    let limits = build.resources.clone().unwrap().limits.unwrap();
    assert_eq!(limits["memory"].0, "512Mi");
    job.variables
        .push(Variable::public("KUBERNETES_MEMORY_LIMIT", "8Gi"));
    let runner = sample_runner("jobs", VAULT, "b");
    let secrets = collect(&job, &runner.keyhole, "sa").unwrap();
    let err = build_job_objects(&PodRequest {
        job: &job,
        runner: &runner,
        pod_name: "p".into(),
        service_account: "sa".into(),
        secrets: &secrets,
        log_end_token: log_end_token(),
        pull_auth: None,
        instance: None,
        caches: Vec::new(),
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("above the runner's maximum 1Gi"),
        "{err}"
    );
}

#[test]
fn images_off_the_allow_list_are_refused() {
    assert!(image_allowed("alpine:3.20", &["alpine:*".into()]));
    assert!(!image_allowed("evil/alpine:3.20", &["alpine:*".into()]));
    assert!(image_allowed(
        "registry.local/team/x:1",
        &["registry.local/**".into()]
    ));
    assert!(!image_allowed(
        "registry.local/team/x:1",
        &["registry.local/*".into()]
    ));
}

#[test]
fn pod_names_match_the_pattern_the_admission_policies_reserve() {
    let pattern = regex::Regex::new(POD_NAME_PATTERN).unwrap();
    let pull_pattern = regex::Regex::new(PULL_SECRET_NAME_PATTERN).unwrap();
    for id in [0, 1, 4242, u64::MAX] {
        for _ in 0..100 {
            let n = pod_name(id, &random_suffix());
            assert!(pattern.is_match(&n), "{n}");
            let pull = pull_secret_name(&n);
            assert!(
                pull_pattern.is_match(&pull) && !pattern.is_match(&pull),
                "{pull}"
            );
            assert!(!pull_pattern.is_match(&n), "{n}");
        }
    }
    // The pattern is anchored: a tenant's Secret name containing a job pod's name is not one.
    for other in [
        "app-db",
        "kh-1-abcdef-x",
        "x-kh-1-abcdef",
        "kh-1-ABCDEF",
        "kh--abcdef",
    ] {
        assert!(!pattern.is_match(other), "{other}");
    }
}

#[test]
fn pod_names_are_valid_dns_labels() {
    for _ in 0..100 {
        let n = pod_name(u64::MAX, &random_suffix());
        assert!(
            n.len() <= 63
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{n}"
        );
    }
}

#[test]
fn job_debug_names_gitlab_secrets_without_their_content() {
    let (_, mut job) = sample_jobs(VAULT).remove(2);
    job.gitlab_secrets = Some(
        serde_json::json!({"X": {"gitlab_secrets_manager": {"inline_auth": {"jwt": "eyJsecret.jwt.value"}}}}),
    );
    let debug = format!("{job:?}");
    assert!(debug.contains("\"X\""), "{debug}");
    assert!(!debug.contains("eyJsecret.jwt.value"), "{debug}");
}

#[test]
fn a_vault_ca_config_map_reaches_the_brokers_inputs_only_with_the_allow_list() {
    let (_, job) = sample_jobs(VAULT).remove(1);
    let mut runner = sample_runner("jobs", VAULT, "keyhole.local/broker:dev");
    runner.keyhole.vault_ca_config_map = Some("vault-ca".into());
    runner.keyhole.vault_allowed = vec!["https://vault.example.com:8200".into()];
    let secrets = collect(&job, &runner.keyhole, "keyhole-job").unwrap();
    let pod = build_job_objects(&PodRequest {
        job: &job,
        runner: &runner,
        pod_name: pod_name(job.id, "abcdef"),
        service_account: "keyhole-job".into(),
        secrets: &secrets,
        log_end_token: "0123456789abcdef0123456789abcdef".to_string().into(),
        pull_auth: None,
        instance: None,
        caches: Vec::new(),
    })
    .unwrap()
    .pod;
    let spec = serde_json::to_value(pod.spec.unwrap()).unwrap();
    let inputs = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == keyhole_contract::INPUTS_VOLUME)
        .unwrap();
    assert!(
        inputs["projected"]["sources"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"configMap": {"name": "vault-ca", "items": [{"key": "ca.crt", "path": "vault-ca.crt"}]}})),
        "{inputs}"
    );
    let broker = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == keyhole_contract::BROKER_CONTAINER)
        .unwrap();
    let env: std::collections::BTreeMap<&str, &str> = broker["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        env[contract::env::VAULT_CA_FILE],
        "/keyhole/inputs/vault-ca.crt"
    );
    assert_eq!(
        env[contract::env::VAULT_ALLOWED],
        format!("{VAULT},https://vault.example.com:8200")
    );
    // No other container mounts the inputs (and with them the CA bundle).
    for c in spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] != keyhole_contract::BROKER_CONTAINER)
    {
        assert!(
            !c["volumeMounts"]
                .to_string()
                .contains(keyhole_contract::INPUTS_VOLUME),
            "{c}"
        );
    }
}

/// A job with registry logins gets its own `kubernetes.io/dockerconfigjson` Secret, named after
/// the pod, listed in `imagePullSecrets` after the runner's static ones; no container or
/// volume of the pod refers to it, so only the kubelet reads it.
#[test]
fn registry_logins_become_the_pods_own_pull_secret_and_nothing_mounts_it() {
    let job = sample_jobs(VAULT).remove(0).1;
    let mut runner = sample_runner("jobs", VAULT, "keyhole.local/broker:dev");
    runner.kubernetes.image_pull_secrets = vec!["static-pull".into()];
    let creds = [crate::job::RegistryCredential {
        registry: "registry.example.com".into(),
        username: "gitlab-ci-token".into(),
        password: "glcbt-pull-secret-value".to_string().into(),
    }];
    let auth = crate::registry_auth::resolve(None, None, &creds)
        .unwrap()
        .unwrap();
    let name = pod_name(job.id, "abcdef");
    let objects = objects_for(&job, &runner, Some(&auth), &log_end_token_text());
    let pull = objects.pull_secret.expect("a pull Secret");
    assert_eq!(
        pull.metadata.name.as_deref(),
        Some(format!("{name}-registry").as_str())
    );
    assert_eq!(
        pull.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    assert_eq!(pull.immutable, Some(true));
    assert_eq!(pull.metadata.labels, objects.secret.metadata.labels);
    let data = &pull.data.unwrap()[".dockerconfigjson"].0;
    let config: serde_json::Value = serde_json::from_slice(data).unwrap();
    assert!(config["auths"]["registry.example.com"]["auth"].is_string());
    let spec = objects.pod.spec.unwrap();
    let listed: Vec<String> = spec
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        listed,
        ["static-pull".to_string(), format!("{name}-registry")]
    );
    let mut spec_json = serde_json::to_value(&spec.containers).unwrap().to_string();
    spec_json += &serde_json::to_value(&spec.volumes).unwrap().to_string();
    assert!(!spec_json.contains("-registry"), "{spec_json}");
    assert!(!spec_json.contains("glcbt-pull-secret-value"));
}

/// `Debug` of a job's objects (in `Prepared`, which callers may log) names them and shows no
/// value of either Secret.
#[test]
fn debug_of_the_job_objects_shows_no_secret_value() {
    let job = sample_jobs(VAULT).remove(0).1;
    let runner = sample_runner("jobs", VAULT, "keyhole.local/broker:dev");
    let creds = [crate::job::RegistryCredential {
        registry: "registry.example.com".into(),
        username: "u".into(),
        password: "glcbt-debug-pull-password".to_string().into(),
    }];
    let auth = crate::registry_auth::resolve(None, None, &creds)
        .unwrap()
        .unwrap();
    let objects = objects_for(
        &job,
        &runner,
        Some(&auth),
        "log-end-token-debug-0123456789ab",
    );
    let shown = format!("{objects:?}");
    assert!(shown.contains(&pod_name(job.id, "abcdef")), "{shown}");
    for value in [
        "log-end-token-debug",
        "Z2xjYnQtZGVidWc",
        "dTpnbGNidC1kZWJ1Zy1wdWxsLXBhc3N3b3Jk",
    ] {
        assert!(!shown.contains(value), "{value} in {shown}");
    }
    for data in [
        &objects.secret.data,
        &objects.pull_secret.as_ref().unwrap().data,
    ] {
        for bytes in data.as_ref().unwrap().values() {
            // Readable, or as the list of numbers a derived `Debug` of `ByteString` prints.
            let text = String::from_utf8_lossy(&bytes.0);
            let numbers = format!("{:?}", bytes.0);
            assert!(
                text.len() < 8 || !shown.contains(text.as_ref()),
                "a value in {shown}"
            );
            assert!(
                !shown.contains(numbers.trim_matches(['[', ']'])),
                "a value in {shown}"
            );
        }
    }
}

/// `user_namespace_root = "always"`: the pod gets its own user namespace, the build container
/// and the checkout run as uid 0 in it (the broker stays non-root and makes its files readable
/// through the pod's fsGroup), and nothing gains a capability.
#[test]
fn root_in_a_user_namespace_runs_the_build_and_checkout_as_uid_0_without_capabilities() {
    let job = sample_jobs(VAULT)
        .into_iter()
        .find(|(_, j)| j.token.is_some() && j.git.repo_url.is_some())
        .map(|(_, j)| j)
        .expect("a sample job with a checkout");
    let mut runner = sample_runner("jobs", VAULT, "keyhole.local/broker:dev");
    runner.keyhole.user_namespace_root = crate::config::UserNamespaceRoot::Always;
    let objects = objects_for(&job, &runner, None, &log_end_token_text());
    let pod = serde_json::to_value(&objects.pod).unwrap();
    let spec = &pod["spec"];
    assert_eq!(spec["hostUsers"], false);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let container = |name: &str| {
        spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}"))
            .clone()
    };
    for name in ["build", crate::pod::CHECKOUT_CONTAINER] {
        let sc = &container(name)["securityContext"];
        assert_eq!(
            (&sc["runAsUser"], &sc["runAsNonRoot"]),
            (&json!(0), &json!(false)),
            "{name}"
        );
        assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}), "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
    }
    let broker = container("keyhole-broker");
    assert_ne!(broker["securityContext"]["runAsUser"], 0);
    assert!(
        broker["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == contract::env::FILE_GID),
        "{broker}"
    );
    // Off (the default): no user namespace.
    let objects = render("default", &job);
    assert!(objects.pod.spec.unwrap().host_users.is_none());
}

/// A GitLab job with a dependency to download and an archive and a report to upload.
fn job_with_transfers() -> crate::job::Job {
    use keyhole_contract::transfer::{ArtifactUpload, Dependency, Format, When};
    let mut job = sample_jobs(VAULT).remove(0).1;
    job.token = Some("glcbt-job-token-for-transfers".to_string().into());
    job.transfers.dependencies = vec![Dependency {
        id: 41,
        name: "build".into(),
        filename: "artifacts.zip".into(),
        size: 10,
        token: "glcbt-job-token-for-transfers".to_string().into(),
    }];
    job.transfers.artifacts = vec![ArtifactUpload {
        name: "artifacts".into(),
        paths: vec!["dist/".into()],
        exclude: vec![],
        untracked: false,
        when: When::Always,
        artifact_type: "archive".into(),
        format: Format::Zip,
        expire_in: String::new(),
    }];
    job
}

#[test]
fn transfer_containers_get_their_plan_and_the_project_but_nothing_of_the_brokers() {
    use keyhole_contract::transfer::{FETCH_CONTAINER, PLAN_SECRET_KEY, STORE_CONTAINER};
    let job = job_with_transfers();
    let runner = sample_runner("jobs", VAULT, "keyhole.local/broker:dev");
    let objects = objects_for(&job, &runner, None, &log_end_token_text());
    let pod = serde_json::to_value(&objects.pod).unwrap();
    let spec = &pod["spec"];

    let plan = &objects.secret.data.as_ref().unwrap()[PLAN_SECRET_KEY];
    let plan: keyhole_contract::transfer::Plan = serde_json::from_slice(&plan.0).unwrap();
    assert_eq!((plan.job_id, plan.dependencies[0].id), (job.id, 41));
    assert_eq!(plan.artifacts[0].paths, ["dist/"]);

    // The broker's inputs do not carry the plan: it is the transfer containers' alone.
    let inputs = serde_json::to_string(&spec["volumes"][0]).unwrap();
    assert!(!inputs.contains(PLAN_SECRET_KEY), "{inputs}");

    let containers = spec["containers"].as_array().unwrap();
    let order: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            contract::BROKER_CONTAINER,
            FETCH_CONTAINER,
            contract::BUILD_CONTAINER,
            STORE_CONTAINER
        ],
        "the kubelet starts them in this order"
    );
    let waits_for =
        |steps: &str| json!({"name": contract::env::WAIT_FOR_STEPS, "value": steps}).to_string();
    let env_of = |spec: &serde_json::Value, name: &str| {
        let containers = spec["containers"].as_array().unwrap();
        containers.iter().find(|c| c["name"] == name).unwrap()["env"].to_string()
    };
    assert!(!env_of(spec, FETCH_CONTAINER).contains(contract::env::WAIT_FOR_STEPS));
    assert!(env_of(spec, contract::BROKER_CONTAINER).contains(&waits_for("keyhole-fetch")));
    // With a checkout: the download extracts into it, so it waits for it; the broker opens
    // the script's gate once both are done.
    let mut with_checkout = job.clone();
    with_checkout.git = sample_jobs(VAULT).remove(2).1.git;
    let objects = objects_for(&with_checkout, &runner, None, &log_end_token_text());
    let pod = serde_json::to_value(&objects.pod).unwrap();
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[..3],
        [
            contract::BROKER_CONTAINER,
            crate::pod::CHECKOUT_CONTAINER,
            FETCH_CONTAINER
        ]
    );
    assert!(env_of(&pod["spec"], FETCH_CONTAINER).contains(&waits_for("keyhole-checkout")));
    assert!(
        env_of(&pod["spec"], contract::BROKER_CONTAINER)
            .contains(&waits_for("keyhole-checkout,keyhole-fetch"))
    );
    assert!(containers.iter().any(|c| c["name"] == STORE_CONTAINER));
    let build = containers
        .iter()
        .find(|c| c["name"] == contract::BUILD_CONTAINER)
        .unwrap();
    for transfer in containers
        .iter()
        .filter(|c| c["name"] == FETCH_CONTAINER || c["name"] == STORE_CONTAINER)
    {
        let mounts: Vec<&str> = transfer["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        for forbidden in [contract::SECRETS_VOLUME, contract::INPUTS_VOLUME] {
            assert!(!mounts.contains(&forbidden), "{mounts:?}");
        }
        assert_eq!(transfer["args"][0], "transfer");
        // The job's own user: the job owns what is extracted and can be read back.
        assert_eq!(
            transfer["securityContext"]["runAsNonRoot"],
            build["securityContext"]["runAsNonRoot"]
        );
        assert_eq!(transfer["securityContext"]["readOnlyRootFilesystem"], true);
    }
    // The build container does not mount the plan.
    let build_mounts = serde_json::to_string(&build["volumeMounts"]).unwrap();
    assert!(!build_mounts.contains("transfer-plan"), "{build_mounts}");
    // The script hands its exit code to the store container instead of ending the log,
    // unless the job was canceled (nothing is uploaded then, and the broker needs the word).
    let script = serde_json::to_string(&build["command"]).unwrap()
        + &serde_json::to_string(&build["args"]).unwrap();
    assert!(script.contains("script-status"), "{script}");
    let canceled_branch = script.split("else").nth(1).unwrap_or_default();
    assert!(
        script.matches("/keyhole/run/done").count() == 1
            && canceled_branch.contains("/keyhole/run/done"),
        "{script}"
    );
}

#[test]
fn a_job_without_transfers_has_no_transfer_containers_and_ends_its_own_log() {
    let job = sample_jobs(VAULT).remove(0).1;
    let runner = sample_runner("jobs", VAULT, "keyhole.local/broker:dev");
    let objects = objects_for(&job, &runner, None, &log_end_token_text());
    let pod = serde_json::to_string(&objects.pod).unwrap();
    assert!(!pod.contains("keyhole-fetch") && !pod.contains("keyhole-store"));
    assert!(pod.contains("/keyhole/run/done"));
    assert!(
        !objects
            .secret
            .data
            .as_ref()
            .unwrap()
            .contains_key(keyhole_contract::transfer::PLAN_SECRET_KEY)
    );
}

/// The runner's scheduling settings reach the pod as Kubernetes spells them; unset ones are
/// left out rather than given empty.
#[test]
fn the_runners_scheduling_settings_reach_the_pod_spec() {
    let job = sample_jobs(VAULT).remove(0).1;
    let mut runner = sample_runner("jobs", VAULT, "keyhole.local/broker:dev");
    let spec = objects_for(&job, &runner, None, &log_end_token_text())
        .pod
        .spec
        .unwrap();
    assert_eq!(
        (&spec.tolerations, &spec.node_selector, &spec.dns_policy),
        (&None, &None, &None)
    );
    let k = &mut runner.kubernetes;
    k.node_tolerations = [
        ("dedicated=ci".to_string(), "NoSchedule".to_string()),
        ("spot".to_string(), "NoExecute".to_string()),
    ]
    .into();
    k.node_selector = [("pool".to_string(), "ci".to_string())].into();
    k.priority_class_name = Some("ci-low".into());
    k.dns_policy = Some("ClusterFirst".into());
    let spec = objects_for(&job, &runner, None, &log_end_token_text())
        .pod
        .spec
        .unwrap();
    assert_eq!(
        serde_json::to_value(&spec.tolerations).unwrap(),
        json!([
            {"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"},
            {"key": "spot", "operator": "Exists", "effect": "NoExecute"}
        ])
    );
    assert_eq!(spec.node_selector, Some(runner.kubernetes.node_selector));
    assert_eq!(spec.priority_class_name.as_deref(), Some("ci-low"));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
}

/// The Vault-audience ServiceAccount token is a credential: the broker gets one only when it
/// logs in to Vault with Kubernetes auth. A job without secrets, or whose Vault login is
/// GitLab's JWT (`secrets:` with an ID token), has none in its inputs, and the kubelet asks
/// the apiserver for no token for its pod.
#[test]
fn only_a_job_that_logs_in_to_vault_with_kubernetes_auth_gets_a_vault_token() {
    let mut logins = Vec::new();
    for (name, job) in sample_jobs(VAULT) {
        let runner = sample_runner("jobs", VAULT, "keyhole.local/broker:dev");
        let secrets = collect(&job, &runner.keyhole, "keyhole-job").unwrap();
        let kubernetes_login = matches!(
            secrets.vault.as_ref().map(|v| &v.method),
            Some(crate::secrets::VaultMethod::Kubernetes)
        );
        let spec = serde_json::to_value(render(name, &job).pod.spec.unwrap()).unwrap();
        let vault_tokens: Vec<&serde_json::Value> = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["projected"]["sources"].as_array())
            .flatten()
            .filter(|s| s["serviceAccountToken"]["audience"] == runner.keyhole.vault_audience)
            .collect();
        let expected = usize::from(kubernetes_login);
        assert_eq!(vault_tokens.len(), expected, "{name}: {vault_tokens:?}");
        logins.push(kubernetes_login);
    }
    // The samples cover both sides.
    assert!(
        logins.contains(&true) && logins.contains(&false),
        "{logins:?}"
    );
}
