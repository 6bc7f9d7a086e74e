//! Jobs' `cache:` in the runner's cache store (`[runners.cache]`, S3): object names as
//! gitlab-runner makes them, and pre-signed URLs for exactly this job's keys. The store's keys
//! never leave the runner: the pod gets a GET URL per key to restore from and a PUT URL for
//! the key to save, each valid for the job's time.

use std::time::Duration;

use keyhole_contract::transfer::{CachePlan, CacheSource};
use rusty_s3::{Bucket, Credentials, S3Action as _, UrlStyle};
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::{CacheConfig, RunnerConfig};
use crate::job::{CacheEntry, Job};
use crate::variables::short_token;

/// How long past the job's timeout its URLs stay valid (the pod may wait for a node, and
/// the cache is saved after `after_script`).
const URL_MARGIN: Duration = Duration::from_secs(3600);
/// SigV4's longest validity.
const URL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// The caches of a job, and the warnings for the trace (what is skipped and why).
#[derive(Debug, Default)]
pub struct JobCaches {
    pub plans: Vec<CachePlan>,
    pub warnings: Vec<String>,
}

/// Where a runner's cache objects go.
struct Store {
    bucket: Bucket,
    credentials: Credentials,
    /// `Path/[runner/<short token>/]project/<id>`.
    base: String,
}

impl Store {
    fn new(cache: &CacheConfig, runner: &RunnerConfig, project_id: u64) -> Result<Self, String> {
        let s3 = &cache.s3;
        let scheme = if s3.insecure { "http" } else { "https" };
        let endpoint = format!("{scheme}://{}", s3.server_address)
            .parse()
            .map_err(|e| format!("[runners.cache.s3] ServerAddress is not a host: {e}"))?;
        let style = if s3.path_style.unwrap_or(true) {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let region = if s3.bucket_location.is_empty() {
            "us-east-1"
        } else {
            &s3.bucket_location
        };
        let bucket = Bucket::new(endpoint, style, s3.bucket_name.clone(), region.to_owned())
            .map_err(|e| format!("[runners.cache.s3] bucket {}: {e}", s3.bucket_name))?;
        let (Some(access), Some(secret)) = (&s3.access_key, &s3.secret_key) else {
            return Err("[runners.cache.s3] has no AccessKey/SecretKey".into());
        };
        let credentials = Credentials::new(access.expose_secret(), secret.expose_secret());
        let namespace = if cache.shared {
            String::new()
        } else {
            let token = runner
                .token
                .as_ref()
                .map(|t| short_token(t.expose_secret()))
                .unwrap_or_default();
            format!("runner/{token}")
        };
        Ok(Self {
            bucket,
            credentials,
            base: join(&[&cache.path, &namespace, "project", &project_id.to_string()]),
        })
    }

    fn get(&self, object: &str, valid: Duration) -> SecretString {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), object)
            .sign(valid);
        SecretString::from(url.to_string())
    }

    fn put(&self, object: &str, valid: Duration) -> SecretString {
        let url = self
            .bucket
            .put_object(Some(&self.credentials), object)
            .sign(valid);
        SecretString::from(url.to_string())
    }
}

/// `path.Join` of the non-empty parts.
fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .flat_map(|p| p.split('/'))
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The object name of `key` under `base`, or `None` when the key leads out of it (`../`),
/// which gitlab-runner refuses too. Pure.
pub fn object_name(base: &str, key: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in key.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!("{base}/{}", parts.join("/")))
}

/// The keys to restore from, in order: the key, `fallback_keys`, then `CACHE_FALLBACK_KEY`.
/// A protected key (`-protected`, GitLab's suffix for protected refs) is not a fallback for
/// a job of an unprotected ref: that would let any branch read the protected branches'
/// cache. Returns the keys and a warning for each refused one.
pub fn restore_keys(entry: &CacheEntry, job: &Job) -> (Vec<String>, Vec<String>) {
    let mut keys = vec![entry.key.clone()];
    let mut warnings = Vec::new();
    let global = job
        .public_variable("CACHE_FALLBACK_KEY")
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    for fallback in entry.fallback_keys.iter().cloned().chain(global) {
        if fallback.ends_with("-protected") && !job.git.protected {
            warnings.push(format!(
                "cache fallback key {fallback:?} is a protected ref's cache and this job's ref is not protected: not used"
            ));
            continue;
        }
        if !keys.contains(&fallback) {
            keys.push(fallback);
        }
    }
    (keys, warnings)
}

/// gitlab-runner's key for a `cache:` without one: `<job name>/<ref>`.
fn effective_key(entry: &CacheEntry, job: &Job) -> String {
    if entry.key.is_empty() {
        format!("{}/{}", job.name, job.git.ref_name)
    } else {
        entry.key.clone()
    }
}

/// The job's caches as pre-signed URLs in `runner`'s store, valid for `timeout` and a margin.
pub fn job_caches(job: &Job, runner: &RunnerConfig, timeout: Duration) -> JobCaches {
    let mut out = JobCaches::default();
    let entries = &job.transfers.caches;
    if entries.is_empty() {
        return out;
    }
    let Some(cache) = &runner.cache else {
        let keys: Vec<&str> = entries.iter().map(|c| c.key.as_str()).collect();
        out.warnings.push(format!(
            "cache ({}): this runner has no cache store ([runners.cache]), so the cache is neither restored nor saved; the job runs without it",
            keys.join(", ")
        ));
        return out;
    };
    let store = match Store::new(cache, runner, job.project.id) {
        Ok(s) => s,
        Err(e) => {
            out.warnings.push(format!("cache not used: {e}"));
            return out;
        }
    };
    let valid = (timeout + URL_MARGIN).min(URL_MAX);
    for entry in entries {
        // Nothing to cache: gitlab-runner skips such an entry too.
        if entry.paths.is_empty() && !entry.untracked {
            continue;
        }
        let entry = CacheEntry {
            key: effective_key(entry, job),
            ..entry.clone()
        };
        let Some(object) = object_name(&store.base, &entry.key) else {
            out.warnings.push(format!(
                "cache {:?} skipped: the key leads outside the project's cache; remove `../` from it",
                entry.key
            ));
            continue;
        };
        let pull = entry.policy != "push";
        let push = entry.policy != "pull";
        let mut restore = Vec::new();
        if pull {
            let (keys, warnings) = restore_keys(&entry, job);
            out.warnings.extend(warnings);
            for key in keys {
                if let Some(name) = object_name(&store.base, &key) {
                    restore.push(CacheSource {
                        url: store.get(&name, valid),
                        key,
                    });
                }
            }
        }
        out.plans.push(CachePlan {
            key: entry.key.clone(),
            paths: entry.paths.clone(),
            untracked: entry.untracked,
            when: entry.when,
            restore,
            save: push.then(|| store.put(&object, valid)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhole_contract::transfer::When;

    #[test]
    fn object_names_stay_in_the_projects_cache() {
        let base = "cache/runner/abc123/project/7";
        assert_eq!(
            object_name(base, "deps-main").as_deref(),
            Some("cache/runner/abc123/project/7/deps-main")
        );
        assert_eq!(
            object_name(base, "job/main").as_deref(),
            Some("cache/runner/abc123/project/7/job/main")
        );
        assert_eq!(
            object_name(base, "a/../b").as_deref(),
            Some("cache/runner/abc123/project/7/b")
        );
        for escaping in [
            "../other",
            "../../project/8/deps",
            "a/../../x",
            "..",
            "",
            "./",
        ] {
            assert_eq!(object_name(base, escaping), None, "{escaping:?}");
        }
    }

    fn entry(key: &str, fallbacks: &[&str]) -> CacheEntry {
        CacheEntry {
            key: key.into(),
            paths: vec!["vendor/".into()],
            untracked: false,
            policy: "pull-push".into(),
            when: When::OnSuccess,
            fallback_keys: fallbacks.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn fallbacks_come_in_order_and_a_protected_one_only_for_protected_refs() {
        let mut job = crate::pod::samples::sample_jobs("http://v").remove(0).1;
        job.variables.push(crate::job::Variable::public(
            "CACHE_FALLBACK_KEY",
            "main-protected",
        ));
        let e = entry("feat-non_protected", &["main-non_protected"]);
        job.git.protected = false;
        let (keys, warnings) = restore_keys(&e, &job);
        assert_eq!(keys, ["feat-non_protected", "main-non_protected"]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        job.git.protected = true;
        let (keys, warnings) = restore_keys(&e, &job);
        assert_eq!(
            keys,
            ["feat-non_protected", "main-non_protected", "main-protected"]
        );
        assert!(warnings.is_empty());
    }

    /// A runner with an S3 cache store.
    fn runner_with_store() -> RunnerConfig {
        let mut runner = RunnerConfig {
            token: Some(SecretString::from("glrt-abcdefghijkl".to_string())),
            ..RunnerConfig::default()
        };
        let mut cache = CacheConfig {
            kind: "s3".into(),
            path: "ci".into(),
            ..CacheConfig::default()
        };
        cache.s3.server_address = "10.213.0.1:9000".into();
        cache.s3.bucket_name = "keyhole-cache".into();
        cache.s3.insecure = true;
        cache.s3.access_key = Some(SecretString::from("ACCESSKEYID".to_string()));
        cache.s3.secret_key = Some(SecretString::from("the-secret-key-value".to_string()));
        runner.cache = Some(cache);
        runner
    }

    #[test]
    fn urls_are_signed_for_this_jobs_objects_and_never_carry_the_secret_key() {
        let mut job = crate::pod::samples::sample_jobs("http://v").remove(0).1;
        job.project.id = 7;
        job.transfers.caches = vec![
            entry("deps", &["fallback"]),
            CacheEntry {
                policy: "pull".into(),
                ..entry("tools", &[])
            },
            CacheEntry {
                policy: "push".into(),
                ..entry("out", &[])
            },
        ];
        let mut runner = runner_with_store();
        let caches = job_caches(&job, &runner, Duration::from_secs(600));
        assert!(caches.warnings.is_empty(), "{:?}", caches.warnings);
        let [deps, tools, out] = &caches.plans[..] else {
            panic!("{:?}", caches.plans);
        };
        let get = deps.restore[0].url.expose_secret();
        assert!(
            get.starts_with("http://10.213.0.1:9000/keyhole-cache/ci/runner/"),
            "{get}"
        );
        assert!(get.contains("/project/7/deps?"), "{get}");
        assert_eq!(deps.restore[1].key, "fallback");
        assert!(deps.save.is_some() && tools.save.is_none() && out.restore.is_empty());
        let all = format!("{get}{}", out.save.as_ref().unwrap().expose_secret());
        assert!(!all.contains("the-secret-key-value"));
        // Shared: no runner namespace.
        runner.cache.as_mut().unwrap().shared = true;
        let shared = job_caches(&job, &runner, Duration::from_secs(600));
        let url = shared.plans[0].restore[0].url.expose_secret().to_owned();
        assert!(url.contains("/keyhole-cache/ci/project/7/deps?"), "{url}");
    }

    #[test]
    fn untracked_is_carried_into_the_plan_with_or_without_paths() {
        let mut job = crate::pod::samples::sample_jobs("http://v").remove(0).1;
        job.transfers.caches = vec![
            CacheEntry {
                untracked: true,
                ..entry("both", &[])
            },
            CacheEntry {
                untracked: true,
                paths: vec![],
                ..entry("alone", &[])
            },
            CacheEntry {
                paths: vec![],
                ..entry("nothing", &[])
            },
            entry("paths", &[]),
        ];
        let caches = job_caches(&job, &runner_with_store(), Duration::from_secs(600));
        assert!(caches.warnings.is_empty(), "{:?}", caches.warnings);
        let plans: Vec<(&str, bool, usize)> = caches
            .plans
            .iter()
            .map(|p| (p.key.as_str(), p.untracked, p.paths.len()))
            .collect();
        assert_eq!(
            plans,
            [("both", true, 1), ("alone", true, 0), ("paths", false, 1)]
        );
    }

    #[test]
    fn without_a_store_the_job_is_told_its_cache_is_not_kept() {
        let mut job = crate::pod::samples::sample_jobs("http://v").remove(0).1;
        job.transfers.caches = vec![entry("deps", &[])];
        let caches = job_caches(&job, &RunnerConfig::default(), Duration::from_secs(60));
        assert!(caches.plans.is_empty());
        assert!(
            caches.warnings[0].contains("no cache store"),
            "{:?}",
            caches.warnings
        );
    }
}
