use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::Value;

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
        let mut policy: String = paths
            .iter()
            .map(|p| format!("path \"{p}\" {{ capabilities = [\"read\"] }}\n"))
            .collect();
        policy.push_str("path \"sys/internal/ui/mounts/*\" { capabilities = [\"read\"] }\n");
        self.write(
            &format!("sys/policies/acl/{namespace}"),
            serde_json::json!({"policy": policy}),
        )
        .await?;
        self.write(
            &format!("auth/kubernetes/role/{namespace}"),
            serde_json::json!({"bound_service_account_names": ["job"],
                "bound_service_account_namespaces": [namespace], "audience": "vault",
                "token_policies": [namespace], "token_ttl": "300s"}),
        )
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
