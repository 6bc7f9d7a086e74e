//! Reading `config.toml`: typed parse, refusal of keys Keyhole would not honour, environment
//! overrides, and checks that catch mistakes at start instead of at the first job.

use std::path::Path;

use keyhole_contract::env::runner as runner_env;
use keyhole_contract::reference::is_dns_subdomain;
use secrecy::SecretString;

use super::keys::{RefusedKey, refused_keys};
use super::model::{CacheConfig, Config, RunnerConfig};

/// A config file that cannot be used, with where and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}; pass an existing file with --config")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error(
        "{path}: Keyhole will not start with keys it would not honour; remove each (or set it to its empty default):{}",
        keys.iter().map(|k| format!("\n  {k}")).collect::<String>()
    )]
    Refused { path: String, keys: Vec<RefusedKey> },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

/// A loaded, checked config.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
}

/// Reads and checks a config file, then applies the environment overrides in `env`.
pub fn load_file(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&text, &path.display().to_string(), env)
}

/// [`load_file`] without the file system, for tests and `verify`.
pub fn load_str(
    text: &str,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
    let refused = refused_keys(&table);
    if !refused.is_empty() {
        return Err(ConfigError::Refused {
            path: path.into(),
            keys: refused,
        });
    }
    let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string().trim_end().to_string(),
    })?;
    apply_env(&mut config, env);
    check(&config, path)?;
    Ok(Loaded { config })
}

/// Environment overrides for the first runner, so a Deployment can keep the token in a Secret
/// and the rest in a ConfigMap.
fn apply_env(config: &mut Config, env: &dyn Fn(&str) -> Option<String>) {
    config.instance = env(runner_env::INSTANCE).filter(|i| !i.is_empty());
    if config.runners.is_empty() {
        config.runners.push(RunnerConfig::default());
    }
    let runner = &mut config.runners[0];
    if let Some(token) = env(runner_env::RUNNER_TOKEN).filter(|t| !t.is_empty()) {
        runner.token = Some(SecretString::from(token));
    }
    if let Some(url) = env(runner_env::RUNNER_URL).filter(|u| !u.is_empty()) {
        runner.url = url;
    }
    if let Some(ns) = env(runner_env::NAMESPACE).filter(|n| !n.is_empty()) {
        runner.kubernetes.namespace = ns;
    }
    if let Some(image) = env(runner_env::BROKER_IMAGE).filter(|i| !i.is_empty()) {
        runner.keyhole.broker_image = image;
    }
    if let Some(addr) = env(runner_env::VAULT_ADDR).filter(|a| !a.is_empty()) {
        runner.keyhole.vault_addr = Some(addr);
    }
    // gitlab-runner's variables for the cache store's key pair (its chart puts them there from
    // a Secret), for every runner with a `[runners.cache]`.
    for runner in &mut config.runners {
        // `gitlab-runner register` writes an empty `[runners.cache]`: no cache store.
        if runner.cache.as_ref().is_some_and(CacheConfig::is_unset) {
            runner.cache = None;
        }
        let Some(cache) = &mut runner.cache else {
            continue;
        };
        if let Some(key) = env("CACHE_S3_ACCESS_KEY").filter(|k| !k.is_empty()) {
            cache.s3.access_key = Some(SecretString::from(key));
        }
        if let Some(key) = env("CACHE_S3_SECRET_KEY").filter(|k| !k.is_empty()) {
            cache.s3.secret_key = Some(SecretString::from(key));
        }
    }
}

/// `[runners.cache]`: an S3 store Keyhole can sign URLs for.
fn check_cache(
    cache: &CacheConfig,
    key: &dyn Fn(&str) -> String,
    path: &str,
) -> Result<(), ConfigError> {
    if !cache.kind.eq_ignore_ascii_case("s3") {
        return Err(invalid(
            path,
            key("cache.Type"),
            format!(
                "{:?} is not supported; Keyhole's cache store is S3 or any S3-compatible server: use \"s3\"",
                cache.kind
            ),
        ));
    }
    let s3 = &cache.s3;
    if s3.server_address.is_empty() || s3.server_address.contains("://") {
        return Err(invalid(
            path,
            key("cache.s3.ServerAddress"),
            "must be the store's host[:port] without a scheme (e.g. s3.amazonaws.com or minio.example:9000; `Insecure = true` for plain HTTP)",
        ));
    }
    if s3.bucket_name.is_empty() {
        return Err(invalid(
            path,
            key("cache.s3.BucketName"),
            "must name the bucket",
        ));
    }
    if !matches!(s3.authentication_type.as_str(), "" | "access-key") {
        return Err(invalid(
            path,
            key("cache.s3.AuthenticationType"),
            "only `access-key` is supported: Keyhole signs cache URLs with AccessKey/SecretKey",
        ));
    }
    if s3.access_key.is_none() || s3.secret_key.is_none() {
        return Err(invalid(
            path,
            key("cache.s3.AccessKey"),
            "the cache store needs AccessKey and SecretKey (or CACHE_S3_ACCESS_KEY and CACHE_S3_SECRET_KEY in the runner's environment, e.g. from a Secret)",
        ));
    }
    Ok(())
}

fn invalid(path: &str, key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        key,
        message: message.into(),
    }
}

fn check_regex(path: &str, key: String, value: Option<&String>) -> Result<(), ConfigError> {
    if let Some(re) = value {
        regex::Regex::new(re).map_err(|e| invalid(path, key, format!("not a valid regex: {e}")))?;
    }
    Ok(())
}

fn check(config: &Config, path: &str) -> Result<(), ConfigError> {
    if config.concurrent == 0 {
        return Err(invalid(path, "concurrent".into(), "must be at least 1"));
    }
    for (i, r) in config.runners.iter().enumerate() {
        let key = |k: &str| format!("runners[{i}].{k}");
        if r.executor != "kubernetes" {
            return Err(invalid(
                path,
                key("executor"),
                format!(
                    "{:?} is not supported; Keyhole runs jobs only as Kubernetes pods: use \"kubernetes\"",
                    r.executor
                ),
            ));
        }
        if !(r.url.is_empty() || r.url.starts_with("https://") || r.url.starts_with("http://")) {
            return Err(invalid(
                path,
                key("url"),
                "must start with https:// or http://",
            ));
        }
        if let Some(cache) = &r.cache {
            check_cache(cache, &key, path)?;
        }
        let k = &r.kubernetes;
        for (name, value) in [
            (
                "service_account_overwrite_allowed",
                &k.service_account_overwrite_allowed,
            ),
            (
                "node_selector_overwrite_allowed",
                &k.node_selector_overwrite_allowed,
            ),
            (
                "pod_labels_overwrite_allowed",
                &k.pod_labels_overwrite_allowed,
            ),
            (
                "pod_annotations_overwrite_allowed",
                &k.pod_annotations_overwrite_allowed,
            ),
        ] {
            check_regex(path, key(&format!("kubernetes.{name}")), value.as_ref())?;
        }
        for (n, rule) in r.keyhole.service_account_rules.iter().enumerate() {
            let rk = |f: &str| key(&format!("keyhole.service_account_rules[{n}].{f}"));
            check_regex(path, rk("project_regex"), rule.project_regex.as_ref())?;
            check_regex(path, rk("ref_regex"), rule.ref_regex.as_ref())?;
            if rule.service_account.is_empty() {
                return Err(invalid(
                    path,
                    rk("service_account"),
                    "must name a ServiceAccount",
                ));
            }
        }
        for addr in r.keyhole.vault_addr.iter().chain(&r.keyhole.vault_allowed) {
            if !(addr.starts_with("https://") || addr.starts_with("http://")) {
                return Err(invalid(
                    path,
                    key("keyhole.vault_addr"),
                    format!("{addr:?} must start with https:// or http://"),
                ));
            }
        }
        if let Some(value) = &r.keyhole.journal_secret
            && journal_secret_parts(value).is_none()
        {
            return Err(invalid(
                path,
                key("keyhole.journal_secret"),
                format!(
                    "{value:?} must be NAMESPACE/NAME of a Secret (lower-case letters, digits, '-' and '.')"
                ),
            ));
        }
        if let Some(name) = &r.keyhole.vault_ca_config_map
            && !is_dns_subdomain(name)
        {
            return Err(invalid(
                path,
                key("keyhole.vault_ca_config_map"),
                format!(
                    "{name:?} is not a ConfigMap name (lower-case letters, digits, '-' and '.')"
                ),
            ));
        }
        for entry in &r.environment {
            if !entry.contains('=') {
                return Err(invalid(
                    path,
                    key("environment"),
                    format!("{entry:?} must be KEY=VALUE"),
                ));
            }
        }
    }
    Ok(())
}

/// The namespace and name of `journal_secret` (`NAMESPACE/NAME`), if it is that.
pub fn journal_secret_parts(value: &str) -> Option<(&str, &str)> {
    let (namespace, name) = value.split_once('/')?;
    (is_dns_subdomain(namespace) && is_dns_subdomain(name) && !namespace.contains('.'))
        .then_some((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const SHAPE: &str = r#"
concurrent = 4
[[runners]]
name = "k"
url = "https://gitlab.example.com"
token = "glrt-xyz"
executor = "kubernetes"
[runners.kubernetes]
namespace = "jobs"
cpu_request = "100m"
[runners.kubernetes.pod_security_context]
run_as_user = 2000
[runners.keyhole]
vault_addr = "http://10.0.0.1:8200"
[[runners.keyhole.service_account_rules]]
project = "acme/app"
protected = true
service_account = "app-deployer"
"#;

    #[test]
    fn reads_gitlab_runner_shape() {
        let loaded = load_str(SHAPE, "c.toml", &no_env).unwrap();
        let r = &loaded.config.runners[0];
        assert_eq!(loaded.config.concurrent, 4);
        assert_eq!(r.kubernetes.namespace, "jobs");
        assert_eq!(r.kubernetes.cpu_request.as_deref(), Some("100m"));
        assert_eq!(r.kubernetes.pod_security_context.run_as_user, 2000);
        assert_eq!(
            r.keyhole.service_account_rules[0].service_account,
            "app-deployer"
        );
        assert_eq!(r.token.as_ref().unwrap().expose_secret(), "glrt-xyz");
    }

    #[test]
    fn a_journal_secret_is_namespace_slash_name_or_refused_naming_the_key() {
        let with = |value: &str| {
            SHAPE.replace(
                "[runners.keyhole]\n",
                &format!("[runners.keyhole]\njournal_secret = {value:?}\n"),
            )
        };
        let loaded = load_str(&with("keyhole/keyhole-journal"), "c.toml", &no_env).unwrap();
        let value = loaded.config.runners[0].keyhole.journal_secret.clone();
        assert_eq!(value.as_deref(), Some("keyhole/keyhole-journal"));
        assert_eq!(
            journal_secret_parts("keyhole/keyhole-journal"),
            Some(("keyhole", "keyhole-journal"))
        );
        for bad in [
            "keyhole-journal",
            "a/b/c",
            "Keyhole/j",
            "ns/",
            "/j",
            "n.s/j",
        ] {
            let message = load_str(&with(bad), "c.toml", &no_env)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("runners[0].keyhole.journal_secret")
                    && message.contains("must be NAMESPACE/NAME"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn keys_it_would_not_honour_are_refused_all_at_once_with_why() {
        let text = SHAPE
            .replace(
                "cpu_request = \"100m\"\n",
                "cpu_request = \"100m\"\nprivileged = true\nhelper_image = \"x\"\n",
            )
            .replace(
                "run_as_user = 2000\n",
                "run_as_user = 2000\nselinux_type = \"x\"\n",
            )
            .replace(
                "[runners.keyhole]\n",
                "[runners.cache.gcs]\nBucketName = \"x\"\n[runners.keyhole]\nvault_adr = \"x\"\n",
            );
        let ConfigError::Refused { path, keys } = load_str(&text, "c.toml", &no_env).unwrap_err()
        else {
            panic!("not refused")
        };
        assert_eq!(path, "c.toml");
        let named: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(
            named,
            [
                "runners[0].kubernetes.helper_image",
                "runners[0].kubernetes.privileged",
                "runners[0].kubernetes.pod_security_context.selinux_type",
                "runners[0].cache.gcs",
                "runners[0].keyhole.vault_adr",
            ]
        );
        let message = load_str(&text, "c.toml", &no_env).unwrap_err().to_string();
        assert!(
            message.starts_with("c.toml: Keyhole will not start"),
            "{message}"
        );
        assert!(
            message.contains(
                "runners[0].kubernetes.privileged: job pods always pass PodSecurity `restricted`"
            ),
            "{message}"
        );
        assert!(message.contains("broker_image"), "{message}");
        assert!(message.contains("check its spelling"), "{message}");
    }

    /// What `gitlab-runner register` writes: unset keys as `false`, `""`, `0` and empty
    /// tables, and the registration's own metadata. None of it asks for anything.
    #[test]
    fn a_registered_config_with_empty_defaults_loads() {
        let text = r#"
concurrent = 1
check_interval = 0
shutdown_timeout = 0
[session_server]
[[runners]]
  name = "k"
  url = "https://gitlab.example.com"
  id = 17
  token = "glrt-xyz"
  token_obtained_at = 2026-01-01T00:00:00Z
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "kubernetes"
  [runners.cache]
    MaxUploadedArchiveSize = 0
    [runners.cache.s3]
    [runners.cache.gcs]
  [runners.kubernetes]
    host = ""
    bearer_token_overwrite_allowed = false
    image = "alpine"
    namespace = "jobs"
    namespace_overwrite_allowed = ""
    namespace_per_job = false
    privileged = false
    cap_add = []
    [runners.kubernetes.pod_security_context]
      run_as_non_root = true
    [runners.kubernetes.build_container_security_context]
      [runners.kubernetes.build_container_security_context.capabilities]
    [runners.kubernetes.volumes]
"#;
        let loaded = load_str(text, "c.toml", &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.config.runners[0].kubernetes.namespace, "jobs");
        let asked = text.replace("privileged = false", "privileged = true");
        let err = load_str(&asked, "c.toml", &no_env).unwrap_err().to_string();
        assert!(err.contains("runners[0].kubernetes.privileged"), "{err}");
        let volume = format!(
            "{text}      [[runners.kubernetes.volumes.empty_dir]]\n        name = \"x\"\n        mount_path = \"/x\"\n"
        );
        let err = load_str(&volume, "c.toml", &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("runners[0].kubernetes.volumes:"), "{err}");
    }

    #[test]
    fn environment_overrides_the_token_and_namespace() {
        let env = |k: &str| match k {
            runner_env::RUNNER_TOKEN => Some("glrt-env".to_string()),
            runner_env::NAMESPACE => Some("ns2".to_string()),
            _ => None,
        };
        let loaded = load_str("[[runners]]\ntoken = \"glrt-file\"\n", "c.toml", &env).unwrap();
        let r = &loaded.config.runners[0];
        assert_eq!(r.token.as_ref().unwrap().expose_secret(), "glrt-env");
        assert_eq!(r.kubernetes.namespace, "ns2");
    }

    #[test]
    fn type_errors_name_the_file_line_and_key() {
        let err = load_str("concurrent = \"four\"\n", "c.toml", &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml: "), "{err}");
        assert!(err.contains("line 1"), "{err}");
        assert!(err.contains("concurrent"), "{err}");
    }

    #[test]
    fn bad_values_say_which_key_and_what_to_do() {
        let err = load_str("[[runners]]\nexecutor = \"docker\"\n", "c.toml", &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("runners[0].executor") && err.contains("use \"kubernetes\""),
            "{err}"
        );
        let err = load_str(
            "[[runners]]\n[runners.kubernetes]\nservice_account_overwrite_allowed = \"(\"\n",
            "c.toml",
            &no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("service_account_overwrite_allowed") && err.contains("regex"),
            "{err}"
        );
        let err = load_str(
            "[[runners]]\n[[runners.keyhole.service_account_rules]]\nproject = \"a\"\nservice_acount = \"x\"\n",
            "c.toml",
            &no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("service_acount"), "{err}");
    }

    #[test]
    fn the_token_never_shows_in_debug() {
        let loaded = load_str(
            "[[runners]]\ntoken = \"glrt-secret-123\"\n",
            "c.toml",
            &no_env,
        )
        .unwrap();
        assert!(!format!("{:?}", loaded.config).contains("glrt-secret-123"));
    }
}
