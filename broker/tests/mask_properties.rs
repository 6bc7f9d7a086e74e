//! Property tests of the log masker: for random secrets, random logs that embed them (verbatim and
//! encoded) and random chunkings, no secret form ever reaches the output, and the output does not
//! depend on how the input was chunked.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keyhole_broker::mask::{MIN_MASKED_LEN, MaskSet, StreamMasker, mask_all};
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
