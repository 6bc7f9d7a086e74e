use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use super::{MASK, MaskSet};

/// Masks a byte stream delivered in arbitrary chunks.
///
/// Holds back at most `longest pattern - 1` bytes between chunks (they could be the start of a
/// secret), so output lags input by less than one secret. Held bytes live in a zeroizing buffer.
pub struct StreamMasker {
    set: Arc<MaskSet>,
    held: Zeroizing<Vec<u8>>,
    /// Leading bytes of `held` that belong to a range whose `[MASKED]` was already written.
    covered: usize,
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
        }
    }

    /// Feeds one chunk; appends to `out` every byte that is now final.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.append(chunk);
        let reach_back = self.set.longest().saturating_sub(1);
        let limit = self.held.len().saturating_sub(reach_back);
        self.emit(limit, out);
    }

    /// Emits everything that can no longer become part of a secret, e.g. when the job has been
    /// quiet for a while, so a prompt without a newline is not held back.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        let limit = self.held.len() - self.set.pending_suffix(&self.held);
        self.emit(limit, out);
    }

    /// End of stream: emits the rest.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        let limit = self.held.len();
        self.emit(limit, out);
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn append(&mut self, chunk: &[u8]) {
        if self.held.capacity() - self.held.len() < chunk.len() {
            // Grow by copying into a new buffer so the old allocation is zeroized, not leaked.
            let wanted = (self.held.len() + chunk.len()).next_power_of_two();
            let mut bigger = Zeroizing::new(Vec::with_capacity(wanted));
            bigger.extend_from_slice(&self.held);
            self.held = bigger;
        }
        self.held.extend_from_slice(chunk);
    }

    /// Writes out the first `limit` held bytes, masked. Every match starting before `limit` is
    /// complete (callers choose `limit` so), so ranges are final; a masked range that runs past
    /// `limit` is remembered in `covered`.
    fn emit(&mut self, limit: usize, out: &mut Vec<u8>) {
        let mut ranges: Vec<(usize, usize)> = self
            .set
            .occurrences(&self.held)
            .filter(|&(start, _)| start < limit)
            .collect();
        ranges.sort_unstable();
        let mut end = self.covered;
        for (start, stop) in ranges {
            if start < end {
                end = end.max(stop);
            } else {
                out.extend_from_slice(&self.held[end..start]);
                out.extend_from_slice(MASK);
                end = stop;
            }
        }
        if end < limit {
            out.extend_from_slice(&self.held[end..limit]);
            self.covered = 0;
        } else {
            self.covered = end - limit;
        }
        let rest = self.held.len() - limit;
        self.held.copy_within(limit.., 0);
        self.held[rest..].zeroize();
        self.held.truncate(rest);
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
    fn no_secrets_means_output_equals_input() {
        let s = Arc::new(MaskSet::new(std::iter::empty()));
        assert_eq!(mask_all(&s, b"plain log\n"), b"plain log\n");
    }
}
