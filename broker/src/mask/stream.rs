use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use super::{MASK, MaskSet};

/// Masks a byte stream delivered in arbitrary chunks.
///
/// Holds back at most `longest pattern - 1` bytes between chunks (they could be the start of a
/// secret), so output lags input by less than one secret. Held bytes live in a zeroizing buffer.
/// A chunk is searched where it lies: only the held bytes and the first `longest - 1` bytes of
/// the next chunk are copied (to find the occurrences that straddle the boundary), so the cost
/// per byte is the sampler's, not a copy and a wipe of every chunk.
pub struct StreamMasker {
    set: Arc<MaskSet>,
    held: Zeroizing<Vec<u8>>,
    /// Leading bytes of `held` that belong to a range whose `[MASKED]` was already written.
    covered: usize,
    /// The held bytes followed by the start of the next chunk: the boundary's search space.
    bridge: Zeroizing<Vec<u8>>,
    /// Working space of the occurrence search (positions only, no log bytes).
    scratch: Vec<usize>,
}

impl std::fmt::Debug for StreamMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamMasker")
            .field("set", &self.set)
            .field("held_bytes", &self.held.len())
            .finish()
    }
}

impl StreamMasker {
    pub fn new(set: Arc<MaskSet>) -> Self {
        Self {
            set,
            held: Zeroizing::new(Vec::new()),
            covered: 0,
            bridge: Zeroizing::new(Vec::new()),
            scratch: Vec::new(),
        }
    }

    /// Feeds one chunk; appends to `out` every byte that is now final.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let reach_back = self.set.longest().saturating_sub(1);
        let limit = (self.held.len() + chunk.len()).saturating_sub(reach_back);
        self.emit(chunk, limit, out);
    }

    /// Emits everything that can no longer become part of a secret, e.g. when the job has been
    /// quiet for a while, so a prompt without a newline is not held back.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        let limit = self.held.len() - self.set.pending_suffix(&self.held);
        self.emit(&[], limit, out);
    }

    /// End of stream: emits the rest.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        let limit = self.held.len();
        self.emit(&[], limit, out);
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Writes out the first `limit` bytes of held bytes + `chunk`, masked, and holds the rest.
    /// Every occurrence starting before `limit` is complete (callers choose `limit` so), so
    /// ranges are final; a masked range that runs past `limit` is remembered in `covered`.
    fn emit(&mut self, chunk: &[u8], limit: usize, out: &mut Vec<u8>) {
        let Self {
            set,
            held,
            covered,
            bridge,
            scratch,
        } = self;
        let mut writer = Writer {
            held: &held[..],
            chunk,
            out,
            end: *covered,
        };
        let h = writer.held.len();
        // Occurrences starting in the held bytes: they end at most `longest - 1` bytes into
        // the chunk, so the held bytes and that much of the chunk hold all of them.
        if h > 0 && limit > 0 {
            if chunk.is_empty() {
                set.each_occurrence(writer.held, limit.min(h), scratch, |s, e| {
                    writer.range(s, e);
                });
            } else {
                let reach = chunk.len().min(set.longest().saturating_sub(1));
                extend_zeroizing(bridge, writer.held);
                extend_zeroizing(bridge, &chunk[..reach]);
                set.each_occurrence(bridge, limit.min(h), scratch, |s, e| writer.range(s, e));
                bridge.zeroize();
                bridge.clear();
            }
        }
        // Occurrences starting in the chunk lie wholly in it.
        if limit > h {
            set.each_occurrence(chunk, limit - h, scratch, |s, e| {
                writer.range(h + s, h + e);
            });
        }
        if writer.end < limit {
            writer.copy(writer.end, limit);
            *covered = 0;
        } else {
            *covered = writer.end - limit;
        }
        // Hold back what follows `limit`.
        if limit >= h {
            held.zeroize();
            held.clear();
            extend_zeroizing(held, &chunk[limit - h..]);
        } else {
            let rest = h - limit;
            held.copy_within(limit.., 0);
            held[rest..].zeroize();
            held.truncate(rest);
            extend_zeroizing(held, chunk);
        }
    }
}

/// Appends to a zeroizing buffer; growing copies into a new buffer so that the old allocation
/// is zeroized (on drop), not handed back to the allocator with log bytes in it.
fn extend_zeroizing(buffer: &mut Zeroizing<Vec<u8>>, bytes: &[u8]) {
    if buffer.capacity() - buffer.len() < bytes.len() {
        let wanted = (buffer.len() + bytes.len()).next_power_of_two();
        let mut bigger = Zeroizing::new(Vec::with_capacity(wanted));
        bigger.extend_from_slice(buffer);
        *buffer = bigger;
    }
    buffer.extend_from_slice(bytes);
}

/// Writes the held bytes followed by the chunk (one virtual stream, positions counted from the
/// first held byte) to `out`, with each union of overlapping occurrences replaced by one mask.
struct Writer<'a> {
    held: &'a [u8],
    chunk: &'a [u8],
    out: &'a mut Vec<u8>,
    /// Everything before this position is written (or masked).
    end: usize,
}

impl Writer<'_> {
    /// One occurrence; called in ascending order of `start`.
    fn range(&mut self, start: usize, stop: usize) {
        if start < self.end {
            self.end = self.end.max(stop);
        } else {
            self.copy(self.end, start);
            self.out.extend_from_slice(MASK);
            self.end = stop;
        }
    }

    /// Copies stream positions `from..to` unmasked.
    fn copy(&mut self, from: usize, to: usize) {
        let h = self.held.len();
        if from < h {
            self.out.extend_from_slice(&self.held[from..to.min(h)]);
        }
        if to > h {
            self.out
                .extend_from_slice(&self.chunk[from.max(h) - h..to - h]);
        }
    }
}

/// Masks a whole buffer at once.
pub fn mask_all(set: &Arc<MaskSet>, input: &[u8]) -> Vec<u8> {
    let mut masker = StreamMasker::new(Arc::clone(set));
    let mut out = Vec::with_capacity(input.len());
    masker.push(input, &mut out);
    masker.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use secrecy::SecretSlice;

    use super::*;

    fn set(values: &[&[u8]]) -> Arc<MaskSet> {
        let secrets: Vec<SecretSlice<u8>> = values
            .iter()
            .map(|v| SecretSlice::from(v.to_vec()))
            .collect();
        Arc::new(MaskSet::new(&secrets))
    }

    fn masked(values: &[&[u8]], input: &[u8]) -> String {
        String::from_utf8(mask_all(&set(values), input)).unwrap()
    }

    #[test]
    fn masks_a_value_and_keeps_the_rest() {
        assert_eq!(
            masked(&[b"s3cr3t-pass"], b"pw=s3cr3t-pass ok\n"),
            "pw=[MASKED] ok\n"
        );
    }

    #[test]
    fn short_secret_inside_longer_one_leaves_nothing_of_the_longer_visible() {
        let out = masked(
            &[b"abcdefgh", b"xxabcdefghyy-longer"],
            b"1 xxabcdefghyy-longer 2 abcdefgh 3",
        );
        assert_eq!(out, "1 [MASKED] 2 [MASKED] 3");
    }

    #[test]
    fn overlapping_secrets_are_masked_as_one_range() {
        // "0123456789" and "56789abcde" overlap; neither may show any byte.
        let out = masked(&[b"0123456789", b"56789abcde"], b"<0123456789abcde>");
        assert_eq!(out, "<[MASKED]>");
    }

    #[test]
    fn base64_and_url_encoded_forms_are_masked() {
        let out = masked(
            &[b"p@ss word/+?"],
            b"a cEBzcyB3b3JkLys/ b p%40ss%20word%2F%2B%3F c",
        );
        assert_eq!(out, "a [MASKED] b [MASKED] c");
    }

    /// The value wrapped as `base64` (76 columns) and `openssl base64` (64) print it.
    fn wrapped(value: &[u8], width: usize, eol: &str) -> String {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(width)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        lines.join(eol)
    }

    #[test]
    fn base64_wrapped_at_76_and_64_columns_is_masked_line_by_line() {
        // 117 bytes: 156 base64 characters, so the last line at 76 columns has only 4.
        let value: Vec<u8> = b"wrapped-secret-"
            .iter()
            .copied()
            .cycle()
            .zip(0u8..)
            .map(|(b, i)| b ^ (i & 7))
            .take(117)
            .collect();
        for (width, eol) in [(76, "\n"), (64, "\n"), (76, "\r\n"), (64, "\r\n")] {
            let form = wrapped(&value, width, eol);
            let out = masked(&[&value], format!("<{form}{eol}>").as_bytes());
            for line in form.split(eol) {
                assert!(!out.contains(line), "{width} columns: {line:?} in {out:?}");
            }
            assert!(out.starts_with('<') && out.ends_with('>'), "{out:?}");
        }
    }

    #[test]
    fn base64_of_the_value_and_echos_newline_is_masked() {
        use base64::Engine as _;
        // `echo "$SECRET" | base64` encodes the value and a line end.
        let value = b"echoed-secret-value";
        let printed = base64::engine::general_purpose::STANDARD.encode(b"echoed-secret-value\n");
        assert_eq!(masked(&[value], printed.as_bytes()), "[MASKED]");
    }

    #[test]
    fn percent_encoding_that_keeps_slashes_or_writes_plus_for_space_is_masked() {
        let value = b"p@ss word/+?dir/file";
        for form in [
            // Python urllib.parse.quote (safe='/').
            "p%40ss%20word/%2B%3Fdir/file",
            // JavaScript encodeURI.
            "p@ss%20word/+?dir/file",
            // Python quote_plus, HTML forms.
            "p%40ss+word%2F%2B%3Fdir%2Ffile",
        ] {
            assert_eq!(masked(&[value], form.as_bytes()), "[MASKED]", "{form}");
        }
    }

    #[test]
    fn secret_split_across_chunks_is_masked() {
        let s = set(&[b"split-secret-value"]);
        let mut m = StreamMasker::new(s);
        let mut out = Vec::new();
        for chunk in [&b"before split-se"[..], b"cret-va", b"lue after"] {
            m.push(chunk, &mut out);
        }
        m.finish(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "before [MASKED] after");
    }

    #[test]
    fn repeated_overlapping_occurrences_do_not_grow_the_held_buffer() {
        let s = set(&[b"aaaaaaaa"]);
        let mut m = StreamMasker::new(s.clone());
        let mut out = Vec::new();
        for _ in 0..1000 {
            m.push(b"aaaaaaaaaaaaaaaa", &mut out);
            assert!(m.held() < s.longest());
        }
        m.finish(&mut out);
        assert_eq!(out, b"[MASKED]");
    }

    #[test]
    fn flush_releases_bytes_that_cannot_start_a_secret() {
        let s = set(&[b"password-123"]);
        let mut m = StreamMasker::new(s);
        let mut out = Vec::new();
        m.push(b"Enter: ", &mut out);
        m.flush(&mut out);
        assert_eq!(out, b"Enter: ");
        m.push(b"xx pass", &mut out);
        m.flush(&mut out);
        assert_eq!(out, b"Enter: xx ", "a possible secret prefix stays held");
        m.push(b"word-123!", &mut out);
        m.finish(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "Enter: xx [MASKED]!");
    }

    #[test]
    fn a_secret_across_a_large_chunk_boundary_is_masked_once() {
        // Large chunks take the sampler's path; the boundary falls at every offset of the
        // secret, and another occurrence sits deep inside the second chunk.
        let secret = b"Sampler-path-secret-value-0123456789";
        let s = set(&[secret]);
        for cut in 0..=secret.len() {
            let mut log = vec![b'.'; 4000 - cut];
            log.extend_from_slice(secret);
            log.extend(std::iter::repeat_n(b'-', 3000));
            log.extend_from_slice(secret);
            log.extend(std::iter::repeat_n(b'.', 10));
            let mut m = StreamMasker::new(Arc::clone(&s));
            let mut out = Vec::new();
            m.push(&log[..4000], &mut out);
            m.push(&log[4000..], &mut out);
            m.finish(&mut out);
            let mut want = vec![b'.'; 4000 - cut];
            want.extend_from_slice(MASK);
            want.extend(std::iter::repeat_n(b'-', 3000));
            want.extend_from_slice(MASK);
            want.extend(std::iter::repeat_n(b'.', 10));
            assert_eq!(out, want, "boundary {cut} bytes into the secret");
        }
    }

    /// The masker's output by definition: every occurrence of every pattern found by brute
    /// force, overlapping occurrences merged, each merged range replaced by one mask.
    fn reference(set: &MaskSet, input: &[u8]) -> Vec<u8> {
        let mut ranges = Vec::new();
        for p in set.patterns() {
            for start in 0..input.len() {
                if input[start..].starts_with(p) {
                    ranges.push((start, start + p.len()));
                }
            }
        }
        ranges.sort_unstable();
        let mut out = Vec::new();
        let mut end = 0;
        for (start, stop) in ranges {
            if start < end {
                end = end.max(stop);
            } else {
                out.extend_from_slice(&input[end..start]);
                out.extend_from_slice(MASK);
                end = stop;
            }
        }
        out.extend_from_slice(&input[end..]);
        out
    }

    fn chunked(set: &Arc<MaskSet>, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut m = StreamMasker::new(Arc::clone(set));
        let mut out = Vec::new();
        let mut rest = input;
        for &cut in cuts {
            let (head, tail) = rest.split_at(cut.min(rest.len()));
            m.push(head, &mut out);
            rest = tail;
        }
        m.push(rest, &mut out);
        m.finish(&mut out);
        out
    }

    mod model {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD;
        use proptest::prelude::*;

        use super::*;

        /// Secrets of 8 to 48 bytes (both gram sizes of the sampler), from an alphabet small
        /// enough that they share grams, overlap and nest.
        fn secret() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(prop::sample::select(b"abcd01=-".to_vec()), 8..48)
        }

        fn log(secrets: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
            let n = secrets.len();
            let piece = prop_oneof![
                prop::collection::vec(prop::sample::select(b"abcd01=- x".to_vec()), 0..300),
                (0..n, 0..3u8, 0..48usize).prop_map(move |(i, form, cut)| {
                    let s = &secrets[i];
                    match form {
                        0 => s.clone(),
                        1 => STANDARD.encode(s).into_bytes(),
                        // A near miss: the secret with its tail cut off.
                        _ => s[..cut.min(s.len() - 1)].to_vec(),
                    }
                }),
            ];
            prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
        }

        fn case() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>, Vec<usize>)> {
            prop::collection::vec(secret(), 1..6).prop_flat_map(|secrets| {
                let cuts = prop::collection::vec(prop_oneof![1usize..60, 200usize..3000], 0..8);
                (Just(secrets.clone()), log(secrets), cuts)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            #[test]
            fn masker_equals_brute_force((secrets, log, cuts) in case()) {
                let values: Vec<SecretSlice<u8>> =
                    secrets.iter().map(|s| SecretSlice::from(s.clone())).collect();
                let set = Arc::new(MaskSet::new(&values));
                let want = reference(&set, &log);
                prop_assert_eq!(&mask_all(&set, &log), &want);
                prop_assert_eq!(&chunked(&set, &log, &cuts), &want);
            }
        }
    }

    #[test]
    fn a_log_of_nested_occurrences_everywhere_is_one_mask_in_bounded_space() {
        // Twenty nested secrets match at every position of the log: a million overlapping
        // occurrences per chunk, which must cost neither a list of them nor a wrong mask.
        let values: Vec<Vec<u8>> = (8..28).map(|n| vec![b'a'; n]).collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let mut m = StreamMasker::new(set(&refs));
        let mut out = Vec::new();
        let chunk = vec![b'a'; 64 << 10];
        for _ in 0..2 {
            m.push(&chunk, &mut out);
            assert!(m.scratch.capacity() <= 2 * 4096, "{}", m.scratch.capacity());
        }
        m.push(b"!", &mut out);
        m.finish(&mut out);
        assert_eq!(out, b"[MASKED]!");
    }

    #[test]
    fn no_secrets_means_output_equals_input() {
        let s = Arc::new(MaskSet::new(std::iter::empty()));
        assert_eq!(mask_all(&s, b"plain log\n"), b"plain log\n");
    }
}
