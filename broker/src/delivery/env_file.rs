use zeroize::Zeroizing;

use keyhole_contract::reference::SecretName;

/// A value that a POSIX shell variable cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "secret {name} contains a NUL byte, which a shell variable cannot hold; deliver it as a file (file: true)"
)]
pub struct EnvFileError {
    pub name: String,
}

/// Renders `export NAME='value'` lines that the job script sources for `file: false` secrets
/// and job variables.
///
/// Values are single-quoted with `'` written as `'\''`, so no byte of a value is ever
/// interpreted by the shell. The result is a zeroizing buffer.
pub fn render_env_file<'a>(
    entries: impl IntoIterator<Item = (&'a SecretName, &'a [u8])>,
) -> Result<Zeroizing<Vec<u8>>, EnvFileError> {
    let entries: Vec<_> = entries.into_iter().collect();
    let capacity = entries
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() * 4 + 12)
        .sum();
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    for (name, value) in entries {
        if value.contains(&0) {
            return Err(EnvFileError {
                name: name.to_string(),
            });
        }
        out.extend_from_slice(b"export ");
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b"='");
        for &b in value {
            if b == b'\'' {
                out.extend_from_slice(b"'\\''");
            } else {
                out.push(b);
            }
        }
        out.extend_from_slice(b"'\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_so_the_shell_reads_back_the_exact_bytes() {
        let name = SecretName::new("TRICKY").unwrap();
        let raw = b"it's $HOME `id` \"q\" \\ \n line2 \xc3\xa9".to_vec();
        let file = render_env_file([(&name, raw.as_slice())]).unwrap();
        let script = [&file[..], b"printf '%s' \"$TRICKY\""].concat();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&script))
            .output()
            .unwrap();
        assert_eq!(out.stdout, raw);
    }

    #[test]
    fn refuses_nul_by_name() {
        let name = SecretName::new("BIN").unwrap();
        let value = [1u8, 0, 2];
        let err = render_env_file([(&name, &value[..])]).unwrap_err();
        assert!(err.to_string().contains("secret BIN"));
    }
}
