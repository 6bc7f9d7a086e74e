use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::BedEnv;

/// The bed's Vault as its root: test set-up (roles, policies, secrets) and raw logins.
#[derive(Debug, Clone)]
pub struct VaultAdmin {
    http: reqwest::Client,
    addr: String,
    token: String,
}

impl VaultAdmin {
    pub fn new(env: &BedEnv) -> Self {
        crate::bed::install_crypto_provider();
        Self {
            http: reqwest::Client::new(),
            addr: env.vault_addr.clone(),
            token: env.vault_token.clone(),
        }
    }

    /// Root of another Vault (e.g. an [`OwnVault`]) at `addr`, with the token `token`.
    pub fn at(addr: &str, token: &str) -> Self {
        crate::bed::install_crypto_provider();
        Self {
            http: reqwest::Client::new(),
            addr: addr.to_owned(),
            token: token.to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.addr, path.trim_start_matches('/'))
    }

    /// `PUT /v1/<path>` as root: Vault's status and body text.
    async fn put(&self, path: &str, body: &Value) -> Result<(StatusCode, String)> {
        let resp = self
            .http
            .put(self.url(path))
            .header("X-Vault-Token", &self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("Vault write {path}"))?;
        let status = resp.status();
        Ok((status, resp.text().await?))
    }

    /// `PUT /v1/<path>` as root; fails on any non-2xx answer with Vault's error text.
    pub async fn write(&self, path: &str, body: Value) -> Result<Option<Value>> {
        let (status, text) = self.put(path, &body).await?;
        anyhow::ensure!(status.is_success(), "Vault write {path}: {status}: {text}");
        Ok(if text.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&text)?)
        })
    }

    /// Lets the ServiceAccount `job` of namespace `namespace` log in (kubernetes auth, audience
    /// `vault`, role and policy both named after the namespace) and read `paths`.
    pub async fn grant_job_in_namespace(&self, namespace: &str, paths: &[String]) -> Result<()> {
        self.grant(namespace, &VaultRole::new("job").read_all(paths))
            .await
    }

    /// Writes `role` for `namespace`: a policy and a kubernetes-auth role, both named after the
    /// namespace, bound to the role's ServiceAccount there (audience `vault`). `{ns}` in a path
    /// stands for the namespace.
    pub async fn grant(&self, namespace: &str, role: &VaultRole) -> Result<()> {
        let rule = |path: &str, capability: &str| {
            let path = path.replace("{ns}", namespace);
            format!("path \"{path}\" {{ capabilities = [\"{capability}\"] }}\n")
        };
        let mut policy: String = role.read.iter().map(|p| rule(p, "read")).collect();
        policy.push_str(&rule("sys/internal/ui/mounts/*", "read"));
        policy.extend(role.update.iter().map(|p| rule(p, "update")));
        self.write(
            &format!("sys/policies/acl/{namespace}"),
            serde_json::json!({"policy": policy}),
        )
        .await?;
        let mut auth_role = serde_json::json!({"bound_service_account_names": [role.service_account],
            "bound_service_account_namespaces": [namespace], "audience": "vault",
            "token_policies": [namespace], "token_ttl": role.token_ttl});
        if let Some(max) = &role.token_max_ttl {
            auth_role["token_max_ttl"] = max.as_str().into();
        }
        self.write(&format!("auth/kubernetes/role/{namespace}"), auth_role)
            .await?;
        Ok(())
    }

    /// `PUT /v1/<path>` as root, returning Vault's status and body whatever they are.
    pub async fn write_status(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, text) = self.put(path, &body).await.expect("Vault answers");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET /v1/<path>` as root.
    pub async fn read(&self, path: &str) -> Result<(StatusCode, Value)> {
        let resp = self
            .http
            .get(self.url(path))
            .header("X-Vault-Token", &self.token)
            .send()
            .await
            .with_context(|| format!("Vault read {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// `DELETE /v1/<path>` as root; fails on any non-2xx answer.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.http
            .delete(self.url(path))
            .header("X-Vault-Token", &self.token)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("Vault delete {path}"))?;
        Ok(())
    }

    /// The JWT auth role `name` for GitLab ID tokens ([`id_token_claims`]) of `project` on a
    /// protected ref: tokens with the policy `policy`, living `ttl`.
    pub async fn jwt_role(&self, name: &str, project: &str, policy: &str, ttl: &str) -> Result<()> {
        let role = json!({"role_type": "jwt", "user_claim": "sub",
            "bound_audiences": [ID_TOKEN_AUDIENCE],
            "bound_claims": {"project_path": project, "ref_protected": "true"},
            "token_policies": [policy], "token_ttl": ttl});
        self.write(&format!("auth/jwt/role/{name}"), role).await?;
        Ok(())
    }

    /// Vault's view of a lease (`sys/leases/lookup`): status and body, whatever they are.
    pub async fn lease_lookup(&self, lease_id: &str) -> (StatusCode, Value) {
        self.write_status("sys/leases/lookup", json!({"lease_id": lease_id}))
            .await
    }

    /// When the lease ends (its `expire_time`), in seconds since the epoch; panics when Vault
    /// does not know it.
    pub async fn lease_expiry(&self, lease_id: &str) -> f64 {
        let (status, body) = self.lease_lookup(lease_id).await;
        assert!(
            status.is_success(),
            "lookup of {lease_id}: {status}: {body}"
        );
        rfc3339_seconds(body["data"]["expire_time"].as_str().expect("expire_time"))
    }

    /// Panics unless Vault no longer knows the lease (its lookup answers 400).
    pub async fn assert_lease_gone(&self, lease_id: &str) {
        let (status, body) = self.lease_lookup(lease_id).await;
        assert_eq!(
            status.as_u16(),
            400,
            "Vault still knows the lease {lease_id}: {body}"
        );
    }

    /// Vault's lease ids under `prefix` (`LIST sys/leases/lookup/<prefix>`, prefix ending in
    /// `/`); none when Vault has none (404).
    pub async fn leases_under(&self, prefix: &str) -> Vec<String> {
        let (status, body) = self
            .read(&format!("sys/leases/lookup/{prefix}?list=true"))
            .await
            .expect("Vault answers");
        if status.as_u16() == 404 {
            return Vec::new();
        }
        assert!(
            status.is_success(),
            "LIST leases {prefix}: {status}: {body}"
        );
        body["data"]["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Two roles of Vault's database engine for tests of a read cut short: `quick-<tag>` on the
    /// bed's Redis (answers at once) and `stalled-<tag>` on `silent` (never answers, so a read
    /// stays pending). Returns their `database/creds/...` paths.
    pub async fn quick_and_stalled_roles(
        &self,
        tag: &str,
        silent: &crate::SilentServer,
    ) -> Result<(String, String)> {
        let quick = format!("quick-{tag}");
        let stalled = format!("stalled-{tag}");
        self.write(
            &format!("database/roles/{quick}"),
            serde_json::json!({"db_name": "redis", "creation_statements": "[\"~*\", \"+@read\"]",
                   "default_ttl": "60s", "max_ttl": "120s"}),
        )
        .await?;
        self.write(
            &format!("database/config/{stalled}"),
            serde_json::json!({"plugin_name": "redis-database-plugin", "host": "127.0.0.1",
                   "port": silent.port, "tls": false, "username": "default", "password": "unused",
                   "allowed_roles": [stalled], "verify_connection": false}),
        )
        .await?;
        self.write(
            &format!("database/roles/{stalled}"),
            serde_json::json!({"db_name": stalled, "creation_statements": "[\"~*\"]", "default_ttl": "60s"}),
        )
        .await?;
        Ok((
            format!("database/creds/{quick}"),
            format!("database/creds/{stalled}"),
        ))
    }

    /// An unauthenticated login call (`auth/<mount>/login`), returning Vault's status and body.
    pub async fn login(&self, mount: &str, body: Value) -> Result<(StatusCode, Value)> {
        let resp = self
            .http
            .put(self.url(&format!("auth/{mount}/login")))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("Vault login on {mount}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Logs in at `auth/kubernetes` as `role` with a token of the ServiceAccount
    /// `namespace/service_account` for `audience` (TokenRequest): Vault's status and body.
    pub async fn login_as_service_account(
        &self,
        bed: &crate::TestBed,
        (namespace, service_account): (&str, &str),
        audience: &str,
        role: &str,
    ) -> (StatusCode, Value) {
        let jwt = bed
            .service_account_token(namespace, service_account, &[audience])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.login("kubernetes", json!({"role": role, "jwt": jwt}))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// What a job's ServiceAccount may do in Vault (see [`VaultAdmin::grant`]): read some paths
/// (and look up their mounts), update others, with tokens of `token_ttl` (300 s unless set).
#[derive(Debug, Clone)]
pub struct VaultRole {
    service_account: String,
    read: Vec<String>,
    update: Vec<String>,
    token_ttl: String,
    token_max_ttl: Option<String>,
}

impl VaultRole {
    pub fn new(service_account: &str) -> Self {
        Self {
            service_account: service_account.to_owned(),
            read: Vec::new(),
            update: Vec::new(),
            token_ttl: "300s".to_owned(),
            token_max_ttl: None,
        }
    }

    /// May read `path` (`{ns}`: the namespace).
    pub fn read(mut self, path: impl Into<String>) -> Self {
        self.read.push(path.into());
        self
    }

    pub fn read_all(mut self, paths: &[String]) -> Self {
        self.read.extend(paths.iter().cloned());
        self
    }

    /// May update `path` (e.g. `sys/leases/revoke`).
    pub fn update(mut self, path: impl Into<String>) -> Self {
        self.update.push(path.into());
        self
    }

    pub fn token_ttl(mut self, ttl: &str) -> Self {
        self.token_ttl = ttl.to_owned();
        self
    }

    pub fn token_max_ttl(mut self, ttl: &str) -> Self {
        self.token_max_ttl = Some(ttl.to_owned());
        self
    }
}

/// A Vault dev server of the test's own (the bed's binary, root token `root`) on a free loopback
/// port, stopped (by its pid) when the test ends, panics included: for what would break other
/// tests on the shared Vault, such as sealing it.
#[derive(Debug)]
pub struct OwnVault {
    child: std::process::Child,
    pub addr: String,
    admin: VaultAdmin,
}

impl Drop for OwnVault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnVault {
    /// Starts it and waits until it answers.
    pub async fn start(bed: &crate::TestBed) -> Self {
        let port = free_port();
        let child = std::process::Command::new(bed.env.bin("vault"))
            .args([
                "server",
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the bed's vault binary");
        let addr = format!("http://127.0.0.1:{port}");
        let vault = Self {
            child,
            admin: VaultAdmin::at(&addr, "root"),
            addr,
        };
        let health = format!("{}/v1/sys/health", vault.addr);
        crate::eventually(
            std::time::Duration::from_secs(60),
            std::time::Duration::from_millis(100),
            async || {
                let answer = vault.admin.http.get(&health).send().await;
                answer.is_ok_and(|r| r.status().is_success()).then_some(())
            },
        )
        .await
        .expect("our own dev Vault starts within 60 s");
        vault
    }

    /// Its root.
    pub fn admin(&self) -> &VaultAdmin {
        &self.admin
    }

    /// Seals it (`PUT sys/seal`): from then on it answers every request 503 "Vault is sealed".
    pub async fn seal(&self) {
        self.admin
            .write("sys/seal", serde_json::json!({}))
            .await
            .expect("our own Vault seals");
    }
}

/// Removes the Vault role and policy named `name` (as the chart's NOTES make them) when dropped,
/// panics included.
#[derive(Debug)]
pub struct VaultRoleRemoved {
    env: BedEnv,
    name: String,
}

impl VaultRoleRemoved {
    pub fn on_drop(env: &BedEnv, name: &str) -> Self {
        Self {
            env: env.clone(),
            name: name.to_owned(),
        }
    }
}

impl Drop for VaultRoleRemoved {
    fn drop(&mut self) {
        let _ = crate::bed_script(
            &self.env,
            &format!(
                "vault delete auth/kubernetes/role/{0}; vault policy delete {0}",
                self.name
            ),
        )
        .output();
    }
}

/// The audience of the ID tokens the bed's Vault takes (`jwt` auth).
const ID_TOKEN_AUDIENCE: &str = "https://vault.keyhole.test";

/// The claims of a GitLab ID token for a job of `project` on its protected branch `main`, from
/// the bed's issuer, valid for 10 minutes from now; sign them with the bed's JWT signing key.
pub fn id_token_claims(env: &BedEnv, project: &str) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs();
    json!({
        "iss": env.jwt_issuer, "aud": ID_TOKEN_AUDIENCE,
        "sub": format!("project_path:{project}:ref_type:branch:ref:main"),
        "project_path": project, "ref_protected": "true",
        "iat": now, "nbf": now, "exp": now + 600
    })
}

/// A loopback port with nothing listening on it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One entry of Vault's file audit device made with (or answering) a login of a pod in a given
/// namespace: `request` or `response`, the operation and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedCall {
    pub kind: String,
    pub operation: String,
    pub path: String,
}

/// What Vault's audit device (`BedEnv::vault_audit_log`) recorded of the tokens that pods of
/// `namespace` logged in with (kubernetes auth metadata `service_account_namespace`), and the
/// answers to their logins. Values in the log are HMAC'd; paths and metadata are plain.
pub fn audited_calls_of_namespace(
    log: &std::path::Path,
    namespace: &str,
) -> Result<Vec<AuditedCall>> {
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("reading Vault's audit log {}", log.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| {
            entry["auth"]["metadata"]["service_account_namespace"].as_str() == Some(namespace)
        })
        .map(|entry| AuditedCall {
            kind: entry["type"].as_str().unwrap_or_default().to_owned(),
            operation: entry["request"]["operation"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            path: entry["request"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
        .collect())
}

/// RFC 3339 timestamps from one Vault compare as strings once their fractions are padded;
/// compare them as parsed seconds to be safe.
pub fn rfc3339_seconds(rfc3339: &str) -> f64 {
    let out = std::process::Command::new("date")
        .args(["-d", rfc3339, "+%s.%N"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
