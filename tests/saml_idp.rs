//! The test SAML IdP itself (`tests/saml/idp.py` through `common::saml`), without the
//! gateway: its metadata, its handling of AuthnRequests, and that every response and attack
//! variant is what it claims to be, checked independently with `xmlsec1 --verify` (which
//! signature verifies with which certificate) and XPath (where each assertion sits).
//!
//! The SPs are pysaml2-made (`Idp::test_sp_metadata`) or, for the second tenant, metadata
//! written here the way the gateway publishes it.

mod common;

use std::time::Duration;

use common::saml::*;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const ACME_SP: &str = "https://acme.localhost:8443/.auth/saml/metadata";
const ACME_ACS: &str = "https://acme.localhost:8443/.auth/saml/acs";
const GLOBEX_SP: &str = "https://globex.localhost:8443/.auth/saml/metadata";
const GLOBEX_ACS: &str = "https://globex.localhost:8443/.auth/saml/acs";

/// SP metadata as the gateway serves it at /.auth/saml/metadata (no pysaml2 involved).
const GLOBEX_METADATA: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="https://globex.localhost:8443/.auth/saml/metadata">
  <md:SPSSODescriptor AuthnRequestsSigned="false" WantAssertionsSigned="true" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified</md:NameIDFormat>
    <md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="https://globex.localhost:8443/.auth/saml/acs" index="0" isDefault="true"/>
  </md:SPSSODescriptor>
</md:EntityDescriptor>"#;

const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const RSA_SHA1: &str = "http://www.w3.org/2000/09/xmldsig#rsa-sha1";
const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
const SHA1: &str = "http://www.w3.org/2000/09/xmldsig#sha1";

/// An IdP that knows the acme test SP.
fn idp_with_acme(signs_requests: bool) -> Idp {
    let idp = Idp::start();
    idp.test_sp_metadata(ACME_SP, ACME_ACS, signs_requests);
    idp
}

/// A solicited sign-on: the acme test SP's AuthnRequest (RelayState `/after`), answered.
fn sign_on(idp: &Idp, opts: &SsoOpts) -> IdpPost {
    let location = idp.test_authn_request(ACME_SP, "/after");
    idp.sso(&location, opts)
}

fn alice() -> SsoOpts {
    SsoOpts {
        email: Some("alice@example.com".into()),
        ..SsoOpts::user("alice").groups(&["dev", "ops"])
    }
}

fn verifies_with_idp_cert(idp: &Idp, xml: &str) -> bool {
    xmlsec1_verifies(xml, &idp.cert_path(), 1)
}

fn verifies_with_other_cert(idp: &Idp, xml: &str) -> bool {
    xmlsec1_verifies(xml, &idp.other_cert_path(), 1)
}

/// IDs of the Response's top-level assertions, in document order.
fn top_level_assertions(xml: &str) -> Vec<String> {
    xpath(xml, "/samlp:Response/saml:Assertion/@ID")
}

fn name_id_of(xml: &str, assertion_id: &str) -> String {
    xpath1(
        xml,
        &format!("string(//saml:Assertion[@ID='{assertion_id}']/saml:Subject/saml:NameID)"),
    )
}

fn signatures_in(xml: &str, assertion_id: &str) -> String {
    xpath1(
        xml,
        &format!("count(//saml:Assertion[@ID='{assertion_id}']/ds:Signature)"),
    )
}

fn instant(xml: &str, expr: &str) -> OffsetDateTime {
    let text = xpath1(xml, expr);
    OffsetDateTime::parse(&text, &Rfc3339).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// Base64 body of a PEM certificate, on one line (as in metadata and KeyInfo).
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn metadata_announces_the_signing_certificate_and_redirect_endpoints() {
    let idp = Idp::start();
    let xml = idp.metadata_xml();
    assert_eq!(
        xpath1(&xml, "string(/md:EntityDescriptor/@entityID)"),
        idp.entity_id()
    );
    assert_eq!(
        xpath(&xml, "//md:IDPSSODescriptor/md:KeyDescriptor/@use"),
        ["signing"]
    );
    assert_eq!(
        xpath1(&xml, "string(//md:KeyDescriptor//ds:X509Certificate)"),
        pem_body(&idp.cert_pem())
    );
    assert!(!xml.contains(&pem_body(&idp.other_cert_pem())));
    let redirect = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
    assert_eq!(
        xpath(
            &xml,
            &format!("//md:SingleSignOnService[@Binding='{redirect}']/@Location")
        ),
        [idp.sso_url()]
    );
    assert_eq!(
        xpath(
            &xml,
            &format!("//md:SingleLogoutService[@Binding='{redirect}']/@Location")
        ),
        [idp.slo_url()]
    );
}

#[test]
fn metadata_without_cert_has_no_key_descriptor() {
    let idp = Idp::start();
    let xml = idp.metadata_xml_without_cert();
    assert_eq!(xpath1(&xml, "count(//md:KeyDescriptor)"), "0");
    assert!(!xml.contains(&pem_body(&idp.cert_pem())));
    assert_eq!(
        xpath(&xml, "//md:SingleSignOnService/@Location"),
        [idp.sso_url()]
    );
}

#[test]
fn genuine_response_verifies_with_the_idp_certificate_only() {
    let idp = idp_with_acme(false);
    let post = sign_on(&idp, &alice());
    let xml = post.xml();
    assert!(verifies_with_idp_cert(&idp, &xml), "{xml}");
    assert!(!verifies_with_other_cert(&idp, &xml));
    // sign=assertion (default): one signature, in the assertion, over it.
    assert_eq!(xpath1(&xml, "count(//ds:Signature)"), "1");
    assert_eq!(signatures_in(&xml, &post.assertion_id), "1");
    assert_eq!(
        xpath1(&xml, "string(//ds:Reference/@URI)"),
        format!("#{}", post.assertion_id)
    );
    assert_eq!(
        xpath1(&xml, "string(//ds:SignatureMethod/@Algorithm)"),
        RSA_SHA256
    );
    assert_eq!(xpath1(&xml, "string(//ds:DigestMethod/@Algorithm)"), SHA256);
}

#[test]
fn genuine_response_answers_the_request_for_its_sp() {
    let idp = idp_with_acme(false);
    let post = sign_on(&idp, &alice());
    let xml = post.xml();
    let request = idp.last_request();
    let request_id = request["id"].as_str().expect("request id").to_string();
    assert_eq!(post.acs, ACME_ACS);
    assert_eq!(post.relay_state.as_deref(), Some("/after"));
    assert_eq!(top_level_assertions(&xml), [post.assertion_id.as_str()]);
    assert_eq!(
        xpath1(&xml, "string(/samlp:Response/@ID)"),
        post.response_id
    );
    assert_eq!(
        xpath1(&xml, "string(/samlp:Response/@Destination)"),
        ACME_ACS
    );
    assert_eq!(
        xpath1(&xml, "string(/samlp:Response/@InResponseTo)"),
        request_id
    );
    assert_eq!(
        xpath(&xml, "//saml:Issuer/text()"),
        [idp.entity_id(), idp.entity_id()]
    );
    let a = "/samlp:Response/saml:Assertion";
    assert_eq!(name_id_of(&xml, &post.assertion_id), "alice");
    assert_eq!(
        xpath1(
            &xml,
            &format!("string({a}/saml:Subject/saml:NameID/@Format)")
        ),
        "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
    );
    let data = format!("{a}/saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData");
    assert_eq!(
        xpath1(&xml, &format!("string({data}/@Recipient)")),
        ACME_ACS
    );
    assert_eq!(
        xpath1(&xml, &format!("string({data}/@InResponseTo)")),
        request_id
    );
    assert_eq!(
        xpath(
            &xml,
            &format!("{a}/saml:Conditions/saml:AudienceRestriction/saml:Audience/text()")
        ),
        [ACME_SP]
    );
    assert_eq!(
        xpath(
            &xml,
            "//saml:Attribute[@Name='groups']/saml:AttributeValue/text()"
        ),
        ["dev", "ops"]
    );
    assert_eq!(
        xpath(
            &xml,
            "//saml:Attribute[@Name='email']/saml:AttributeValue/text()"
        ),
        ["alice@example.com"]
    );
    let now = OffsetDateTime::now_utc();
    let not_after = instant(&xml, &format!("string({a}/saml:Conditions/@NotOnOrAfter)"));
    assert!(not_after > now && not_after < now + Duration::from_secs(600));
}

#[test]
fn the_last_authn_request_is_recorded() {
    let idp = idp_with_acme(false);
    sign_on(&idp, &alice());
    let request = idp.last_request();
    assert_eq!(request["issuer"], ACME_SP);
    assert_eq!(request["acs"], ACME_ACS);
    assert_eq!(request["destination"], idp.sso_url().as_str());
    assert_eq!(request["signed"], false);
    assert_eq!(request["verified"], false);
    assert_eq!(request["relay_state"], "/after");
    assert!(request["id"].as_str().is_some_and(|id| !id.is_empty()));
}

#[test]
fn signed_authn_request_is_verified_with_the_sp_metadata_certificate() {
    let idp = idp_with_acme(true);
    let location = idp.test_authn_request(ACME_SP, "/with spaces*and~tildes");
    assert!(location.contains("&Signature="), "{location}");
    idp.sso(&location, &alice());
    let request = idp.last_request();
    assert_eq!(request["signed"], true);
    assert_eq!(request["verified"], true);
    assert_eq!(request["verified_reencoded"], true);
}

#[test]
fn authn_request_with_a_bad_signature_is_refused() {
    let idp = idp_with_acme(true);
    let location = idp.test_authn_request(ACME_SP, "/after");
    let (head, signature) = location.split_once("&Signature=").expect("signed redirect");
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{head}&Signature={flipped}{}", &signature[1..]);
    let (status, body) = idp.try_sso(&tampered, &alice()).unwrap_err();
    assert_eq!(status, 400, "{body}");
    let request = idp.last_request();
    assert_eq!(request["signed"], true);
    assert_eq!(request["verified"], false);
}

#[test]
fn unsigned_authn_request_from_an_sp_that_signs_is_refused() {
    let idp = idp_with_acme(true);
    let location = idp.test_authn_request(ACME_SP, "/after");
    let unsigned = location
        .split("&SigAlg=")
        .next()
        .expect("location")
        .to_string();
    let (status, body) = idp.try_sso(&unsigned, &alice()).unwrap_err();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("AuthnRequestsSigned"), "{body}");
}

#[test]
fn unsolicited_response_has_no_in_response_to() {
    let idp = idp_with_acme(false);
    let opts = SsoOpts {
        relay_state: Some("/deep/link".into()),
        ..alice()
    };
    let post = idp.unsolicited(ACME_SP, &opts);
    let xml = post.xml();
    assert_eq!(post.acs, ACME_ACS);
    assert_eq!(post.relay_state.as_deref(), Some("/deep/link"));
    assert_eq!(xpath1(&xml, "count(//@InResponseTo)"), "0");
    assert!(verifies_with_idp_cert(&idp, &xml));
}

#[test]
fn each_registered_sp_gets_its_own_acs_and_audience() {
    let idp = idp_with_acme(false);
    assert_eq!(idp.register_sp(GLOBEX_METADATA), GLOBEX_SP);
    for (sp, acs) in [(ACME_SP, ACME_ACS), (GLOBEX_SP, GLOBEX_ACS)] {
        let post = idp.unsolicited(sp, &alice());
        let xml = post.xml();
        assert_eq!(post.acs, acs);
        assert_eq!(xpath(&xml, "//saml:Audience/text()"), [sp]);
        assert_eq!(
            xpath(&xml, "//saml:SubjectConfirmationData/@Recipient"),
            [acs]
        );
        assert!(verifies_with_idp_cert(&idp, &xml));
    }
    let (status, body) = idp
        .try_unsolicited("https://other.localhost/.auth/saml/metadata", &alice())
        .unwrap_err();
    assert_eq!(status, 400, "{body}");
}

#[test]
fn response_signed_with_the_other_key_verifies_only_with_the_other_certificate() {
    let idp = idp_with_acme(false);
    let opts = SsoOpts {
        key: Some("other".into()),
        ..alice()
    };
    let xml = sign_on(&idp, &opts).xml();
    assert!(!verifies_with_idp_cert(&idp, &xml));
    assert!(verifies_with_other_cert(&idp, &xml));
    // The attacker's certificate travels in KeyInfo, as a real forgery's would.
    assert_eq!(
        xpath1(&xml, "string(//ds:KeyInfo//ds:X509Certificate)"),
        pem_body(&idp.other_cert_pem())
    );
}

#[test]
fn sha1_response_uses_rsa_sha1_and_a_sha1_digest() {
    let idp = idp_with_acme(false);
    let opts = SsoOpts {
        alg: Some("sha1".into()),
        ..alice()
    };
    let xml = sign_on(&idp, &opts).xml();
    assert_eq!(
        xpath1(&xml, "string(//ds:SignatureMethod/@Algorithm)"),
        RSA_SHA1
    );
    assert_eq!(xpath1(&xml, "string(//ds:DigestMethod/@Algorithm)"), SHA1);
    assert!(verifies_with_idp_cert(&idp, &xml));
}

#[test]
fn clock_shift_makes_expired_and_not_yet_valid_responses() {
    let idp = idp_with_acme(false);
    let a = "/samlp:Response/saml:Assertion";
    let expired = sign_on(
        &idp,
        &SsoOpts {
            shift_secs: -3600,
            ..alice()
        },
    )
    .xml();
    let now = OffsetDateTime::now_utc();
    assert!(
        instant(
            &expired,
            &format!("string({a}/saml:Conditions/@NotOnOrAfter)")
        ) < now
    );
    assert!(
        instant(
            &expired,
            &format!("string({a}/saml:Subject//saml:SubjectConfirmationData/@NotOnOrAfter)")
        ) < now
    );
    assert!(
        instant(&expired, "string(/samlp:Response/@IssueInstant)")
            < now - Duration::from_secs(3000)
    );
    assert!(verifies_with_idp_cert(&idp, &expired));

    let early = sign_on(
        &idp,
        &SsoOpts {
            shift_secs: 3600,
            ..alice()
        },
    )
    .xml();
    let now = OffsetDateTime::now_utc();
    assert!(instant(&early, &format!("string({a}/saml:Conditions/@NotBefore)")) > now);
    assert!(verifies_with_idp_cert(&idp, &early));
}

#[test]
fn sign_response_signs_the_response_and_not_the_assertion() {
    let idp = idp_with_acme(false);
    let opts = SsoOpts {
        sign: Some("response".into()),
        ..alice()
    };
    let post = sign_on(&idp, &opts);
    let xml = post.xml();
    assert_eq!(xpath1(&xml, "count(//ds:Signature)"), "1");
    assert_eq!(xpath1(&xml, "count(/samlp:Response/ds:Signature)"), "1");
    assert_eq!(
        xpath1(&xml, "string(//ds:Reference/@URI)"),
        format!("#{}", post.response_id)
    );
    assert!(verifies_with_idp_cert(&idp, &xml));
    assert!(!verifies_with_other_cert(&idp, &xml));
}

#[test]
fn sign_both_signs_the_response_and_the_assertion() {
    let idp = idp_with_acme(false);
    let opts = SsoOpts {
        sign: Some("both".into()),
        ..alice()
    };
    let post = sign_on(&idp, &opts);
    let xml = post.xml();
    assert_eq!(
        xpath(&xml, "//ds:Reference/@URI"),
        [
            format!("#{}", post.response_id),
            format!("#{}", post.assertion_id)
        ]
    );
    assert!(xmlsec1_verifies(&xml, &idp.cert_path(), 1));
    assert!(xmlsec1_verifies(&xml, &idp.cert_path(), 2));
}

#[test]
fn overrides_are_signed_as_given() {
    let idp = idp_with_acme(false);
    let opts = SsoOpts {
        audience: Some("https://evil.test/sp".into()),
        recipient: Some("https://evil.test/acs".into()),
        issuer: Some("https://evil.test/idp".into()),
        in_response_to: Some("_not_a_request_we_sent".into()),
        ..alice()
    };
    let xml = sign_on(&idp, &opts).xml();
    assert_eq!(
        xpath(&xml, "//saml:Audience/text()"),
        ["https://evil.test/sp"]
    );
    assert_eq!(
        xpath(&xml, "//saml:SubjectConfirmationData/@Recipient"),
        ["https://evil.test/acs"]
    );
    assert_eq!(
        xpath(&xml, "//saml:Issuer/text()"),
        ["https://evil.test/idp", "https://evil.test/idp"]
    );
    assert_eq!(
        xpath(&xml, "//@InResponseTo"),
        ["_not_a_request_we_sent", "_not_a_request_we_sent"]
    );
    // Destination is still the real ACS: only what was asked for changes.
    assert_eq!(
        xpath1(&xml, "string(/samlp:Response/@Destination)"),
        ACME_ACS
    );
    assert!(verifies_with_idp_cert(&idp, &xml));

    let omitted = SsoOpts {
        in_response_to: Some(String::new()),
        ..alice()
    };
    let xml = sign_on(&idp, &omitted).xml();
    assert_eq!(xpath1(&xml, "count(//@InResponseTo)"), "0");
}

#[test]
fn nameid_changed_after_signing_does_not_verify() {
    let idp = idp_with_acme(false);
    let post = sign_on(&idp, &alice().variant("nameid-changed"));
    let xml = post.xml();
    assert_eq!(name_id_of(&xml, &post.assertion_id), "mallory");
    assert_eq!(signatures_in(&xml, &post.assertion_id), "1");
    assert!(!verifies_with_idp_cert(&idp, &xml));
}

#[test]
fn attribute_changed_after_signing_does_not_verify() {
    let idp = idp_with_acme(false);
    let xml = sign_on(&idp, &alice().variant("attr-changed")).xml();
    assert_eq!(
        xpath(
            &xml,
            "//saml:Attribute[@Name='groups']/saml:AttributeValue/text()"
        ),
        ["admins", "ops"]
    );
    assert!(!verifies_with_idp_cert(&idp, &xml));
}

#[test]
fn unsigned_variant_has_no_signature() {
    let idp = idp_with_acme(false);
    for sign in ["assertion", "both"] {
        let opts = SsoOpts {
            sign: Some(sign.into()),
            ..alice().variant("unsigned")
        };
        let post = sign_on(&idp, &opts);
        let xml = post.xml();
        assert_eq!(xpath1(&xml, "count(//ds:Signature)"), "0", "sign={sign}");
        assert_eq!(name_id_of(&xml, &post.assertion_id), "alice");
        assert!(!verifies_with_idp_cert(&idp, &xml));
    }
}

#[test]
fn comment_inside_nameid_still_verifies() {
    let idp = idp_with_acme(false);
    let opts = SsoOpts {
        user: "alice@example.com.evil.test".into(),
        ..alice().variant("comment-nameid")
    };
    let post = sign_on(&idp, &opts);
    let xml = post.xml();
    assert!(
        xml.contains(">alice@example.com<!---->.evil.test</"),
        "{xml}"
    );
    assert_eq!(
        xpath(&xml, "//saml:NameID/text()"),
        ["alice@example.com", ".evil.test"]
    );
    assert_eq!(post.json["name_id_before_comment"], "alice@example.com");
    assert!(verifies_with_idp_cert(&idp, &xml));
}

/// A wrapping variant: the evil assertion names `admin` and has no signature, the original
/// keeps its signature, and that signature still verifies. Returns (xml, original, evil).
fn wrapped(variant: &str) -> (String, String, String) {
    let idp = idp_with_acme(false);
    let post = sign_on(&idp, &alice().variant(variant));
    let xml = post.xml();
    let evil = post.json["evil_assertion_id"]
        .as_str()
        .expect("evil_assertion_id")
        .to_string();
    let original = post.assertion_id.clone();
    assert_ne!(evil, original);
    assert_eq!(name_id_of(&xml, &evil), "admin");
    assert_eq!(signatures_in(&xml, &evil), "0");
    assert_eq!(name_id_of(&xml, &original), "alice");
    assert_eq!(signatures_in(&xml, &original), "1");
    assert_eq!(xpath1(&xml, "count(//saml:Assertion)"), "2");
    assert!(verifies_with_idp_cert(&idp, &xml), "{variant}: {xml}");
    assert!(!verifies_with_other_cert(&idp, &xml));
    (xml, original, evil)
}

#[test]
fn wrap_before_puts_an_unsigned_admin_assertion_first() {
    let (xml, original, evil) = wrapped("wrap-before");
    assert_eq!(top_level_assertions(&xml), [evil, original]);
}

#[test]
fn wrap_after_puts_an_unsigned_admin_assertion_last() {
    let (xml, original, evil) = wrapped("wrap-after");
    assert_eq!(top_level_assertions(&xml), [original, evil]);
}

#[test]
fn wrap_around_nests_the_signed_assertion_in_the_evil_one() {
    let (xml, original, evil) = wrapped("wrap-around");
    assert_eq!(top_level_assertions(&xml), [evil]);
    assert_eq!(
        xpath(&xml, "/samlp:Response/saml:Assertion/saml:Assertion/@ID"),
        [original]
    );
}

#[test]
fn wrap_advice_hides_the_signed_assertion_in_the_evil_ones_advice() {
    let (xml, original, evil) = wrapped("wrap-advice");
    assert_eq!(top_level_assertions(&xml), [evil]);
    assert_eq!(
        xpath(
            &xml,
            "/samlp:Response/saml:Assertion/saml:Advice/saml:Assertion/@ID"
        ),
        [original]
    );
    // Schema order: Advice after Conditions, before the statements.
    assert_eq!(
        xpath(&xml, "/samlp:Response/saml:Assertion/*"),
        [
            "Issuer",
            "Subject",
            "Conditions",
            "Advice",
            "AuthnStatement",
            "AttributeStatement"
        ]
    );
}

#[test]
fn wrap_variants_are_only_made_for_signed_assertions() {
    let idp = idp_with_acme(false);
    let opts = SsoOpts {
        sign: Some("response".into()),
        ..alice().variant("wrap-before")
    };
    let location = idp.test_authn_request(ACME_SP, "/after");
    let (status, body) = idp.try_sso(&location, &opts).unwrap_err();
    assert_eq!(status, 400, "{body}");
}

#[test]
fn doctype_variant_still_verifies() {
    let idp = idp_with_acme(false);
    let xml = sign_on(&idp, &alice().variant("doctype")).xml();
    assert!(xml.contains("<!DOCTYPE ns0:Response>"), "{xml}");
    assert!(verifies_with_idp_cert(&idp, &xml));
}

#[test]
fn xxe_variant_references_a_local_file_from_an_attribute_value() {
    let idp = idp_with_acme(false);
    let xml = sign_on(&idp, &alice().variant("xxe")).xml();
    assert!(
        xml.contains(r#"<!ENTITY xxe SYSTEM "file:///etc/passwd">"#),
        "{xml}"
    );
    assert!(xml.contains("FriendlyName=\"email\"><ns1:AttributeValue"));
    assert!(
        xml.contains("xsi:type=\"xs:string\">&xxe;</ns1:AttributeValue>"),
        "{xml}"
    );
    assert!(
        !xml.contains("root:"),
        "the IdP must not expand the entity itself"
    );
    assert!(!verifies_with_idp_cert(&idp, &xml));
}

#[test]
fn billion_laughs_variant_declares_an_expansion_bomb() {
    let idp = idp_with_acme(false);
    let xml = sign_on(&idp, &alice().variant("billion-laughs")).xml();
    assert!(xml.contains("<!ENTITY lol \"lol\">"));
    let lol9 = format!("<!ENTITY lol9 \"{}\">", "&lol8;".repeat(10));
    assert!(xml.contains(&lol9), "{xml}");
    assert!(xml.contains(">&lol9;</ns1:AttributeValue>"));
    assert!(xml.len() < 20_000, "the bomb is sent unexpanded");
}

#[test]
fn two_assertions_are_both_genuinely_signed() {
    let idp = idp_with_acme(false);
    let post = sign_on(&idp, &alice().variant("two-assertions"));
    let xml = post.xml();
    let second = post.json["second_assertion_id"]
        .as_str()
        .expect("second_assertion_id")
        .to_string();
    assert_eq!(
        top_level_assertions(&xml),
        [post.assertion_id.clone(), second.clone()]
    );
    assert_eq!(name_id_of(&xml, &post.assertion_id), "alice");
    assert_eq!(name_id_of(&xml, &second), "admin");
    assert_eq!(signatures_in(&xml, &second), "1");
    assert!(xmlsec1_verifies(&xml, &idp.cert_path(), 1));
    assert!(xmlsec1_verifies(&xml, &idp.cert_path(), 2));
    assert!(!xmlsec1_verifies(&xml, &idp.other_cert_path(), 2));
}

#[test]
fn slo_endpoint_answers_and_records_the_request() {
    let idp = Idp::start();
    assert!(idp.last_slo().is_none());
    let resp = get_text(&idp, "/slo?SAMLRequest=abc&RelayState=%2Fbye");
    assert!(resp.contains("logged out at idp"), "{resp}");
    let slo = idp.last_slo().expect("recorded");
    assert_eq!(slo["query"], "SAMLRequest=abc&RelayState=%2Fbye");
    assert_eq!(slo["params"]["RelayState"], "/bye");
}

/// A plain GET of `target` on the IdP, body only.
fn get_text(idp: &Idp, target: &str) -> String {
    common::plain_http(
        idp.port(),
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("IdP answers")
    .text()
}
