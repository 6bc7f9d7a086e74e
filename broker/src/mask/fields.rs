//! The fields of a whole secret, which the broker delivers as one JSON object: a job prints
//! them one at a time (`jq -r .password`, `set -x` after `export PASSWORD=$(jq ...)`), so each
//! is masked on its own as well as the whole.

use std::collections::BTreeMap;

use secrecy::SecretSlice;
use serde_json::value::RawValue;
use zeroize::Zeroizing;

/// Nesting deeper than this is masked as the nested JSON text, not field by field: it bounds
/// the recursion on input the broker does not control.
const MAX_DEPTH: usize = 16;

/// One field of a whole secret: where it is (`password`, `db.host`, `hosts[0]`), for a warning
/// that names it, and its value. `Debug` shows the path only.
pub(super) struct Field {
    pub path: String,
    pub value: SecretSlice<u8>,
}

impl std::fmt::Debug for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Field")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Every string and number in a JSON object, nested objects and arrays included: strings as
/// the text they stand for (what `jq -r` prints), numbers as written. `true`, `false` and
/// `null` are no secrets. Anything but a JSON object has no fields.
///
/// The decoded strings live in zeroizing buffers here; serde_json's own scratch space for
/// unescaping is not wiped (as for every JSON answer of Vault the broker reads).
pub(super) fn fields(json: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let Ok(text) = std::str::from_utf8(json) else {
        return out;
    };
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) if raw.get().starts_with('{') => collect(raw, String::new(), 0, &mut out),
        _ => {}
    }
    out
}

/// Adds the fields under `raw`, found at `path`, to `out`.
fn collect(raw: &RawValue, path: String, depth: usize, out: &mut Vec<Field>) {
    let text = raw.get();
    let nested = text.starts_with('{') || text.starts_with('[');
    if nested && depth < MAX_DEPTH {
        if text.starts_with('{') {
            // A secret's fields have distinct names (Vault's and Kubernetes' data are maps).
            if let Ok(entries) = serde_json::from_str::<BTreeMap<String, &RawValue>>(text) {
                for (key, child) in entries {
                    let child_path = if path.is_empty() {
                        key
                    } else {
                        format!("{path}.{key}")
                    };
                    collect(child, child_path, depth + 1, out);
                }
            }
        } else if let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text) {
            for (i, child) in items.into_iter().enumerate() {
                collect(child, format!("{path}[{i}]"), depth + 1, out);
            }
        }
        return;
    }
    let value = if text.starts_with('"') {
        match serde_json::from_str::<String>(text) {
            Ok(s) => {
                let s = Zeroizing::new(s);
                SecretSlice::from(s.as_bytes().to_vec())
            }
            Err(_) => return,
        }
    } else if matches!(text, "true" | "false" | "null") {
        return;
    } else {
        // A number, or nesting too deep to follow: as written.
        SecretSlice::from(text.as_bytes().to_vec())
    };
    out.push(Field { path, value });
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    fn shown(json: &str) -> Vec<(String, String)> {
        fields(json.as_bytes())
            .into_iter()
            .map(|f| {
                let value = String::from_utf8(f.value.expose_secret().to_vec()).unwrap();
                (f.path, value)
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(p, v)| ((*p).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn strings_are_decoded_numbers_kept_and_nesting_followed() {
        assert_eq!(
            shown(r#"{"b":"x\"y\u00e9\n","a":{"n":12.50,"t":true,"z":null},"l":["p",[7]]}"#),
            pairs(&[
                ("a.n", "12.50"),
                ("b", "x\"yé\n"),
                ("l[0]", "p"),
                ("l[1][0]", "7"),
            ])
        );
    }

    #[test]
    fn only_an_object_has_fields() {
        for json in [
            r#""text""#,
            "[\"a\"]",
            "42",
            "",
            "{",
            "not json",
            "{\"a\":}",
        ] {
            assert!(shown(json).is_empty(), "{json:?}");
        }
        assert!(fields(b"{\"a\":\"\xff\"}").is_empty());
    }

    #[test]
    fn nesting_too_deep_is_kept_whole() {
        let deep = format!("{}\"v\"{}", "[".repeat(40), "]".repeat(40));
        let found = shown(&format!(r#"{{"d":{deep}}}"#));
        assert_eq!(found.len(), 1);
        assert!(found[0].0.starts_with("d[0]"), "{found:?}");
        assert!(found[0].1.starts_with('['), "{found:?}");
    }

    #[test]
    fn debug_shows_the_path_not_the_value() {
        let found = fields(br#"{"password":"hunter2-secret"}"#);
        let text = format!("{found:?}");
        assert!(
            text.contains("password") && !text.contains("hunter2"),
            "{text}"
        );
    }

    proptest::proptest! {
        /// Any input: no panic, and every field found is a part of an object.
        #[test]
        fn any_input_is_handled(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let found = fields(&input);
            let object = input.trim_ascii_start().first() == Some(&b'{');
            proptest::prop_assert!(found.is_empty() || object);
        }
    }
}
