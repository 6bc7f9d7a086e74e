/// A secret's name: the variable the job sees and the file the broker writes.
///
/// It must be a valid POSIX shell variable name (`[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes),
/// which also makes it a safe file name: no `/`, `..`, NUL or newline can get in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is longer than {max} bytes", max = SecretName::MAX_LEN)]
    TooLong,
    #[error(
        "the name {0:?} is not a shell variable name: use letters, digits and _, not starting with a digit"
    )]
    Invalid(String),
}

impl SecretName {
    pub const MAX_LEN: usize = 128;

    pub fn new(name: &str) -> Result<Self, NameError> {
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(NameError::Empty),
            Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
                return Err(NameError::Invalid(printable(name)));
            }
            Some(_) => {}
        }
        if name.len() > Self::MAX_LEN {
            return Err(NameError::TooLong);
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(NameError::Invalid(printable(name)));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SecretName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names come from job variables, so they are not secret; cap what an error echoes.
pub fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_default).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_shell_variable_names() {
        for ok in ["A", "_x", "DATABASE_PASSWORD", "a1_b2"] {
            assert_eq!(SecretName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_path_tricks_and_bad_characters() {
        for bad in [
            "../etc", "a/b", "..", "a\nb", "a\0b", "1abc", "a-b", "a.b", "ä",
        ] {
            assert!(SecretName::new(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(SecretName::new(""), Err(NameError::Empty));
        assert_eq!(SecretName::new(&"a".repeat(129)), Err(NameError::TooLong));
    }
}
