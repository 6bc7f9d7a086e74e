//! A prefilter that lets the masker skip most of a log without running the automaton over it.
//!
//! Running the Aho-Corasick automaton over every byte costs a dependent table lookup per byte,
//! and with a few hundred patterns the table no longer fits the CPU caches: that capped masking
//! at about a third of the 1 GiB/s goal. Most log bytes are far from any secret, so the masker
//! first asks this sampler where a secret could be, and runs the automaton only there.
//!
//! Every pattern is at least `shortest` bytes long. The sampler looks at the `gram`-byte window
//! starting at every `stride`-th offset, with `stride = shortest - gram + 1`: any pattern
//! occurrence then fully contains at least one sampled window, and that window is one of the
//! pattern's own grams. A table of every gram of every pattern (a Bloom-style bit table: it may
//! say yes wrongly, never no wrongly) rules out most sampled windows with one lookup per
//! `stride` bytes. Where a window may belong to a pattern, the occurrence containing it as its
//! *first* sampled window starts in the `stride` bytes up to that window (had it started
//! earlier, the previous sample would lie inside it too), which is all the automaton must check.

use zeroize::Zeroizing;

/// Largest table, in 64-bit words (256 KiB): enough for hundreds of long secrets at a low
/// false-positive rate, small enough to stay in the L2 cache.
const MAX_WORDS: usize = 1 << 15;

/// Which gram positions of a log may be inside an occurrence of some pattern.
pub(crate) struct Sampler {
    /// Two bits per gram, both in one word chosen by the gram's hash. Derived from the secret
    /// values, so wiped on drop like them.
    table: Zeroizing<Vec<u64>>,
    /// `64 - log2(table.len())`: the hash's top bits pick the word.
    shift: u32,
    gram: usize,
    stride: usize,
}

impl Sampler {
    /// Builds the table from every gram of every pattern. `None` without patterns, or when the
    /// shortest pattern is shorter than 4 bytes (it cannot be, see `MIN_MASKED_LEN`).
    pub(crate) fn new<'a>(patterns: impl Iterator<Item = &'a [u8]> + Clone) -> Option<Self> {
        let shortest = patterns.clone().map(<[u8]>::len).min()?;
        // Longer grams are more selective; shorter ones allow a longer stride. 8-byte grams
        // from 16-byte patterns on, which keeps the stride at least 9.
        let gram = if shortest >= 16 { 8 } else { 4 };
        if shortest < gram {
            return None;
        }
        let grams: usize = patterns.clone().map(|p| p.len() - gram + 1).sum();
        let words = grams.next_power_of_two().clamp(64, MAX_WORDS);
        let mut sampler = Self {
            table: Zeroizing::new(vec![0; words]),
            shift: 64 - words.trailing_zeros(),
            gram,
            stride: shortest - gram + 1,
        };
        for pattern in patterns {
            for window in pattern.windows(gram) {
                let (word, bits) = sampler.slot(window);
                sampler.table[word] |= bits;
            }
        }
        Some(sampler)
    }

    /// Distance between sampled offsets.
    #[cfg(test)]
    pub(crate) fn stride(&self) -> usize {
        self.stride
    }

    /// Where in the table a gram's two bits are.
    #[inline]
    fn slot(&self, window: &[u8]) -> (usize, u64) {
        let value = match window {
            [a, b, c, d, e, f, g, h] => u64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]),
            [a, b, c, d] => u64::from(u32::from_le_bytes([*a, *b, *c, *d])),
            _ => 0,
        };
        // Fold the high half in, then multiply: the product's top bits depend on every input
        // bit (they pick the word), bits 32..44 on the folded low half (they pick the bits).
        let hash = (value ^ (value >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let word = usize::try_from(hash >> self.shift).unwrap_or(0);
        let bits = (1u64 << ((hash >> 32) & 63)) | (1u64 << ((hash >> 38) & 63));
        (word, bits)
    }

    #[inline]
    fn may_contain(&self, window: &[u8]) -> bool {
        let (word, bits) = self.slot(window);
        self.table.get(word).is_some_and(|w| w & bits == bits)
    }

    /// Ranges `[lo, hi]` (inclusive, ascending, disjoint) of `haystack` offsets below `until`
    /// where an occurrence lying wholly inside `haystack` may start. Every such occurrence
    /// starts in one of them.
    pub(crate) fn candidates<'h>(&'h self, haystack: &'h [u8], until: usize) -> Candidates<'h> {
        Candidates {
            sampler: self,
            haystack,
            until,
            next: 0,
            pending: None,
        }
    }
}

/// Iterator of candidate start ranges; see [`Sampler::candidates`].
pub(crate) struct Candidates<'h> {
    sampler: &'h Sampler,
    haystack: &'h [u8],
    until: usize,
    /// Next sampled offset.
    next: usize,
    /// A range being extended by adjacent hits.
    pending: Option<(usize, usize)>,
}

impl Iterator for Candidates<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let Sampler { stride, gram, .. } = *self.sampler;
        while let Some(window) = self.haystack.get(self.next..self.next + gram) {
            let at = self.next;
            // The first offset an occurrence whose first sampled window is `at` can start at.
            let lo = (at + 1).saturating_sub(stride);
            if lo >= self.until {
                break;
            }
            self.next += stride;
            if !self.sampler.may_contain(window) {
                continue;
            }
            let hi = at.min(self.until - 1);
            match self.pending {
                Some((start, end)) if lo <= end + 1 => self.pending = Some((start, hi)),
                Some(done) => {
                    self.pending = Some((lo, hi));
                    return Some(done);
                }
                None => self.pending = Some((lo, hi)),
            }
        }
        self.next = self.haystack.len();
        self.pending.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(patterns: &[&[u8]]) -> Sampler {
        Sampler::new(patterns.iter().copied()).expect("patterns")
    }

    /// Whether `[start, start + len)` starts inside some candidate range.
    fn covered(s: &Sampler, haystack: &[u8], start: usize) -> bool {
        s.candidates(haystack, haystack.len())
            .any(|(lo, hi)| (lo..=hi).contains(&start))
    }

    #[test]
    fn stride_follows_the_shortest_pattern() {
        assert_eq!(sampler(&[b"12345678", b"1234567890abcdefgh"]).stride(), 5);
        assert_eq!(
            sampler(&[b"1234567890abcdef", b"1234567890abcdefgh"]).stride(),
            9
        );
        assert_eq!(sampler(&[&[b'x'; 32]]).stride(), 25);
        assert!(Sampler::new(std::iter::empty()).is_none());
    }

    #[test]
    fn every_occurrence_at_every_offset_is_a_candidate() {
        let patterns: [&[u8]; 3] = [
            b"s3cr3t-v4lue-1234",
            b"another-secret-value-that-is-long",
            b"Zm9vYmFyYmF6cXV4",
        ];
        let s = sampler(&patterns);
        for pattern in patterns {
            for offset in 0..64 {
                let mut haystack = vec![b'.'; offset];
                haystack.extend_from_slice(pattern);
                haystack.extend_from_slice(b" trailing text");
                assert!(
                    covered(&s, &haystack, offset),
                    "occurrence at {offset} missed"
                );
            }
        }
    }

    #[test]
    fn text_without_pattern_grams_has_no_candidates() {
        let s = sampler(&[b"s3cr3t-v4lue-1234"]);
        let log = b"INFO step 12 finished in 345 ms\n".repeat(100);
        assert_eq!(s.candidates(&log, log.len()).count(), 0);
    }

    #[test]
    fn candidates_stop_below_the_limit_and_are_disjoint() {
        let pattern = b"abcdefghabcdefghabcdefgh";
        let s = sampler(&[pattern]);
        let log = pattern.repeat(20);
        let ranges: Vec<_> = s.candidates(&log, 100).collect();
        assert!(!ranges.is_empty());
        assert!(ranges.iter().all(|&(lo, hi)| lo <= hi && hi < 100));
        assert!(ranges.windows(2).all(|w| w[0].1 + 1 < w[1].0));
    }
}
