use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// One request a ServiceAccount might make: `verb` on `resource` (`pods`, `pods/log`, ...) in
/// `namespace` (None: cluster-wide), optionally on the object `name`.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub verb: &'a str,
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl<'a> Access<'a> {
    pub fn new(verb: &'a str, resource: &'a str, namespace: &'a str) -> Self {
        Self {
            verb,
            resource,
            namespace: Some(namespace),
            name: None,
        }
    }

    pub fn named(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }

    pub fn cluster_wide(verb: &'a str, resource: &'a str) -> Self {
        Self {
            verb,
            resource,
            namespace: None,
            name: None,
        }
    }
}

impl std::fmt::Display for Access<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(name) = self.name {
            write!(f, "/{name}")?;
        }
        match self.namespace {
            Some(ns) => write!(f, " in {ns}"),
            None => write!(f, " cluster-wide"),
        }
    }
}

/// Asks the apiserver's authorizers (SubjectAccessReview) whether ServiceAccount
/// `namespace/name` may make `access`. The groups are those the apiserver gives a
/// ServiceAccount's token, so the answer is what its real requests would get.
pub async fn service_account_may(
    client: &Client,
    (sa_namespace, sa_name): (&str, &str),
    access: Access<'_>,
) -> Result<bool> {
    let (resource, subresource) = match access.resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (access.resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{sa_namespace}:{sa_name}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(access.verb.to_owned()),
                group: Some(String::new()),
                resource: Some(resource.to_owned()),
                subresource,
                namespace: access.namespace.map(str::to_owned),
                name: access.name.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .with_context(|| format!("SubjectAccessReview: {access}"))?;
    Ok(answer.status.map(|s| s.allowed).unwrap_or(false))
}

/// Upper bound for a new RoleBinding to reach the RBAC authorizer's cache.
const RBAC_PROPAGATION: Duration = Duration::from_secs(30);

/// Waits until the ServiceAccount may make `access`: new Roles and RoleBindings reach the
/// authorizer through its informer, a moment after they are created. Denials checked after this
/// returns are real, not a cache that lags.
pub async fn wait_until_allowed(
    client: &Client,
    sa: (&str, &str),
    access: Access<'_>,
) -> Result<()> {
    let answer = crate::eventually(RBAC_PROPAGATION, Duration::from_millis(100), async || {
        match service_account_may(client, sa, access).await {
            Ok(false) => None,
            Ok(true) => Some(Ok(())),
            Err(e) => Some(Err(e)),
        }
    })
    .await;
    match answer {
        Some(answer) => answer,
        None => bail!(
            "{}:{} was still not allowed to {access} after {RBAC_PROPAGATION:?}",
            sa.0,
            sa.1
        ),
    }
}
