//! Git repositories of the fake GitLab: created in a temporary root and served over smart
//! HTTP by Debian's `git http-backend` (CGI, one child process per request), behind the
//! basic auth GitLab uses for CI clones (`gitlab-ci-token:<job token>`).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::io::AsyncWriteExt;

use super::Shared;
use super::api::status;
use super::state::Endpoint;

const HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// Runs git hermetically: no system or user config, a fixed identity.
fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Keyhole Test")
        .env("GIT_AUTHOR_EMAIL", "test@keyhole.invalid")
        .env("GIT_COMMITTER_NAME", "Keyhole Test")
        .env("GIT_COMMITTER_EMAIL", "test@keyhole.invalid")
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {} failed in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `group/sub/project`: segments of letters, digits, `.`, `_`, `-`, none of them `.`/`..`.
fn valid_project_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
}

pub(crate) fn create_repo(
    root: &Path,
    project_path: &str,
    files: &[(&str, &str)],
) -> Result<String> {
    if !valid_project_path(project_path) {
        bail!("`{project_path}` is not a project path like group/project");
    }
    let bare = root.join(format!("{project_path}.git"));
    if bare.exists() {
        bail!("a repository for {project_path} exists already");
    }
    let work = root.join(".work").join(super::random_hex(12));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    git(&work, &["init", "-q", "-b", "main"])?;
    for (name, content) in files {
        let file = work.join(name);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content).with_context(|| format!("writing {}", file.display()))?;
    }
    git(&work, &["add", "-A"])?;
    git(
        &work,
        &["commit", "-q", "--allow-empty", "-m", "test repository"],
    )?;
    let sha = git(&work, &["rev-parse", "HEAD"])?;
    if let Some(parent) = bare.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let bare_str = bare.to_str().context("the git root is not UTF-8")?;
    git(&work, &["clone", "-q", "--bare", ".", bare_str])?;
    std::fs::remove_dir_all(&work).ok();
    Ok(sha)
}

/// The job token of `Authorization: Basic gitlab-ci-token:<token>`.
fn job_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, token) = text.split_once(':')?;
    (user == "gitlab-ci-token").then(|| token.to_owned())
}

/// The fallback route: `/<project path>.git/<git smart HTTP path>`.
pub(crate) async fn serve(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(super::Fault::Status(code)) = shared.update(|s| s.take_fault(Endpoint::Git)) {
        return status(code);
    }
    let path = uri.path();
    let Some(end) = path
        .find(".git/")
        .map(|i| i + 4)
        .or_else(|| path.ends_with(".git").then_some(path.len()))
    else {
        return status(404);
    };
    let repo = path[..end].trim_start_matches('/');
    let project_path = repo.trim_end_matches(".git");
    if !valid_project_path(project_path) || !shared.git_root.path().join(repo).is_dir() {
        return status(404);
    }
    let authorized = job_token(&headers)
        .is_some_and(|token| shared.lock().active_job_token(&token, project_path));
    if !authorized {
        shared.update(|s| s.counters.git_unauthorized += 1);
        let mut h = HeaderMap::new();
        h.insert(
            "WWW-Authenticate",
            HeaderValue::from_static("Basic realm=\"GitLab\""),
        );
        return (StatusCode::UNAUTHORIZED, h).into_response();
    }
    match run_cgi(shared.git_root.path(), &method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(e) => {
            eprintln!("coordinator: git http-backend failed: {e:#}");
            status(500)
        }
    }
}

async fn run_cgi(
    root: &Path,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let mut cmd = tokio::process::Command::new(HTTP_BACKEND);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "gitlab-ci-token")
        .env("REMOTE_ADDR", "127.0.0.1");
    if !header("content-encoding").is_empty() {
        cmd.env("HTTP_CONTENT_ENCODING", header("content-encoding"));
    }
    if !header("git-protocol").is_empty() {
        cmd.env("GIT_PROTOCOL", header("git-protocol"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {HTTP_BACKEND}"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    // Written concurrently with reading stdout, so that a large exchange cannot deadlock.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
        let _ = stdin.shutdown().await;
    });
    let out = child.wait_with_output().await?;
    let _ = writer.await;
    if !out.status.success() {
        bail!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_cgi(&out.stdout)
}

/// A CGI answer: header lines, a blank line, the body. `Status:` sets the HTTP status.
fn parse_cgi(out: &[u8]) -> Result<Response> {
    let (head_len, sep_len) = find(out, b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| find(out, b"\n\n").map(|i| (i, 2)))
        .context("no end of CGI headers")?;
    let head = std::str::from_utf8(&out[..head_len]).context("CGI headers are not UTF-8")?;
    let mut response = Response::new(Body::from(out[head_len + sep_len..].to_vec()));
    for line in head.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').context("a CGI header without `:`")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .context("a bad CGI Status")?;
            *response.status_mut() = StatusCode::from_u16(code)?;
        } else {
            response.headers_mut().append(
                HeaderName::from_bytes(name.trim().as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
    }
    Ok(response)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths() {
        assert!(valid_project_path("acme/demo-app"));
        assert!(valid_project_path("a/b/c.d_e"));
        assert!(!valid_project_path("../etc"));
        assert!(!valid_project_path("a//b"));
        assert!(!valid_project_path(""));
        assert!(!valid_project_path("a/b c"));
    }

    #[test]
    fn basic_auth() {
        let mut h = HeaderMap::new();
        let enc = base64::engine::general_purpose::STANDARD.encode("gitlab-ci-token:tok:en");
        h.insert("authorization", format!("Basic {enc}").parse().unwrap());
        assert_eq!(job_token(&h).as_deref(), Some("tok:en"));
        let enc = base64::engine::general_purpose::STANDARD.encode("root:tok");
        h.insert("authorization", format!("Basic {enc}").parse().unwrap());
        assert_eq!(job_token(&h), None);
    }

    #[test]
    fn cgi_output() {
        let r =
            parse_cgi(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope").unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()["content-type"], "text/plain");
        let r = parse_cgi(b"Content-Type: application/x-git\n\nPACK").unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(parse_cgi(b"no headers end").is_err());
    }
}
