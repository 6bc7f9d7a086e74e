//! Which Vault locations a job may name at all, checked before any request is sent.
//!
//! The broker reads with its own Vault token, so a reference is a request made with the
//! broker's credentials on the job's behalf. Vault serves much more than secrets under the same
//! URL space: `auth/token/lookup-self` answers with the token itself, `sys/` administers the
//! server, `identity/` and `cubbyhole/` belong to the token. A reference may therefore only
//! name a secrets engine's path, in plain segments that reach Vault exactly as written: the
//! URL parser would turn `%2e%2e` into `..` and walk out of the mount.
//!
//! This is the first of two checks; the second asks Vault the mount's real type before any
//! read (`VaultClient::resolve_engine`), whatever engine the reference states.

/// First segments that name Vault's own APIs, not a secrets engine. Compared without regard
/// to case, so that no spelling slips past.
pub const RESERVED_MOUNTS: &[&str] = &["auth", "sys", "identity", "cubbyhole"];

/// Refuses a mount or path the broker must never read; `Ok` for a plain secrets-engine path.
/// The message names the problem, never a value (references are locations).
pub fn check_vault_location(mount: &str, path: &str) -> Result<(), String> {
    check_segments("mount", mount)?;
    check_segments("path", path)?;
    let first = mount.split('/').next().unwrap_or_default();
    if RESERVED_MOUNTS
        .iter()
        .any(|reserved| first.eq_ignore_ascii_case(reserved))
    {
        return Err(format!(
            "names Vault's own {first}/ API, which is not a secrets engine; the broker reads only from KV and dynamic secrets engines ({} are refused)",
            RESERVED_MOUNTS
                .iter()
                .map(|m| format!("{m}/"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// Every segment non-empty, not `.` or `..`, and free of characters that change how the URL is
/// read: `%` (percent-encoding, e.g. `%2e%2e`), `\` (a separator to some parsers), `?` and
/// `#`, whitespace and control characters.
fn check_segments(what: &str, p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err(format!("has an empty {what}"));
    }
    for segment in p.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!("has an empty, '.' or '..' segment in its {what}"));
        }
        if segment.contains('%') {
            return Err(format!(
                "has '%' in its {what}: percent-encoded paths are refused, write the path as Vault shows it"
            ));
        }
        if segment
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '\\'))
        {
            return Err(format!(
                "has whitespace, control characters, '\\', '?' or '#' in its {what}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn vaults_own_apis_are_refused_in_any_case() {
        for (mount, path) in [
            ("auth", "token/lookup-self"),
            ("sys", "mounts"),
            ("SYS", "policies/acl/root"),
            ("identity", "entity/name/x"),
            ("cubbyhole", "response"),
            ("Auth", "token/lookup"),
        ] {
            let err = check_vault_location(mount, path).expect_err(mount);
            assert!(err.contains("not a secrets engine"), "{err}");
        }
    }

    #[test]
    fn encoded_dotted_and_odd_segments_are_refused() {
        for (mount, path, problem) in [
            ("kv", "%2e%2e/sys/mounts", "'%'"),
            ("kv", "%2E%2E/x", "'%'"),
            ("kv", "a/%2fb", "'%'"),
            ("kv", "../auth/token/lookup-self", "'..'"),
            ("kv", "a/./b", "'..'"),
            ("kv", "a//b", "empty"),
            ("kv", "a\\..\\b", "'\\'"),
            ("kv", "a b", "whitespace"),
            ("", "a", "empty mount"),
        ] {
            let err = check_vault_location(mount, path).expect_err(path);
            assert!(err.contains(problem), "{path}: {err}");
        }
    }

    #[test]
    fn secrets_engine_paths_pass() {
        for (mount, path) in [
            ("kv", "team/app"),
            ("secret", "ci/db-password"),
            ("database", "creds/app"),
            ("authority", "x"),
            ("kv", "a.b/c_d-e@f"),
        ] {
            assert_eq!(check_vault_location(mount, path), Ok(()), "{mount}/{path}");
        }
    }

    proptest! {
        /// Whatever the job writes, an accepted location has no segment the URL parser could
        /// turn into a step out of the mount.
        #[test]
        fn accepted_locations_cannot_leave_their_mount(mount in "[a-zA-Z%./\\\\]{1,12}", path in "[a-zA-Z0-9%./\\\\-]{1,24}") {
            if check_vault_location(&mount, &path).is_ok() {
                let url = url::Url::parse("http://vault/v1/").unwrap()
                    .join(&format!("{mount}/{path}")).unwrap();
                let first = url.path_segments().unwrap().nth(1).unwrap().to_owned();
                prop_assert!(url.path().starts_with("/v1/"));
                prop_assert_eq!(first.as_str(), mount.split('/').next().unwrap());
                prop_assert!(!RESERVED_MOUNTS.iter().any(|r| first.eq_ignore_ascii_case(r)));
            }
        }
    }
}
