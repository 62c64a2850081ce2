//! Oracles the fuzz targets check the library against: plain restatements
//! of the Kubernetes rules (from apimachinery's validation), written apart
//! from the library's own checks so that a bug in one is not hidden by the
//! same bug in the other.

/// apimachinery `IsDNS1123Label`: at most 63 of `[a-z0-9-]`, alphanumeric
/// at both ends (namespace names).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let end = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !b.is_empty() && b.len() <= 63 && b.iter().all(inner) && end(b.first()) && end(b.last())
}

/// apimachinery `IsDNS1123Subdomain`: at most 253 characters, dot-separated
/// parts of `[a-z0-9-]` alphanumeric at both ends (Secret, ServiceAccount
/// names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    let part_ok = |p: &str| {
        let b = p.as_bytes();
        let end = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        end(b.first())
            && end(b.last())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    !s.is_empty() && s.len() <= 253 && s.split('.').all(part_ok)
}

/// apimachinery `IsValidPathSegmentName` (RBAC object names): not `.` or
/// `..`, no `/` or `%`.
pub fn is_path_segment_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '%'])
}

/// apimachinery `IsValidLabelValue`: empty, or at most 63 of
/// `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    let end = |c: Option<&u8>| c.is_some_and(u8::is_ascii_alphanumeric);
    s.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
            && end(b.first())
            && end(b.last()))
}

/// apimachinery `IsQualifiedName` for label and annotation keys:
/// `[prefix/]name`, prefix a DNS-1123 subdomain, name a label value of
/// 1..=63 characters.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// Fit for one log line: no control characters (newline, escape, NUL).
pub fn is_one_line(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// True when some `n`-byte stretch of `secret` appears in `text` (a leak
/// check: error messages must never quote file content or tokens).
pub fn quotes_stretch_of(text: &str, secret: &str, n: usize) -> bool {
    if secret.len() < n {
        return false;
    }
    (0..=secret.len() - n)
        .filter(|i| secret.is_char_boundary(*i) && secret.is_char_boundary(i + n))
        .any(|i| text.contains(&secret[i..i + n]))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`), to check RFC 3339 output by turning it back.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds of a `YYYY-MM-DDTHH:MM:SSZ` timestamp, if it is one.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec).ok()
}

/// The input as text, or `None` (every parser here reads UTF-8 text).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
