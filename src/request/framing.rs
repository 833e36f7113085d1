//! Message-framing checks: refuse any request whose body length two parsers could disagree on.
//!
//! Request smuggling needs a front end and a back end that find the end of a body in different
//! places. RFC 9112 §6.3 lets a server choose between several readings of conflicting framing
//! headers; the gateway takes none of them and answers 400 (closing the connection), so only
//! one framing ever reaches pingora and the upstream: a single decimal `Content-Length`, or a
//! single `Transfer-Encoding: chunked` on HTTP/1.1, or neither.

use http::{HeaderMap, HeaderName, Version};

/// Why a request's framing was refused. Every variant answers 400 and closes the connection
/// (RFC 9112 §6.3: the connection's remaining bytes cannot be trusted to start a request).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    /// More than one `Content-Length` field line.
    #[error("more than one Content-Length field")]
    DuplicateContentLength,
    /// A `Content-Length` that is not a single decimal number fitting in 64 bits.
    #[error("Content-Length is not a decimal length")]
    InvalidContentLength,
    /// Both `Content-Length` and `Transfer-Encoding`.
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    /// `Transfer-Encoding` on a request that is not HTTP/1.1.
    #[error("Transfer-Encoding on a request that is not HTTP/1.1")]
    TransferEncodingNotHttp11,
    /// More than one `Transfer-Encoding` field line.
    #[error("more than one Transfer-Encoding field")]
    DuplicateTransferEncoding,
    /// A `Transfer-Encoding` other than exactly `chunked`.
    #[error("Transfer-Encoding is not exactly chunked")]
    UnsupportedTransferEncoding,
    /// A field named like a framing header with `_` for `-` (`Transfer_Encoding`), which
    /// some back ends (CGI-style environments) fold into the real header.
    #[error("header name imitates a framing header")]
    ObfuscatedFramingHeader,
}

impl FramingError {
    /// A stable short reason code for logs, audit events and JSON errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::DuplicateContentLength => "duplicate_content_length",
            Self::InvalidContentLength => "invalid_content_length",
            Self::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            Self::TransferEncodingNotHttp11 => "transfer_encoding_not_http11",
            Self::DuplicateTransferEncoding => "duplicate_transfer_encoding",
            Self::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            Self::ObfuscatedFramingHeader => "obfuscated_framing_header",
        }
    }
}

/// Checks on the raw header block, for what the parser hides: pingora 0.9.1 drops
/// `Content-Length` when `Transfer-Encoding` is also present (RFC 9112 §6.3 lets a proxy do so),
/// but this gateway rejects the combination (RFC 9112 §6.1, §11.2), so it counts the
/// `Content-Length` lines as received.
pub fn check_raw(raw_header: &[u8], headers: &HeaderMap) -> Result<(), FramingError> {
    let content_lengths = raw_header
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| line.split(|&b| b == b':').next())
        .filter(|name| trim_ows(name).eq_ignore_ascii_case(b"content-length"))
        .count();
    if content_lengths > 1 {
        return Err(FramingError::DuplicateContentLength);
    }
    if content_lengths == 1 && headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(FramingError::ContentLengthWithTransferEncoding);
    }
    Ok(())
}

/// RFC 9112 §6.1 / §6.3 checks on an HTTP/1.x request's headers.
///
/// Pass the `http::HeaderMap` of pingora's `RequestHeader` (it derefs to one) and its version.
/// The same rules are safe, and stricter than needed, for HTTP/2, where `Transfer-Encoding`
/// is forbidden outright (RFC 9113 §8.2.2).
pub fn check(headers: &HeaderMap, version: Version) -> Result<(), FramingError> {
    if headers.keys().any(imitates_framing_header) {
        return Err(FramingError::ObfuscatedFramingHeader);
    }

    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let Some(length) = lengths.next() {
        // RFC 9110 §8.6 lets a recipient accept repeated identical values; we do not, since
        // a downstream parser may pick a different line than ours.
        if lengths.next().is_some() {
            return Err(FramingError::DuplicateContentLength);
        }
        // RFC 9110 §8.6: Content-Length = 1*DIGIT. No sign, no list ("1,1"), and it must
        // fit the integer every parser reads it into.
        let digits = trim_ows(length.as_bytes());
        let is_decimal = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
        let fits = std::str::from_utf8(digits).is_ok_and(|d| d.parse::<u64>().is_ok());
        if !(is_decimal && fits) {
            return Err(FramingError::InvalidContentLength);
        }
    }

    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        // RFC 9112 §6.1: a server MAY reject a request carrying both; §11.2 names exactly
        // this as the smuggling vector, so it is rejected.
        if headers.contains_key(http::header::CONTENT_LENGTH) {
            return Err(FramingError::ContentLengthWithTransferEncoding);
        }
        // RFC 9112 §6.1: Transfer-Encoding on an HTTP/1.0 message means the framing is
        // faulty; HTTP/2 forbids it (RFC 9113 §8.2.2).
        if version != Version::HTTP_11 {
            return Err(FramingError::TransferEncodingNotHttp11);
        }
        // RFC 9110 §5.3: repeated field lines form one list, which could then hold a
        // coding after chunked; one line keeps the reading unique.
        if codings.next().is_some() {
            return Err(FramingError::DuplicateTransferEncoding);
        }
        // RFC 9112 §6.3: chunked must be the final coding, otherwise the length is unknown;
        // we accept nothing but chunked alone, since no app behind us needs more and every
        // extra coding ("chunked, identity", "chunked;x") is a parser disagreement waiting
        // to happen. RFC 9112 §7: coding names are case-insensitive.
        if !trim_ows(coding.as_bytes()).eq_ignore_ascii_case(b"chunked") {
            return Err(FramingError::UnsupportedTransferEncoding);
        }
    }
    Ok(())
}

/// True for `content_length`, `transfer_encoding` and any mix of `_` and `-`, but not for the
/// real names (the map stores names lowercased, so case is already folded).
fn imitates_framing_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    let folded = name.replace('_', "-");
    (folded == "content-length" || folded == "transfer-encoding") && folded != name
}

/// RFC 9110 §5.5: a field value excludes leading and trailing OWS (SP / HTAB).
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

#[cfg(test)]
mod raw_tests {
    use super::*;

    #[test]
    fn content_length_hidden_by_the_parser_is_still_rejected_with_te() {
        let mut parsed = HeaderMap::new();
        parsed.insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            check_raw(raw, &parsed),
            Err(FramingError::ContentLengthWithTransferEncoding)
        );
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            check_raw(raw, &HeaderMap::new()),
            Err(FramingError::DuplicateContentLength)
        );
        let raw = b"GET /content-length: HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            check_raw(raw, &parsed),
            Ok(()),
            "the request line is not a header"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(fields: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn check11(fields: &[(&str, &[u8])]) -> Result<(), FramingError> {
        check(&headers(fields), Version::HTTP_11)
    }

    #[test]
    fn no_body_headers_pass() {
        assert_eq!(check11(&[("host", b"acme.localhost")]), Ok(()));
        assert_eq!(check(&HeaderMap::new(), Version::HTTP_10), Ok(()));
    }

    #[test]
    fn single_content_length_passes() {
        for value in [
            &b"0"[..],
            b"42",
            b"007",
            b" 12 ",
            b"\t12\t",
            b"18446744073709551615",
        ] {
            assert_eq!(check11(&[("content-length", value)]), Ok(()), "{value:?}");
        }
    }

    #[test]
    fn content_length_on_http10_passes() {
        assert_eq!(
            check(&headers(&[("content-length", b"5")]), Version::HTTP_10),
            Ok(())
        );
    }

    #[test]
    fn single_chunked_passes() {
        for value in [&b"chunked"[..], b"Chunked", b"CHUNKED", b" chunked\t"] {
            assert_eq!(
                check11(&[("transfer-encoding", value)]),
                Ok(()),
                "{value:?}"
            );
        }
    }

    #[test]
    fn duplicate_content_length_is_rejected() {
        assert_eq!(
            check11(&[("content-length", b"5"), ("content-length", b"5")]),
            Err(FramingError::DuplicateContentLength)
        );
        assert_eq!(
            check11(&[("content-length", b"5"), ("Content-Length", b"50")]),
            Err(FramingError::DuplicateContentLength)
        );
    }

    #[test]
    fn content_length_list_is_rejected() {
        for value in [&b"1,1"[..], b"5, 5", b"1 1", b","] {
            assert_eq!(
                check11(&[("content-length", value)]),
                Err(FramingError::InvalidContentLength),
                "{value:?}"
            );
        }
    }

    #[test]
    fn non_numeric_content_length_is_rejected() {
        for value in [
            &b""[..],
            b" ",
            b"+1",
            b"-1",
            b"0x10",
            b"1e3",
            b"1.0",
            b"12abc",
            b"\xff",
        ] {
            assert_eq!(
                check11(&[("content-length", value)]),
                Err(FramingError::InvalidContentLength),
                "{value:?}"
            );
        }
    }

    #[test]
    fn overflowing_content_length_is_rejected() {
        assert_eq!(
            check11(&[("content-length", b"18446744073709551616")]),
            Err(FramingError::InvalidContentLength)
        );
    }

    #[test]
    fn content_length_with_transfer_encoding_is_rejected() {
        assert_eq!(
            check11(&[("content-length", b"5"), ("transfer-encoding", b"chunked")]),
            Err(FramingError::ContentLengthWithTransferEncoding)
        );
        assert_eq!(
            check11(&[("transfer-encoding", b"chunked"), ("content-length", b"0")]),
            Err(FramingError::ContentLengthWithTransferEncoding)
        );
    }

    #[test]
    fn transfer_encoding_on_http10_is_rejected() {
        assert_eq!(
            check(
                &headers(&[("transfer-encoding", b"chunked")]),
                Version::HTTP_10
            ),
            Err(FramingError::TransferEncodingNotHttp11)
        );
    }

    #[test]
    fn transfer_encoding_on_http2_is_rejected() {
        assert_eq!(
            check(
                &headers(&[("transfer-encoding", b"chunked")]),
                Version::HTTP_2
            ),
            Err(FramingError::TransferEncodingNotHttp11)
        );
    }

    #[test]
    fn duplicate_transfer_encoding_is_rejected() {
        assert_eq!(
            check11(&[
                ("transfer-encoding", b"chunked"),
                ("transfer-encoding", b"chunked")
            ]),
            Err(FramingError::DuplicateTransferEncoding)
        );
        assert_eq!(
            check11(&[
                ("transfer-encoding", b"identity"),
                ("Transfer-Encoding", b"chunked")
            ]),
            Err(FramingError::DuplicateTransferEncoding)
        );
    }

    #[test]
    fn transfer_encoding_other_than_chunked_is_rejected() {
        for value in [
            &b"identity"[..],
            b"gzip",
            b"gzip, chunked",
            b"chunked, identity",
            b"chunked,",
            b",chunked",
            b"xchunked",
            b"chunkedx",
            b"chunked;x",
            b"chunked ;",
            b"chun\tked",
            b"chunk ed",
            b"\"chunked\"",
            b"",
            b"\xffchunked",
        ] {
            assert_eq!(
                check11(&[("transfer-encoding", value)]),
                Err(FramingError::UnsupportedTransferEncoding),
                "{value:?}"
            );
        }
    }

    #[test]
    fn underscore_transfer_encoding_is_rejected() {
        for name in [
            "transfer_encoding",
            "Transfer_Encoding",
            "transfer_Encoding",
        ] {
            assert_eq!(
                check11(&[(name, b"chunked")]),
                Err(FramingError::ObfuscatedFramingHeader),
                "{name}"
            );
        }
    }

    #[test]
    fn underscore_content_length_is_rejected() {
        for name in ["content_length", "Content_Length"] {
            assert_eq!(
                check11(&[("content-length", b"5"), (name, b"500")]),
                Err(FramingError::ObfuscatedFramingHeader),
                "{name}"
            );
        }
    }

    #[test]
    fn unrelated_underscore_headers_pass() {
        assert_eq!(
            check11(&[("x_content_length", b"5"), ("content_type", b"a")]),
            Ok(())
        );
    }

    #[test]
    fn error_codes_are_stable() {
        let cases = [
            (
                FramingError::DuplicateContentLength,
                "duplicate_content_length",
            ),
            (FramingError::InvalidContentLength, "invalid_content_length"),
            (
                FramingError::ContentLengthWithTransferEncoding,
                "content_length_with_transfer_encoding",
            ),
            (
                FramingError::TransferEncodingNotHttp11,
                "transfer_encoding_not_http11",
            ),
            (
                FramingError::DuplicateTransferEncoding,
                "duplicate_transfer_encoding",
            ),
            (
                FramingError::UnsupportedTransferEncoding,
                "unsupported_transfer_encoding",
            ),
            (
                FramingError::ObfuscatedFramingHeader,
                "obfuscated_framing_header",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code);
        }
    }
}
