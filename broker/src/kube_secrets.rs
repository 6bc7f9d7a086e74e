//! Reading `k8s:` references with the job ServiceAccount's own token, so RBAC decides.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use secrecy::SecretSlice;
use zeroize::Zeroizing;

use crate::blame::Blame;

/// A `k8s:` reference that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KubeSecretError {
    #[error(
        "service account {account} may not read secret {secret} in namespace {namespace}; grant it get on that Secret (Role with resourceNames: [{secret}])"
    )]
    Denied {
        account: String,
        secret: String,
        namespace: String,
    },
    #[error("secret {secret} does not exist in namespace {namespace}")]
    NotFound { secret: String, namespace: String },
    #[error("secret {secret} in namespace {namespace} has no key {key:?}; keys present: {present}")]
    MissingKey {
        secret: String,
        namespace: String,
        key: String,
        present: String,
    },
    #[error(
        "secret {secret} key {key:?} is not UTF-8 and cannot go into a JSON object; reference that key alone"
    )]
    NotUtf8 { secret: String, key: String },
    #[error("reading secret {secret} in namespace {namespace}: {detail}")]
    Api {
        secret: String,
        namespace: String,
        detail: String,
    },
}

impl KubeSecretError {
    /// Whose fix this error needs: an API server that fails is the platform's; the rest is the
    /// job's reference or its RBAC grant.
    pub fn blame(&self) -> Blame {
        match self {
            KubeSecretError::Api { .. } => Blame::Platform,
            _ => Blame::Reference,
        }
    }
}

/// Reads one key, or all keys as a JSON object of strings.
pub async fn read_secret(
    api: &Api<Secret>,
    namespace: &str,
    account: &str,
    secret: &str,
    key: Option<&str>,
) -> Result<SecretSlice<u8>, KubeSecretError> {
    let found = api.get(secret).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 403 => KubeSecretError::Denied {
            account: account.to_owned(),
            secret: secret.to_owned(),
            namespace: namespace.to_owned(),
        },
        kube::Error::Api(s) if s.code == 404 => KubeSecretError::NotFound {
            secret: secret.to_owned(),
            namespace: namespace.to_owned(),
        },
        other => KubeSecretError::Api {
            secret: secret.to_owned(),
            namespace: namespace.to_owned(),
            detail: other.to_string(),
        },
    })?;
    let mut data = found.data.unwrap_or_default();
    match key {
        Some(key) => {
            let present = data.keys().cloned().collect::<Vec<_>>().join(", ");
            data.remove(key)
                .map(|v| SecretSlice::from(v.0))
                .ok_or_else(|| KubeSecretError::MissingKey {
                    secret: secret.to_owned(),
                    namespace: namespace.to_owned(),
                    key: key.to_owned(),
                    present,
                })
        }
        None => {
            let mut object: BTreeMap<String, String> = BTreeMap::new();
            for (k, v) in data {
                let s = String::from_utf8(v.0).map_err(|_| KubeSecretError::NotUtf8 {
                    secret: secret.to_owned(),
                    key: k.clone(),
                })?;
                object.insert(k, s);
            }
            let json = Zeroizing::new(serde_json::to_vec(&object).expect("strings serialize"));
            for v in object.values_mut() {
                zeroize::Zeroize::zeroize(v);
            }
            Ok(SecretSlice::from(json.to_vec()))
        }
    }
}

/// `namespace/name` of the ServiceAccount a token belongs to, read from its (unverified) claims;
/// only used to word error messages.
pub fn service_account_of(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(payload))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let sub = claims.get("sub")?.as_str()?;
    let rest = sub.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    Some(format!("{ns}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_service_account_of_a_token() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"system:serviceaccount:team:job"}"#);
        assert_eq!(
            service_account_of(&format!("h.{payload}.s")).as_deref(),
            Some("team/job")
        );
        assert_eq!(service_account_of("not-a-jwt"), None);
    }
}
