//! The bed's S3 object store as a runner's `[runners.cache]`, for tests that save and restore
//! CI caches.

use anyhow::Result;
use keyhole_runner::config::CacheConfig;
use secrecy::SecretString;

use crate::BedEnv;

/// `[runners.cache]` of type `s3` on the bed's store, with its key pair and every object under
/// `prefix` (`Path`), so tests sharing the bucket do not meet.
///
/// # Errors
///
/// The bed has no S3 store, or its secret key cannot be read.
pub fn bed_cache_config(env: &BedEnv, prefix: &str) -> Result<CacheConfig> {
    let s3 = env.s3()?;
    let mut cache = CacheConfig {
        kind: "s3".into(),
        path: prefix.into(),
        ..CacheConfig::default()
    };
    cache.s3.server_address = s3.endpoint.trim_start_matches("http://").into();
    cache.s3.bucket_name = s3.bucket.clone();
    cache.s3.bucket_location = s3.region.clone();
    cache.s3.insecure = true;
    cache.s3.access_key = Some(SecretString::from(s3.access_key.clone()));
    cache.s3.secret_key = Some(SecretString::from(s3.secret_key()?));
    Ok(cache)
}
