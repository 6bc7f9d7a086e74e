//! Unix time ↔ the DOS date and time of zip headers, both ways, in UTC (as Go's
//! `archive/zip`, which GitLab's side uses, reads them). A leaf: the zip writer, the
//! archiver and the extractor all use it.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=12, 1..=31).
    (year, month as u32, day as u32)
}

/// The DOS date and time (UTC) of a unix time; times the format cannot hold (before 1980,
/// after 2107) become its earliest, 1980-01-01 00:00.
pub(crate) fn zip_time(unix: i64) -> zip::DateTime {
    let days = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let fields = (
        u16::try_from(year),
        u8::try_from(month),
        u8::try_from(day),
        u8::try_from(seconds / 3600),
        u8::try_from(seconds % 3600 / 60),
        u8::try_from(seconds % 60),
    );
    match fields {
        (Ok(y), Ok(mo), Ok(d), Ok(h), Ok(mi), Ok(s)) => {
            zip::DateTime::from_date_and_time(y, mo, d, h, mi, s).unwrap_or_default()
        }
        _ => zip::DateTime::default(),
    }
}

/// The unix time of a DOS date and time, read as UTC (as Go's `archive/zip` does).
pub(crate) fn unix_time(time: &zip::DateTime) -> i64 {
    let days = days_from_civil(
        i64::from(time.year()),
        u32::from(time.month()),
        u32::from(time.day()),
    );
    days * 86_400
        + i64::from(time.hour()) * 3600
        + i64::from(time.minute()) * 60
        + i64::from(time.second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip_through_day_counts() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        for days in [-800_000, -1, 0, 59, 10_957, 20_000, 50_000, 2_932_896] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days, "day {days}");
        }
    }

    #[test]
    fn zip_times_round_trip_in_two_second_steps_and_clamp_outside_the_dos_range() {
        let t = 1_700_000_001; // 2023-11-14 22:13:21 UTC
        let dos = zip_time(t);
        assert_eq!((dos.year(), dos.month(), dos.day()), (2023, 11, 14));
        assert_eq!(unix_time(&dos), t - 1);
        assert_eq!(zip_time(-5), zip::DateTime::default());
        assert_eq!(zip_time(i64::MAX), zip::DateTime::default());
        assert_eq!(zip_time(i64::MIN), zip::DateTime::default());
    }
}
