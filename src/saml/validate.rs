//! Checking a SAMLResponse: samael (xmlsec) verifies the signature and reduces the document to
//! what was signed; around it we add what samael does not do (read from samael 0.0.22):
//!
//! * before parsing: size cap, no DOCTYPE/entities, no comments or processing instructions
//!   (comment injection into NameID), exactly one `Assertion` element anywhere (every
//!   signature-wrapping variant needs a second one), no `EncryptedAssertion`, an algorithm
//!   allowlist on every `SignatureMethod`/`DigestMethod` (no SHA-1), a top-level Success status,
//!   and the Response `Destination` (when present) equal to our ACS;
//! * samael with signature algorithms restricted and IdP-initiated handling off to us;
//! * after: only the signed assertion samael returns is read — issuer equal to the tenant's
//!   IdP, an `AudienceRestriction` present and every one naming us, every bearer
//!   `SubjectConfirmationData` with our ACS as Recipient and a `NotOnOrAfter`, the time
//!   window on our clock with the tenant's skew, and one consistent `InResponseTo`.
//!
//! What is left for the caller: consume the `InResponseTo` request (or allow an unsolicited
//! response), the replay cache, and mapping the identity.

use std::sync::Mutex;

use base64::Engine as _;
use quick_xml::events::Event;
use quick_xml::NsReader;
use samael::crypto::AllowedSignatureAlgorithm;
use samael::schema::Assertion;
use samael::service_provider::{Error as SamlError, ServiceProvider};

use super::{has_doctype, IdpMetadata, SpUrls, MAX_POST_BYTES};

/// Signature and digest algorithms accepted (SHA-2 only).
const ALLOWED: &[AllowedSignatureAlgorithm] = &[
    AllowedSignatureAlgorithm::RsaSha256,
    AllowedSignatureAlgorithm::RsaSha384,
    AllowedSignatureAlgorithm::RsaSha512,
    AllowedSignatureAlgorithm::EcdsaSha256,
    AllowedSignatureAlgorithm::EcdsaSha384,
    AllowedSignatureAlgorithm::EcdsaSha512,
];

/// Digest URIs accepted in `DigestMethod`.
const ALLOWED_DIGESTS: &[&str] = &[
    "http://www.w3.org/2001/04/xmlenc#sha256",
    "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "http://www.w3.org/2001/04/xmlenc#sha512",
];

/// Oldest `IssueInstant` accepted (plus skew): an assertion is used within minutes.
const MAX_ASSERTION_AGE_SECS: i64 = 5 * 60;

/// xmlsec keeps process-wide state; one verification at a time (ACS traffic is small).
static XMLSEC: Mutex<()> = Mutex::new(());

/// Why a response was refused; [`Rejection::code`] is what the audit log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    TooLarge,
    NotBase64,
    Doctype,
    Comment,
    ProcessingInstruction,
    Malformed,
    NotAResponse,
    AssertionCount,
    EncryptedAssertion,
    WeakAlgorithm,
    Status,
    WrongDestination,
    BadSignature,
    WrongIssuer,
    NoAudience,
    WrongAudience,
    WrongRecipient,
    Expired,
    NotYetValid,
    NoSubject,
    InconsistentInResponseTo,
    UnknownRequest,
    UnsolicitedNotAllowed,
    WrongBrowser,
    Replay,
    Internal,
}

impl Rejection {
    /// The reason code in audit records.
    pub fn code(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::NotBase64 => "not_base64",
            Self::Doctype => "doctype",
            Self::Comment => "xml_comment",
            Self::ProcessingInstruction => "processing_instruction",
            Self::Malformed => "malformed_xml",
            Self::NotAResponse => "not_a_response",
            Self::AssertionCount => "assertion_count",
            Self::EncryptedAssertion => "encrypted_assertion",
            Self::WeakAlgorithm => "weak_algorithm",
            Self::Status => "status_not_success",
            Self::WrongDestination => "wrong_destination",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::NoAudience => "no_audience",
            Self::WrongAudience => "wrong_audience",
            Self::WrongRecipient => "wrong_recipient",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::NoSubject => "no_subject",
            Self::InconsistentInResponseTo => "inconsistent_in_response_to",
            Self::UnknownRequest => "unknown_in_response_to",
            Self::UnsolicitedNotAllowed => "idp_initiated_disabled",
            Self::WrongBrowser => "wrong_browser",
            Self::Replay => "replayed_assertion",
            Self::Internal => "internal_error",
        }
    }
}

/// What the tenant expects of a response.
pub struct Expect<'a> {
    pub idp: &'a IdpMetadata,
    pub sp: &'a SpUrls,
    /// Allowed clock difference, seconds.
    pub skew_secs: i64,
    /// Unix seconds, from the gateway's clock.
    pub now: i64,
}

/// A verified assertion, reduced to what we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The assertion's ID (for the replay cache).
    pub assertion_id: String,
    /// The IdP entity ID (checked).
    pub issuer: String,
    /// Subject NameID.
    pub name_id: String,
    /// Attributes by name (and friendly name), every value.
    pub attributes: Vec<(String, Vec<String>)>,
    /// The request this answers; `None` for an unsolicited (IdP-initiated) response.
    pub in_response_to: Option<String>,
    /// Keep the ID in the replay cache until this (unix seconds).
    pub keep_until: i64,
    /// The IdP session, for logout.
    pub session_index: Option<String>,
}

impl Verified {
    /// The values of attribute `name` (matched on Name or FriendlyName).
    pub fn attribute(&self, name: &str) -> Vec<String> {
        self.attributes
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }
}

/// Decode the posted `SAMLResponse` field.
pub fn decode(field: &str) -> Result<String, Rejection> {
    if field.len() > MAX_POST_BYTES {
        return Err(Rejection::TooLarge);
    }
    let compact: String = field.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| Rejection::NotBase64)?;
    String::from_utf8(bytes).map_err(|_| Rejection::NotBase64)
}

/// Check a decoded response for `expect`'s tenant.
pub fn verify(xml: &str, expect: &Expect<'_>) -> Result<Verified, Rejection> {
    prescreen(xml, expect.sp)?;
    let descriptor = expect.idp.descriptor();
    let sp = ServiceProvider {
        entity_id: Some(expect.sp.entity_id.clone()),
        metadata_url: Some(expect.sp.entity_id.clone()),
        acs_url: Some(expect.sp.acs.clone()),
        slo_url: None,
        idp_metadata: descriptor,
        // InResponseTo is checked by the caller against stored requests, per tenant; samael's
        // switch would also turn it off for solicited responses.
        allow_idp_initiated: true,
        max_clock_skew: chrono::Duration::seconds(expect.skew_secs),
        max_issue_delay: chrono::Duration::seconds(MAX_ASSERTION_AGE_SECS + expect.skew_secs),
        allowed_signature_algorithms: Some(ALLOWED.to_vec()),
        ..ServiceProvider::default()
    };
    let assertion = {
        let _one = XMLSEC
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sp.parse_xml_response(xml, None).map_err(rejection)?
    };
    check_assertion(&assertion, expect)
}

fn rejection(e: SamlError) -> Rejection {
    match e {
        SamlError::DestinationValidationError { .. } => Rejection::WrongDestination,
        SamlError::AssertionExpired { .. }
        | SamlError::AssertionSubjectConfirmationExpired { .. }
        | SamlError::AssertionConditionExpired { .. }
        | SamlError::ResponseExpired { .. } => Rejection::Expired,
        SamlError::AssertionSubjectConfirmationExpiredBefore { .. }
        | SamlError::AssertionConditionExpiredBefore { .. } => Rejection::NotYetValid,
        SamlError::AssertionIssuerMismatch { .. } | SamlError::ResponseIssuerMismatch { .. } => {
            Rejection::WrongIssuer
        }
        SamlError::AssertionConditionAudienceRestrictionFailed { .. } => Rejection::WrongAudience,
        SamlError::AssertionRecipientMismatch { .. } => Rejection::WrongRecipient,
        SamlError::AssertionBearerSubjectConfirmationMissing
        | SamlError::AssertionSubjectConfirmationMissing => Rejection::NoSubject,
        SamlError::ResponseBadStatusCode { .. } => Rejection::Status,
        SamlError::EncryptedAssertionsNotYetSupported
        | SamlError::MissingPrivateKeySP
        | SamlError::FailedToDecryptAssertion => Rejection::EncryptedAssertion,
        SamlError::FailedToValidateSignature | SamlError::CryptoXmlError(_) => {
            Rejection::BadSignature
        }
        SamlError::FailedToParseSamlResponse(_) | SamlError::FailedToParseSamlAssertion(_) => {
            Rejection::Malformed
        }
        _ => Rejection::BadSignature,
    }
}

/// The raw-document checks, before any signature work.
fn prescreen(xml: &str, sp: &SpUrls) -> Result<(), Rejection> {
    if has_doctype(xml) {
        return Err(Rejection::Doctype);
    }
    if xml.contains("<!--") {
        return Err(Rejection::Comment);
    }
    let mut reader = NsReader::from_str(xml);
    let mut depth = 0usize;
    let mut root_seen = false;
    let mut assertions = 0usize;
    let mut status_ok = None::<bool>;
    let mut in_status_depth = None::<usize>;
    loop {
        let event = reader.read_event().map_err(|_| Rejection::Malformed)?;
        let (start, empty) = match &event {
            Event::Start(s) => (Some(s.clone()), false),
            Event::Empty(s) => (Some(s.clone()), true),
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if in_status_depth.is_some_and(|d| depth < d) {
                    in_status_depth = None;
                }
                continue;
            }
            Event::DocType(_) => return Err(Rejection::Doctype),
            Event::Comment(_) => return Err(Rejection::Comment),
            Event::PI(_) => return Err(Rejection::ProcessingInstruction),
            Event::Decl(_) if root_seen || depth > 0 => {
                return Err(Rejection::ProcessingInstruction)
            }
            Event::Eof => break,
            _ => continue,
        };
        let Some(start) = start else { continue };
        let local = start.local_name();
        let local = local.as_ref();
        if !root_seen {
            root_seen = true;
            if local != b"Response" {
                return Err(Rejection::NotAResponse);
            }
            if let Some(dest) = attr(&start, b"Destination")? {
                if dest != sp.acs {
                    return Err(Rejection::WrongDestination);
                }
            }
        }
        match local {
            b"Assertion" => assertions += 1,
            b"EncryptedAssertion" | b"EncryptedData" => return Err(Rejection::EncryptedAssertion),
            b"SignatureMethod" => {
                let alg = attr(&start, b"Algorithm")?.unwrap_or_default();
                if !ALLOWED.iter().any(|a| a.signature_uri() == alg) {
                    return Err(Rejection::WeakAlgorithm);
                }
            }
            b"DigestMethod" => {
                let alg = attr(&start, b"Algorithm")?.unwrap_or_default();
                if !ALLOWED_DIGESTS.contains(&alg.as_str()) {
                    return Err(Rejection::WeakAlgorithm);
                }
            }
            b"Status" if depth == 1 => in_status_depth = Some(depth + 1),
            // The first StatusCode directly in the top-level Status is the status.
            b"StatusCode" if in_status_depth == Some(depth) && status_ok.is_none() => {
                let value = attr(&start, b"Value")?.unwrap_or_default();
                status_ok = Some(value == "urn:oasis:names:tc:SAML:2.0:status:Success");
            }
            _ => {}
        }
        if !empty {
            depth += 1;
        }
    }
    if !root_seen || depth != 0 {
        return Err(Rejection::Malformed);
    }
    if status_ok != Some(true) {
        return Err(Rejection::Status);
    }
    if assertions != 1 {
        return Err(Rejection::AssertionCount);
    }
    Ok(())
}

fn attr(
    start: &quick_xml::events::BytesStart<'_>,
    name: &[u8],
) -> Result<Option<String>, Rejection> {
    for a in start.attributes() {
        let a = a.map_err(|_| Rejection::Malformed)?;
        if a.key.local_name().as_ref() == name && a.key.prefix().is_none() {
            let v = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|_| Rejection::Malformed)?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

/// The checks on the signed assertion samael returned.
fn check_assertion(a: &Assertion, expect: &Expect<'_>) -> Result<Verified, Rejection> {
    let now = expect.now;
    let skew = expect.skew_secs;
    if a.issuer.value.as_deref() != Some(expect.idp.entity_id.as_str()) {
        return Err(Rejection::WrongIssuer);
    }
    let issued = a.issue_instant.timestamp();
    if issued > now + skew {
        return Err(Rejection::NotYetValid);
    }
    if issued + MAX_ASSERTION_AGE_SECS + skew < now {
        return Err(Rejection::Expired);
    }

    let conditions = a.conditions.as_ref().ok_or(Rejection::NoAudience)?;
    let restrictions = conditions
        .audience_restrictions
        .as_deref()
        .filter(|r| !r.is_empty())
        .ok_or(Rejection::NoAudience)?;
    if !restrictions
        .iter()
        .all(|r| r.audience.contains(&expect.sp.entity_id))
    {
        return Err(Rejection::WrongAudience);
    }
    let mut keep_until = None::<i64>;
    if let Some(nb) = conditions.not_before {
        if now + skew < nb.timestamp() {
            return Err(Rejection::NotYetValid);
        }
    }
    if let Some(noa) = conditions.not_on_or_after {
        if noa.timestamp() + skew <= now {
            return Err(Rejection::Expired);
        }
        keep_until = Some(noa.timestamp());
    }

    let subject = a.subject.as_ref().ok_or(Rejection::NoSubject)?;
    let name_id = subject
        .name_id
        .as_ref()
        .map(|n| n.value.trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or(Rejection::NoSubject)?;
    let bearers: Vec<_> = subject
        .subject_confirmations
        .iter()
        .flatten()
        .filter(|c| c.method.as_deref() == Some("urn:oasis:names:tc:SAML:2.0:cm:bearer"))
        .collect();
    if bearers.is_empty() {
        return Err(Rejection::NoSubject);
    }
    let mut in_response_to: Option<Option<String>> = None;
    for c in bearers {
        let data = c
            .subject_confirmation_data
            .as_ref()
            .ok_or(Rejection::NoSubject)?;
        if data.recipient.as_deref() != Some(expect.sp.acs.as_str()) {
            return Err(Rejection::WrongRecipient);
        }
        let noa = data
            .not_on_or_after
            .ok_or(Rejection::NoSubject)?
            .timestamp();
        if noa + skew <= now {
            return Err(Rejection::Expired);
        }
        if let Some(nb) = data.not_before {
            if now + skew < nb.timestamp() {
                return Err(Rejection::NotYetValid);
            }
        }
        keep_until = Some(keep_until.map_or(noa, |k| k.max(noa)));
        let irt = data.in_response_to.clone().filter(|s| !s.is_empty());
        match &in_response_to {
            None => in_response_to = Some(irt),
            Some(seen) if *seen == irt => {}
            Some(_) => return Err(Rejection::InconsistentInResponseTo),
        }
    }

    let mut attributes = Vec::new();
    for statement in a.attribute_statements.iter().flatten() {
        for attribute in &statement.attributes {
            let values: Vec<String> = attribute
                .values
                .iter()
                .filter_map(|v| v.value.as_ref().map(|s| s.trim().to_string()))
                .collect();
            for name in [&attribute.name, &attribute.friendly_name]
                .into_iter()
                .flatten()
            {
                attributes.push((name.clone(), values.clone()));
            }
        }
    }
    let session_index = a
        .authn_statements
        .iter()
        .flatten()
        .find_map(|s| s.session_index.clone());
    Ok(Verified {
        assertion_id: a.id.clone(),
        issuer: expect.idp.entity_id.clone(),
        name_id,
        attributes,
        in_response_to: in_response_to.flatten(),
        keep_until: keep_until.unwrap_or(now) + skew,
        session_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp() -> SpUrls {
        SpUrls::new("acme.localhost", 8443)
    }

    fn response(inner: &str) -> String {
        format!(
            r#"<?xml version="1.0"?><samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_r" Version="2.0"><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>{inner}</samlp:Response>"#
        )
    }

    const ASSERTION: &str =
        r#"<saml:Assertion ID="_a" Version="2.0"><saml:Issuer>idp</saml:Issuer></saml:Assertion>"#;

    #[test]
    fn a_plain_single_assertion_passes_the_prescreen() {
        assert_eq!(prescreen(&response(ASSERTION), &sp()), Ok(()));
    }

    #[test]
    fn prescreen_refuses_markup_tricks() {
        let cases = [
            (
                format!("<!DOCTYPE r [<!ENTITY x \"y\">]>{}", response(ASSERTION)),
                Rejection::Doctype,
            ),
            (
                response(&ASSERTION.replace("idp<", "i<!---->dp<")),
                Rejection::Comment,
            ),
            (
                response(&format!("<?evil x?>{ASSERTION}")),
                Rejection::ProcessingInstruction,
            ),
            (
                response(&format!("{ASSERTION}{ASSERTION}")),
                Rejection::AssertionCount,
            ),
            (response(""), Rejection::AssertionCount),
            (
                response(&format!(
                    "<saml:EncryptedAssertion>x</saml:EncryptedAssertion>{ASSERTION}"
                )),
                Rejection::EncryptedAssertion,
            ),
            (ASSERTION.to_string(), Rejection::NotAResponse),
            (
                response(ASSERTION).replace("status:Success", "status:Requester"),
                Rejection::Status,
            ),
            (
                response(ASSERTION)
                    .replace(r#"ID="_r""#, r#"ID="_r" Destination="https://evil/acs""#),
                Rejection::WrongDestination,
            ),
            (
                response(ASSERTION).replace("</samlp:Response>", ""),
                Rejection::Malformed,
            ),
        ];
        for (xml, want) in cases {
            assert_eq!(prescreen(&xml, &sp()), Err(want), "{xml}");
        }
    }

    #[test]
    fn an_assertion_hidden_under_another_namespace_prefix_still_counts() {
        let other = r#"<x:Assertion xmlns:x="urn:evil" ID="_b"/>"#;
        assert_eq!(
            prescreen(&response(&format!("{ASSERTION}{other}")), &sp()),
            Err(Rejection::AssertionCount)
        );
    }

    #[test]
    fn sha1_signatures_and_digests_are_refused_before_verification() {
        for (m, alg) in [
            (
                "SignatureMethod",
                "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
            ),
            ("DigestMethod", "http://www.w3.org/2000/09/xmldsig#sha1"),
            (
                "SignatureMethod",
                "http://www.w3.org/2000/09/xmldsig#hmac-sha1",
            ),
        ] {
            let sig = format!(
                r#"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:{m} Algorithm="{alg}"/></ds:Signature>"#
            );
            let xml = response(
                &ASSERTION.replace("</saml:Assertion>", &format!("{sig}</saml:Assertion>")),
            );
            assert_eq!(
                prescreen(&xml, &sp()),
                Err(Rejection::WeakAlgorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn decode_accepts_wrapped_base64_and_refuses_junk() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("<x/>");
        let wrapped = format!("{}\r\n{}", &b64[..2], &b64[2..]);
        assert_eq!(decode(&wrapped).as_deref(), Ok("<x/>"));
        assert_eq!(decode("%%%"), Err(Rejection::NotBase64));
        assert_eq!(
            decode(&"A".repeat(MAX_POST_BYTES + 4)),
            Err(Rejection::TooLarge)
        );
    }
}
