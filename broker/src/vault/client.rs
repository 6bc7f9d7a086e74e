use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::{RetryPolicy, VaultError};
use keyhole_contract::reference::Engine;

/// How to reach one Vault server.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    pub addr: String,
    /// Addresses the broker may send a token to; `addr` must be one of them (same origin).
    pub allowed_addresses: Vec<String>,
    pub namespace: Option<String>,
    /// PEM bundle of CAs to trust instead of the system roots.
    pub ca_bundle: Option<Vec<u8>>,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
}

/// How the broker proves who it is.
#[derive(Debug, Clone)]
pub enum LoginMethod {
    /// Kubernetes auth with the pod's projected ServiceAccount token, re-read on each login
    /// because the kubelet rotates it.
    Kubernetes {
        mount: String,
        role: String,
        token_file: PathBuf,
    },
    /// JWT auth with the job's GitLab ID token.
    Jwt {
        mount: String,
        role: Option<String>,
        jwt: SecretString,
    },
}

/// A Vault token. `Debug` shows the accessor, never the token.
pub struct Token {
    value: SecretString,
    pub accessor: String,
    pub ttl: Duration,
    pub renewable: bool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("accessor", &self.accessor)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A lease on a dynamic secret. The id is not a secret: it is the handle to renew and revoke
/// the lease, and it goes into the audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub ttl: Duration,
    pub renewable: bool,
}

/// One read of a dynamic secret: every field of it (kept in a zeroizing buffer so that several
/// references to one path share one lease) and its lease, if Vault gave one.
pub struct DynamicSecret {
    path: String,
    body: Zeroizing<Vec<u8>>,
    pub lease: Option<Lease>,
}

impl std::fmt::Debug for DynamicSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicSecret")
            .field("path", &self.path)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl DynamicSecret {
    /// One field of the secret, or all of it as a JSON object.
    pub fn field(&self, field: Option<&str>) -> Result<SecretSlice<u8>, VaultError> {
        let what = format!("read of {}", self.path);
        let envelope: Envelope<'_> = parse(&self.body, &what)?;
        let data =
            envelope
                .data
                .filter(|d| d.get() != "null")
                .ok_or_else(|| VaultError::NotFound {
                    path: self.path.clone(),
                })?;
        extract(data, field, &self.path)
    }
}

/// A value read from Vault, with the KV version it came from (v2 only).
pub struct KvValue {
    pub value: SecretSlice<u8>,
    pub version: Option<u64>,
}

impl std::fmt::Debug for KvValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvValue")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct VaultClient {
    http: reqwest::Client,
    base: Url,
    config: VaultConfig,
    token: Option<Token>,
    /// Engine per mount, asked once per job rather than once per reference.
    engines: std::sync::Mutex<BTreeMap<String, Engine>>,
}

#[derive(Deserialize)]
struct AuthBlock {
    client_token: SecretString,
    #[serde(default)]
    accessor: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct KvV2Data<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    metadata: Option<KvV2Metadata>,
}

#[derive(Deserialize)]
struct KvV2Metadata {
    version: Option<u64>,
}

impl VaultClient {
    /// Checks the address against the allow-list and builds the HTTP client.
    pub fn new(config: VaultConfig) -> Result<Self, VaultError> {
        let base = Url::parse(&config.addr).map_err(|e| VaultError::Unreachable {
            addr: config.addr.clone(),
            reason: format!("not a URL: {e}"),
        })?;
        let allowed = config
            .allowed_addresses
            .iter()
            .any(|a| Url::parse(a).is_ok_and(|u| u.origin() == base.origin()));
        if !allowed {
            return Err(VaultError::NotAllowed {
                addr: config.addr.clone(),
            });
        }
        let mut headers = HeaderMap::new();
        headers.insert("X-Vault-Request", HeaderValue::from_static("true"));
        if let Some(ns) = &config.namespace {
            let value = HeaderValue::from_str(ns).map_err(|_| VaultError::BadResponse {
                what: "the Vault namespace setting".into(),
                detail: "it is not a valid header value".into(),
            })?;
            headers.insert("X-Vault-Namespace", value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &config.ca_bundle {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                VaultError::Unreachable {
                    addr: config.addr.clone(),
                    reason: format!("the CA bundle is not valid PEM: {e}"),
                }
            })?;
            // A configured bundle replaces the system roots: trust exactly what was asked for.
            builder = builder.tls_certs_only(certs);
        } else if base.scheme() == "http" {
            // Plain HTTP (a dev server, a loopback proxy): no TLS, and no redirects to where
            // TLS would be needed, so the system roots need not be loaded. Loading and parsing
            // them took a third of the broker's start-up time.
            builder = builder.tls_certs_only(std::iter::empty());
        }
        let http = builder.build().map_err(|e| VaultError::Unreachable {
            addr: config.addr.clone(),
            reason: format!("setting up the HTTP client: {}", error_chain(&e)),
        })?;
        Ok(Self {
            http,
            base,
            config,
            token: None,
            engines: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// Logs in once; later calls use the token.
    pub async fn login(&mut self, method: &LoginMethod) -> Result<&Token, VaultError> {
        let (mount, body) = match method {
            LoginMethod::Kubernetes {
                mount,
                role,
                token_file,
            } => {
                let jwt =
                    Zeroizing::new(std::fs::read_to_string(token_file).map_err(|source| {
                        VaultError::TokenFile {
                            path: token_file.display().to_string(),
                            source,
                        }
                    })?);
                (mount, login_body(Some(role), jwt.trim()))
            }
            LoginMethod::Jwt { mount, role, jwt } => {
                (mount, login_body(role.as_deref(), jwt.expose_secret()))
            }
        };
        let what = format!("login at auth/{mount}");
        let path = format!("auth/{}/login", mount.trim_matches('/'));
        let resp = self.call(Method::PUT, &path, Some(&body), &what).await?;
        #[derive(Deserialize)]
        struct LoginResponse {
            auth: AuthBlock,
        }
        let parsed: LoginResponse = parse(&resp, &what)?;
        let token = Token {
            value: parsed.auth.client_token,
            accessor: parsed.auth.accessor,
            ttl: Duration::from_secs(parsed.auth.lease_duration),
            renewable: parsed.auth.renewable,
        };
        Ok(self.token.insert(token))
    }

    /// Asks Vault what serves a mount: KV (and which version) or a dynamic engine.
    pub async fn engine_of(&self, mount: &str) -> Result<Engine, VaultError> {
        let what = format!("mount lookup of {mount}");
        let resp = self
            .call(
                Method::GET,
                &format!("sys/internal/ui/mounts/{}", mount.trim_matches('/')),
                None,
                &what,
            )
            .await?;
        #[derive(Deserialize)]
        struct MountInfo {
            data: MountData,
        }
        #[derive(Deserialize)]
        struct MountData {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            options: Option<BTreeMap<String, String>>,
        }
        let info: MountInfo = parse(&resp, &what)?;
        engine_from_mount(
            mount.trim_matches('/'),
            &info.data.kind,
            info.data
                .options
                .as_ref()
                .and_then(|o| o.get("version"))
                .map(String::as_str),
        )
    }

    /// The engine Vault reports for a mount (asked once per mount per job), checked against
    /// the one a reference states. The stated engine is never trusted on its own: a job could
    /// otherwise point a "KV" read at any path the broker's token can reach.
    pub async fn resolve_engine(&self, mount: &str, stated: Engine) -> Result<Engine, VaultError> {
        let key = mount.trim_matches('/').to_owned();
        let known = self.engines.lock().ok().and_then(|m| m.get(&key).copied());
        let actual = match known {
            Some(engine) => engine,
            None => {
                let engine = self.engine_of(&key).await?;
                if let Ok(mut m) = self.engines.lock() {
                    m.insert(key.clone(), engine);
                }
                engine
            }
        };
        reconcile_engine(&key, stated, actual)
    }

    /// Reads a KV secret: one field, or the whole secret as a JSON object.
    pub async fn read_kv(
        &self,
        mount: &str,
        path: &str,
        engine: Engine,
        version: Option<u64>,
        field: Option<&str>,
    ) -> Result<KvValue, VaultError> {
        let engine = self.resolve_engine(mount, engine).await?;
        if engine == Engine::Dynamic {
            return Err(VaultError::NotKv {
                mount: mount.trim_matches('/').to_owned(),
            });
        }
        let mount = mount.trim_matches('/');
        let path = path.trim_matches('/');
        let shown = format!("{mount}/{path}");
        let api_path = match (engine, version) {
            (Engine::KvV2, Some(v)) => format!("{mount}/data/{path}?version={v}"),
            (Engine::KvV2, None) => format!("{mount}/data/{path}"),
            _ => format!("{mount}/{path}"),
        };
        let what = format!("read of {shown}");
        let resp = self
            .call(Method::GET, &api_path, None, &what)
            .await
            .map_err(|e| match e {
                VaultError::NotFound { .. } => VaultError::NotFound {
                    path: shown.clone(),
                },
                other => other,
            })?;
        let envelope: Envelope<'_> = parse(&resp, &what)?;
        let (data, version) = if engine == Engine::KvV2 {
            let inner: KvV2Data<'_> = envelope
                .data
                .map(|d| serde_json::from_str(d.get()))
                .transpose()
                .map_err(|e| json_error(&what, &e))?
                .ok_or_else(|| VaultError::NotFound {
                    path: shown.clone(),
                })?;
            (inner.data, inner.metadata.and_then(|m| m.version))
        } else {
            (envelope.data, None)
        };
        let data = data
            .filter(|d| d.get() != "null")
            .ok_or_else(|| VaultError::NotFound {
                path: shown.clone(),
            })?;
        let value = extract(data, field, &shown)?;
        Ok(KvValue { value, version })
    }

    /// Reads a dynamic secret (database credentials, a certificate, ...): one `GET` that makes
    /// Vault issue a new secret and a lease on it. Read each path once per job and take its
    /// fields from the result, so that fields that belong together come from one lease.
    pub async fn read_dynamic(&self, mount: &str, path: &str) -> Result<DynamicSecret, VaultError> {
        let shown = format!("{}/{}", mount.trim_matches('/'), path.trim_matches('/'));
        let what = format!("read of {shown}");
        let body = self.call(Method::GET, &shown, None, &what).await?;
        let envelope: Envelope<'_> = parse(&body, &what)?;
        let lease = (!envelope.lease_id.is_empty()).then(|| Lease {
            id: envelope.lease_id.clone(),
            ttl: Duration::from_secs(envelope.lease_duration),
            renewable: envelope.renewable,
        });
        Ok(DynamicSecret {
            path: shown,
            body,
            lease,
        })
    }

    /// Renews a lease, asking for `increment` more time.
    pub async fn renew_lease(
        &self,
        lease_id: &str,
        increment: Duration,
    ) -> Result<Lease, VaultError> {
        let body = Zeroizing::new(
            serde_json::json!({"lease_id": lease_id, "increment": increment.as_secs()})
                .to_string()
                .into_bytes(),
        );
        let what = format!("renewal of lease {lease_id}");
        let resp = self
            .call(Method::PUT, "sys/leases/renew", Some(&body), &what)
            .await?;
        let envelope: Envelope<'_> = parse(&resp, &what)?;
        Ok(Lease {
            id: envelope.lease_id,
            ttl: Duration::from_secs(envelope.lease_duration),
            renewable: envelope.renewable,
        })
    }

    /// Renews the broker's own token (`auth/token/renew-self`), asking for `increment` more
    /// time; returns the TTL Vault granted. Leases live no longer than the token that made them.
    pub async fn renew_self(&self, increment: Duration) -> Result<Duration, VaultError> {
        let body = Zeroizing::new(
            serde_json::json!({"increment": increment.as_secs()})
                .to_string()
                .into_bytes(),
        );
        let what = "renewal of the Vault token";
        let resp = self
            .call(Method::PUT, "auth/token/renew-self", Some(&body), what)
            .await?;
        #[derive(Deserialize)]
        struct RenewResponse {
            auth: AuthBlock,
        }
        let parsed: RenewResponse = parse(&resp, what)?;
        Ok(Duration::from_secs(parsed.auth.lease_duration))
    }

    /// Revokes one lease (`sys/leases/revoke`): the dynamic secret stops working now rather
    /// than at its TTL.
    pub async fn revoke_lease(&self, lease_id: &str) -> Result<(), VaultError> {
        let body = Zeroizing::new(
            serde_json::json!({"lease_id": lease_id})
                .to_string()
                .into_bytes(),
        );
        self.call(
            Method::PUT,
            "sys/leases/revoke",
            Some(&body),
            &format!("revocation of lease {lease_id}"),
        )
        .await
        .map(drop)
    }

    /// Revokes the broker's own token (and with it any lease it still holds).
    pub async fn revoke_self(&mut self) -> Result<(), VaultError> {
        if self.token.is_none() {
            return Ok(());
        }
        self.call(
            Method::PUT,
            "auth/token/revoke-self",
            None,
            "token revocation",
        )
        .await?;
        self.token = None;
        Ok(())
    }

    /// One API call with retries; returns the body in a zeroizing buffer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Zeroizing<Vec<u8>>>,
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let url = self
            .base
            .join(&format!("v1/{path}"))
            .map_err(|e| bad(what, e))?;
        self.config
            .retry
            .run(|| async {
                let mut req = self.http.request(method.clone(), url.clone());
                if let Some(token) = &self.token {
                    let mut value = HeaderValue::from_str(token.value.expose_secret())
                        .map_err(|_| bad(what, "the token is not a valid header value"))?;
                    value.set_sensitive(true);
                    req = req.header("X-Vault-Token", value);
                }
                if let Some(body) = body {
                    req = req
                        .header("Content-Type", "application/json")
                        .body(body.to_vec());
                }
                let mut resp = req
                    .send()
                    .await
                    .map_err(|e| send_error(&self.config.addr, &e))?;
                let status = resp.status().as_u16();
                let mut buf = Zeroizing::new(Vec::with_capacity(
                    resp.content_length().unwrap_or(4096).min(1 << 20) as usize,
                ));
                while let Some(chunk) = resp.chunk().await.map_err(|e| VaultError::Unreachable {
                    addr: self.config.addr.clone(),
                    reason: error_chain(&e),
                })? {
                    if buf.capacity() - buf.len() < chunk.len() {
                        let mut bigger =
                            Zeroizing::new(Vec::with_capacity((buf.len() + chunk.len()) * 2));
                        bigger.extend_from_slice(&buf);
                        buf = bigger;
                    }
                    buf.extend_from_slice(&chunk);
                }
                if (200..300).contains(&status) {
                    return Ok(buf);
                }
                let detail = vault_errors(&buf);
                Err(match status {
                    403 => VaultError::Denied {
                        what: what.to_owned(),
                        detail,
                    },
                    404 => VaultError::NotFound {
                        path: path.to_owned(),
                    },
                    503 if detail.contains("sealed") => VaultError::Sealed {
                        addr: self.config.addr.clone(),
                    },
                    _ => VaultError::Status {
                        what: what.to_owned(),
                        status,
                        detail,
                    },
                })
            })
            .await
    }
}

/// Mount types whose reads issue a secret with a lease: the broker reads them as dynamic
/// secrets. Any type not listed here (and not KV) is refused: `system`, `identity`,
/// `cubbyhole`, `token`, `transit`, `totp`, `ssh`, `pki` and the like are APIs or
/// operations, not secrets for the job, and some hand back the caller's own credentials.
pub const DYNAMIC_MOUNT_TYPES: &[&str] = &[
    "database",
    "aws",
    "azure",
    "gcp",
    "consul",
    "nomad",
    "rabbitmq",
    "kubernetes",
    "ldap",
    "openldap",
    "ad",
    "alicloud",
    "mongodbatlas",
    "terraform",
];

/// A request that got no answer: a certificate the broker does not trust is final (retrying
/// cannot fix it, and the message says what will); anything else may be transient.
fn send_error(addr: &str, e: &reqwest::Error) -> VaultError {
    let reason = error_chain(e);
    if reason.contains("certificate") {
        VaultError::Untrusted {
            addr: addr.to_owned(),
            reason,
        }
    } else {
        VaultError::Unreachable {
            addr: addr.to_owned(),
            reason,
        }
    }
}

/// A mount's engine from its type and options: `kv`/`generic` are KV (version 2 when the
/// `version` option says so), the types of [`DYNAMIC_MOUNT_TYPES`] issue dynamic secrets, and
/// anything else is not a secrets engine the broker reads.
fn engine_from_mount(mount: &str, kind: &str, version: Option<&str>) -> Result<Engine, VaultError> {
    match (kind, version) {
        ("kv" | "generic", Some("2")) => Ok(Engine::KvV2),
        ("kv" | "generic", _) => Ok(Engine::KvV1),
        (dynamic, _) if DYNAMIC_MOUNT_TYPES.contains(&dynamic) => Ok(Engine::Dynamic),
        (other, _) => Err(VaultError::NotASecretsEngine {
            mount: mount.to_owned(),
            kind: other.to_owned(),
        }),
    }
}

/// The engine to read a mount with: Vault's answer, provided the reference's stated engine (if
/// any) agrees with it.
pub fn reconcile_engine(mount: &str, stated: Engine, actual: Engine) -> Result<Engine, VaultError> {
    if stated == Engine::Detect || stated == actual {
        return Ok(actual);
    }
    Err(VaultError::EngineMismatch {
        mount: mount.to_owned(),
        stated: engine_name(stated),
        actual: engine_name(actual),
    })
}

/// The name of an engine as references write it (`engine=`).
fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Detect => "detect",
        Engine::KvV1 => "kv-v1",
        Engine::KvV2 => "kv-v2",
        Engine::Dynamic => "dynamic",
    }
}

fn login_body(role: Option<&str>, jwt: &str) -> Zeroizing<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        role: Option<&'a str>,
        jwt: &'a str,
    }
    let mut out = Zeroizing::new(Vec::with_capacity(jwt.len() + 64));
    serde_json::to_writer(&mut *out, &Body { role, jwt }).expect("serializing strings cannot fail");
    out
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, VaultError> {
    serde_json::from_slice(body).map_err(|e| json_error(what, &e))
}

/// serde_json's messages can quote the offending value, which may be a secret; keep only the
/// kind of error and where it was.
fn json_error(what: &str, e: &serde_json::Error) -> VaultError {
    bad(
        what,
        format!(
            "{:?} JSON error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ),
    )
}

fn bad(what: &str, e: impl std::fmt::Display) -> VaultError {
    VaultError::BadResponse {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// One field of a secret's data, or all of it as JSON. Strings arrive as their bytes; other
/// JSON values as their JSON text.
fn extract(
    data: &RawValue,
    field: Option<&str>,
    path: &str,
) -> Result<SecretSlice<u8>, VaultError> {
    let Some(field) = field else {
        return Ok(SecretSlice::from(data.get().as_bytes().to_vec()));
    };
    let fields: BTreeMap<String, &RawValue> =
        serde_json::from_str(data.get()).map_err(|e| json_error(&format!("read of {path}"), &e))?;
    let raw = fields.get(field).ok_or_else(|| VaultError::MissingField {
        path: path.to_owned(),
        field: field.to_owned(),
        present: fields
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    if raw.get().starts_with('"') {
        let s: SecretString = serde_json::from_str(raw.get())
            .map_err(|e| json_error(&format!("read of {path}"), &e))?;
        Ok(SecretSlice::from(s.expose_secret().as_bytes().to_vec()))
    } else {
        Ok(SecretSlice::from(raw.get().as_bytes().to_vec()))
    }
}

/// Vault's `{"errors": [...]}` text; Vault's error messages carry no secret values.
fn vault_errors(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        // Vault's texts span lines ("1 error occurred:\n\t* permission denied\n\n"); a log
        // line must not.
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("; "),
        _ => "(no error text)".into(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blame::Blame;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn extracts_string_fields_as_bytes_and_others_as_json() {
        let data = raw(r#"{"password":"p\"w\n","port":5432,"nested":{"a":1}}"#);
        assert_eq!(
            extract(&data, Some("password"), "kv/db")
                .unwrap()
                .expose_secret(),
            b"p\"w\n"
        );
        assert_eq!(
            extract(&data, Some("port"), "kv/db")
                .unwrap()
                .expose_secret(),
            b"5432"
        );
        assert_eq!(
            extract(&data, Some("nested"), "kv/db")
                .unwrap()
                .expose_secret(),
            br#"{"a":1}"#
        );
        assert_eq!(
            extract(&data, None, "kv/db").unwrap().expose_secret(),
            data.get().as_bytes()
        );
    }

    #[test]
    fn missing_field_lists_the_fields_that_exist() {
        let data = raw(r#"{"user":"u","password":"p"}"#);
        let err = extract(&data, Some("pasword"), "kv/db")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no field \"pasword\"") && err.contains("password, user"),
            "{err}"
        );
    }

    #[test]
    fn mount_types_map_to_engines() {
        let engine = |kind, version| engine_from_mount("m", kind, version).ok();
        assert_eq!(engine("kv", Some("2")), Some(Engine::KvV2));
        assert_eq!(engine("kv", Some("1")), Some(Engine::KvV1));
        assert_eq!(engine("kv", None), Some(Engine::KvV1));
        assert_eq!(engine("generic", None), Some(Engine::KvV1));
        assert_eq!(engine("database", None), Some(Engine::Dynamic));
        assert_eq!(engine("aws", None), Some(Engine::Dynamic));
    }

    #[test]
    fn mounts_that_are_not_secrets_engines_are_refused() {
        for kind in [
            "system",
            "identity",
            "cubbyhole",
            "token",
            "transit",
            "totp",
            "pki",
            "ns_system",
        ] {
            let err = engine_from_mount("m", kind, None).expect_err(kind);
            assert!(
                err.to_string().contains(&format!("type {kind}")),
                "{kind}: {err}"
            );
            assert_eq!(err.blame(), Blame::Reference);
        }
    }

    #[test]
    fn a_stated_engine_must_match_the_mount() {
        assert_eq!(
            reconcile_engine("kv", Engine::Detect, Engine::KvV2).ok(),
            Some(Engine::KvV2)
        );
        assert_eq!(
            reconcile_engine("kv", Engine::KvV2, Engine::KvV2).ok(),
            Some(Engine::KvV2)
        );
        for (stated, actual) in [
            (Engine::KvV1, Engine::KvV2),
            (Engine::KvV1, Engine::Dynamic),
            (Engine::Dynamic, Engine::KvV2),
        ] {
            let err = reconcile_engine("m", stated, actual).expect_err("mismatch");
            assert!(err.to_string().contains("states engine="), "{err}");
            assert_eq!(err.blame(), Blame::Reference);
        }
    }

    #[test]
    fn dynamic_secret_fields_come_from_one_body_and_debug_hides_it() {
        let secret = DynamicSecret {
            path: "database/creds/app".into(),
            body: Zeroizing::new(
                br#"{"lease_id":"database/creds/app/abc","lease_duration":6,"renewable":true,"data":{"username":"v-app-1","password":"hunter2-pass"}}"#
                    .to_vec(),
            ),
            lease: Some(Lease {
                id: "database/creds/app/abc".into(),
                ttl: Duration::from_secs(6),
                renewable: true,
            }),
        };
        assert_eq!(
            secret.field(Some("username")).unwrap().expose_secret(),
            b"v-app-1"
        );
        assert_eq!(
            secret.field(Some("password")).unwrap().expose_secret(),
            b"hunter2-pass"
        );
        let err = secret.field(Some("pass")).unwrap_err().to_string();
        assert!(err.contains("password, username"), "{err}");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("database/creds/app/abc"), "{shown}");
    }

    #[test]
    fn address_must_be_on_the_allow_list() {
        let config = VaultConfig {
            addr: "https://evil.example:8200".into(),
            allowed_addresses: vec!["https://vault.example:8200".into()],
            namespace: None,
            ca_bundle: None,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(5),
        };
        let err = VaultClient::new(config).unwrap_err();
        assert!(matches!(err, VaultError::NotAllowed { .. }), "{err}");
    }

    #[test]
    fn token_debug_hides_the_token() {
        let token = Token {
            value: SecretString::from("hvs.very-secret-token"),
            accessor: "acc".into(),
            ttl: Duration::from_secs(60),
            renewable: true,
        };
        let shown = format!("{token:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn parse_errors_never_quote_the_value() {
        let data = raw(r#""hunter2-not-an-object""#);
        let err = extract(&data, Some("password"), "kv/db")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn vault_error_text_is_extracted() {
        assert_eq!(
            vault_errors(br#"{"errors":["permission denied"]}"#),
            "permission denied"
        );
        assert_eq!(
            vault_errors(br#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#),
            "1 error occurred: * permission denied"
        );
        assert_eq!(vault_errors(b"garbage"), "(no error text)");
    }
}
