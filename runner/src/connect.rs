//! How the runner reaches GitLab and the cluster: the GitLab client and the Kubernetes client
//! of one `[[runners]]` entry, from its settings. Shared by the service (`keyhole-runner run`),
//! [`crate::verify`] (which checks both answer) and `exec`; a module of its own so that the
//! service and `verify` need not import each other. Its errors are the service's
//! ([`ServiceError`], from the leaf `service::error`), so the binary reports them as before.

use secrecy::SecretString;

use crate::config::RunnerConfig;
use crate::gitlab::{ClientConfig, GitlabClient};
use crate::service::error::ServiceError;

/// The kube client for a runner: `runners.kubernetes.host` if set, else in-cluster or
/// `KUBECONFIG`.
pub async fn kube_client(runner: &RunnerConfig) -> Result<kube::Client, ServiceError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(ServiceError::FindCluster)?;
    if let Some(host) = &runner.kubernetes.host {
        config.cluster_url = host.parse().map_err(|e| ServiceError::KubeHost {
            host: host.clone(),
            source: Box::new(e),
        })?;
    }
    kube::Client::try_from(config).map_err(ServiceError::KubeClient)
}

/// The GitLab client for a runner.
pub fn gitlab_client(runner: &RunnerConfig) -> Result<GitlabClient, ServiceError> {
    let token: SecretString = runner.token.clone().ok_or(ServiceError::NoToken)?;
    if runner.url.is_empty() {
        return Err(ServiceError::NoUrl);
    }
    let mut config = ClientConfig::new(runner.url.clone(), token);
    config.cache = runner.cache.is_some();
    Ok(GitlabClient::new(config)?)
}
