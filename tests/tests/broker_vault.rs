//! The broker's Vault client against the bed's real Vault: logins, KV v1/v2 reads, and every
//! failure a user can meet, each with its message. Needs `scripts/testbed up`.

use std::time::Duration;

use keyhole_broker::vault::{LoginMethod, RetryPolicy, VaultClient, VaultConfig, VaultError};
use keyhole_contract::reference::Engine;
use keyhole_tests::{JobNamespace, OwnVault, TestBed, TestNamespace, VaultAdmin, VaultRole};
use secrecy::ExposeSecret;
use serde_json::json;

fn config(addr: &str) -> VaultConfig {
    VaultConfig {
        addr: addr.to_owned(),
        allowed_addresses: vec![addr.to_owned()],
        namespace: None,
        ca_bundle: None,
        retry: RetryPolicy {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            deadline: Duration::from_secs(2),
        },
        request_timeout: Duration::from_secs(5),
    }
}

/// A JWT login that never gets as far as checking the token (Vault down or sealed).
fn placeholder_jwt_login() -> LoginMethod {
    LoginMethod::Jwt {
        mount: "jwt".into(),
        role: None,
        jwt: "x.y.z".into(),
    }
}

/// A namespace, a ServiceAccount `job`, a policy reading `kv/data/<ns>/*`, `kv1/<ns>/*` and the
/// bed's dynamic Redis credentials, a kubernetes-auth role bound to it, and a token file for
/// that SA.
struct Fixture {
    bed: TestBed,
    vault: VaultAdmin,
    ns: TestNamespace,
    role: String,
    token_file: tempfile_path::TempPath,
}

mod tempfile_path {
    /// A file removed on drop.
    #[derive(Debug)]
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Fixture {
    async fn new(tag: &str) -> Self {
        let JobNamespace { bed, ns, vault } = JobNamespace::builder(tag)
            .service_account("job")
            .vault_role(
                VaultRole::new("job")
                    .read("kv/data/{ns}/*")
                    .read("kv1/{ns}/*")
                    // Vault answers a mount lookup only to a token with a grant under it.
                    .read("database/creds/short-lived"),
            )
            .create()
            .await;
        let name = ns.name.clone();
        let jwt = bed
            .service_account_token(&ns.name, "job", &["vault"])
            .await
            .unwrap();
        let token_file = tempfile_path::TempPath(std::env::temp_dir().join(format!("{name}.jwt")));
        std::fs::write(&token_file.0, jwt).unwrap();
        Self {
            role: name,
            bed,
            vault,
            ns,
            token_file,
        }
    }

    fn login(&self) -> LoginMethod {
        LoginMethod::Kubernetes {
            mount: "kubernetes".into(),
            role: self.role.clone(),
            token_file: self.token_file.0.clone(),
        }
    }

    async fn client(&self) -> VaultClient {
        let mut client = VaultClient::new(config(&self.bed.env.vault_addr)).unwrap();
        client.login(&self.login()).await.unwrap();
        client
    }
}

#[tokio::test]
async fn reads_kv_v2_fields_whole_secrets_and_pinned_versions() {
    let f = Fixture::new("vkv2").await;
    let ns = &f.ns.name;
    f.vault
        .write(
            &format!("kv/data/{ns}/db"),
            json!({"data": {"password": "first-pass", "user": "app"}}),
        )
        .await
        .unwrap();
    f.vault
        .write(
            &format!("kv/data/{ns}/db"),
            json!({"data": {"password": "second-pass", "user": "app"}}),
        )
        .await
        .unwrap();
    let client = f.client().await;
    let path = format!("{ns}/db");

    let latest = client
        .read_kv("kv", &path, Engine::Detect, None, Some("password"))
        .await
        .unwrap();
    assert_eq!(latest.value.expose_secret(), b"second-pass");
    assert_eq!(latest.version, Some(2));

    let pinned = client
        .read_kv("kv", &path, Engine::KvV2, Some(1), Some("password"))
        .await
        .unwrap();
    assert_eq!(pinned.value.expose_secret(), b"first-pass");
    assert_eq!(pinned.version, Some(1));

    let whole = client
        .read_kv("kv", &path, Engine::KvV2, None, None)
        .await
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(whole.value.expose_secret()).unwrap();
    assert_eq!(parsed, json!({"password": "second-pass", "user": "app"}));
}

#[tokio::test]
async fn reads_kv_v1_and_detects_the_engine_of_kv_and_other_mounts() {
    let f = Fixture::new("vkv1").await;
    let ns = &f.ns.name;
    f.vault
        .write(&format!("kv1/{ns}/api"), json!({"key": "v1-api-key"}))
        .await
        .unwrap();
    let client = f.client().await;
    assert_eq!(client.engine_of("kv1").await.unwrap(), Engine::KvV1);
    assert_eq!(client.engine_of("kv").await.unwrap(), Engine::KvV2);
    // Anything but KV is dynamic: the bed's database engine.
    assert_eq!(client.engine_of("database").await.unwrap(), Engine::Dynamic);
    let v = client
        .read_kv(
            "kv1",
            &format!("{ns}/api"),
            Engine::Detect,
            None,
            Some("key"),
        )
        .await
        .unwrap();
    assert_eq!(v.value.expose_secret(), b"v1-api-key");
    assert_eq!(v.version, None);
}

#[tokio::test]
async fn missing_path_missing_field_and_denied_path_say_what_is_wrong() {
    let f = Fixture::new("vfail").await;
    let ns = &f.ns.name;
    f.vault
        .write(
            &format!("kv/data/{ns}/db"),
            json!({"data": {"password": "p-123456"}}),
        )
        .await
        .unwrap();
    let client = f.client().await;

    let missing = client
        .read_kv("kv", &format!("{ns}/nope"), Engine::KvV2, None, Some("x"))
        .await
        .unwrap_err();
    assert!(matches!(missing, VaultError::NotFound { .. }), "{missing}");
    assert!(
        missing.to_string().contains(&format!("kv/{ns}/nope")),
        "{missing}"
    );

    let field = client
        .read_kv(
            "kv",
            &format!("{ns}/db"),
            Engine::KvV2,
            None,
            Some("passwd"),
        )
        .await
        .unwrap_err();
    assert!(
        field.to_string().contains("no field \"passwd\"") && field.to_string().contains("password"),
        "{field}"
    );

    f.vault
        .write(
            "kv/data/other-team/db",
            json!({"data": {"password": "not-yours"}}),
        )
        .await
        .unwrap();
    let denied = client
        .read_kv("kv", "other-team/db", Engine::KvV2, None, Some("password"))
        .await
        .unwrap_err();
    assert!(matches!(denied, VaultError::Denied { .. }), "{denied}");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    assert!(!denied.to_string().contains("not-yours"));
}

#[tokio::test]
async fn login_is_refused_for_a_role_the_service_account_is_not_bound_to() {
    let f = Fixture::new("vrole").await;
    let mut client = VaultClient::new(config(&f.bed.env.vault_addr)).unwrap();
    let err = client
        .login(&LoginMethod::Kubernetes {
            mount: "kubernetes".into(),
            role: "no-such-role".into(),
            token_file: f.token_file.0.clone(),
        })
        .await
        .unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("login at auth/kubernetes"), "{shown}");
}

#[tokio::test]
async fn revoking_the_token_makes_vault_forget_it() {
    let f = Fixture::new("vrevoke").await;
    let mut client = f.client().await;
    let accessor = client.token().unwrap().accessor.clone();
    let (status, _) = f
        .vault
        .write_status("auth/token/lookup-accessor", json!({"accessor": accessor}))
        .await;
    assert!(status.is_success(), "the token exists before revocation");
    client.revoke_self().await.unwrap();
    let (status, body) = f
        .vault
        .write_status("auth/token/lookup-accessor", json!({"accessor": accessor}))
        .await;
    assert_eq!(
        status.as_u16(),
        400,
        "Vault no longer knows the token: {body}"
    );
}

#[tokio::test]
async fn unreachable_vault_is_retried_then_reported_with_the_address() {
    let mut client = VaultClient::new(config("http://127.0.0.1:1")).unwrap();
    let start = std::time::Instant::now();
    let err = client.login(&placeholder_jwt_login()).await.unwrap_err();
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "it retried before giving up"
    );
}

#[tokio::test]
async fn an_address_off_the_allow_list_gets_no_request() {
    let bed = TestBed::connect().await;
    let mut cfg = config(&bed.env.vault_addr);
    cfg.allowed_addresses = vec!["https://vault.example.com:8200".into()];
    let err = VaultClient::new(cfg).unwrap_err();
    assert!(matches!(err, VaultError::NotAllowed { .. }), "{err}");
    assert!(err.to_string().contains("allow-list"), "{err}");
}

#[tokio::test]
async fn a_sealed_vault_is_reported_as_sealed_without_retrying() {
    // Sealing the shared Vault would break other tests: start a dev server of our own.
    let bed = TestBed::connect().await;
    let vault = OwnVault::start(&bed).await;
    vault.seal().await;
    let addr = vault.addr.clone();
    let mut client = VaultClient::new(config(&addr)).unwrap();
    let err = client.login(&placeholder_jwt_login()).await.unwrap_err();
    assert!(matches!(err, VaultError::Sealed { .. }), "{err}");
    assert!(err.to_string().contains("unseal"), "{err}");
}
