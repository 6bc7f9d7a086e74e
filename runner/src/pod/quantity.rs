//! Kubernetes resource quantities, parsed just enough to compare a job's requested override
//! with the runner's `*_overwrite_max_allowed` cap.

/// The value of a quantity in base units (cores, bytes), or `None` if it is not one.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    (number.is_finite() && number >= 0.0).then_some(number * factor)
}

/// A job's resource override the runner does not take, or a cap it cannot compare with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The job's `key` variable is not a quantity.
    #[error("{key}={wanted:?} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi)")]
    NotAQuantity { key: String, wanted: String },
    /// The runner's `*_overwrite_max_allowed` for `key` is not a quantity.
    #[error("the runner's cap for {key} ({max:?}) is not a quantity; fix the runner config")]
    CapNotAQuantity { key: String, max: String },
    /// The job asks for more than the runner's cap.
    #[error("{key}={wanted} is above the runner's maximum {max}; ask for at most {max}")]
    AboveCap {
        key: String,
        wanted: String,
        max: String,
    },
}

/// Picks a resource value: the job's override when the runner allows it and it is within the
/// cap, else the runner's value. An override above the cap fails the job (as gitlab-runner does)
/// rather than silently running with less than asked.
pub fn resolve_override(
    key: &str,
    configured: Option<&str>,
    max_allowed: Option<&str>,
    wanted: Option<&str>,
) -> Result<Option<String>, QuantityError> {
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        return Ok(configured.map(str::to_string));
    };
    let Some(max) = max_allowed else {
        return Ok(configured.map(str::to_string));
    };
    let w = parse_quantity(wanted).ok_or_else(|| QuantityError::NotAQuantity {
        key: key.into(),
        wanted: wanted.into(),
    })?;
    let m = parse_quantity(max).ok_or_else(|| QuantityError::CapNotAQuantity {
        key: key.into(),
        max: max.into(),
    })?;
    if w > m {
        return Err(QuantityError::AboveCap {
            key: key.into(),
            wanted: wanted.into(),
            max: max.into(),
        });
    }
    Ok(Some(wanted.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_decimal_and_binary_suffixes() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("1Xi"), None);
        assert_eq!(parse_quantity("-1"), None);
    }

    #[test]
    fn overrides_are_capped() {
        let r = |w| resolve_override("KUBERNETES_CPU_REQUEST", Some("100m"), Some("1"), w);
        assert_eq!(r(None).unwrap().as_deref(), Some("100m"));
        assert_eq!(r(Some("500m")).unwrap().as_deref(), Some("500m"));
        assert!(
            r(Some("2"))
                .unwrap_err()
                .to_string()
                .contains("above the runner's maximum 1")
        );
        assert!(
            r(Some("two"))
                .unwrap_err()
                .to_string()
                .contains("not a Kubernetes quantity")
        );
        // Without a cap the override is ignored, as in gitlab-runner.
        let none = resolve_override("K", Some("100m"), None, Some("64"));
        assert_eq!(none.unwrap().as_deref(), Some("100m"));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,12}") {
            let _ = parse_quantity(&s);
        }

        #[test]
        fn milli_is_a_thousandth(n in 0u32..1_000_000) {
            let a = parse_quantity(&format!("{n}m")).unwrap();
            prop_assert!((a * 1000.0 - f64::from(n)).abs() < 1e-6);
        }
    }
}
