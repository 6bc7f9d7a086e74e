//! GitLab's human durations (`timeout: 1h 30m`), as GitLab's ChronicDuration reads them:
//! numbers with units (`3 hours`, `90 minutes`, `1.5h`, `1h30m`, `1 hour and 30 minutes`), a
//! bare number of seconds (`"3600"`), or clock notation (`1:30:00`). Unlike ChronicDuration,
//! an unknown word is an error instead of being skipped, so a typo cannot shorten a timeout.

use std::time::Duration;

/// GitLab's longest job timeout: one month (`Project::MAX_BUILD_TIMEOUT`, 2629746 s).
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(2_629_746);

const MINUTE: f64 = 60.0;
const HOUR: f64 = 3600.0;
const DAY: f64 = 86_400.0;

/// Parses a duration; the error says what was not understood.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let lower = text.trim().to_ascii_lowercase();
    if lower.is_empty() {
        return Err("is empty".to_owned());
    }
    let seconds = if lower.contains(':') {
        clock(&lower)?
    } else {
        words(&lower)?
    };
    if !seconds.is_finite() || seconds > 1e12 {
        return Err("is too long".to_owned());
    }
    let whole = seconds.floor();
    if whole < 1.0 {
        return Err("is shorter than one second".to_owned());
    }
    Ok(Duration::from_secs(whole as u64))
}

/// `h:mm:ss`, `m:ss` (and `d:hh:mm:ss`), as ChronicDuration reads colon notation.
fn clock(text: &str) -> Result<f64, String> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() > 4
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("is not in clock notation (h:mm:ss)".to_owned());
    }
    let units = [1.0, MINUTE, HOUR, DAY];
    let mut total = 0.0;
    for (part, unit) in parts.iter().rev().zip(units) {
        total += part.parse::<f64>().map_err(|_| "has a number too large")? * unit;
    }
    Ok(total)
}

fn unit_seconds(word: &str) -> Option<f64> {
    Some(match word {
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => MINUTE,
        "h" | "hr" | "hrs" | "hour" | "hours" => HOUR,
        "d" | "day" | "days" => DAY,
        "w" | "wk" | "wks" | "week" | "weeks" => 7.0 * DAY,
        "mo" | "mos" | "month" | "months" => 30.0 * DAY,
        "y" | "yr" | "yrs" | "year" | "years" => 365.0 * DAY,
        _ => return None,
    })
}

/// Numbers each followed by an optional unit (seconds when absent).
fn words(text: &str) -> Result<f64, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut total = 0.0;
    let mut pending: Option<f64> = None;
    let mut any = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || c == ',' {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let number: String = chars[start..i].iter().collect();
            let value: f64 = number
                .parse()
                .map_err(|_| format!("has {number:?}, which is not a number"))?;
            if let Some(seconds) = pending.replace(value) {
                total += seconds;
            }
            any = true;
        } else if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_alphabetic() {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word == "and" {
                continue;
            }
            let Some(unit) = unit_seconds(&word) else {
                return Err(format!("has {word:?}, which is not a unit of time"));
            };
            let Some(number) = pending.take() else {
                return Err(format!("has the unit {word:?} without a number before it"));
            };
            total += number * unit;
        } else {
            return Err(format!("has {c:?}, which does not belong in a duration"));
        }
    }
    if !any {
        return Err("has no number".to_owned());
    }
    Ok(total + pending.unwrap_or(0.0))
}

/// Writes a duration the way users write them (`1h 30m`), readable back by [`parse_duration`].
pub(crate) fn format_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(text: &str) -> u64 {
        parse_duration(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .as_secs()
    }

    #[test]
    fn reads_gitlab_style_durations() {
        assert_eq!(secs("1h 30m"), 5400);
        assert_eq!(secs("3 hours"), 10_800);
        assert_eq!(secs("90 minutes"), 5400);
        assert_eq!(secs("30m"), 1800);
        assert_eq!(secs("45s"), 45);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("1.5h"), 5400);
        assert_eq!(secs("1 hour and 30 minutes"), 5400);
        assert_eq!(secs("2 days, 3 hrs"), 2 * 86_400 + 3 * 3600);
        assert_eq!(secs("1 week"), 7 * 86_400);
        assert_eq!(secs("3600"), 3600);
        assert_eq!(secs("1:30:00"), 5400);
        assert_eq!(secs("1:30"), 90);
        assert_eq!(secs("  10 MINUTES "), 600);
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "ten minutes",
            "",
            "1 fortnight",
            "h",
            "1h!",
            "0s",
            "0.5s",
            "1:x",
            "1..2h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        let err = parse_duration("ten minutes").unwrap_err();
        assert!(err.contains("\"ten\""), "{err}");
    }

    proptest! {
        #[test]
        fn formatted_durations_read_back(s in 1u64..=10_000_000) {
            let d = Duration::from_secs(s);
            prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }

        #[test]
        fn spelled_out_parts_add_up(h in 0u64..100, m in 0u64..60, s in 1u64..60) {
            let text = format!("{h} hours {m} minutes and {s} seconds");
            prop_assert_eq!(secs(&text), h * 3600 + m * 60 + s);
        }

        #[test]
        fn never_panics_on_any_text(text in ".{0,40}") {
            let _ = parse_duration(&text);
        }
    }
}
