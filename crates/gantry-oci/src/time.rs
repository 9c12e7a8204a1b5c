//! Timestamps: `SOURCE_DATE_EPOCH`, RFC 3339 and epoch seconds.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Error;

/// Parses a time given as epoch seconds (`1700000000`) or RFC 3339
/// (`2023-11-14T22:13:20Z`) into whole epoch seconds. Fractions of a second are refused
/// rather than silently dropped.
pub fn parse_epoch_or_rfc3339(input: &str) -> Result<i64, Error> {
    let bad = |reason: String| Error::InvalidTime {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return s
            .parse::<i64>()
            .map_err(|e| bad(format!("not an epoch second count: {e}")));
    }
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| bad(format!("neither epoch seconds nor RFC 3339: {e}")))?;
    if t.nanosecond() != 0 {
        return Err(bad("fractions of a second are not supported".to_owned()));
    }
    Ok(t.unix_timestamp())
}

/// Parses the value of `SOURCE_DATE_EPOCH`: a non-negative decimal integer.
pub fn parse_source_date_epoch(input: &str) -> Result<i64, Error> {
    let s = input.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidTime {
            input: input.to_owned(),
            reason: "SOURCE_DATE_EPOCH must be a non-negative integer of seconds".to_owned(),
        });
    }
    s.parse().map_err(|e| Error::InvalidTime {
        input: input.to_owned(),
        reason: format!("{e}"),
    })
}

/// Formats epoch seconds as RFC 3339 in UTC (`1970-01-01T00:00:00Z`).
pub fn format_rfc3339(epoch: i64) -> Result<String, Error> {
    let t = OffsetDateTime::from_unix_timestamp(epoch).map_err(|e| Error::InvalidTime {
        input: epoch.to_string(),
        reason: e.to_string(),
    })?;
    // Well-known RFC 3339 formatting of a UTC time ends in `Z` and has no fraction at 0 ns.
    t.format(&Rfc3339).map_err(|e| Error::InvalidTime {
        input: epoch.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(parse_epoch_or_rfc3339("0").unwrap(), 0);
        assert_eq!(parse_epoch_or_rfc3339("1700000000").unwrap(), 1_700_000_000);
        assert_eq!(
            parse_epoch_or_rfc3339("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000
        );
        assert_eq!(
            parse_epoch_or_rfc3339("2023-11-14T23:13:20+01:00").unwrap(),
            1_700_000_000
        );
        assert!(parse_epoch_or_rfc3339("yesterday").is_err());
        assert!(parse_epoch_or_rfc3339("2023-11-14T22:13:20.5Z").is_err());
        assert!(parse_epoch_or_rfc3339("").is_err());
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(1_700_000_000).unwrap(),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn source_date_epoch_is_strict() {
        assert_eq!(parse_source_date_epoch("42").unwrap(), 42);
        assert!(parse_source_date_epoch("-1").is_err());
        assert!(parse_source_date_epoch("1.5").is_err());
        assert!(parse_source_date_epoch("").is_err());
    }
}
