//! Property tests of the log masker: for random secrets, random logs that embed them (verbatim and
//! encoded) and random chunkings, no secret form ever reaches the output, and the output does not
//! depend on how the input was chunked. Each form a job really prints (see [`printed_forms`])
//! is checked on its own: no byte of it reaches the output.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use keyhole_broker::mask::{MIN_MASKED_LEN, MaskPlan, MaskSet, StreamMasker, mask_all};
use proptest::prelude::*;
use secrecy::SecretSlice;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Secrets from a small alphabet so they overlap and nest often.
fn secret() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(b"ab01-\n".to_vec()),
        MIN_MASKED_LEN..24,
    )
}

fn piece(secrets: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = secrets.len();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..16),
        prop::collection::vec(prop::sample::select(b"ab01-\n ".to_vec()), 0..16),
        (0..n, 0..3u8).prop_map(move |(i, form)| {
            let s = &secrets[i];
            match form {
                0 => s.clone(),
                1 => STANDARD.encode(s).into_bytes(),
                _ => URL_SAFE_NO_PAD.encode(s).into_bytes(),
            }
        }),
    ]
}

fn case() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>, Vec<usize>)> {
    prop::collection::vec(secret(), 1..5).prop_flat_map(|secrets| {
        let log = prop::collection::vec(piece(secrets.clone()), 0..24).prop_map(|p| p.concat());
        let cuts = prop::collection::vec(1usize..40, 0..32);
        (Just(secrets), log, cuts)
    })
}

fn run_chunked(set: &Arc<MaskSet>, input: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut masker = StreamMasker::new(Arc::clone(set));
    let mut out = Vec::new();
    let mut rest = input;
    for &cut in cuts.iter().cycle().take(input.len()) {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(cut.min(rest.len()));
        masker.push(head, &mut out);
        if cut % 3 == 0 {
            masker.flush(&mut out);
        }
        rest = tail;
    }
    masker.push(rest, &mut out);
    masker.finish(&mut out);
    out
}

/// Bytes of the log around a printed form: none of them is a base64 or percent-encoding
/// character, so that any of those left in the output after removing the masks leaked.
const NOISE: &[u8] = b" <>{}|^`\"\t\n";

/// Percent-encoding that leaves alphanumerics and `safe` as they are; `plus` writes a space
/// as `+` (HTML forms).
fn percent(value: &[u8], safe: &[u8], plus: bool, lower: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in value {
        if b.is_ascii_alphanumeric() || safe.contains(&b) {
            out.push(b);
        } else if plus && b == b' ' {
            out.push(b'+');
        } else if lower {
            out.extend_from_slice(format!("%{b:02x}").as_bytes());
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Base64 wrapped at `width` columns, lines ended by `eol` (GNU `base64`: 76, `openssl base64`:
/// 64), with the final line end as those tools print it.
fn wrapped(value: &[u8], width: usize, eol: &[u8]) -> Vec<u8> {
    let encoded = STANDARD.encode(value);
    let mut out = Vec::new();
    for line in encoded.as_bytes().chunks(width) {
        out.extend_from_slice(line);
        out.extend_from_slice(eol);
    }
    out
}

/// Every form a job is likely to print a value in, by the tools that print it.
fn printed_forms(value: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    const UNRESERVED: &[u8] = b"-._~";
    vec![
        ("verbatim", value.to_vec()),
        ("base64", STANDARD.encode(value).into_bytes()),
        (
            "base64 unpadded",
            STANDARD_NO_PAD.encode(value).into_bytes(),
        ),
        ("base64url", URL_SAFE.encode(value).into_bytes()),
        (
            "base64url unpadded",
            URL_SAFE_NO_PAD.encode(value).into_bytes(),
        ),
        ("base64 -w76", wrapped(value, 76, b"\n")),
        ("openssl base64", wrapped(value, 64, b"\n")),
        ("base64 -w76, CRLF", wrapped(value, 76, b"\r\n")),
        ("openssl base64, CRLF", wrapped(value, 64, b"\r\n")),
        (
            "echo | base64",
            wrapped(&[value, b"\n"].concat(), 76, b"\n"),
        ),
        (
            "echo | base64 -w0",
            STANDARD.encode([value, b"\n"].concat()).into_bytes(),
        ),
        ("percent", percent(value, UNRESERVED, false, false)),
        (
            "percent lower-case",
            percent(value, UNRESERVED, false, true),
        ),
        ("urllib quote", percent(value, b"-._~/", false, false)),
        ("urllib quote_plus", percent(value, UNRESERVED, true, false)),
        (
            "encodeURIComponent",
            percent(value, b"-._~!*'()", false, false),
        ),
        (
            "encodeURI",
            percent(value, b"-._~!*'();,/?:@&=+$#", false, false),
        ),
    ]
}

fn without_masks(out: &[u8]) -> Vec<u8> {
    let mut rest = out.to_vec();
    while let Some(at) = rest.windows(8).position(|w| w == b"[MASKED]") {
        rest.drain(at..at + 8);
    }
    rest
}

/// A value long enough to be masked, and often long enough to wrap (58 bytes and more).
fn any_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), MIN_MASKED_LEN..160),
        prop::collection::vec(
            prop::sample::select(b"aZ09/ +?@=&-_.~!*'()#%".to_vec()),
            MIN_MASKED_LEN..160,
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn no_byte_of_any_printed_form_survives(
        value in any_value(),
        form in 0..17usize,
        before in prop::collection::vec(prop::sample::select(NOISE.to_vec()), 0..100),
        after in prop::collection::vec(prop::sample::select(NOISE.to_vec()), 0..100),
        cuts in prop::collection::vec(1usize..90, 0..32),
    ) {
        let (what, printed) = printed_forms(&value).swap_remove(form);
        let set = Arc::new(MaskSet::new(&[SecretSlice::from(value.clone())]));
        let log = [before.as_slice(), &printed, &after].concat();
        let out = run_chunked(&set, &log, &cuts);
        prop_assert!(!contains(&out, &printed), "{} form in output", what);
        let left = without_masks(&out);
        prop_assert!(
            // Line ends between masked lines stay.
            left.iter().all(|b| NOISE.contains(b) || *b == b'\r'),
            "part of the {} form in output {:?}", what, String::from_utf8_lossy(&out)
        );
    }
}

/// A field value of a whole secret: any text, or text rich in what JSON escapes.
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{8,40}",
        prop::collection::vec(
            prop::sample::select(vec!['a', '0', '"', '\\', '\n', '\t', '\u{1}', '/', 'é']),
            8..40
        )
        .prop_map(|c| c.into_iter().collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A whole secret (a JSON object) printed one field at a time, as `jq -r .field` prints it
    /// or as `jq .` shows it JSON-escaped: nothing of the field is left.
    #[test]
    fn no_field_of_a_whole_secret_survives(
        fields in prop::collection::btree_map("[a-z_]{1,8}", field_value(), 1..5),
        pick in any::<prop::sample::Index>(),
        escaped in any::<bool>(),
        before in prop::collection::vec(prop::sample::select(NOISE.to_vec()), 0..100),
        after in prop::collection::vec(prop::sample::select(NOISE.to_vec()), 0..100),
        cuts in prop::collection::vec(1usize..90, 0..32),
    ) {
        let whole = serde_json::to_vec(&fields).unwrap();
        let mut plan = MaskPlan::new();
        plan.secret("WHOLE", &SecretSlice::from(whole), true);
        let set = Arc::new(plan.build());
        let field = fields.values().nth(pick.index(fields.len())).unwrap();
        let printed = if escaped {
            let json = serde_json::to_string(field).unwrap();
            json.as_bytes()[1..json.len() - 1].to_vec()
        } else {
            field.as_bytes().to_vec()
        };
        let log = [before.as_slice(), &printed, &after].concat();
        let out = run_chunked(&set, &log, &cuts);
        prop_assert!(!contains(&out, &printed));
        let left = without_masks(&out);
        prop_assert!(
            left.iter().all(|b| NOISE.contains(b)),
            "part of a field in output {:?}", String::from_utf8_lossy(&out)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn no_secret_survives_any_chunking((secrets, log, cuts) in case()) {
        let values: Vec<SecretSlice<u8>> = secrets.iter().map(|s| SecretSlice::from(s.clone())).collect();
        let set = Arc::new(MaskSet::new(&values));
        let out = run_chunked(&set, &log, &cuts);
        for s in &secrets {
            prop_assert!(!contains(&out, s), "secret {:?} in output {:?}", s, out);
            let b64 = STANDARD.encode(s);
            prop_assert!(!contains(&out, b64.as_bytes()), "base64 of {:?} in output", s);
            for line in s.split(|&b| b == b'\n').filter(|l| l.len() >= MIN_MASKED_LEN) {
                prop_assert!(!contains(&out, line), "line {:?} of a secret in output", line);
            }
        }
    }

    #[test]
    fn chunking_does_not_change_the_output((secrets, log, cuts) in case()) {
        let values: Vec<SecretSlice<u8>> = secrets.iter().map(|s| SecretSlice::from(s.clone())).collect();
        let set = Arc::new(MaskSet::new(&values));
        prop_assert_eq!(run_chunked(&set, &log, &cuts), mask_all(&set, &log));
    }

    #[test]
    fn text_without_secrets_passes_unchanged(log in prop::collection::vec(prop::sample::select(b"xyz \n".to_vec()), 0..200)) {
        let values = [SecretSlice::from(b"ab01-ab01".to_vec())];
        let set = Arc::new(MaskSet::new(&values));
        prop_assert_eq!(mask_all(&set, &log), log);
    }
}
