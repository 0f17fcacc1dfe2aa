//! Datetimes in payloads and filters, in the forms Qdrant reads: `YYYY-MM-DD`, optionally
//! followed by `T` or a space and `HH:MM[:SS[.fraction]]`, optionally followed by `Z`, ` UTC`
//! or an offset `±HH:MM` / `±HHMM` (a space before it allowed); no offset means UTC. Read as
//! microseconds since the Unix epoch (a longer fraction is cut to microseconds).

/// Microseconds since 1970-01-01T00:00:00Z of `text`, or `None` when it is not a datetime.
pub fn parse_micros(text: &str) -> Option<i64> {
    let s = text.trim_start();
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut at = 10;
    let (mut hour, mut minute, mut second, mut micros) = (0, 0, 0, 0i64);
    if at < b.len() && (b[at] == b'T' || b[at] == b't' || b[at] == b' ') && num(at + 1, 2).is_some()
    {
        hour = num(at + 1, 2)?;
        if b.get(at + 3) != Some(&b':') {
            return None;
        }
        minute = num(at + 4, 2)?;
        at += 6;
        if b.get(at) == Some(&b':') {
            second = num(at + 1, 2)?;
            at += 3;
            if b.get(at) == Some(&b'.') {
                at += 1;
                let start = at;
                while at < b.len() && b[at].is_ascii_digit() {
                    at += 1;
                }
                if at == start {
                    return None;
                }
                let digits = &s[start..at.min(start + 6)];
                micros = digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32);
            }
        }
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
    }
    let offset_minutes = offset(&s[at..])?;
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(secs * 1_000_000 + micros)
}

/// The offset in minutes of what follows the time: nothing (UTC), `Z`, ` UTC`, `±HH:MM` or
/// `±HHMM`, a space before an offset allowed.
fn offset(rest: &str) -> Option<i64> {
    let rest = match rest {
        "" | "Z" | "z" | " UTC" => return Some(0),
        r => r.strip_prefix(' ').unwrap_or(r),
    };
    let b = rest.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    // `±HH:MM` or `±HHMM`, nothing else.
    let digits: String = match rest.len() {
        6 if b[3] == b':' => format!("{}{}", &rest[1..3], &rest[4..6]),
        5 => rest[1..].to_string(),
        _ => return None,
    };
    if !digits.bytes().all(|d| d.is_ascii_digit()) {
        return None;
    }
    let h: i64 = digits[..2].parse().ok()?;
    let m: i64 = digits[2..].parse().ok()?;
    (h <= 23 && m <= 59).then_some(sign * (h * 60 + m))
}

/// `micros` since the epoch as RFC 3339 in UTC with microseconds
/// (`2024-05-01T12:00:00.000000Z`), which [`parse_micros`] reads back.
pub fn format_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// The civil date of a day count from 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_micros;

    #[test]
    fn qdrants_forms_parse_to_the_same_instant() {
        let utc = parse_micros("2023-02-08T10:49:00Z").unwrap();
        assert_eq!(utc, 1_675_853_340_000_000);
        for s in [
            "2023-02-08T10:49:00",
            "2023-02-08 10:49:00",
            "2023-02-08T10:49",
            "2023-02-08T10:49:00+00:00",
            "2023-02-08T11:49:00+01:00",
            "2023-02-08T11:49:00+0100",
            "2023-02-08 11:49:00 +01:00",
            "2023-02-08T10:49:00 UTC",
            "  2023-02-08t10:49:00z",
            "2023-02-08T05:49:00-05:00",
        ] {
            assert_eq!(parse_micros(s), Some(utc), "{s}");
        }
        assert_eq!(
            parse_micros("2023-02-08"),
            Some(utc - (10 * 3600 + 49 * 60) * 1_000_000)
        );
        assert_eq!(parse_micros("1970-01-01T00:00:00.5Z"), Some(500_000));
        assert_eq!(parse_micros("1970-01-01T00:00:00.123456789"), Some(123_456));
        assert_eq!(parse_micros("1969-12-31T23:59:59Z"), Some(-1_000_000));
        assert_eq!(
            parse_micros("2024-02-29"),
            Some(19_782 * 86_400 * 1_000_000)
        );
    }

    #[test]
    fn formatted_instants_read_back() {
        for m in [
            0,
            1,
            -1,
            1_675_853_340_123_456,
            19_782 * 86_400 * 1_000_000,
            -86_400_000_001,
        ] {
            assert_eq!(parse_micros(&super::format_micros(m)), Some(m), "{m}");
        }
        assert_eq!(super::format_micros(500_000), "1970-01-01T00:00:00.500000Z");
    }

    #[test]
    fn other_text_is_not_a_datetime() {
        for s in [
            "",
            "2023",
            "2023-02-30",
            "2023-13-01",
            "2023-2-8",
            "2023-02-08T25:00",
            "2023-02-08T10",
            "2023-02-08T10:49:00+1",
            "2023-02-08X",
            "yesterday",
            "2023-02-08T10:49:00.",
        ] {
            assert_eq!(parse_micros(s), None, "{s}");
        }
    }
}
