//! The parts of P7 (job start against the bare-pod floor): one clock both sides share, the
//! kernel's `/proc/uptime`. Pods on the bed's node run on the same kernel (no time namespace),
//! so a job's first command `cat /proc/uptime` and the bench reading the file when it hands
//! out the job (or creates the bare pod) measure one interval on one clock.

/// The machine's uptime in seconds, as `/proc/uptime` has it (10 ms resolution).
pub fn uptime_now() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/uptime")?;
    first_uptime_line(&text).ok_or_else(|| anyhow::anyhow!("/proc/uptime: {text:?}"))
}

/// The first line of `text` that is exactly what `cat /proc/uptime` prints (two decimal
/// numbers), as seconds: the job's own output among the trace's other lines (the echoed
/// command `$ cat /proc/uptime` is not such a line).
pub fn first_uptime_line(text: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (up, idle) = line.trim_end().split_once(' ')?;
        let decimal = |s: &str| {
            let (whole, frac) = s.split_once('.')?;
            let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            (digits(whole) && digits(frac)).then_some(())
        };
        decimal(up)?;
        decimal(idle)?;
        up.parse().ok()
    })
}

/// The median of `samples` (the mean of the middle two for an even count); `None` for none.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied(),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uptime_line_is_found_among_trace_lines_and_the_echoed_command_is_not_it() {
        let trace = "\x1b[32;1m$ cat /proc/uptime\x1b[0;m\n12345.67 23456.78\nJob succeeded\n";
        assert_eq!(first_uptime_line(trace), Some(12345.67));
        assert_eq!(first_uptime_line("12 34\n1.5 x\n"), None);
        assert!(uptime_now().unwrap() > 0.0);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
