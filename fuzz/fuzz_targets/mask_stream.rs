//! Masking: for any secrets, log and chunking, the output holds no secret and equals the
//! one-shot result.
#![no_main]

use std::sync::Arc;

use keyhole_broker::mask::{MIN_MASKED_LEN, MaskSet, StreamMasker, mask_all};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretSlice;

fuzz_target!(|data: &[u8]| {
    // Layout: [n_secrets][len_i ...][secret bytes ...][chunk sizes byte][log ...]
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 4) + 1;
    if rest.len() < n + 1 {
        return;
    }
    let (lens, mut rest) = rest.split_at(n);
    let mut secrets = Vec::new();
    for &len in lens {
        let len = usize::from(len % 24) + MIN_MASKED_LEN;
        if rest.len() < len {
            return;
        }
        let (s, r) = rest.split_at(len);
        secrets.push(s.to_vec());
        rest = r;
    }
    let Some((&chunk, log)) = rest.split_first() else { return };
    let chunk = usize::from(chunk % 17) + 1;
    let values: Vec<SecretSlice<u8>> = secrets.iter().map(|s| SecretSlice::from(s.clone())).collect();
    let set = Arc::new(MaskSet::new(&values));
    let mut masker = StreamMasker::new(Arc::clone(&set));
    let mut out = Vec::new();
    for (i, piece) in log.chunks(chunk).enumerate() {
        masker.push(piece, &mut out);
        if i % 5 == 4 {
            masker.flush(&mut out);
        }
    }
    masker.finish(&mut out);
    assert_eq!(out, mask_all(&set, log));
    for s in &secrets {
        assert!(!out.windows(s.len()).any(|w| w == s.as_slice()), "a secret survived masking");
    }
});
