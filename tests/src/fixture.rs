//! The set-up of a job's namespace, written once and read as a list: the namespace (PodSecurity
//! label), its ServiceAccounts and Secrets, Roles bound to a ServiceAccount (returned only once
//! the authorizer allows them), Vault KV secrets under `kv/<namespace>/` and the Vault role of
//! its job:
//!
//! ```no_run
//! # use keyhole_tests::{JobNamespace, VaultRole};
//! # use serde_json::json;
//! # async fn example() {
//! let job = JobNamespace::builder("bfok")
//!     .service_account("job")
//!     .secret("app-creds", json!({"token": "app-token-value"}))
//!     .secret_reader("read-app-creds", "job", "app-creds")
//!     .vault_kv("db", json!({"password": "db-password-value"}))
//!     .vault_role(VaultRole::new("job").read("kv/data/{ns}/*"))
//!     .create()
//!     .await;
//! # }
//! ```

use serde_json::{Value, json};

use crate::{Access, TestBed, TestNamespace, VaultAdmin, VaultRole, wait_until_allowed};

/// A job's namespace on the bed, set up by [`JobNamespace::builder`]; deleted when dropped.
#[derive(Debug)]
pub struct JobNamespace {
    pub bed: TestBed,
    pub ns: TestNamespace,
    /// The bed's Vault, as root.
    pub vault: VaultAdmin,
}

impl JobNamespace {
    /// A namespace `kh-<prefix>-...`, set up by what the builder is told.
    pub fn builder(prefix: &str) -> JobNamespaceBuilder {
        JobNamespaceBuilder {
            prefix: prefix.to_owned(),
            labels: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.ns.name
    }

    /// Writes the KV v2 secret `kv/<namespace>/<name>` with `data`.
    pub async fn write_kv(&self, name: &str, data: Value) {
        let path = format!("kv/data/{}/{name}", self.ns.name);
        self.vault
            .write(&path, json!({"data": data}))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

#[derive(Debug)]
enum Step {
    ServiceAccount(String),
    Secret(String, Value),
    Role {
        name: String,
        service_account: String,
        rules: Value,
    },
    VaultKv(String, Value),
    VaultRole(VaultRole),
}

/// What [`JobNamespace::builder`] sets up, in the order given.
#[derive(Debug)]
#[must_use = "nothing is set up until create()"]
pub struct JobNamespaceBuilder {
    prefix: String,
    labels: Vec<(String, String)>,
    steps: Vec<Step>,
}

impl JobNamespaceBuilder {
    /// The prefix of the namespace's name.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// PodSecurity `restricted` enforced, as the runner's job namespaces are installed.
    pub fn restricted(self) -> Self {
        self.label("pod-security.kubernetes.io/enforce", "restricted")
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn service_account(mut self, name: &str) -> Self {
        self.steps.push(Step::ServiceAccount(name.to_owned()));
        self
    }

    /// An Opaque Secret with `string_data`.
    pub fn secret(mut self, name: &str, string_data: Value) -> Self {
        self.steps.push(Step::Secret(name.to_owned(), string_data));
        self
    }

    /// A Role `name` with `rules`, bound (RoleBinding `name`) to `service_account`. `create`
    /// returns once the authorizer allows the first verb of its first core-group rule.
    pub fn role(mut self, name: &str, service_account: &str, rules: Value) -> Self {
        self.steps.push(Step::Role {
            name: name.to_owned(),
            service_account: service_account.to_owned(),
            rules,
        });
        self
    }

    /// A Role `name` that lets `service_account` get the Secret `secret` and no other.
    pub fn secret_reader(self, name: &str, service_account: &str, secret: &str) -> Self {
        let rules = json!([{"apiGroups": [""], "resources": ["secrets"],
                            "resourceNames": [secret], "verbs": ["get"]}]);
        self.role(name, service_account, rules)
    }

    /// The KV v2 secret `kv/<namespace>/<name>` with `data`, in the bed's Vault.
    pub fn vault_kv(mut self, name: &str, data: Value) -> Self {
        self.steps.push(Step::VaultKv(name.to_owned(), data));
        self
    }

    /// `role` for the namespace in the bed's Vault ([`VaultAdmin::grant`]).
    pub fn vault_role(mut self, role: VaultRole) -> Self {
        self.steps.push(Step::VaultRole(role));
        self
    }

    /// Connects to the bed and sets it all up; panics on what fails.
    pub async fn create(self) -> JobNamespace {
        self.create_on(&TestBed::connect().await).await
    }

    /// [`Self::create`] on a bed already connected.
    pub async fn create_on(self, bed: &TestBed) -> JobNamespace {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let ns = TestNamespace::create(bed, &self.prefix, &labels)
            .await
            .expect("creating the test's namespace");
        let job = JobNamespace {
            bed: bed.clone(),
            vault: VaultAdmin::new(&bed.env),
            ns,
        };
        for step in self.steps {
            job.run(step).await;
        }
        job
    }
}

impl JobNamespace {
    async fn run(&self, step: Step) {
        let ns = &self.ns;
        match step {
            Step::ServiceAccount(name) => {
                ns.create_object::<k8s_openapi::api::core::v1::ServiceAccount>(
                    json!({"metadata": {"name": name}}),
                )
                .await;
            }
            Step::Secret(name, string_data) => {
                ns.create_object::<k8s_openapi::api::core::v1::Secret>(
                    json!({"metadata": {"name": name}, "stringData": string_data}),
                )
                .await;
            }
            Step::Role {
                name,
                service_account,
                rules,
            } => self.role(&name, &service_account, rules).await,
            Step::VaultKv(name, data) => self.write_kv(&name, data).await,
            Step::VaultRole(role) => self
                .vault
                .grant(&ns.name, &role)
                .await
                .unwrap_or_else(|e| panic!("{e:#}")),
        }
    }

    /// A Role `name` with `rules`, bound (RoleBinding `name`) to `service_account`; returns
    /// once the authorizer allows the first verb of its first core-group rule.
    pub async fn role(&self, name: &str, service_account: &str, rules: Value) {
        use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
        let ns = &self.ns;
        ns.create_object::<Role>(json!({"metadata": {"name": name}, "rules": rules}))
            .await;
        ns.create_object::<RoleBinding>(json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": ns.name}]}))
            .await;
        let first_core = rules.as_array().into_iter().flatten().find(|rule| {
            rule["apiGroups"]
                .as_array()
                .is_some_and(|groups| groups.iter().any(|g| g == ""))
        });
        let Some(rule) = first_core else {
            return;
        };
        let first = |key: &str| rule[key].get(0).and_then(Value::as_str);
        let (Some(verb), Some(resource)) = (first("verbs"), first("resources")) else {
            return;
        };
        let mut access = Access::new(verb, resource, &ns.name);
        if let Some(object) = first("resourceNames") {
            access = access.named(object);
        }
        wait_until_allowed(&self.bed.client, (&ns.name, service_account), access)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// A pod's `securityContext` that PodSecurity `restricted` admits, as the runner's job pods
/// have it: not root (uid, gid and fsGroup 1000), the runtime's default seccomp profile.
pub fn restricted_pod_security() -> Value {
    json!({"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
           "seccompProfile": {"type": "RuntimeDefault"}})
}

/// A container's `securityContext` that PodSecurity `restricted` admits: no privilege
/// escalation, no capabilities, not root, the runtime's default seccomp profile.
pub fn restricted_container_security() -> Value {
    json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
           "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
}
