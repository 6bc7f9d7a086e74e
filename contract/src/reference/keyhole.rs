use super::name::printable;
use super::vault_path::check_vault_location;
use super::{Engine, SecretName, SecretRef, Source, VaultRef};

/// Job variables whose names start with this carry Keyhole references; the rest of the name
/// is the secret's name.
pub const KEYHOLE_VARIABLE_PREFIX: &str = "KEYHOLE_SECRET_";

const K8S_FORM: &str = "k8s:<secret>[/<key>][?file=false]";
const VAULT_FORM: &str =
    "vault:<mount>/<path>[?version=<n>&engine=kv-v1|kv-v2|dynamic&file=false][#<field>]";

/// A reference that cannot be used, with what was wrong and what is expected.
///
/// It never holds the reference itself, nor any part of it: the reference is a job variable's
/// value, and a value that does not parse may be a secret put there by mistake. The error
/// names the variable, the scheme (`k8s:`, `vault:` or none) and the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name}: {kind} {problem}; expected {expected}")]
pub struct ReferenceError {
    pub name: String,
    /// `the k8s: reference`, `the vault: reference` or `the value`.
    pub kind: &'static str,
    pub problem: String,
    pub expected: &'static str,
}

/// Says what a value looks like without quoting it.
fn kind_of(reference: &str) -> &'static str {
    let reference = reference.trim();
    if reference.starts_with("k8s:") {
        "the k8s: reference"
    } else if reference.starts_with("vault:") {
        "the vault: reference"
    } else {
        "the value"
    }
}

/// Parses one Keyhole reference, e.g. `vault:kv/team/api#key` for the secret `API_KEY`.
///
/// Grammar (also in `docs/secrets.md`):
/// ```text
/// k8s:<secret>[/<key>][?file=false]
/// vault:<mount>/<path>[?<option>&...][#<field>]
///     option: version=<n> | engine=kv-v1|kv-v2|dynamic | file=false
/// ```
///
/// A `vault:` reference to a mount that is not KV (detected at resolve time, or stated with
/// `engine=dynamic`) is a dynamic read: `vault:database/creds/app#password`.
pub fn parse_keyhole(name: &str, reference: &str) -> Result<SecretRef, ReferenceError> {
    let fail = |problem: String, expected: &'static str| ReferenceError {
        name: printable(name),
        kind: kind_of(reference),
        problem,
        expected,
    };
    let name = SecretName::new(name)
        .map_err(|e| fail(format!("has a bad name: {e}"), "a shell variable name"))?;
    let reference = reference.trim();
    if let Some(rest) = reference.strip_prefix("k8s:") {
        parse_k8s(name, rest).map_err(|p| fail(p, K8S_FORM))
    } else if let Some(rest) = reference.strip_prefix("vault:") {
        parse_vault(name, rest).map_err(|p| fail(p, VAULT_FORM))
    } else {
        Err(fail(
            format!(
                "names no known source: it does not start with k8s: or vault: (it is not shown, \
                 as it may be the secret itself: {KEYHOLE_VARIABLE_PREFIX}<NAME> holds where a \
                 secret lives, never its value)"
            ),
            "k8s:<secret>[/<key>] or vault:<mount>/<path>[#<field>]",
        ))
    }
}

fn parse_k8s(name: SecretName, rest: &str) -> Result<SecretRef, String> {
    let (location, options) = split_options(rest);
    let (secret, key) = match location.split_once('/') {
        Some((secret, key)) => (secret, Some(key)),
        None => (location, None),
    };
    if !is_dns_subdomain(secret) {
        return Err(
            "has a Secret name that is not a valid Kubernetes name (lower-case letters, digits, '-' and '.', at most 253 characters)"
                .into(),
        );
    }
    if let Some(key) = key
        && !is_secret_key(key)
    {
        return Err(
            "has a key that is not a valid Secret key (letters, digits, '-', '_' and '.')".into(),
        );
    }
    let mut file = true;
    for (k, v) in options? {
        match k {
            "file" => file = parse_bool(v)?,
            _ => return Err("has an unknown option (a k8s: reference takes file=)".into()),
        }
    }
    Ok(SecretRef {
        name,
        source: Source::Kubernetes {
            secret: secret.to_owned(),
            key: key.map(str::to_owned),
        },
        file,
    })
}

fn parse_vault(name: SecretName, rest: &str) -> Result<SecretRef, String> {
    let (rest, field) = match rest.split_once('#') {
        Some((rest, field)) => (rest, Some(field)),
        None => (rest, None),
    };
    let (location, options) = split_options(rest);
    let Some((mount, path)) = location.split_once('/') else {
        return Err("has no path after the mount".into());
    };
    check_vault_location(mount, path)?;
    if let Some(field) = field
        && (field.is_empty() || field.chars().any(char::is_control))
    {
        return Err("has an empty or unprintable field after '#'".into());
    }
    let mut vault = VaultRef {
        mount: mount.to_owned(),
        path: path.to_owned(),
        field: field.map(str::to_owned),
        engine: Engine::Detect,
        version: None,
        server: None,
    };
    let mut file = true;
    for (k, v) in options? {
        match k {
            "version" => {
                let n: u64 = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| "has a version that is not a positive number".to_owned())?;
                vault.version = Some(n);
            }
            "engine" => {
                vault.engine = match v {
                    "kv-v1" | "kv1" => Engine::KvV1,
                    "kv-v2" | "kv2" => Engine::KvV2,
                    "dynamic" => Engine::Dynamic,
                    _ => return Err("has an unknown engine (use kv-v1, kv-v2 or dynamic)".into()),
                }
            }
            "file" => file = parse_bool(v)?,
            _ => {
                return Err(
                    "has an unknown option (a vault: reference takes version=, engine= and file=)"
                        .into(),
                );
            }
        }
    }
    match (vault.version, vault.engine) {
        (Some(_), Engine::KvV1) => {
            return Err("pins a version, which KV v1 does not keep".into());
        }
        (Some(_), Engine::Dynamic) => {
            return Err(
                "pins a version, which a dynamic secret does not have (each read issues a new one)"
                    .into(),
            );
        }
        _ => {}
    }
    Ok(SecretRef {
        name,
        source: Source::Vault(vault),
        file,
    })
}

type Options<'a> = Result<Vec<(&'a str, &'a str)>, String>;

fn split_options(s: &str) -> (&str, Options<'_>) {
    let Some((location, query)) = s.split_once('?') else {
        return (s, Ok(Vec::new()));
    };
    let options = query
        .split('&')
        .map(|pair| {
            pair.split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| {
                    "has a malformed option (options are key=value, joined by &)".to_owned()
                })
        })
        .collect();
    (location, options)
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("has a file= value other than true or false".into()),
    }
}

/// A Kubernetes object name (RFC 1123 subdomain): what a `k8s:` reference, a ConfigMap or a
/// Secret the runner is told about may be called.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_secret_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(r: &SecretRef) -> &VaultRef {
        match &r.source {
            Source::Vault(v) => v,
            other => panic!("not vault: {other:?}"),
        }
    }

    #[test]
    fn kubernetes_key_and_whole_secret() {
        let r = parse_keyhole("REGISTRY_TOKEN", "k8s:registry-credentials/token").unwrap();
        assert_eq!(
            r.source,
            Source::Kubernetes {
                secret: "registry-credentials".into(),
                key: Some("token".into())
            }
        );
        assert!(r.file);
        let all = parse_keyhole("CREDS", "k8s:registry-credentials?file=false").unwrap();
        assert_eq!(
            all.source,
            Source::Kubernetes {
                secret: "registry-credentials".into(),
                key: None
            }
        );
        assert!(!all.file);
    }

    #[test]
    fn vault_field_version_engine() {
        let r = parse_keyhole("API_KEY", "vault:kv/team/api?version=3&engine=kv-v2#key").unwrap();
        let v = vault(&r);
        assert_eq!((v.mount.as_str(), v.path.as_str()), ("kv", "team/api"));
        assert_eq!(v.field.as_deref(), Some("key"));
        assert_eq!(v.version, Some(3));
        assert_eq!(v.engine, Engine::KvV2);
        let whole = parse_keyhole("CONFIG", "vault:kv1/app/config").unwrap();
        assert_eq!(vault(&whole).field, None);
        assert_eq!(vault(&whole).engine, Engine::Detect);
    }

    #[test]
    fn dynamic_reads_are_detected_or_stated() {
        // Without an engine option the mount type decides at resolve time.
        let detected = parse_keyhole("DB_PASSWORD", "vault:database/creds/app#password").unwrap();
        let v = vault(&detected);
        assert_eq!(
            (v.mount.as_str(), v.path.as_str()),
            ("database", "creds/app")
        );
        assert_eq!(v.engine, Engine::Detect);
        let stated = parse_keyhole(
            "DB_USER",
            "vault:database/creds/app?engine=dynamic#username",
        )
        .unwrap();
        assert_eq!(vault(&stated).engine, Engine::Dynamic);
        assert_eq!(vault(&stated).field.as_deref(), Some("username"));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "k8s:a/b",
            "k8s:a",
            "vault:kv/x/y#f",
            "vault:kv/x?version=2&engine=kv-v2#f",
            "vault:kv1/x?engine=kv-v1",
            "vault:database/creds/app?engine=dynamic#password",
        ] {
            let r = parse_keyhole("N", text).unwrap();
            assert_eq!(r.source.to_string(), text);
        }
    }

    #[test]
    fn errors_name_the_secret_the_problem_and_the_form() {
        let cases = [
            ("X", "vault:kv", "no path after the mount"),
            ("X", "vault:kv/../etc#f", "'..' segment"),
            ("X", "vault:kv/a?version=0", "not a positive number"),
            ("X", "vault:kv/a?engine=pki", "unknown engine"),
            ("X", "vault:kv1/a?engine=kv-v1&version=2", "KV v1"),
            (
                "X",
                "vault:db/creds/a?engine=dynamic&version=2",
                "dynamic secret",
            ),
            ("X", "k8s:Bad_Name/key", "not a valid Kubernetes name"),
            ("X", "k8s:ok/bad key", "not a valid Secret key"),
            ("X", "k8s:ok?color=red", "unknown option"),
            ("X", "ssm:/a/b", "no known source"),
            // The broker's own token and Vault's own APIs are not secrets a job may name.
            (
                "T",
                "vault:auth/token/lookup-self?engine=kv-v1#id",
                "not a secrets engine",
            ),
            ("X", "vault:sys/mounts#x", "not a secrets engine"),
            ("X", "vault:cubbyhole/response#x", "not a secrets engine"),
            ("X", "vault:identity/entity/name/x", "not a secrets engine"),
            ("X", "vault:kv/%2e%2e/auth/token/lookup-self#id", "'%'"),
            ("../x", "k8s:a/b", "bad name"),
        ];
        for (name, text, problem) in cases {
            let err = parse_keyhole(name, text).expect_err(text);
            let shown = err.to_string();
            assert!(shown.contains(problem), "{text}: {shown}");
            assert!(shown.contains("expected"), "{shown}");
        }
    }

    #[test]
    fn a_value_in_place_of_a_reference_is_never_echoed() {
        // The reference is a job variable's value: set to the secret itself by mistake, an
        // error that quoted it would print the secret in the job log.
        for value in [
            "hunter2-correct-horse-battery",
            "  glpat-0123456789abcdef  ",
            "vault:s3cr3tT0kenValue",
            "vault:kv/app?Sup3rS3cret=1",
            "k8s:Sup3r_S3cret/Value",
            "k8s:ok/not a key but a secret",
            "k8s:ok?file=Sup3rS3cret",
        ] {
            let err = parse_keyhole("DB_PASSWORD", value)
                .expect_err(value)
                .to_string();
            assert!(err.contains("DB_PASSWORD"), "{err}");
            for part in [
                value,
                value.trim(),
                "s3cr3t",
                "S3cret",
                "Sup3r",
                "0123456789abcdef",
                "horse",
            ] {
                assert!(!err.contains(part), "{value:?} echoed ({part:?}): {err}");
            }
        }
        let err = parse_keyhole("DB_PASSWORD", "hunter2-correct-horse-battery").unwrap_err();
        assert!(
            err.to_string()
                .contains("does not start with k8s: or vault:"),
            "{err}"
        );
    }

    proptest::proptest! {
        /// Whatever a variable holds, an error about it does not repeat it.
        #[test]
        fn errors_never_contain_the_value(
            value in proptest::prop_oneof![
                "\\PC{8,80}",
                "(k8s:|vault:| vault:)[ -~]{4,80}",
                "(k8s:|vault:)[a-z0-9./-]{1,20}[?#/][ -~]{4,40}",
            ],
        ) {
            if let Err(err) = parse_keyhole("NAME", &value) {
                let err = err.to_string();
                proptest::prop_assert!(!err.contains(&value), "{err}");
                let trimmed = value.trim();
                proptest::prop_assert!(trimmed.len() < 8 || !err.contains(trimmed), "{err}");
            }
        }
    }
}
