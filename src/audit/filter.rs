//! The filters people type to read an audit log (`since=24h&event=login_failed&user=bob`),
//! parsed once for the tenant admin pages and the operator API.
//!
//! A time bound is RFC 3339 (`2024-05-01T12:00:00Z`), a UTC date (`2024-05-01`), or a span
//! back from now (`30m`, `24h`, `7d`, `2w`). An empty value means "no filter", as an HTML
//! form sends it. There is deliberately no tenant here: who may read which tenant is the
//! caller's decision, never a query parameter's.

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime};

use super::EventKind;
use crate::store::{AuditQuery, MAX_QUERY_LIMIT};

/// Longest user filter accepted, in bytes (stored names are at most this after escaping).
const MAX_USER_BYTES: usize = super::MAX_FIELD_BYTES;

/// The filters of one audit read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only records strictly before this time.
    pub until: Option<OffsetDateTime>,
    /// Only this event type.
    pub event: Option<EventKind>,
    /// Only records whose actor or subject is this name.
    pub user: Option<String>,
    /// Paging cursor from the previous page.
    pub before: Option<u64>,
    /// Requested page size (callers clamp it).
    pub limit: Option<u32>,
}

/// A filter value that cannot be read; [`FilterError::code`] is the API error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// `since` is not a time.
    #[error("since: use RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01) or a span (24h, 7d)")]
    Since,
    /// `until` is not a time.
    #[error("until: use RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01) or a span (24h, 7d)")]
    Until,
    /// `event` is not an event type.
    #[error("event: not a known event type")]
    Event,
    /// `user` is too long or holds control characters.
    #[error("user: at most 512 printable characters")]
    User,
    /// `before` is not a position.
    #[error("before: a positive whole number from next_before")]
    Before,
    /// `limit` is not a page size.
    #[error("limit: a whole number from 1 to 1000")]
    Limit,
}

impl FilterError {
    /// Stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Since => "bad_since",
            Self::Until => "bad_until",
            Self::Event => "unknown_event",
            Self::User => "bad_user",
            Self::Before => "bad_before",
            Self::Limit => "bad_limit",
        }
    }
}

impl AuditFilter {
    /// The filters in a raw query string; relative times count back from `now`. Other
    /// parameters are ignored; for a repeated one the first counts.
    pub fn from_query(query: Option<&str>, now: OffsetDateTime) -> Result<Self, FilterError> {
        let mut filter = AuditFilter::default();
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if seen.iter().any(|k| *k == key) {
                continue;
            }
            seen.push(key.to_string());
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match key.as_ref() {
                "since" => filter.since = Some(parse_time(value, now).ok_or(FilterError::Since)?),
                "until" => filter.until = Some(parse_time(value, now).ok_or(FilterError::Until)?),
                "event" => filter.event = Some(value.parse().map_err(|_| FilterError::Event)?),
                "user" => {
                    if value.len() > MAX_USER_BYTES || value.chars().any(char::is_control) {
                        return Err(FilterError::User);
                    }
                    filter.user = Some(value.to_string());
                }
                "before" => {
                    let before = value.parse::<u64>().map_err(|_| FilterError::Before)?;
                    if before == 0 || i64::try_from(before).is_err() {
                        return Err(FilterError::Before);
                    }
                    filter.before = Some(before);
                }
                "limit" => {
                    let limit = value.parse::<u32>().map_err(|_| FilterError::Limit)?;
                    if !(1..=MAX_QUERY_LIMIT).contains(&limit) {
                        return Err(FilterError::Limit);
                    }
                    filter.limit = Some(limit);
                }
                _ => {}
            }
        }
        Ok(filter)
    }

    /// The store query over `tenant`'s log with these filters (`before` as a chain seq).
    pub fn for_tenant(&self, tenant: &str, limit: u32) -> AuditQuery {
        AuditQuery {
            tenant: tenant.to_string(),
            since: self.since,
            until: self.until,
            event: self.event,
            user: self.user.clone(),
            before_seq: self.before,
            limit,
        }
    }
}

/// A time bound: RFC 3339, a UTC date, or `<n><s|m|h|d|w>` back from `now`.
pub fn parse_time(text: &str, now: OffsetDateTime) -> Option<OffsetDateTime> {
    if let Some(span) = parse_span(text) {
        return now.checked_sub(span);
    }
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t);
    }
    parse_date(text)
}

/// `30m`, `24h`, `7d`, `2w`, `90s`: at most about a century back.
fn parse_span(text: &str) -> Option<time::Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3_600)?,
        'd' => n.checked_mul(86_400)?,
        'w' => n.checked_mul(7 * 86_400)?,
        _ => return None,
    };
    (secs <= 100 * 366 * 86_400).then(|| time::Duration::seconds(secs))
}

/// `YYYY-MM-DD`, midnight UTC.
fn parse_date(text: &str) -> Option<OffsetDateTime> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !(all_digits(y) && all_digits(m) && all_digits(d)) {
        return None;
    }
    let month = Month::try_from(m.parse::<u8>().ok()?).ok()?;
    let date = Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()?;
    Some(date.midnight().assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid time")
    }

    #[test]
    fn relative_spans_count_back_from_now() {
        let n = now();
        assert_eq!(parse_time("24h", n), Some(n - time::Duration::hours(24)));
        assert_eq!(parse_time("7d", n), Some(n - time::Duration::days(7)));
        assert_eq!(parse_time("30m", n), Some(n - time::Duration::minutes(30)));
        assert_eq!(parse_time("2w", n), Some(n - time::Duration::weeks(2)));
        assert_eq!(parse_time("90s", n), Some(n - time::Duration::seconds(90)));
        for bad in ["h", "24", "-1h", "1.5h", "24x", "99999999999d", "1 h", "٣h"] {
            assert_eq!(parse_time(bad, n), None, "{bad}");
        }
    }

    #[test]
    fn absolute_times_are_rfc3339_or_a_utc_date() {
        let n = now();
        let t = parse_time("2023-11-14T22:13:20Z", n).expect("rfc 3339");
        assert_eq!(t.unix_timestamp(), 1_700_000_000);
        let t = parse_time("2023-11-15T00:13:20+02:00", n).expect("with offset");
        assert_eq!(t.unix_timestamp(), 1_700_000_000);
        let d = parse_time("2023-11-14", n).expect("date");
        assert_eq!(d.unix_timestamp(), 1_699_920_000);
        for bad in [
            "2023-13-01",
            "2023-11-14T25:00:00Z",
            "yesterday",
            "2023-1-1",
        ] {
            assert_eq!(parse_time(bad, n), None, "{bad}");
        }
    }

    #[test]
    fn query_parameters_become_filters() {
        let f = AuditFilter::from_query(
            Some("since=24h&until=&event=login_failed&user=bob%40corp&before=51&limit=10&tenant=globex"),
            now(),
        )
        .expect("valid");
        assert_eq!(f.since, Some(now() - time::Duration::hours(24)));
        assert_eq!(f.until, None, "empty means no filter");
        assert_eq!(f.event, Some(EventKind::LoginFailed));
        assert_eq!(f.user.as_deref(), Some("bob@corp"));
        assert_eq!(f.before, Some(51));
        assert_eq!(f.limit, Some(10));
        let q = f.for_tenant("acme", 50);
        assert_eq!(
            q.tenant, "acme",
            "the tenant is the caller's, never the query's"
        );
        assert_eq!(q.before_seq, Some(51));
        assert_eq!(
            AuditFilter::from_query(Some("event=login_failed&event=logout"), now())
                .expect("valid")
                .event,
            Some(EventKind::LoginFailed),
            "the first of a repeated parameter counts"
        );
    }

    #[test]
    fn unreadable_filters_are_refused_with_their_code() {
        for (query, code) in [
            ("since=soon", "bad_since"),
            ("until=tomorrow", "bad_until"),
            ("event=LoginFailed", "unknown_event"),
            ("user=a%0Ab", "bad_user"),
            ("before=0", "bad_before"),
            ("before=-1", "bad_before"),
            ("before=99999999999999999999", "bad_before"),
            ("limit=0", "bad_limit"),
            ("limit=1001", "bad_limit"),
        ] {
            let err = AuditFilter::from_query(Some(query), now()).expect_err(query);
            assert_eq!(err.code(), code, "{query}");
        }
    }
}
