//! Why the runner service could not start or stopped. Each variant says what failed, for which
//! setting or runner, and what to do; the error it wraps is its `source`, so the binary prints
//! it as a cause and picks the exit code from it (`keyhole-runner`'s `failure` module).

use crate::gitlab::GitlabError;
use crate::journal::JournalError;

/// Why `keyhole-runner run` (or one of its `[[runners]]` entries) could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the config has no [[runners]] entry; add one (see docs/configuration.md)")]
    NoRunners,
    #[error(
        "runners[{first}] and runners[{second}] are both named {label:?} (as a pod label); give \
         each [[runners]] entry its own name, since a runner process tells its job pods apart by \
         runner name and job id"
    )]
    SameName {
        first: usize,
        second: usize,
        label: String,
    },
    #[error(
        "no runner token: set [[runners]] token or KEYHOLE_RUNNER_TOKEN (the glrt-… token from \
         GitLab)"
    )]
    NoToken,
    #[error("no GitLab URL: set [[runners]] url or KEYHOLE_RUNNER_URL")]
    NoUrl,
    /// The GitLab client could not be built from the runner's settings.
    #[error(transparent)]
    Gitlab(#[from] GitlabError),
    #[error("checking the runner token with GitLab at {url}")]
    Verify {
        url: String,
        #[source]
        source: GitlabError,
    },
    #[error("finding the cluster: set KUBECONFIG or run the runner in a pod")]
    FindCluster(#[source] kube::config::InferConfigError),
    #[error("runners.kubernetes.host {host:?} is not a URL")]
    KubeHost {
        host: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("creating the Kubernetes client")]
    KubeClient(#[source] kube::Error),
    #[error(
        "the Kubernetes API server does not answer; check KUBECONFIG or runners.kubernetes.host"
    )]
    ApiServer(#[source] kube::Error),
    #[error(
        "keeping the runner's instance Lease in namespace {namespace} (other runners reap the \
         pods of an instance without one): grant the runner get, list, create, update and delete \
         on leases.coordination.k8s.io there (the chart's Role does)"
    )]
    Lease {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("keyhole.journal_secret {value:?} is not NAMESPACE/NAME")]
    JournalSecretName { value: String },
    #[error(
        "opening the job journal (keyhole.journal_secret = {value:?}): create the Secret and \
         grant the runner get and patch on it (the chart does)"
    )]
    Journal {
        value: String,
        #[source]
        source: JournalError,
    },
    #[error("listen_address {address:?}: cannot listen; free the port or choose another address")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// One `[[runners]]` entry could not start; `source` says why.
    #[error("runners[{index}] ({name:?})")]
    Runner {
        index: usize,
        name: String,
        #[source]
        source: Box<ServiceError>,
    },
    #[error("job slots closed")]
    SlotsClosed(#[source] tokio::sync::AcquireError),
    #[error("a runner's job loop failed")]
    JobLoop(#[source] tokio::task::JoinError),
}
