//! What an installed release lets whom do, asked of the real bed: least-privilege RBAC for the
//! runner and each job account (the apiserver's authorizers), the admission policy acting on
//! requests made as the runner's ServiceAccount, and the NetworkPolicy's selection of job pods.
//! `deploy_policy.rs` attacks the same boundary as a taken-over runner. Needs `scripts/testbed
//! up`; the runner image is not needed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keyhole_runner::config::load_str;
use keyhole_runner::pod::CHECKOUT_CONTAINER;
use keyhole_runner::pod::samples::sample_jobs;
use keyhole_runner::prepare::prepare;
use keyhole_tests::chart::{
    BUSYBOX, Outcome, POLICY_DEADLINE, RELEASE, RUNNER_SA, config_text, from_json, job_pod,
    job_secret, refusal, refusal_once_effective, runner_client, test_values, try_create,
};
use keyhole_tests::{
    Access, HelmRelease, TestBed, TestNamespace, restricted_container_security,
    restricted_pod_security, service_account_may, wait_until_allowed,
};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

/// Asserts that the apiserver answered 403 Forbidden to a request that must not be allowed.
#[track_caller]
fn assert_forbidden<T: std::fmt::Debug>(result: kube::Result<T>, what: &str) {
    let denied = result.expect_err(what);
    assert!(
        matches!(denied, kube::Error::Api(ref s) if s.code == 403),
        "{what}: {denied:?}"
    );
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
    assert_forbidden(as_app.get("other-team-db").await, "not its Secret");
    let token = bed
        .service_account_token(&ns.name, RUNNER_SA, &[])
        .await
        .unwrap();
    let as_runner: Api<Secret> = Api::namespaced(bed.client_with_token(&token).unwrap(), j);
    assert_forbidden(as_runner.get("app-db").await, "the runner reads no Secret");
    assert_forbidden(
        as_runner.list(&ListParams::default()).await,
        "the runner lists no Secret",
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
        let containers: Vec<String> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        checked_out |= containers.iter().any(|c| c == CHECKOUT_CONTAINER);
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
        "spec": {"securityContext": restricted_pod_security(),
            "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sleep", "5"],
                "securityContext": restricted_container_security()}]}
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
