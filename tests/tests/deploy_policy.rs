//! The chart's admission policies and the runner's Role against a runner that is taken over
//! (security issue 17, item 2): a pod's "own" Secret is the one named like it, so names are part
//! of the boundary. Each attack is made with a token of the runner's ServiceAccount against an
//! installed release, as `kubectl --as` would; on a chart without the name rules each test fails
//! showing what the attack got. Needs `scripts/testbed up`; the runner image is not needed.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use keyhole_runner::pod::{POD_NAME_PATTERN, PULL_SECRET_NAME_PATTERN};
use keyhole_tests::chart::{
    BUSYBOX, POLICY_DEADLINE, RELEASE, RUNNER_SA, from_json, helm_template, is_policy_denial,
    job_pod, job_secret, refusal, refusal_once_effective, runner_client, test_values,
};
use keyhole_tests::{
    Access, HelmRelease, TestBed, TestNamespace, pod_logs, restricted_container_security,
    restricted_pod_security, wait_for_pod, wait_until_allowed,
};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use serde_json::{Value, json};

/// A release in a namespace of its own; its jobs namespace made by the chart (PodSecurity
/// restricted, as installed for real). Uninstalled, then its namespace deleted, when dropped.
struct Install {
    _release: HelmRelease,
    ns: TestNamespace,
    jobs: String,
    runner: Client,
}

impl Install {
    async fn new(bed: &TestBed, prefix: &str) -> Self {
        let ns = TestNamespace::create(bed, prefix, &[]).await.unwrap();
        let jobs = format!("{}-jobs", ns.name);
        let release =
            HelmRelease::install(&bed.env, RELEASE, &ns.name, &test_values(&jobs, true)).unwrap();
        let runner = runner_client(bed, &ns.name).await;
        Self {
            _release: release,
            ns,
            jobs,
            runner,
        }
    }

    fn as_runner<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.runner.clone(), &self.jobs)
    }

    fn as_admin<K>(&self, bed: &TestBed) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(bed.client.clone(), &self.jobs)
    }

    /// The user name the apiserver gives the runner's ServiceAccount.
    fn runner_user(&self) -> String {
        format!("system:serviceaccount:{}:{RUNNER_SA}", self.ns.name)
    }

    /// Returns once the pod policy refuses the runner a pod that mounts a foreign Secret (a
    /// rule older than the name rules, so this holds on any chart): from then on an admitted
    /// pod was admitted by the policy, not by a policy not loaded yet.
    async fn pod_policy_effective(&self, bed: &TestBed) {
        let mut pod = job_pod("kh-1-aaaaaa", "app-deployer");
        pod["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "stolen", "secret": {"secretName": "app-db"}}));
        let refused =
            refusal_once_effective(&self.as_runner::<Pod>(), &self.as_admin(bed), &pod).await;
        assert!(
            refused.message.contains("stolen (Secret app-db)"),
            "{refused:?}"
        );
    }

    /// The same for the Secret policy: a per-job Secret without its owner pod.
    async fn secret_policy_effective(&self, bed: &TestBed) {
        let pod: Pod = from_json(job_pod("kh-1-aaaaaa", "app-deployer"));
        let unowned = serde_json::to_value(job_secret(&pod, false)).unwrap();
        let refused =
            refusal_once_effective(&self.as_runner::<Secret>(), &self.as_admin(bed), &unowned)
                .await;
        assert!(
            refused.message.contains("must be owned by its pod"),
            "{refused:?}"
        );
    }

    /// A tenant's Secret, made by the administrator; returns its value.
    async fn tenant_secret(&self, bed: &TestBed, name: &str) -> String {
        let value = format!("{name}-pw-{:016x}", fastrand::u64(..));
        self.as_admin::<Secret>(bed)
            .create(
                &PostParams::default(),
                &from_json(json!({"metadata": {"name": name}, "stringData": {"password": value}})),
            )
            .await
            .unwrap();
        value
    }
}

fn password(secret: &Secret) -> String {
    let bytes = &secret.data.as_ref().unwrap()["password"].0;
    String::from_utf8_lossy(bytes).into_owned()
}

fn job_labels() -> Value {
    json!({"app.kubernetes.io/managed-by": "keyhole-runner", "keyhole.dev/runner": "keyhole"})
}

/// A refusal by an admission policy with `needle` in its message; anything else fails.
fn assert_refused<K: std::fmt::Debug>(result: kube::Result<K>, what: &str, needle: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert!(
                is_policy_denial(&status) && status.code == 403,
                "{what}: refused, but not by a policy: {status:?}"
            );
            assert!(
                status.message.contains(needle),
                "{what}: {needle:?} not in: {}",
                status.message
            );
        }
        Err(other) => panic!("{what}: failed on the way: {other:?}"),
        Ok(created) => panic!("{what}: admitted: {created:?}"),
    }
}

/// The chart reserves exactly the names the runner gives (the policies' three name checks use
/// the runner's own `POD_NAME_PATTERN`, which its unit tests match against `pod_name`).
#[tokio::test]
async fn the_policies_reserve_the_names_the_runner_gives() {
    let bed = TestBed::connect().await;
    let rendered =
        helm_template(&bed, &["--show-only", "templates/admission-policy.yaml"]).unwrap();
    let check = format!(".matches('{POD_NAME_PATTERN}')");
    assert_eq!(
        rendered.matches(&check).count(),
        3,
        "pod name, runner's Secret name, everyone else's Secret name; {check} in:\n{rendered}"
    );
    let check = format!(".matches('{PULL_SECRET_NAME_PATTERN}')");
    assert_eq!(
        rendered.matches(&check).count(),
        2,
        "runner's pull Secret name, everyone else's Secret name; {check} in:\n{rendered}"
    );
}

/// (a) A pod named like a tenant's Secret, mounting it as "its own", would print it to the
/// pod's log, which the runner may read.
#[tokio::test]
async fn the_runner_cannot_mount_a_tenant_secret_by_naming_a_pod_like_it() {
    let bed = TestBed::connect().await;
    let install = Install::new(&bed, "pol-a").await;
    let value = install.tenant_secret(&bed, "app-db").await;
    install.pod_policy_effective(&bed).await;

    let as_runner = install.as_runner::<Pod>();
    let attack: Pod = from_json(json!({
        "metadata": {"name": "app-db", "labels": job_labels()},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "app-deployer",
            "automountServiceAccountToken": false,
            "securityContext": restricted_pod_security(),
            "volumes": [{"name": "loot", "secret": {"secretName": "app-db"}}],
            "containers": [{
                "name": "c", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["cat", "/loot/password"], "securityContext": restricted_container_security(),
                "volumeMounts": [{"name": "loot", "mountPath": "/loot", "readOnly": true}]
            }]
        }
    }));
    match as_runner.create(&PostParams::default(), &attack).await {
        Ok(_) => {
            // Show what the attack gets before failing.
            let done = wait_for_pod(&as_runner, "app-db", |p| {
                p.and_then(|p| p.status.as_ref())
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
            })
            .await;
            let log = pod_logs(&as_runner, "app-db", "c")
                .await
                .unwrap_or_default();
            panic!(
                "the runner's pod app-db was admitted ({:?}); its log holds the tenant's Secret app-db: {}",
                done.ok().and_then(|p| p.status).and_then(|s| s.phase),
                log.contains(&value)
            );
        }
        Err(e) => assert_refused(
            Err::<Pod, _>(e),
            "a pod named like a tenant's Secret",
            "pod app-db refused: a runner-made pod must be named like the runner names job pods",
        ),
    }
    // Through the projected volume the runner itself uses (its secret source names the pod's
    // name), likewise.
    let projected = job_pod("app-db", "app-deployer");
    let message = refusal(
        &as_runner,
        &install.as_admin(&bed),
        &projected,
        "a projected volume",
    )
    .await;
    assert!(
        message.contains(&format!("kh-<job id>-<6 of a-z0-9> ({POD_NAME_PATTERN})")),
        "{message}"
    );
}

/// (b) A Secret of type kubernetes.io/service-account-token, named like a pod of the runner's,
/// would be filled by the token controller with a token that never expires, for whichever
/// ServiceAccount it names, and the pod could mount it.
#[tokio::test]
async fn the_runner_cannot_mint_a_service_account_token() {
    let bed = TestBed::connect().await;
    let install = Install::new(&bed, "pol-b").await;
    install.pod_policy_effective(&bed).await;
    install.secret_policy_effective(&bed).await;
    let secrets = install.as_runner::<Secret>();
    let name = "kh-4301-b0b0b0";
    let pod = install
        .as_runner::<Pod>()
        .create(
            &PostParams::default(),
            &from_json(job_pod(name, "app-deployer")),
        )
        .await
        .expect("a job pod of the runner's shape is admitted");
    let owner = json!([{"apiVersion": "v1", "kind": "Pod", "name": name,
        "uid": pod.metadata.uid.clone().unwrap()}]);
    let token_secret = |name: &str, immutable: Option<bool>| -> Secret {
        let mut s = json!({
            "metadata": {"name": name, "labels": job_labels(), "ownerReferences": owner,
                "annotations": {"kubernetes.io/service-account.name": "app-deployer"}},
            "type": "kubernetes.io/service-account-token"
        });
        if let Some(i) = immutable {
            s["immutable"] = json!(i);
        }
        from_json(s)
    };

    match secrets
        .create(&PostParams::default(), &token_secret(name, None))
        .await
    {
        Ok(_) => {
            // Show what the attack gets before failing: the token the controller adds.
            let admin = install.as_admin::<Secret>(&bed);
            let filled = tokio::time::timeout(
                POLICY_DEADLINE,
                await_condition(admin, name, |s: Option<&Secret>| {
                    s.and_then(|s| s.data.as_ref())
                        .is_some_and(|d| d.contains_key("token"))
                }),
            )
            .await;
            let token_len = filled
                .ok()
                .and_then(Result::ok)
                .flatten()
                .and_then(|s| s.data)
                .map(|d| d["token"].0.len());
            panic!(
                "the runner's Secret {name} of type kubernetes.io/service-account-token for app-deployer was admitted; token filled in by the controller (bytes): {token_len:?}"
            );
        }
        Err(e) => assert_refused(
            Err::<Secret, _>(e),
            "a ServiceAccount token Secret",
            &format!(
                "Secret {name} refused: a runner-made Secret must be of type Opaque, not kubernetes.io/service-account-token"
            ),
        ),
    }
    // Named like no pod (as in the report: pod x, Secret x), the name answers first.
    assert_refused(
        secrets
            .create(&PostParams::default(), &token_secret("x", None))
            .await,
        "a token Secret named x",
        "Secret x refused: a runner-made Secret must be named like the runner names job pods",
    );
    // Opaque, but not immutable: its values could be changed under the pod.
    let mut mutable = job_secret(&pod, true);
    mutable.immutable = None;
    assert_refused(
        secrets.create(&PostParams::default(), &mutable).await,
        "a mutable per-job Secret",
        &format!("Secret {name} refused: a runner-made Secret must be immutable"),
    );
    // The per-job Secret as the runner makes it still passes.
    secrets
        .create(&PostParams::default(), &job_secret(&pod, true))
        .await
        .expect("the per-job Secret is admitted");
}

/// (c) Deleting a tenant's Secret and creating one of the same name, owned by a pod of that
/// name, would hand every job of the tenant the runner's values instead.
#[tokio::test]
async fn the_runner_cannot_replace_a_tenant_secret() {
    let bed = TestBed::connect().await;
    let install = Install::new(&bed, "pol-c").await;
    let value = install.tenant_secret(&bed, "app-db").await;
    // The Role is in effect (so a refused delete is not one made too early).
    wait_until_allowed(
        &bed.client,
        (&install.ns.name, RUNNER_SA),
        Access::new("create", "secrets", &install.jobs),
    )
    .await
    .unwrap();
    install.pod_policy_effective(&bed).await;
    install.secret_policy_effective(&bed).await;
    let secrets = install.as_runner::<Secret>();
    let admin = install.as_admin::<Secret>(&bed);

    match secrets.delete("app-db", &DeleteParams::default()).await {
        Ok(_) => {
            // Show what the attack gets before failing: its own Secret in the tenant's place.
            let pod = install
                .as_runner::<Pod>()
                .create(
                    &PostParams::default(),
                    &from_json(job_pod("app-db", "app-deployer")),
                )
                .await;
            let replaced = match pod {
                Ok(pod) => {
                    let mut own = job_secret(&pod, true);
                    own.string_data = Some([("password".into(), "runner-chosen".into())].into());
                    secrets.create(&PostParams::default(), &own).await.is_ok()
                }
                Err(_) => false,
            };
            let now = admin.get_opt("app-db").await.unwrap();
            panic!(
                "the runner deleted the tenant's Secret app-db; replaced with its own: {replaced}; app-db now: {:?}",
                now.as_ref().map(password)
            );
        }
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message.contains("cannot delete resource \"secrets\""),
                "{s:?}"
            );
        }
        Err(other) => panic!("deleting failed on the way: {other:?}"),
    }
    assert_eq!(password(&admin.get("app-db").await.unwrap()), value);

    // Were the Secret gone for another reason (the tenant replacing it), the runner still
    // could not fill the gap: a Secret of that name is not one it may make.
    admin
        .delete("app-db", &DeleteParams::default())
        .await
        .unwrap();
    let own: Secret = from_json(json!({
        "metadata": {"name": "app-db", "labels": job_labels(),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "app-db",
                "uid": "00000000-0000-0000-0000-000000000001"}]},
        "immutable": true,
        "stringData": {"password": "runner-chosen"}
    }));
    assert_refused(
        secrets.create(&PostParams::default(), &own).await,
        "a Secret named like the tenant's",
        "Secret app-db refused: a runner-made Secret must be named like the runner names job pods",
    );
}

/// Nobody but the runner may create a Secret named like a job pod in the jobs namespace (it
/// would be that pod's "own" Secret); other names and other namespaces are untouched; the
/// runner still makes its per-job Secrets, and the garbage collector still deletes them with
/// their pod or, with orphan propagation, releases them (an update the policies must not block).
#[tokio::test]
async fn only_the_runner_may_create_secrets_named_like_job_pods() {
    let bed = TestBed::connect().await;
    let install = Install::new(&bed, "pol-names").await;
    let admin = install.as_admin::<Secret>(&bed);
    let reserved = |name: &str| json!({"metadata": {"name": name}, "stringData": {"password": "not-real-0123456789"}});

    let refused = refusal_once_effective(&admin, &admin, &reserved("kh-4242-a1b2c3")).await;
    assert!(
        refused.message.contains(&format!(
            "Secret kh-4242-a1b2c3 refused: in this namespace, names like kh-<job id>-<6 of a-z0-9> ({POD_NAME_PATTERN}) are kept for the per-job Secrets of the runner {}",
            install.runner_user()
        )),
        "{refused:?}"
    );
    assert_eq!(refused.code, 403);
    // Names the runner never gives are anyone's.
    for name in ["app-db", "kh-4242", "kh-4242-a1b2c3d", "kh-x-a1b2c3"] {
        admin
            .create(&PostParams::default(), &from_json(reserved(name)))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Outside the jobs namespace the name is free too.
    install
        .ns
        .api::<Secret>()
        .create(
            &PostParams::default(),
            &from_json(reserved("kh-4242-a1b2c3")),
        )
        .await
        .expect("another namespace is not bound");

    // The runner makes its pods and their Secrets as before.
    install.pod_policy_effective(&bed).await;
    let pods = install.as_runner::<Pod>();
    let secrets = install.as_runner::<Secret>();
    let mut made = Vec::new();
    for name in ["kh-4242-a1b2c3", "kh-4243-d4e5f6"] {
        let pod = pods
            .create(
                &PostParams::default(),
                &from_json(job_pod(name, "app-deployer")),
            )
            .await
            .unwrap_or_else(|e| panic!("the job pod {name}: {e}"));
        let secret = secrets
            .create(&PostParams::default(), &job_secret(&pod, true))
            .await
            .unwrap_or_else(|e| panic!("the per-job Secret {name}: {e}"));
        made.push(secret.metadata.uid.unwrap());
    }

    // Deleted with its pod (the runner's way: it never deletes Secrets).
    pods.delete("kh-4242-a1b2c3", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(
            admin.clone(),
            "kh-4242-a1b2c3",
            kube::runtime::conditions::is_deleted(&made[0]),
        ),
    )
    .await
    .expect("the garbage collector deletes the per-job Secret with its pod within 120 s")
    .unwrap();
    // Released when its pod is deleted with orphan propagation: the garbage collector updates
    // the Secret to drop the owner reference.
    Api::<Pod>::namespaced(bed.client.clone(), &install.jobs)
        .delete("kh-4243-d4e5f6", &DeleteParams::orphan())
        .await
        .unwrap();
    let released = tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(admin.clone(), "kh-4243-d4e5f6", |s: Option<&Secret>| {
            s.is_some_and(|s| {
                s.metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(Vec::is_empty)
            })
        }),
    )
    .await
    .expect("the garbage collector releases the orphaned Secret within 120 s")
    .unwrap();
    assert_eq!(
        released.and_then(|s| s.metadata.uid).as_ref(),
        Some(&made[1])
    );
}

/// A job pod's image pull Secret (`<pod>-registry`, issue 11) is that pod's alone: the runner
/// may make it only as a `kubernetes.io/dockerconfigjson` Secret owned by the pod; only that
/// pod may name it in `imagePullSecrets`, and no pod may mount it; nobody else may make a
/// Secret of such a name (it would lend its registry login to the pod of that name).
#[tokio::test]
async fn a_pull_secret_is_its_pods_own_and_no_one_elses() {
    let bed = TestBed::connect().await;
    let install = Install::new(&bed, "pol-pull").await;
    install.pod_policy_effective(&bed).await;
    install.secret_policy_effective(&bed).await;
    let pods = install.as_runner::<Pod>();
    let secrets = install.as_runner::<Secret>();
    let with_pull = |name: &str, pull: &str| {
        let mut pod = job_pod(name, "app-deployer");
        pod["spec"]["imagePullSecrets"] = json!([{"name": pull}]);
        pod
    };
    let name = "kh-4401-c0c0c0";
    let pull = format!("{name}-registry");
    let pod = pods
        .create(&PostParams::default(), &from_json(with_pull(name, &pull)))
        .await
        .expect("a job pod naming its own pull Secret is admitted");
    let owner = |pod_name: &str| {
        json!([{"apiVersion": "v1", "kind": "Pod", "name": pod_name,
            "uid": pod.metadata.uid.clone().unwrap()}])
    };
    let pull_secret = |type_: &str, owner: Value| -> Secret {
        from_json(json!({
            "metadata": {"name": pull, "labels": job_labels(), "ownerReferences": owner},
            "immutable": true,
            "type": type_,
            "stringData": {".dockerconfigjson": "{\"auths\":{\"10.213.0.1:5000\":{\"auth\":\"dTpw\"}}}"}
        }))
    };
    assert_refused(
        secrets
            .create(&PostParams::default(), &pull_secret("Opaque", owner(name)))
            .await,
        "an Opaque pull Secret",
        &format!(
            "Secret {pull} refused: a pod's pull Secret must be of type kubernetes.io/dockerconfigjson"
        ),
    );
    assert_refused(
        secrets
            .create(
                &PostParams::default(),
                &pull_secret("kubernetes.io/dockerconfigjson", owner("kh-4402-d0d0d0")),
            )
            .await,
        "a pull Secret owned by another pod",
        &format!(
            "Secret {pull} refused: a runner-made Secret must be owned by its pod (ownerReference apiVersion v1, kind Pod, name {name})"
        ),
    );
    secrets
        .create(
            &PostParams::default(),
            &pull_secret("kubernetes.io/dockerconfigjson", owner(name)),
        )
        .await
        .expect("the pod's own pull Secret is admitted");

    // Another job pod may not pull with it, nor may any pod mount it.
    let message = refusal(
        &pods,
        &install.as_admin(&bed),
        &with_pull("kh-4402-d0d0d0", &pull),
        "another pod's pull Secret",
    )
    .await;
    assert!(
        message.contains(&format!("imagePullSecrets {pull} are not allowed")),
        "{message}"
    );
    let mut mounting = job_pod(name, "app-deployer");
    mounting["metadata"]["name"] = json!("kh-4403-e0e0e0");
    mounting["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "creds", "secret": {"secretName": pull}}));
    let message = refusal(&pods, &install.as_admin(&bed), &mounting, "mounting it").await;
    assert!(
        message.contains(&format!("creds (Secret {pull})")),
        "{message}"
    );

    // Nobody else may make a Secret of a pull Secret's name.
    let admin = install.as_admin::<Secret>(&bed);
    let tenant: Value = json!({"metadata": {"name": "kh-4404-f0f0f0-registry"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": "{\"auths\":{}}"}});
    let refused = refusal_once_effective(&admin, &admin, &tenant).await;
    assert!(
        refused.message.contains(&format!(
            "are kept for the image pull Secrets of the runner {}'s job pods",
            install.runner_user()
        )),
        "{refused:?}"
    );
}
