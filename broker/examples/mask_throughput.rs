//! P3: masking throughput. 100 secret values (each masked with its base64, URL-safe base64 and
//! percent-encoded forms) over 1 GiB of log in 64 KiB chunks, on one core. Prints
//! `P3 gib_per_s=… patterns=… masked=…`. Run via `scripts/bench broker`.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use keyhole_broker::mask::{MaskSet, StreamMasker};
use secrecy::SecretSlice;

fn main() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let values: Vec<Vec<u8>> = (0..100)
        .map(|_| {
            (0..32)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect()
        })
        .collect();
    let secrets: Vec<SecretSlice<u8>> = values
        .iter()
        .map(|v| SecretSlice::from(v.clone()))
        .collect();
    let set = Arc::new(MaskSet::new(&secrets));

    // 64 MiB of log lines; one line in 50 carries a secret in one of its forms.
    let mut block = Vec::with_capacity(64 << 20);
    let mut line = 0u64;
    while block.len() < (64 << 20) {
        line += 1;
        block.extend_from_slice(
            format!(
                "{line:>8} INFO step {} finished in {} ms ",
                next() % 97,
                next() % 5000
            )
            .as_bytes(),
        );
        if line.is_multiple_of(50) {
            let v = &values[(next() % 100) as usize];
            match next() % 3 {
                0 => block.extend_from_slice(v),
                1 => block.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(v)
                        .as_bytes(),
                ),
                _ => block.extend_from_slice(
                    base64::engine::general_purpose::URL_SAFE
                        .encode(v)
                        .as_bytes(),
                ),
            }
        }
        block.push(b'\n');
    }
    let rounds = (1u64 << 30).div_ceil(block.len() as u64);
    let mut masker = StreamMasker::new(Arc::clone(&set));
    let mut out = Vec::with_capacity(128 << 10);
    let mut total = 0u64;
    let start = Instant::now();
    for _ in 0..rounds {
        for chunk in block.chunks(64 << 10) {
            masker.push(chunk, &mut out);
            total += chunk.len() as u64;
            out.clear();
        }
    }
    masker.finish(&mut out);
    let secs = start.elapsed().as_secs_f64();
    // Outside the timing: how many ranges one block masks, as a sanity check.
    let sample = keyhole_broker::mask::mask_all(&set, &block);
    let masked = sample.windows(8).filter(|w| *w == b"[MASKED]").count() as u64 * rounds;
    println!(
        "P3 gib_per_s={:.2} input_gib={:.2} seconds={secs:.2} patterns={} masked={masked}",
        total as f64 / secs / f64::from(1u32 << 30),
        total as f64 / f64::from(1u32 << 30),
        set.len()
    );
}
