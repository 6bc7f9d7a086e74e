//! The cache store, reached through the pre-signed URLs in the plan: GET to restore, PUT to
//! save. A URL is a credential for one object and one method; it never reaches a log line
//! (errors name the key, never the URL).

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};

use super::gitlab::{describe, file_body, save};

/// What became of a restore attempt.
#[derive(Debug)]
pub enum Fetched {
    /// The object, saved to the file; its size.
    Found(u64),
    /// No such object (a first run, an expired cache): try the next key.
    Missing,
}

/// A client for the cache store (gitlab-runner's `cache_request_timeout` is 10 minutes).
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))
}

/// Downloads the object behind `url` to `to`.
pub async fn fetch(
    http: &reqwest::Client,
    url: &SecretString,
    to: &Path,
) -> Result<Fetched, String> {
    let response = http
        .get(url.expose_secret())
        .send()
        .await
        .map_err(|e| describe(&e))?;
    match response.status() {
        s if s.is_success() => save(response, to)
            .await
            .map(Fetched::Found)
            .map_err(|e| e.to_string()),
        // S3 answers 403 for a missing object when the signer may not list the bucket.
        StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(Fetched::Missing),
        s => Err(format!("the cache store answered {s}")),
    }
}

/// Uploads `file` to the object behind `url`.
pub async fn store(http: &reqwest::Client, url: &SecretString, file: &Path) -> Result<(), String> {
    let body = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("cannot read the archive: {e}"))?;
    let len = body
        .metadata()
        .await
        .map_err(|e| format!("cannot read the archive: {e}"))?
        .len();
    let response = http
        .put(url.expose_secret())
        .header(reqwest::header::CONTENT_LENGTH, len)
        .header(reqwest::header::CONTENT_TYPE, "application/zip")
        .body(file_body(body))
        .send()
        .await
        .map_err(|e| describe(&e))?;
    match response.status() {
        s if s.is_success() => Ok(()),
        s => Err(format!("the cache store answered {s}")),
    }
}
