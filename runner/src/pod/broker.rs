//! The broker container (the job pod's first) and its inputs volume: the only container with
//! a ServiceAccount token, the per-job Secret and the Vault CA; the build container sees none
//! of them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, Container, DownwardAPIProjection, DownwardAPIVolumeFile, ExecAction,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, SecretProjection, SecurityContext,
    ServiceAccountTokenProjection, VolumeProjection,
};
use keyhole_contract as contract;

/// How long the broker's postStart hook waits for the delivery: as long as the startup probe
/// used to allow (600 one-second probes). The broker gives up on Vault and the apiserver long
/// before, and exits, which ends the hook at once.
const DELIVERY_WAIT_SECONDS: &str = "600";

use super::env::env_list;
use super::parts::{key_to_path, mount, read_only_mount, restricted};
use super::resources::broker_resources;
use crate::config::RunnerConfig;
use crate::secrets::{JobSecrets, VaultMethod};

/// The broker's environment: where to log in and what it may do, never a secret.
fn broker_env(runner: &RunnerConfig, secrets: &JobSecrets) -> BTreeMap<String, String> {
    let k = &runner.kubernetes;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(contract::env::NAMESPACE.into(), k.namespace.clone());
    env.insert(
        contract::env::FILE_GID.into(),
        k.pod_security_context.fs_group.to_string(),
    );
    // The broker cuts and paces the log where it is made (see docs/runner.md, "Big logs").
    env.insert(
        contract::env::LOG_LIMIT_KIB.into(),
        runner.output_limit.to_string(),
    );
    env.insert(
        contract::env::LOG_RATE_KIB.into(),
        runner.keyhole.log_rate_kib.to_string(),
    );
    if let Some(v) = &secrets.vault {
        env.insert(contract::env::VAULT_ADDR.into(), v.addr.clone());
        env.insert(contract::env::VAULT_AUTH_MOUNT.into(), v.auth_mount.clone());
        env.insert(contract::env::VAULT_ROLE.into(), v.role.clone());
        if let Some(n) = &v.namespace {
            env.insert(contract::env::VAULT_NAMESPACE.into(), n.clone());
        }
        if let VaultMethod::Jwt { id_token_variable } = &v.method {
            env.insert(contract::env::VAULT_AUTH_METHOD.into(), "jwt".into());
            env.insert(
                contract::env::VAULT_JWT_INPUT.into(),
                id_token_variable.clone(),
            );
        }
        // The broker's own check of where its token may go: the runner's allow-list, not just
        // the address it was given.
        env.insert(contract::env::VAULT_ALLOWED.into(), v.allowed.join(","));
        if runner.keyhole.vault_ca_config_map.is_some() {
            env.insert(
                contract::env::VAULT_CA_FILE.into(),
                format!("{}/{}", contract::INPUTS_DIR, contract::INPUT_VAULT_CA),
            );
        }
    }
    if secrets.uses_kubernetes {
        env.insert(
            contract::env::KUBE_API.into(),
            runner.keyhole.kube_api.clone(),
        );
        env.insert(
            contract::env::KUBE_CA_FILE.into(),
            format!("{}/kube-ca.crt", contract::INPUTS_DIR),
        );
    }
    env
}

/// The inputs volume's projected sources: a ServiceAccount token for Vault's audience, the
/// pod's annotations (the references), the per-job Secret's entries, and what the job's
/// secret sources need besides (the Vault CA; a token and CA for the Kubernetes API).
pub(super) fn inputs_sources<'a>(
    runner: &RunnerConfig,
    secrets: &JobSecrets,
    pod_name: &str,
    secret_keys: impl Iterator<Item = &'a String>,
) -> Vec<VolumeProjection> {
    let expiry = runner.keyhole.token_expiration_seconds.max(600);
    let token = |audience: Option<&str>, path: &str| VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: audience.map(Into::into),
            expiration_seconds: Some(expiry),
            path: path.into(),
        }),
        ..Default::default()
    };
    let ca_bundle = |name: &str, path: &str| VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: name.into(),
            items: Some(vec![key_to_path("ca.crt", path)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let annotations = VolumeProjection {
        downward_api: Some(DownwardAPIProjection {
            items: Some(vec![DownwardAPIVolumeFile {
                path: contract::INPUT_ANNOTATIONS.into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.annotations".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    };
    let job_secret = VolumeProjection {
        secret: Some(SecretProjection {
            name: pod_name.into(),
            items: Some(
                secret_keys
                    .map(|key| {
                        key_to_path(key, format!("{}/{key}", contract::INPUT_JOB_SECRET_DIR))
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut sources = Vec::new();
    if logs_in_with_kubernetes_auth(secrets) {
        sources.push(token(
            Some(&runner.keyhole.vault_audience),
            contract::INPUT_SA_TOKEN,
        ));
    }
    if secrets.uses_kubernetes {
        sources.push(token(None, contract::INPUT_KUBE_TOKEN));
        sources.push(ca_bundle("kube-root-ca.crt", "kube-ca.crt"));
    }
    sources.extend([annotations, job_secret]);
    if let (Some(_), Some(ca)) = (&secrets.vault, &runner.keyhole.vault_ca_config_map) {
        sources.push(ca_bundle(ca, contract::INPUT_VAULT_CA));
    }
    sources
}

/// Whether the broker logs in to Vault with the pod's ServiceAccount token (Kubernetes auth).
/// Only then does the pod carry a Vault-audience token: a job without Vault secrets, or whose
/// login is GitLab's ID token (JWT auth), holds no such credential, and its pod costs the
/// kubelet no token request.
fn logs_in_with_kubernetes_auth(secrets: &JobSecrets) -> bool {
    secrets
        .vault
        .as_ref()
        .is_some_and(|v| v.method == VaultMethod::Kubernetes)
}

/// The broker container, the pod's first. Its postStart hook (`keyhole-broker ready`) holds
/// the next containers back until every secret is delivered.
///
/// `waits` are the services the job's script waits for: the broker, which shares the pod's
/// loopback, probes their ports and then lets the script start (see
/// [`contract::GATE_FIFO`]); `steps` the preparation containers it waits for first.
///
/// `other_user`: the build container runs as a uid of the job's choosing (`kubernetes: user`),
/// not the pod's, so the broker makes the files `0440` with the pod's `fsGroup` (which every
/// container of the pod has) instead of `0400` for the pod's uid. `cancel_wait_seconds`: see
/// [`contract::env::CANCEL_WAIT`].
pub(super) fn broker_container(
    runner: &RunnerConfig,
    secrets: &JobSecrets,
    waits: &[contract::ServiceWait],
    steps: &[&str],
    other_user: bool,
    cancel_wait_seconds: u64,
) -> Container {
    let mut env = broker_env(runner, secrets);
    if other_user {
        let security = &runner.kubernetes.pod_security_context;
        env.insert(
            contract::env::FILE_UID.into(),
            security.run_as_user.to_string(),
        );
        env.insert(
            contract::env::FILE_GID.into(),
            security.fs_group.to_string(),
        );
    }
    if !waits.is_empty() {
        env.insert(
            contract::env::WAIT_FOR_SERVICES.into(),
            contract::encode_service_waits(waits),
        );
        env.insert(
            contract::env::WAIT_FOR_SERVICES_TIMEOUT.into(),
            runner.kubernetes.services_timeout_secs().to_string(),
        );
    }
    if cancel_wait_seconds > 0 {
        env.insert(
            contract::env::CANCEL_WAIT.into(),
            cancel_wait_seconds.to_string(),
        );
    }
    if !steps.is_empty() {
        env.insert(
            contract::env::WAIT_FOR_STEPS.into(),
            contract::encode_steps(steps),
        );
    }
    Container {
        name: contract::BROKER_CONTAINER.into(),
        image: Some(runner.keyhole.broker_image.clone()),
        args: Some(vec!["run".into()]),
        env: Some(env_list(&env)),
        resources: Some(broker_resources(&runner.kubernetes)),
        // The build container starts only once every secret is delivered: the kubelet starts
        // a pod's containers one after another, each once the one before's postStart hook has
        // returned, and this one returns the moment the broker marks the delivery done (or
        // fails when the broker exits: the next containers start then too, and the script,
        // finding no ready marker, runs none of the job's commands). All in one kubelet sync:
        // a native sidecar, or a startup probe, waits for the kubelet's next status relist,
        // up to a second (P7 in scripts/bench runner).
        lifecycle: Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(
                        [
                            "/usr/local/bin/keyhole-broker",
                            "ready",
                            "--wait",
                            DELIVERY_WAIT_SECONDS,
                        ]
                        .map(String::from)
                        .into(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            ..restricted()
        }),
        volume_mounts: Some(vec![
            read_only_mount(contract::INPUTS_VOLUME, contract::INPUTS_DIR),
            mount(contract::SECRETS_VOLUME, contract::SECRETS_DIR),
            mount(contract::RUNTIME_VOLUME, contract::RUNTIME_DIR),
        ]),
        ..Default::default()
    }
}
