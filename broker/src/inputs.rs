//! The broker's inputs, as the kubelet projects them: the pod's annotations (downward API) and
//! the per-job Secret's keys. Parsing is pure; reading the directory is a thin edge.

use std::collections::BTreeMap;
use std::path::Path;

use secrecy::SecretSlice;

use keyhole_contract as contract;
use keyhole_contract::reference::{ReferenceError, SecretRef, parse_keyhole};

/// An input file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading {path}: {source}; is the broker's inputs volume mounted?")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {problem}")]
    Malformed {
        path: String,
        line: usize,
        problem: String,
    },
}

/// Parses the downward API's annotation file: one `key="value"` per line, values quoted the
/// way Go's `strconv.Quote` does.
pub fn parse_annotations(text: &str, path: &str) -> Result<BTreeMap<String, String>, InputError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let malformed = |problem: &str| InputError::Malformed {
            path: path.to_owned(),
            line: i + 1,
            problem: problem.to_owned(),
        };
        let (key, quoted) = line.split_once('=').ok_or_else(|| malformed("no '='"))?;
        let value = unquote(quoted).ok_or_else(|| malformed("value is not a quoted string"))?;
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

/// Undoes Go's `strconv.Quote` for the escapes it produces.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'v' => out.push('\u{b}'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            '\'' => out.push('\''),
            'x' => out.push(char::from(
                u8::from_str_radix(&take(&mut chars, 2)?, 16).ok()?,
            )),
            'u' => out.push(char::from_u32(
                u32::from_str_radix(&take(&mut chars, 4)?, 16).ok()?,
            )?),
            'U' => out.push(char::from_u32(
                u32::from_str_radix(&take(&mut chars, 8)?, 16).ok()?,
            )?),
            _ => return None,
        }
    }
    Some(out)
}

fn take(chars: &mut std::str::Chars<'_>, n: usize) -> Option<String> {
    let s: String = chars.take(n).collect();
    (s.len() == n).then_some(s)
}

/// The references among the annotations (`secrets.keyhole.dev/<NAME>`), each parsed; every
/// bad one is reported, not just the first.
pub fn references_from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<SecretRef>, Vec<ReferenceError>> {
    let mut refs = Vec::new();
    let mut errors = Vec::new();
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(contract::REFERENCE_ANNOTATION_PREFIX) else {
            continue;
        };
        match parse_keyhole(name, value) {
            Ok(r) => refs.push(r),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(refs)
    } else {
        Err(errors)
    }
}

/// Reads the references from the inputs directory.
pub fn read_annotations(inputs_dir: &Path) -> Result<BTreeMap<String, String>, InputError> {
    let path = inputs_dir.join(contract::INPUT_ANNOTATIONS);
    let text = std::fs::read_to_string(&path).map_err(|source| InputError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_annotations(&text, &path.display().to_string())
}

/// The per-job Secret's values (job token, masked variables, ID tokens), by key. Missing
/// directory means the job has none.
pub fn read_job_secret(inputs_dir: &Path) -> Result<BTreeMap<String, SecretSlice<u8>>, InputError> {
    let dir = inputs_dir.join(contract::INPUT_JOB_SECRET_DIR);
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(InputError::Read {
                path: dir.display().to_string(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // The kubelet's projection keeps `..data` and timestamped dirs next to the key links.
        if name.starts_with("..") {
            continue;
        }
        let path = entry.path();
        let bytes = std::fs::read(&path).map_err(|source| InputError::Read {
            path: path.display().to_string(),
            source,
        })?;
        out.insert(name, SecretSlice::from(bytes));
    }
    Ok(out)
}

/// The per-job Secret's log-end token ([`contract::INPUT_LOG_END_KEY`]), read on its own so the
/// broker ends its log with the markers whatever else fails. None when the runner set none
/// (or it is not a short line of visible ASCII, which a runner-made token always is).
pub fn read_log_end_token(inputs_dir: &Path) -> Option<String> {
    let path = inputs_dir
        .join(contract::INPUT_JOB_SECRET_DIR)
        .join(contract::INPUT_LOG_END_KEY);
    let bytes = std::fs::read(path).ok()?;
    let valid = !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic);
    valid.then(|| String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_downward_api_annotations() {
        let text = "kubernetes.io/config.seen=\"2026-01-01\"\nsecrets.keyhole.dev/DB=\"vault:kv/app/db#password\"\nx=\"a\\\"b\\\\c\\nd\\u00e9\"\n";
        let a = parse_annotations(text, "annotations").unwrap();
        assert_eq!(a["secrets.keyhole.dev/DB"], "vault:kv/app/db#password");
        assert_eq!(a["x"], "a\"b\\c\nd\u{e9}");
        let refs = references_from_annotations(&a).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].name.as_str(), "DB");
    }

    #[test]
    fn reports_every_bad_reference() {
        let text = "secrets.keyhole.dev/A=\"vault:kv\"\nsecrets.keyhole.dev/B=\"nope:x\"\nsecrets.keyhole.dev/C=\"k8s:ok/k\"\n";
        let a = parse_annotations(text, "annotations").unwrap();
        let errors = references_from_annotations(&a).unwrap_err();
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let err = parse_annotations("ok=\"1\"\nbroken\n", "/in/annotations").unwrap_err();
        assert_eq!(err.to_string(), "/in/annotations line 2: no '='");
        assert!(parse_annotations("k=unquoted\n", "f").is_err());
        assert!(parse_annotations("k=\"bad\\q\"\n", "f").is_err());
    }
}
