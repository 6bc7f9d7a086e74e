use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretSlice};
use zeroize::Zeroizing;

use super::sampler::Sampler;

/// Shortest value (in bytes) that is masked; see the module docs for why there is a floor.
pub const MIN_MASKED_LEN: usize = 8;

/// The compiled set of byte patterns to mask, built once per job from its secret values.
///
/// Patterns are kept in zeroizing buffers; the search automaton necessarily holds its own copy,
/// which lives only as long as the job's masker. The sampler (see `sampler.rs`) keeps only bits
/// chosen by hashes of the patterns' 4- or 8-byte pieces, also wiped on drop.
pub struct MaskSet {
    automaton: Option<AhoCorasick>,
    /// Where occurrences may start, so that long stretches of log skip the automaton.
    sampler: Option<Sampler>,
    patterns: Vec<Zeroizing<Vec<u8>>>,
    longest: usize,
}

impl std::fmt::Debug for MaskSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskSet")
            .field("patterns", &self.patterns.len())
            .field("longest", &self.longest)
            .finish()
    }
}

impl MaskSet {
    /// Builds the set from secret values; values shorter than [`MIN_MASKED_LEN`] are skipped.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a SecretSlice<u8>>) -> Self {
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = values
            .into_iter()
            .flat_map(|value| encoded_forms(value.expose_secret()))
            .filter(|form| form.len() >= MIN_MASKED_LEN)
            .collect();
        // Sorted, not searched form by form: a long value has a pattern per wrapped base64 line.
        patterns.sort_unstable_by(|a, b| a.as_slice().cmp(b.as_slice()));
        patterns.dedup_by(|a, b| a.as_slice() == b.as_slice());
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        // A contiguous NFA rather than a DFA: the automaton only checks the few bytes around
        // a sampler hit, where the DFA's speed does not show, while its table (megabytes for a
        // few hundred patterns) costs start-up time and memory. Standard semantics, because
        // every occurrence, overlapping ones included, is masked.
        let automaton = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .prefilter(false)
                .build(patterns.iter().map(|p| p.as_slice()))
                .or_else(|_| {
                    // Beyond the contiguous NFA's limits: let aho-corasick choose.
                    AhoCorasick::builder()
                        .match_kind(MatchKind::Standard)
                        .build(patterns.iter().map(|p| p.as_slice()))
                })
                .expect("literal patterns always build")
        });
        let sampler = Sampler::new(patterns.iter().map(|p| p.as_slice()));
        Self {
            automaton,
            sampler,
            patterns,
            longest,
        }
    }

    /// Number of distinct byte patterns (all forms of all values).
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns themselves, for tests that check the masker against a plain search.
    #[cfg(test)]
    pub(crate) fn patterns(&self) -> impl Iterator<Item = &[u8]> {
        self.patterns.iter().map(|p| p.as_slice())
    }

    /// Length of the longest pattern: how far a match can reach back across a chunk boundary.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Calls `found(start, end)` for the longest occurrence (overlapping ones included) at
    /// each start position, among the occurrences that lie wholly in `haystack` and start
    /// before `until`, in ascending order of start; shorter ones at the same start are inside
    /// it, so masking these masks every occurrence. `scratch` is working space, reused across
    /// calls: one slot per start position of a window, however many patterns match there.
    pub(crate) fn each_occurrence(
        &self,
        haystack: &[u8],
        until: usize,
        scratch: &mut Vec<usize>,
        mut found: impl FnMut(usize, usize),
    ) {
        /// Start positions checked at once: bounds `scratch` when a hostile log makes the
        /// whole chunk one window.
        const WINDOW: usize = 4096;
        let Some(automaton) = &self.automaton else {
            return;
        };
        let until = until.min(haystack.len());
        let mut check = |lo: usize, hi: usize| {
            for first in (lo..=hi).step_by(WINDOW) {
                let last = hi.min(first + WINDOW - 1);
                // An occurrence starting at `last` at the latest ends by `last + longest`.
                let end = haystack.len().min(last + self.longest);
                scratch.clear();
                scratch.resize(last - first + 1, 0);
                for m in automaton.find_overlapping_iter(Input::new(haystack).span(first..end)) {
                    if let Some(reach) = scratch.get_mut(m.start() - first) {
                        *reach = (*reach).max(m.end());
                    }
                }
                for (offset, &reach) in scratch.iter().enumerate() {
                    if reach > 0 {
                        found(first + offset, reach);
                    }
                }
            }
        };
        match &self.sampler {
            // Short pieces (what is held back between chunks, a line of a quiet job) are
            // cheaper to check whole.
            Some(sampler) if haystack.len() > 4 * self.longest => {
                for (lo, hi) in sampler.candidates(haystack, until) {
                    check(lo, hi);
                }
            }
            _ if until > 0 => check(0, until - 1),
            _ => {}
        }
    }

    /// Length of the longest suffix of `haystack` that is a proper prefix of some pattern: bytes
    /// that may still become part of a match when more input arrives.
    pub(crate) fn pending_suffix(&self, haystack: &[u8]) -> usize {
        let max = haystack.len().min(self.longest.saturating_sub(1));
        (1..=max)
            .rev()
            .find(|&k| {
                let tail = &haystack[haystack.len() - k..];
                self.patterns
                    .iter()
                    .any(|p| p.len() > k && p.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

/// Every form of one value that a job might print.
fn encoded_forms(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms = vec![Zeroizing::new(value.to_vec())];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(Zeroizing::new(engine.encode(value).into_bytes()));
    }
    forms.extend(wrapped_base64_lines(value));
    // `echo "$SECRET" | base64` encodes the value with a line end: the encoding's tail differs.
    let mut echoed = Zeroizing::new(Vec::with_capacity(value.len() + 1));
    echoed.extend_from_slice(value);
    echoed.push(b'\n');
    forms.push(Zeroizing::new(STANDARD.encode(&*echoed).into_bytes()));
    forms.extend(wrapped_base64_lines(&echoed));
    for style in &PERCENT_STYLES {
        forms.push(percent_encode(value, style));
    }
    forms.extend(json_escaped(value));
    if value.contains(&b'\n') {
        for line in value.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            forms.push(Zeroizing::new(line.to_vec()));
        }
        if !value.windows(2).any(|w| w == b"\r\n") {
            let mut crlf = Zeroizing::new(Vec::with_capacity(value.len() * 2));
            for &b in value {
                if b == b'\n' {
                    crlf.push(b'\r');
                }
                crlf.push(b);
            }
            forms.push(crlf);
        }
    }
    forms
}

/// Columns at which base64 tools wrap their output: GNU `base64` (76) and `openssl base64` (64).
const BASE64_WRAP_COLUMNS: [usize; 2] = [76, 64];

/// The lines of the value's base64 as the wrapping tools print it, when it is longer than one
/// line: a line break inside the encoding hides it from the unwrapped form. Each line is masked
/// on its own (whatever ends it: `\n`, `\r\n`, or a chunk boundary). The last line can be too
/// short to mask alone, so it is also joined to the line before it, with either line end:
/// masking that pair leaves no line of the encoding visible.
fn wrapped_base64_lines(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let encoded = Zeroizing::new(STANDARD.encode(value).into_bytes());
    let mut forms = Vec::new();
    for columns in BASE64_WRAP_COLUMNS {
        if encoded.len() <= columns {
            continue;
        }
        let lines: Vec<&[u8]> = encoded.chunks(columns).collect();
        forms.extend(lines.iter().map(|line| Zeroizing::new(line.to_vec())));
        if let [.., before, last] = lines[..]
            && last.len() < MIN_MASKED_LEN
        {
            for eol in [&b"\n"[..], b"\r\n"] {
                let mut pair = Zeroizing::new(Vec::with_capacity(before.len() + 2 + last.len()));
                pair.extend_from_slice(before);
                pair.extend_from_slice(eol);
                pair.extend_from_slice(last);
                forms.push(pair);
            }
        }
    }
    forms
}

/// One way of percent-encoding: which bytes besides ASCII letters and digits stay as they are,
/// whether a space becomes `+`, and the case of the hex digits.
struct PercentStyle {
    safe: &'static [u8],
    space_plus: bool,
    lowercase: bool,
}

/// RFC 3986's unreserved characters (besides letters and digits).
const UNRESERVED: &[u8] = b"-._~";

/// The percent-encodings libraries really produce. Tools differ in which bytes they leave
/// alone, and a single byte left alone makes a different string.
const PERCENT_STYLES: [PercentStyle; 6] = [
    // RFC 3986, as strict encoders (curl --data-urlencode, Go's PathEscape of a segment...)
    // write it, in both cases of hex.
    PercentStyle {
        safe: UNRESERVED,
        space_plus: false,
        lowercase: false,
    },
    PercentStyle {
        safe: UNRESERVED,
        space_plus: false,
        lowercase: true,
    },
    // Python's urllib.parse.quote, whose default keeps `/`.
    PercentStyle {
        safe: b"-._~/",
        space_plus: false,
        lowercase: false,
    },
    // Query strings and HTML forms: Python's quote_plus, Go's QueryEscape.
    PercentStyle {
        safe: UNRESERVED,
        space_plus: true,
        lowercase: false,
    },
    // JavaScript's encodeURIComponent.
    PercentStyle {
        safe: b"-._~!*'()",
        space_plus: false,
        lowercase: false,
    },
    // JavaScript's encodeURI, which keeps the URI's delimiters.
    PercentStyle {
        safe: b"-._~!*'();,/?:@&=+$#",
        space_plus: false,
        lowercase: false,
    },
];

fn percent_encode(value: &[u8], style: &PercentStyle) -> Zeroizing<Vec<u8>> {
    let hex: &[u8; 16] = if style.lowercase {
        b"0123456789abcdef"
    } else {
        b"0123456789ABCDEF"
    };
    let mut out = Zeroizing::new(Vec::with_capacity(value.len() * 3));
    for &b in value {
        if b.is_ascii_alphanumeric() || style.safe.contains(&b) {
            out.push(b);
        } else if b == b' ' && style.space_plus {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
        }
    }
    out
}

/// The value as it shows inside a JSON string (`jq .`, a structured log line), when that
/// differs from the value: quotes, backslashes and control characters escaped.
fn json_escaped(value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let text = std::str::from_utf8(value).ok()?;
    // At most 6 bytes per byte (`\u001f`) and the quotes: the buffer never grows, so no
    // copy of the value is left behind in a freed allocation.
    let mut quoted = Zeroizing::new(Vec::with_capacity(value.len() * 6 + 2));
    serde_json::to_writer(&mut *quoted, text).ok()?;
    let inner = quoted.get(1..quoted.len() - 1)?;
    (inner != value).then(|| Zeroizing::new(inner.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(values: &[&str]) -> MaskSet {
        let secrets: Vec<SecretSlice<u8>> = values
            .iter()
            .map(|v| SecretSlice::from(v.as_bytes().to_vec()))
            .collect();
        MaskSet::new(&secrets)
    }

    #[test]
    fn forms_include_base64_and_percent_encodings() {
        let forms: Vec<Vec<u8>> = encoded_forms(b"p@ss word/+?")
            .into_iter()
            .map(|f| f.to_vec())
            .collect();
        let has = |s: &str| forms.iter().any(|f| f == s.as_bytes());
        assert!(has("p@ss word/+?"));
        assert!(has("cEBzcyB3b3JkLys/"));
        assert!(has("cEBzcyB3b3JkLys_"));
        assert!(has("p%40ss%20word%2F%2B%3F"));
        assert!(has("p%40ss%20word%2f%2b%3f"));
    }

    #[test]
    fn json_escaped_form_is_added_when_it_differs() {
        let forms: Vec<Vec<u8>> = encoded_forms(br#"say "hi" \ now"#)
            .into_iter()
            .map(|f| f.to_vec())
            .collect();
        assert!(forms.contains(&br#"say \"hi\" \\ now"#.to_vec()));
        assert!(json_escaped(b"plain-value").is_none());
        assert!(json_escaped(b"\xff not utf-8").is_none());
    }

    #[test]
    fn wrapped_base64_lines_come_only_from_a_value_longer_than_a_line() {
        // 57 bytes are 76 base64 characters: one line either way at 76 columns.
        assert_eq!(wrapped_base64_lines(&[7; 45]).len(), 0);
        let lines = wrapped_base64_lines(&[7; 57]);
        // At 64 columns: 64 + 12 characters, the last long enough to stand alone.
        assert_eq!(lines.iter().map(|l| l.len()).collect::<Vec<_>>(), [64, 12]);
    }

    #[test]
    fn multi_line_values_mask_each_line_and_crlf_form() {
        let forms: Vec<Vec<u8>> = encoded_forms(b"line-one-secret\nline-two-secret")
            .into_iter()
            .map(|f| f.to_vec())
            .collect();
        assert!(forms.contains(&b"line-one-secret".to_vec()));
        assert!(forms.contains(&b"line-two-secret".to_vec()));
        assert!(forms.contains(&b"line-one-secret\r\nline-two-secret".to_vec()));
    }

    #[test]
    fn short_values_are_not_masked() {
        let s = set(&["short", "long-enough"]);
        assert!(s.patterns.iter().all(|p| p.len() >= MIN_MASKED_LEN));
        assert!(!s.patterns.iter().any(|p| p.as_slice() == b"short"));
    }

    #[test]
    fn debug_shows_counts_not_values() {
        let s = set(&["hunter2-secret-value"]);
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("patterns"));
    }

    #[test]
    fn pending_suffix_finds_a_partial_secret_at_the_end() {
        let s = set(&["abcdefghij"]);
        assert_eq!(s.pending_suffix(b"xxxxabcd"), 4);
        assert_eq!(s.pending_suffix(b"xxxxabcx"), 0);
        assert_eq!(s.pending_suffix(b""), 0);
    }
}
