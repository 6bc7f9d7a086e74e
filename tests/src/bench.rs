//! Pure helpers of the benchmarks (`scripts/bench`): percentiles of latency samples, and the
//! counter log a job writes (numbered fixed-length lines) with the check that it reached the
//! trace with no line lost, duplicated or damaged. [`artifacts`]: the parts of P10 (artifacts
//! through `keyhole-broker transfer store|fetch`). [`api`]: P8's and P9's runner identity and
//! the count of its requests in the apiserver's audit log.

pub mod api;
pub mod artifacts;
pub mod start;

/// The `p`-th percentile (0–100) of `samples` by nearest rank: the smallest sample with at
/// least `p`% of the samples at or below it. `None` for no samples.
pub fn percentile(samples: &[u64], p: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

/// Length of one counter-log line: a 10-digit counter, a space, [`FILLER`], a newline. Long
/// enough that the log's byte rate, not its line rate, is what is measured.
pub const COUNTER_LINE_LEN: u64 = 100;

/// The fixed text after each counter (88 bytes).
pub const FILLER: &str =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyzABCDEFGHIJ";

/// Line `i` (from 1) of the counter log.
pub fn counter_line(i: u64) -> String {
    format!("{i:010} {FILLER}\n")
}

/// How many counter lines make at least `bytes` bytes.
pub fn counter_lines_for(bytes: u64) -> u64 {
    bytes.div_ceil(COUNTER_LINE_LEN)
}

/// A shell command (busybox `awk`) printing lines 1..=n of the counter log.
pub fn counter_command(n: u64) -> String {
    format!("awk 'BEGIN {{ for (i = 1; i <= {n}; i++) printf \"%010d %s\\n\", i, \"{FILLER}\" }}'")
}

/// What arrived of a counter log of `n` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterCheck {
    /// Lines received.
    pub lines: u64,
    /// Counters of `1..=n` never received.
    pub lost: u64,
    /// Lines repeating a counter already received.
    pub duplicated: u64,
    /// Lines that are not a counter line of `1..=n` (or a last line without its newline).
    pub corrupt: u64,
    /// The bytes are exactly lines 1..=n in order.
    pub identical: bool,
}

/// Checks `body` against lines 1..=n of the counter log, line by line.
pub fn check_counter_log(body: &[u8], n: u64) -> CounterCheck {
    let mut seen = vec![false; usize::try_from(n).unwrap_or(usize::MAX) + 1];
    let (mut lines, mut duplicated, mut corrupt, mut distinct) = (0u64, 0u64, 0u64, 0u64);
    let mut in_order = true;
    let mut rest = body;
    while !rest.is_empty() {
        let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &rest[..i];
                rest = &rest[i + 1..];
                (line, true)
            }
            None => (std::mem::take(&mut rest), false),
        };
        lines += 1;
        match parse_counter_line(line).filter(|v| complete && (1..=n).contains(v)) {
            Some(v) => {
                in_order &= v == lines;
                let slot = &mut seen[v as usize];
                if *slot {
                    duplicated += 1;
                } else {
                    *slot = true;
                    distinct += 1;
                }
            }
            None => {
                corrupt += 1;
                in_order = false;
            }
        }
    }
    CounterCheck {
        lines,
        lost: n - distinct,
        duplicated,
        corrupt,
        identical: in_order && lines == n,
    }
}

/// The counter of a line (without its newline) in exactly [`counter_line`]'s form.
fn parse_counter_line(line: &[u8]) -> Option<u64> {
    let (digits, rest) = line.split_at_checked(10)?;
    if rest.first() != Some(&b' ') || &rest[1..] != FILLER.as_bytes() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// The bytes between the first line that is exactly `start` and the next line that is
/// exactly `end` (the end marker may be missing: then up to the end of `trace`). `None` when
/// there is no `start` line.
pub fn between_marker_lines<'a>(trace: &'a [u8], start: &[u8], end: &[u8]) -> Option<&'a [u8]> {
    let begin = find_line(trace, start, 0)? + start.len() + 1;
    let stop = find_line(trace, end, begin).unwrap_or(trace.len());
    Some(&trace[begin..stop])
}

/// Offset of the first line equal to `line` (preceded by a newline or at the start, followed
/// by a newline) at or after `from`.
fn find_line(haystack: &[u8], line: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + line.len() < haystack.len() {
        let offset = haystack[at..]
            .windows(line.len() + 1)
            .position(|w| &w[..line.len()] == line && w[line.len()] == b'\n')?;
        let pos = at + offset;
        if pos == 0 || haystack[pos - 1] == b'\n' {
            return Some(pos);
        }
        at = pos + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<u8> {
        (1..=n).flat_map(|i| counter_line(i).into_bytes()).collect()
    }

    #[test]
    fn percentile_takes_the_nearest_rank() {
        let samples = [5, 1, 4, 2, 3, 6, 7, 8, 9, 10];
        assert_eq!(percentile(&samples, 50.0), Some(5));
        assert_eq!(percentile(&samples, 99.0), Some(10));
        assert_eq!(percentile(&samples, 10.0), Some(1));
        assert_eq!(percentile(&samples, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn counter_lines_have_the_stated_length() {
        for i in [1, 42, 9_999_999_999] {
            assert_eq!(counter_line(i).len() as u64, COUNTER_LINE_LEN, "i={i}");
        }
        assert_eq!(counter_lines_for(100 << 20), 1_048_576);
        assert_eq!(counter_lines_for(101), 2);
        assert_eq!(log(3).len() as u64, 3 * COUNTER_LINE_LEN);
    }

    #[test]
    fn a_complete_log_is_identical() {
        let check = check_counter_log(&log(1000), 1000);
        assert_eq!(
            check,
            CounterCheck {
                lines: 1000,
                lost: 0,
                duplicated: 0,
                corrupt: 0,
                identical: true
            }
        );
    }

    #[test]
    fn lost_duplicated_and_damaged_lines_are_counted() {
        let mut body = Vec::new();
        for i in 1..=100u64 {
            match i {
                10..=12 => {}
                50 => (0..3).for_each(|_| body.extend(counter_line(50).into_bytes())),
                70 => body.extend(counter_line(70).replace('x', "y").into_bytes()),
                _ => body.extend(counter_line(i).into_bytes()),
            }
        }
        let check = check_counter_log(&body, 100);
        assert_eq!(check.lines, 99, "{check:?}");
        assert_eq!(check.lost, 4, "{check:?}");
        assert_eq!(check.duplicated, 2, "{check:?}");
        assert_eq!(check.corrupt, 1, "{check:?}");
        assert!(!check.identical);
    }

    #[test]
    fn reordered_or_truncated_logs_are_not_identical() {
        let mut swapped = counter_line(2).into_bytes();
        swapped.extend(counter_line(1).into_bytes());
        let check = check_counter_log(&swapped, 2);
        assert_eq!((check.lost, check.duplicated, check.corrupt), (0, 0, 0));
        assert!(!check.identical);
        let mut truncated = log(3);
        truncated.pop();
        let check = check_counter_log(&truncated, 3);
        assert_eq!((check.lost, check.corrupt), (1, 1));
        assert!(!check.identical);
        // Two lines run together (a lost newline and what followed it).
        let joined = format!("{}{}", &counter_line(1)[..50], counter_line(2));
        assert_eq!(check_counter_log(joined.as_bytes(), 2).corrupt, 1);
        assert_eq!(check_counter_log(&log(4), 3).corrupt, 1);
    }

    #[test]
    fn the_body_is_cut_at_whole_marker_lines() {
        let trace =
            b"$ printf 'KH%s\\n' START\nKHSTART\n1\n2\n$ printf END\nKHEND\nJob succeeded\n";
        assert_eq!(
            between_marker_lines(trace, b"KHSTART", b"KHEND"),
            Some(&b"1\n2\n$ printf END\n"[..])
        );
        // A marker inside a line does not count.
        let trace = b"echo xKHSTART\nKHSTART\n7\n";
        assert_eq!(
            between_marker_lines(trace, b"KHSTART", b"KHEND"),
            Some(&b"7\n"[..])
        );
        assert_eq!(
            between_marker_lines(b"nothing\n", b"KHSTART", b"KHEND"),
            None
        );
    }
}
