use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Settings the bed writes to `$KEYHOLE_TESTBED_DIR/env` at `up` (see `scripts/testbed env`).
#[derive(Debug, Clone)]
pub struct BedEnv {
    pub testbed_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub vault_addr: String,
    pub vault_token: String,
    /// Vault's address as pods see it (on the bed's bridge, not loopback).
    pub vault_pod_addr: String,
    pub apiserver_url: String,
    pub jwt_issuer: String,
    pub jwt_signing_key: PathBuf,
    pub node_name: String,
    /// Vault over TLS with the bed's PKI: loopback address, bridge address and the CA that
    /// signed its certificate.
    pub vault_tls_addr: String,
    pub vault_tls_pod_addr: String,
    pub vault_ca_file: PathBuf,
    /// Vault's file audit device: one JSON line per request and response.
    pub vault_audit_log: PathBuf,
    /// Redis behind Vault's `database/` engine; `None` on a bed started before Redis was part
    /// of it (`scripts/testbed up` adds it in place).
    pub redis: Option<RedisEnv>,
    /// The private OCI registry pods pull from with an image pull Secret; `None` on a bed
    /// started before the registry was part of it (`scripts/testbed up` restarts such a bed).
    pub registry: Option<RegistryEnv>,
    /// The S3 object store for CI cache; `None` on a bed started before it was part of it
    /// (`scripts/testbed up` adds it in place).
    pub s3: Option<S3Env>,
}

/// Where the bed's Redis listens and where its admin password is.
#[derive(Debug, Clone)]
pub struct RedisEnv {
    /// `127.0.0.1:<port>`, for the tests.
    pub addr: String,
    /// On the bed's bridge, for pods.
    pub pod_addr: String,
    pub password_file: PathBuf,
}

/// The bed's private registry (TLS with the bed's CA, htpasswd auth) and the image pushed there.
#[derive(Debug, Clone)]
pub struct RegistryEnv {
    /// `10.213.0.1:5000`: on the bed's bridge, where containerd pulls for pods.
    pub addr: String,
    pub user: String,
    /// Generated at `up`, mode 0600.
    pub password_file: PathBuf,
    /// The busybox job image, present only in the registry: a pod naming it pulls it for real.
    pub private_image: String,
}

impl RegistryEnv {
    /// The password of [`Self::user`], read from the bed's state.
    pub fn password(&self) -> Result<String> {
        let text = std::fs::read_to_string(&self.password_file)
            .with_context(|| format!("reading {}", self.password_file.display()))?;
        Ok(text.trim().to_owned())
    }

    /// The `.dockerconfigjson` of an image pull Secret (type `kubernetes.io/dockerconfigjson`)
    /// that logs in to this registry as `user` with `password`.
    pub fn docker_config_json(&self, user: &str, password: &str) -> String {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        serde_json::json!({"auths": {&self.addr: {
            "username": user, "password": password, "auth": auth
        }}})
        .to_string()
    }
}

/// The bed's S3 object store (versitygw, posix backend): one bucket, one key pair, SigV4 only.
#[derive(Debug, Clone)]
pub struct S3Env {
    /// `http://10.213.0.1:9000`: plain HTTP on the bed's bridge, where job pods reach it (and
    /// this machine too). Objects are addressed path-style: `<endpoint>/<bucket>/<key>`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    /// Generated at `up`, mode 0600.
    pub secret_key_file: PathBuf,
}

impl S3Env {
    /// The secret key of [`Self::access_key`], read from the bed's state.
    pub fn secret_key(&self) -> Result<String> {
        let text = std::fs::read_to_string(&self.secret_key_file)
            .with_context(|| format!("reading {}", self.secret_key_file.display()))?;
        Ok(text.trim().to_owned())
    }

    /// The bed's key pair, for signing.
    pub fn credentials(&self) -> Result<rusty_s3::Credentials> {
        Ok(rusty_s3::Credentials::new(
            &self.access_key,
            self.secret_key()?,
        ))
    }

    /// The bucket, path-style, to sign requests for (`bucket.get_object(Some(&credentials),
    /// key).sign(duration)` gives a pre-signed URL).
    pub fn bucket(&self) -> Result<rusty_s3::Bucket> {
        let endpoint = self
            .endpoint
            .parse()
            .with_context(|| format!("the S3 endpoint {:?} is not a URL", self.endpoint))?;
        rusty_s3::Bucket::new(
            endpoint,
            rusty_s3::UrlStyle::Path,
            self.bucket.clone(),
            self.region.clone(),
        )
        .with_context(|| format!("bucket {} at {}", self.bucket, self.endpoint))
    }
}

impl BedEnv {
    /// Reads the env file of the running bed, or explains how to start one.
    pub fn load() -> Result<Self> {
        let dir = std::env::var_os("KEYHOLE_TESTBED_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/keyhole-testbed"));
        let file = dir.join("env");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "test bed not up: {} is missing; run `scripts/testbed up` (after `scripts/testbed build`)",
                file.display()
            )
        })?;
        Self::parse(&text).with_context(|| format!("reading {}", file.display()))
    }

    fn parse(text: &str) -> Result<Self> {
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .collect();
        let get = |k: &str| -> Result<String> {
            vars.get(k).map(|v| v.to_string()).with_context(|| {
                format!("{k} is not set in the bed's env file; rerun `scripts/testbed up`")
            })
        };
        Ok(Self {
            testbed_dir: get("KEYHOLE_TESTBED_DIR")?.into(),
            kubeconfig: get("KUBECONFIG")?.into(),
            vault_addr: get("VAULT_ADDR")?,
            vault_token: get("VAULT_TOKEN")?,
            vault_pod_addr: get("KEYHOLE_VAULT_POD_ADDR")?,
            apiserver_url: get("KEYHOLE_APISERVER_URL")?,
            jwt_issuer: get("KEYHOLE_JWT_ISSUER")?,
            jwt_signing_key: get("KEYHOLE_JWT_SIGNING_KEY")?.into(),
            node_name: get("KEYHOLE_NODE_NAME")?,
            vault_tls_addr: get("KEYHOLE_VAULT_TLS_ADDR")?,
            vault_tls_pod_addr: get("KEYHOLE_VAULT_TLS_POD_ADDR")?,
            vault_ca_file: get("KEYHOLE_VAULT_CA_FILE")?.into(),
            vault_audit_log: get("KEYHOLE_VAULT_AUDIT_LOG")?.into(),
            redis: match (
                get("KEYHOLE_REDIS_ADDR"),
                get("KEYHOLE_REDIS_POD_ADDR"),
                get("KEYHOLE_REDIS_PASSWORD_FILE"),
            ) {
                (Ok(addr), Ok(pod_addr), Ok(file)) => Some(RedisEnv {
                    addr,
                    pod_addr,
                    password_file: file.into(),
                }),
                _ => None,
            },
            registry: match (
                get("KEYHOLE_REGISTRY"),
                get("KEYHOLE_REGISTRY_USER"),
                get("KEYHOLE_REGISTRY_PASSWORD_FILE"),
                get("KEYHOLE_PRIVATE_IMAGE"),
            ) {
                (Ok(addr), Ok(user), Ok(file), Ok(private_image)) => Some(RegistryEnv {
                    addr,
                    user,
                    password_file: file.into(),
                    private_image,
                }),
                _ => None,
            },
            s3: match (
                get("KEYHOLE_S3_ENDPOINT"),
                get("KEYHOLE_S3_BUCKET"),
                get("KEYHOLE_S3_REGION"),
                get("KEYHOLE_S3_ACCESS_KEY"),
                get("KEYHOLE_S3_SECRET_KEY_FILE"),
            ) {
                (Ok(endpoint), Ok(bucket), Ok(region), Ok(access_key), Ok(file)) => Some(S3Env {
                    endpoint,
                    bucket,
                    region,
                    access_key,
                    secret_key_file: file.into(),
                }),
                _ => None,
            },
        })
    }

    /// The bed's registry, or an explanation of how to get it.
    pub fn registry(&self) -> Result<&RegistryEnv> {
        self.registry.as_ref().context(
            "the bed has no registry: run `scripts/testbed build && scripts/testbed up` (up restarts a bed without one)",
        )
    }

    /// The bed's S3 store, or an explanation of how to get it.
    pub fn s3(&self) -> Result<&S3Env> {
        self.s3.as_ref().context(
            "the bed has no S3 store: run `scripts/testbed build s3 && scripts/testbed up` (up adds it to a running bed)",
        )
    }

    /// A binary the bed built (kubectl, etcdctl, vault, helm, ...).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.testbed_dir.join("bin").join(name)
    }
}

/// A connection to the running bed as its administrator.
#[derive(Clone)]
pub struct TestBed {
    pub env: BedEnv,
    pub client: Client,
    pub(crate) admin_config: Config,
}

impl std::fmt::Debug for TestBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBed")
            .field("env", &self.env.testbed_dir)
            .finish()
    }
}

impl TestBed {
    /// Connects to the bed, panicking with the command to run when it is not up.
    pub async fn connect() -> Self {
        match Self::try_connect().await {
            Ok(bed) => bed,
            Err(e) => panic!("{e:#}"),
        }
    }

    async fn try_connect() -> Result<Self> {
        install_crypto_provider();
        let env = BedEnv::load()?;
        let kubeconfig = Kubeconfig::read_from(&env.kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", env.kubeconfig.display()))?;
        let admin_config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let client = Client::try_from(admin_config.clone())?;
        client.apiserver_version().await.with_context(|| {
            format!(
                "test bed not up: kube-apiserver at {} does not answer; run `scripts/testbed status`, then `scripts/testbed up`",
                env.apiserver_url
            )
        })?;
        Ok(Self {
            env,
            client,
            admin_config,
        })
    }

    /// A client that authenticates with a bearer token only (e.g. a ServiceAccount's), so RBAC
    /// decides what it may do.
    pub fn client_with_token(&self, token: &str) -> Result<Client> {
        let mut config = self.admin_config.clone();
        config.auth_info = AuthInfo {
            token: Some(token.to_owned().into()),
            ..AuthInfo::default()
        };
        Ok(Client::try_from(config)?)
    }

    /// An admin client that reaches the apiserver at `url` (e.g. through a
    /// [`crate::OutageProxy`]); the apiserver's certificate names 127.0.0.1.
    pub fn client_at(&self, url: &str) -> Result<Client> {
        let mut config = self.admin_config.clone();
        config.cluster_url = url.parse()?;
        Ok(Client::try_from(config)?)
    }

    /// Issues a short-lived token for a ServiceAccount through the TokenRequest API.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
    ) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                expiration_seconds: Some(600),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        let issued = api
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{service_account}"))?;
        issued
            .status
            .map(|s| s.token)
            .context("TokenRequest returned no status")
    }

    /// Path of a file in the bed's state directory.
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.env.testbed_dir.join(relative)
    }
}

/// kube and reqwest share one rustls provider; install it once per process.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
