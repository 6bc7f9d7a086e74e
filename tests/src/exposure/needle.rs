//! A test secret and the byte strings that would betray it: the value itself and the encodings
//! a log line, an API object or a stored record could carry it in.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use secrecy::{ExposeSecret, SecretSlice};

/// How a value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Form {
    /// The bytes as they are.
    Raw,
    /// Escaped inside a JSON string (serde's escapes: `\"`, `\\`, `\n`, ...).
    Json,
    /// Escaped inside a Go JSON string, which also escapes `<`, `>` and `&` (the apiserver's,
    /// containerd's and etcdctl's own logs and objects).
    GoJson,
    /// Inside single quotes in a shell file (`'` written as `'\''`), as in the broker's env file.
    ShellQuoted,
    /// Every byte outside `A-Za-z0-9-._~` as `%XX`.
    Percent,
    /// Lower-case hex.
    Hex,
    /// Base64, standard alphabet, at any of the three byte alignments inside a longer encoding.
    Base64,
    /// Base64, URL-safe alphabet, at any alignment.
    Base64Url,
    /// One line (of at least 8 bytes) of a multi-line value, numbered from 1.
    Line(usize),
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Form::Raw => f.write_str("raw"),
            Form::Json => f.write_str("JSON-escaped"),
            Form::GoJson => f.write_str("Go-JSON-escaped"),
            Form::ShellQuoted => f.write_str("shell-quoted"),
            Form::Percent => f.write_str("percent-encoded"),
            Form::Hex => f.write_str("hex"),
            Form::Base64 => f.write_str("base64"),
            Form::Base64Url => f.write_str("base64url"),
            Form::Line(n) => write!(f, "line {n}"),
        }
    }
}

/// Shortest form worth searching for: shorter ones match by chance in megabytes of logs.
const MIN_FORM_LEN: usize = 8;

/// A named test secret. `Debug` shows the name only.
pub struct Needle {
    name: String,
    value: SecretSlice<u8>,
}

impl fmt::Debug for Needle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Needle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Needle {
    /// A needle; the value should carry something unique to the test (a random part), so any
    /// find is this test's value and not a coincidence.
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            value: SecretSlice::from(value.into()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value, for the test to plant it (in Vault, a Secret, a job variable).
    pub fn value(&self) -> &[u8] {
        self.value.expose_secret()
    }

    /// The value as text (test values are UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.value()).into_owned()
    }

    /// Lower-case hex SHA-256 of the value, to compare with what `sha256sum` prints in a job.
    pub fn sha256_hex(&self) -> String {
        use sha2::Digest as _;
        hex(&sha2::Sha256::digest(self.value()))
    }

    /// Every form to search for, longest-lived first; forms equal to the raw bytes are left out.
    pub fn forms(&self) -> Vec<(Form, Vec<u8>)> {
        let raw = self.value();
        let mut forms: Vec<(Form, Vec<u8>)> = vec![(Form::Raw, raw.to_vec())];
        let text = String::from_utf8_lossy(raw);
        let json = json_escape(&text, false);
        let go_json = json_escape(&text, true);
        let shell = text.replace('\'', r"'\''");
        for (form, bytes) in [
            (Form::Json, json.into_bytes()),
            (Form::GoJson, go_json.into_bytes()),
            (Form::ShellQuoted, shell.into_bytes()),
            (Form::Percent, percent(raw).into_bytes()),
            (Form::Hex, hex(raw).into_bytes()),
        ] {
            forms.push((form, bytes));
        }
        for core in base64_cores(raw, &STANDARD) {
            forms.push((Form::Base64, core));
        }
        for core in base64_cores(raw, &URL_SAFE) {
            forms.push((Form::Base64Url, core));
        }
        if raw.contains(&b'\n') {
            for (i, line) in raw.split(|&b| b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() >= MIN_FORM_LEN {
                    forms.push((Form::Line(i + 1), line.to_vec()));
                }
            }
        }
        let mut seen: Vec<Vec<u8>> = Vec::new();
        forms.retain(|(form, bytes)| {
            let keep = (*form == Form::Raw || bytes.as_slice() != raw)
                && bytes.len() >= MIN_FORM_LEN
                && !seen.contains(bytes);
            if keep {
                seen.push(bytes.clone());
            }
            keep
        });
        forms
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn percent(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The inside of a JSON string literal for `s`; `go` adds Go's HTML-safe escapes.
fn json_escape(s: &str, go: bool) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string();
    if go {
        inner
            .replace('<', r"\u003c")
            .replace('>', r"\u003e")
            .replace('&', r"\u0026")
            .replace('\u{2028}', r"\u2028")
            .replace('\u{2029}', r"\u2029")
    } else {
        inner
    }
}

/// The part of the base64 encoding that depends on the value alone, for each of the three
/// positions the value can start at within a 3-byte group of a longer encoded stream: the
/// groups shared with bytes before or after the value are cut off.
fn base64_cores(value: &[u8], engine: &impl base64::Engine) -> Vec<Vec<u8>> {
    (0..3usize)
        .filter_map(|offset| {
            // `offset` foreign bytes before the value fill its first group.
            let skip = (3 - offset) % 3;
            let body = value.get(skip..)?;
            let whole = body.len() / 3 * 3;
            let core = engine.encode(&body[..whole]);
            (!core.is_empty()).then(|| core.into_bytes())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn has(n: &Needle, form: Form, bytes: &[u8]) -> bool {
        n.forms().iter().any(|(f, b)| *f == form && b == bytes)
    }

    #[test]
    fn base64_cores_are_found_inside_an_encoding_of_a_longer_stream() {
        let n = Needle::new("n", "secret-value-0123456789");
        for prefix_len in 0..6 {
            let mut stream = vec![b'x'; prefix_len];
            stream.extend_from_slice(n.value());
            stream.extend_from_slice(b"tail");
            for engine in [&STANDARD, &URL_SAFE] {
                let encoded = engine.encode(&stream);
                assert!(
                    n.forms()
                        .iter()
                        .any(|(f, core)| matches!(f, Form::Base64 | Form::Base64Url)
                            && encoded
                                .as_bytes()
                                .windows(core.len())
                                .any(|w| w == core.as_slice())),
                    "prefix {prefix_len}"
                );
            }
        }
    }

    #[test]
    fn escaped_forms_are_those_the_encoders_produce() {
        let n = Needle::new("n", "a $(x) 'a' \"b\" \\ ; | & ✓\nsecond line here");
        let json = serde_json::to_string(&n.text()).unwrap();
        assert!(has(&n, Form::Json, &json.as_bytes()[1..json.len() - 1]));
        assert!(has(
            &n,
            Form::ShellQuoted,
            r#"a $(x) '\''a'\'' "b" \ ; | & ✓
second line here"#
                .as_bytes()
        ));
        assert!(has(&n, Form::Line(2), b"second line here"));
        let go = n
            .forms()
            .into_iter()
            .find(|(f, _)| *f == Form::GoJson)
            .unwrap()
            .1;
        assert!(String::from_utf8(go).unwrap().contains(r"\u0026"));
        assert!(has(&n, Form::Hex, hex(n.value()).as_bytes()));
    }

    #[test]
    fn forms_equal_to_the_value_or_too_short_are_left_out() {
        let n = Needle::new("n", "plainvalue123");
        let forms = n.forms();
        assert_eq!(forms.iter().filter(|(_, b)| b == n.value()).count(), 1);
        assert!(forms.iter().all(|(_, b)| b.len() >= MIN_FORM_LEN));
        assert!(!forms.iter().any(|(f, _)| matches!(f, Form::Line(_))));
    }

    #[test]
    fn debug_shows_the_name_only_and_the_digest_is_sha256() {
        let n = Needle::new("DB", "hunter2-but-longer");
        assert!(!format!("{n:?}").contains("hunter2"));
        assert_eq!(
            Needle::new("abc", "abc").sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
