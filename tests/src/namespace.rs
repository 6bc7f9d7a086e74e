use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, Config};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace of one test, deleted when the test ends (also when it panics).
pub struct TestNamespace {
    client: Client,
    /// Drop deletes through a client of its own: `client`'s worker task lives on the test's
    /// runtime, which is blocked while Drop runs.
    config: Config,
    pub name: String,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

impl TestNamespace {
    /// Creates `kh-<prefix>-<unique>` with the given labels.
    pub async fn create(
        bed: &crate::TestBed,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> Result<Self> {
        let client = &bed.client;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let name = format!(
            "kh-{prefix}-{}-{n}-{:x}",
            std::process::id(),
            nanos & 0xffff
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self {
            client: client.clone(),
            config: bed.admin_config.clone(),
            name,
        })
    }

    /// Creates the object `value` (JSON as `kubectl create` takes it, namespace left out) in
    /// this namespace; panics with the apiserver's answer if it refuses.
    pub async fn create_object<K>(&self, value: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let object: K = serde_json::from_value(value).expect("the object's JSON");
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating {object:?} in {}: {e}", self.name))
    }

    /// The pods and Secrets of the runner's jobs still here (`pod/<name>`, `secret/<name>`):
    /// those labelled `app.kubernetes.io/managed-by=keyhole-runner`.
    pub async fn runner_objects_left(&self) -> Vec<String> {
        use k8s_openapi::api::core::v1::{Pod, Secret};
        let runners = ListParams::default().labels("app.kubernetes.io/managed-by=keyhole-runner");
        let pods = self
            .api::<Pod>()
            .list(&runners)
            .await
            .expect("listing pods");
        let secrets = self
            .api::<Secret>()
            .list(&runners)
            .await
            .expect("listing Secrets");
        let named = |kind: &str, meta: &ObjectMeta| {
            format!("{kind}/{}", meta.name.as_deref().unwrap_or_default())
        };
        pods.items
            .iter()
            .map(|p| named("pod", &p.metadata))
            .chain(secrets.items.iter().map(|s| named("secret", &s.metadata)))
            .collect()
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let config = self.config.clone();
        let name = self.name.clone();
        // Drop cannot await; delete from a helper thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            rt.block_on(async move {
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await;
            });
        })
        .join();
    }
}
