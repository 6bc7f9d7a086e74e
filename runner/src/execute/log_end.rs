//! Where the job log ends: the broker closes its log with one end marker on stdout and one on
//! stderr, both carrying the job's log-end token ([`keyhole_contract::log_end_marker`]).
//! Each stream is in order with itself, so once both markers came through, everything the
//! broker wrote before them did too, and the runner can stop following at once instead of
//! waiting for the kubelet to notice that the broker exited (up to a second). Just before its
//! stdout marker the broker gives the script's exit status
//! ([`keyhole_contract::script_exit_line`]) when it saw the script end, so the job's result is
//! known at the log's end too. Markers and status line are cut out of the trace; text around
//! them passes unchanged, whatever the chunking.

use keyhole_contract::{
    LogStream, SCRIPT_EXIT_TAIL, log_end_marker, parse_script_exit_tail, script_exit_prefix,
};

/// Filters a log stream arriving in chunks of any size, removing the end markers.
#[derive(Clone)]
pub struct LogEnd {
    /// The markers not yet seen.
    pending: Vec<Vec<u8>>,
    /// The start of the script's exit line, until it came.
    exit_prefix: Option<Vec<u8>>,
    /// The script's exit status, once its line came.
    script_status: Option<u8>,
    /// A tail that may be the start of a marker, kept until the next chunk decides.
    held: Vec<u8>,
}

impl std::fmt::Debug for LogEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The markers carry the token: names only.
        f.debug_struct("LogEnd")
            .field("pending", &self.pending.len())
            .field("script_status", &self.script_status)
            .finish_non_exhaustive()
    }
}

/// The next thing of the broker's in a piece of the log.
enum Found {
    /// End marker `which` of `pending` at this offset.
    Marker { at: usize, which: usize },
    /// The exit line's start at this offset.
    ExitLine { at: usize },
}

impl LogEnd {
    /// Watches for the markers of `token` (the per-job Secret's log-end key).
    pub fn new(token: &str) -> Self {
        Self {
            pending: [LogStream::Stdout, LogStream::Stderr]
                .into_iter()
                .map(|s| log_end_marker(s, token).into_bytes())
                .collect(),
            exit_prefix: Some(script_exit_prefix(token).into_bytes()),
            script_status: None,
            held: Vec::new(),
        }
    }

    /// The script's exit status, if the broker gave it (before its stdout marker).
    pub fn script_status(&self) -> Option<u8> {
        self.script_status
    }

    /// Takes the next chunk; appends the text to pass on to `out`. Returns true once both
    /// markers were seen: the log is complete.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> bool {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(found) = self.earliest(&buf[start..]) {
            match found {
                Found::Marker { at, which } => {
                    out.extend_from_slice(&buf[start..start + at]);
                    start += at + self.pending[which].len();
                    self.pending.swap_remove(which);
                    if self.pending.is_empty() {
                        // The broker writes nothing after its markers; pass on anything anyway.
                        out.extend_from_slice(&buf[start..]);
                        return true;
                    }
                }
                Found::ExitLine { at } => {
                    out.extend_from_slice(&buf[start..start + at]);
                    start += at;
                    let prefix = self.exit_prefix.as_ref().map_or(0, Vec::len);
                    let Some(tail) = buf[start + prefix..].get(..SCRIPT_EXIT_TAIL) else {
                        // The status is in the next chunk: hold the line back until then.
                        self.held = buf[start..].to_vec();
                        return false;
                    };
                    match parse_script_exit_tail(tail) {
                        Some(status) => {
                            self.script_status = Some(status);
                            self.exit_prefix = None;
                            start += prefix + SCRIPT_EXIT_TAIL;
                        }
                        // Not the broker's line after all (it writes no other): pass it on.
                        None => {
                            out.extend_from_slice(&buf[start..start + prefix]);
                            start += prefix;
                        }
                    }
                }
            }
        }
        let rest = &buf[start..];
        let keep = self
            .pending
            .iter()
            .chain(&self.exit_prefix)
            .map(|m| longest_prefix_at_end(rest, m))
            .max()
            .unwrap_or(0);
        out.extend_from_slice(&rest[..rest.len() - keep]);
        self.held = rest[rest.len() - keep..].to_vec();
        false
    }

    /// The stream ended: the held tail was not a marker after all.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
    }

    fn earliest(&self, haystack: &[u8]) -> Option<Found> {
        let marker = self
            .pending
            .iter()
            .enumerate()
            .filter_map(|(i, m)| find(haystack, m).map(|at| (at, i)))
            .min();
        let exit = self.exit_prefix.as_ref().and_then(|p| find(haystack, p));
        match (marker, exit) {
            (Some((at, which)), Some(exit)) if at < exit => Some(Found::Marker { at, which }),
            (_, Some(at)) => Some(Found::ExitLine { at }),
            (Some((at, which)), None) => Some(Found::Marker { at, which }),
            (None, None) => None,
        }
    }
}

/// The length of the longest proper prefix of `needle` that `haystack` ends with.
fn longest_prefix_at_end(haystack: &[u8], needle: &[u8]) -> usize {
    let longest = needle.len().saturating_sub(1).min(haystack.len());
    (1..=longest)
        .rev()
        .find(|&k| haystack.ends_with(&needle[..k]))
        .unwrap_or(0)
}

/// First position of `needle` (non-empty) in `haystack`. Candidates by the first byte, so a
/// long log costs a byte scan rather than a comparison at every offset.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhole_contract::script_exit_line;
    use proptest::prelude::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn markers() -> (String, String) {
        (
            log_end_marker(LogStream::Stdout, TOKEN),
            log_end_marker(LogStream::Stderr, TOKEN),
        )
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let (out, done, _) = run_for_status(chunks);
        (out, done)
    }

    /// [`run`], also returning the script's exit status as read.
    fn run_for_status(chunks: &[&[u8]]) -> (Vec<u8>, bool, Option<u8>) {
        let mut f = LogEnd::new(TOKEN);
        let mut out = Vec::new();
        let mut done = false;
        for c in chunks {
            if f.feed(c, &mut out) {
                done = true;
                break;
            }
        }
        if !done {
            f.finish(&mut out);
        }
        (out, done, f.script_status())
    }

    #[test]
    fn the_exit_line_gives_the_status_and_is_cut_out() {
        let (o, e) = markers();
        let exit = script_exit_line(TOKEN, 42);
        let stream = format!("job output\n{exit}{o}{e}");
        let (out, done, status) = run_for_status(&[stream.as_bytes()]);
        assert!(done);
        assert_eq!(status, Some(42));
        assert_eq!(out, b"job output\n");
    }

    #[test]
    fn without_an_exit_line_the_log_still_ends_with_no_status() {
        // An older broker, or a script that never reached its end.
        let (o, e) = markers();
        let (out, done, status) = run_for_status(&[format!("x\n{o}{e}").as_bytes()]);
        assert!(done);
        assert_eq!(status, None);
        assert_eq!(out, b"x\n");
    }

    #[test]
    fn an_exit_line_with_another_token_or_a_bad_status_is_job_output() {
        let (o, e) = markers();
        let forged = script_exit_line("ffffffffffffffffffffffffffffffff", 0);
        let bad = format!("{}9x9\n", script_exit_prefix(TOKEN));
        let stream = format!("{forged}{bad}{o}{e}");
        let (out, done, status) = run_for_status(&[stream.as_bytes()]);
        assert!(done);
        assert_eq!(status, None);
        assert_eq!(out, format!("{forged}{bad}").into_bytes());
    }

    #[test]
    fn both_markers_end_the_log_and_are_cut_out() {
        let (o, e) = markers();
        let stream = format!("job output\n{o}keyhole-broker: Vault token revoked\n{e}");
        let (out, done) = run(&[stream.as_bytes()]);
        assert!(done);
        assert_eq!(out, b"job output\nkeyhole-broker: Vault token revoked\n");
    }

    #[test]
    fn one_marker_is_not_the_end() {
        let (o, _) = markers();
        let stream = format!("job output\n{o}");
        let (out, done) = run(&[stream.as_bytes()]);
        assert!(!done);
        assert_eq!(out, b"job output\n");
    }

    #[test]
    fn a_marker_with_another_token_is_job_output() {
        let forged = log_end_marker(LogStream::Stdout, "ffffffffffffffffffffffffffffffff");
        let (_, e) = markers();
        let stream = format!("{forged}{e}");
        let (out, done) = run(&[stream.as_bytes()]);
        assert!(!done);
        assert_eq!(out, forged.as_bytes());
    }

    #[test]
    fn a_partial_marker_is_held_only_until_it_stops_matching() {
        let (o, _) = markers();
        let mut f = LogEnd::new(TOKEN);
        let mut out = Vec::new();
        assert!(!f.feed(&o.as_bytes()[..20], &mut out));
        assert!(out.is_empty(), "a possible marker start is held back");
        assert!(!f.feed(b"not a marker\n", &mut out));
        assert_eq!(out, [&o.as_bytes()[..20], b"not a marker\n"].concat());
    }

    proptest! {
        /// However the stream is cut, the output is the stream without the two markers, and
        /// the end is seen exactly when both came through.
        #[test]
        fn chunking_does_not_matter(
            before in "[a-z :()\n-]{0,80}",
            between in "[a-z :()\n-]{0,80}",
            stderr_first in any::<bool>(),
            with_both in any::<bool>(),
            status in proptest::option::of(any::<u8>()),
            cuts in proptest::collection::vec(0usize..400, 0..10),
        ) {
            let (o, e) = markers();
            // The exit line, when there is one, comes just before the stdout marker.
            let o = match status {
                Some(s) => format!("{}{o}", script_exit_line(TOKEN, s)),
                None => o,
            };
            let (first, second) = if stderr_first { (e, o) } else { (o, e) };
            let second = if with_both { second } else { String::new() };
            let stream = format!("{before}{first}{between}{second}");
            let bytes = stream.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[at..cut]);
                at = cut;
            }
            let (out, done, seen) = run_for_status(&chunks);
            prop_assert_eq!(done, with_both);
            prop_assert_eq!(out, format!("{before}{between}").into_bytes());
            // Its line precedes the stdout marker, so the status is known whenever that came.
            if done || !stderr_first {
                prop_assert_eq!(seen, status);
            }
        }
    }
}
