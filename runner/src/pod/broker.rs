//! The broker sidecar (a native sidecar: an init container with `restartPolicy: Always`) and
//! its inputs volume: the only container with a ServiceAccount token, the per-job Secret and
//! the Vault CA; the build container sees none of them.

use std::collections::BTreeMap;

use keyhole_contract as contract;
use serde_json::{Value, json};

/// How long the broker's postStart hook waits for the delivery: as long as the startup probe
/// used to allow (600 one-second probes). The broker gives up on Vault and the apiserver long
/// before, and exits, which ends the hook at once.
const DELIVERY_WAIT_SECONDS: &str = "600";

use super::env::env_list;
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
) -> Vec<Value> {
    let expiry = runner.keyhole.token_expiration_seconds.max(600);
    let mut sources = vec![
        json!({"serviceAccountToken": {"audience": runner.keyhole.vault_audience, "expirationSeconds": expiry, "path": contract::INPUT_SA_TOKEN}}),
        json!({"downwardAPI": {"items": [{"path": contract::INPUT_ANNOTATIONS, "fieldRef": {"fieldPath": "metadata.annotations"}}]}}),
        json!({"secret": {"name": pod_name, "items": secret_keys.map(|key| json!({"key": key, "path": format!("{}/{key}", contract::INPUT_JOB_SECRET_DIR)})).collect::<Vec<_>>()}}),
    ];
    if let (Some(_), Some(ca)) = (&secrets.vault, &runner.keyhole.vault_ca_config_map) {
        sources.push(json!({"configMap": {"name": ca, "items": [{"key": "ca.crt", "path": contract::INPUT_VAULT_CA}]}}));
    }
    if secrets.uses_kubernetes {
        sources.insert(1, json!({"serviceAccountToken": {"expirationSeconds": expiry, "path": contract::INPUT_KUBE_TOKEN}}));
        sources.insert(2, json!({"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "kube-ca.crt"}]}}));
    }
    sources
}

/// The broker container. Its startup probe (`keyhole-broker ready`) holds the build container
/// back until every secret is delivered.
///
/// `waits` are the services the job's script waits for: the broker, which shares the pod's
/// loopback, probes their ports and then lets the script start (see
/// [`contract::SERVICES_FIFO`]).
///
/// `other_user`: the build container runs as a uid of the job's choosing (`kubernetes: user`),
/// not the pod's, so the broker makes the files `0440` with the pod's `fsGroup` (which every
/// container of the pod has) instead of `0400` for the pod's uid.
pub(super) fn broker_container(
    runner: &RunnerConfig,
    secrets: &JobSecrets,
    waits: &[contract::ServiceWait],
    other_user: bool,
) -> Value {
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
    json!({
        "name": contract::BROKER_CONTAINER,
        "image": runner.keyhole.broker_image,
        "restartPolicy": "Always",
        "args": ["run"],
        "env": env_list(&env),
        "resources": broker_resources(&runner.kubernetes),
        // The build container starts only once every secret is delivered: the kubelet runs a
        // sidecar's postStart hook before it starts the next container, and this one returns
        // the moment the broker marks the delivery done (or fails when the broker exits). A
        // startup probe would do the same a second later: the kubelet probes at most once a
        // second, from when it admitted the pod, and syncs the pod again only at its next
        // status relist after the probe (P7 in scripts/bench runner: 1.9 s → 1.0 s).
        "lifecycle": {
            "postStart": {"exec": {"command": ["/usr/local/bin/keyhole-broker", "ready", "--wait", DELIVERY_WAIT_SECONDS]}}
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "volumeMounts": [
            {"name": contract::INPUTS_VOLUME, "mountPath": contract::INPUTS_DIR, "readOnly": true},
            {"name": contract::SECRETS_VOLUME, "mountPath": contract::SECRETS_DIR},
            {"name": contract::RUNTIME_VOLUME, "mountPath": contract::RUNTIME_DIR}
        ]
    })
}
