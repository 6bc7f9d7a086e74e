//! Spotting one piece of text in a byte stream that arrives in chunks of any size (the
//! text may straddle chunks): how the runner learns that the broker's closing line
//! ([`keyhole_broker::contract::LOG_END_LINE`]) reached it.

/// Watches a stream for `needle`.
#[derive(Debug, Clone)]
pub struct TextWatch {
    needle: Vec<u8>,
    /// The last `needle.len() - 1` bytes seen, for a match across chunks.
    carry: Vec<u8>,
    seen: bool,
}

impl TextWatch {
    pub fn new(needle: &str) -> Self {
        Self {
            needle: needle.as_bytes().to_vec(),
            carry: Vec::new(),
            seen: needle.is_empty(),
        }
    }

    /// Takes the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.seen {
            return;
        }
        let keep = self.needle.len() - 1;
        // Matches that start in the carried bytes end within the chunk's first `keep` bytes.
        let mut joint = std::mem::take(&mut self.carry);
        joint.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        if contains(&joint, &self.needle) || contains(chunk, &self.needle) {
            self.seen = true;
            return;
        }
        // Carry the last `keep` bytes of everything seen so far.
        if chunk.len() >= keep {
            self.carry = chunk[chunk.len() - keep..].to_vec();
        } else {
            let start = joint.len().saturating_sub(keep);
            self.carry = joint.split_off(start);
        }
    }

    /// Whether the needle was in the stream so far.
    pub fn seen(&self) -> bool {
        self.seen
    }
}

/// `haystack` contains `needle` (non-empty). Finds candidates by the first byte, so that
/// long logs cost a byte scan rather than a comparison at every offset.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack[at + 1..].starts_with(rest) {
            return true;
        }
        from = at + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NEEDLE: &str = "keyhole-broker: job ended";

    #[test]
    fn the_needle_is_found_whole_or_split_across_chunks() {
        let mut w = TextWatch::new(NEEDLE);
        w.feed(b"some output\nkeyhole-bro");
        assert!(!w.seen());
        w.feed(b"ker: job");
        assert!(!w.seen());
        w.feed(b" ended; wiping secrets\n");
        assert!(w.seen());

        let mut w = TextWatch::new(NEEDLE);
        w.feed(b"x keyhole-broker: job ended\n");
        assert!(w.seen());
    }

    #[test]
    fn near_misses_are_not_matches() {
        let mut w = TextWatch::new(NEEDLE);
        for chunk in [
            &b"keyhole-broker: job end"[..],
            b"s here\n",
            b"keyhole-broker: jo",
            b"b failed",
        ] {
            w.feed(chunk);
        }
        assert!(!w.seen());
    }

    proptest! {
        /// However a stream is cut into chunks, the needle is seen exactly when the whole
        /// stream contains it.
        #[test]
        fn chunking_does_not_matter(
            before in "[a-z :\n-]{0,60}",
            with_needle in any::<bool>(),
            after in "[a-z :\n-]{0,60}",
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let middle = if with_needle { NEEDLE } else { "keyhole-broker: job" };
            let stream = format!("{before}{middle}{after}");
            let bytes = stream.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut w = TextWatch::new(NEEDLE);
            let mut at = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                w.feed(&bytes[at..cut]);
                at = cut;
            }
            prop_assert_eq!(w.seen(), stream.contains(NEEDLE));
        }
    }
}
