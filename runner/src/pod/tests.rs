use super::samples::{SAMPLE_SECRET_VALUES, sample_jobs, sample_runner};
use super::*;
use crate::job::Variable;
use crate::secrets::collect;

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
    for c in &spec.containers {
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        assert!(
            mounts
                .iter()
                .all(|m| m.name != keyhole_broker::contract::INPUTS_VOLUME),
            "{}",
            c.name
        );
        if let Some(m) = mounts
            .iter()
            .find(|m| m.name == keyhole_broker::contract::SECRETS_VOLUME)
        {
            assert_eq!(m.read_only, Some(true), "{}", c.name);
        }
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    }
    let broker = &spec.init_containers.unwrap()[0];
    assert_eq!(broker.restart_policy.as_deref(), Some("Always"));
}

#[test]
fn resource_overrides_are_capped_and_refused_above_the_cap() {
    let (_, mut job) = sample_jobs(VAULT).remove(1);
    let pod = render("x", &job).pod;
    let build = &pod.spec.unwrap().containers[0];
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
    })
    .unwrap_err();
    assert!(err.0.contains("above the runner's maximum 1Gi"), "{err}");
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
    for id in [0, 1, 4242, u64::MAX] {
        for _ in 0..100 {
            let n = pod_name(id, &random_suffix());
            assert!(pattern.is_match(&n), "{n}");
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
    })
    .unwrap()
    .pod;
    let spec = serde_json::to_value(pod.spec.unwrap()).unwrap();
    let inputs = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == keyhole_broker::contract::INPUTS_VOLUME)
        .unwrap();
    assert!(
        inputs["projected"]["sources"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"configMap": {"name": "vault-ca", "items": [{"key": "ca.crt", "path": "vault-ca.crt"}]}})),
        "{inputs}"
    );
    let broker = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == keyhole_broker::contract::BROKER_CONTAINER)
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
    assert_eq!(env["KEYHOLE_VAULT_CA_FILE"], "/keyhole/inputs/vault-ca.crt");
    assert_eq!(
        env["KEYHOLE_VAULT_ALLOWED"],
        format!("{VAULT},https://vault.example.com:8200")
    );
    // No other container mounts the inputs (and with them the CA bundle).
    for c in spec["containers"].as_array().unwrap() {
        assert!(
            !c["volumeMounts"]
                .to_string()
                .contains(keyhole_broker::contract::INPUTS_VOLUME),
            "{c}"
        );
    }
}
