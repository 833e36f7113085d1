#!/usr/bin/env python3
"""A real SAML 2.0 Identity Provider for Portcullis' integration tests.

Every message is made and signed by pysaml2 (with the xmlsec1 binary); this file is only the
HTTP glue, the test-only knobs (clock shift, overrides, signing key and algorithm) and the attack
variants, each derived from a genuine signed response by mutating it with lxml afterwards.

    idp.py --port P --dir D [--entity-id URL] [--verbose] [--exit-with-stdin]

D holds idp.key/idp.crt (the key the metadata announces) and other.key/other.crt (a key the
metadata never mentions). Prints `READY <port>` once serving on 127.0.0.1:P (P may be 0: the
port bound is printed and used in every URL).

Endpoints (plain HTTP):
    GET  /idp/metadata            IdP metadata, signing certificate included
    GET  /idp/metadata-nocert     the same without any KeyDescriptor
    POST /sp                      body: SP metadata XML; registers it, answers its entity ID
    GET  /sso/redirect            HTTP-Redirect AuthnRequest + test knobs -> JSON (see below)
    GET  /sso/unsolicited?sp=...  IdP-initiated response + test knobs -> JSON
    GET  /slo                     "logged out at idp"; the request is kept for /last-slo
    GET  /last-request            JSON about the last AuthnRequest received: id, signed,
                                  signature ("redirect" | "embedded" | null), verified,
                                  verified_reencoded, acs, issuer, destination,
                                  name_id_policy_format, relay_state, xml, refused (why, if)
    GET  /last-slo                JSON about the last /slo request (null before the first)
    GET  /test/sp-metadata?entity_id=...&acs=...[&slo=...][&signed=1]
                                  pysaml2-made SP metadata (signing key: other.key), registered
    GET  /test/authn-request?sp=...[&relay_state=...]
                                  JSON {"location": ...}: a redirect made by that test SP
    The /test/ pair exists only so the harness can test itself without the gateway.

Test knobs on /sso/redirect and /sso/unsolicited (query parameters):
    user (required: the NameID), groups (comma list), email, nameid_format,
    shift (seconds the clock is moved for the whole response, may be negative),
    sign (assertion | response | both | none), alg (sha256 | sha1), key (idp | other),
    audience, recipient, issuer, in_response_to (empty: omitted), variant (see VARIANTS),
    relay_state (unsolicited only; /sso/redirect echoes the request's RelayState).
The answer is JSON: {"acs", "SAMLResponse" (base64), "RelayState", "assertion_id",
"response_id"} plus "evil_assertion_id" (wrapping variants), "second_assertion_id"
(two-assertions) or "name_id_before_comment" (comment-nameid). Refusals are 400 with a reason:
an unknown SP, a request signature that does not verify with the SP's metadata certificates, an
unsigned request from an SP whose metadata says AuthnRequestsSigned="true", an ACS URL not in
the SP's metadata, anything pysaml2 rejects (e.g. a Destination that is not /sso/redirect).

Released attributes are named as given (Name="groups"/"email", NameFormat basic), values
xs:string; AuthnContextClassRef PasswordProtectedTransport; lifetime 5 minutes.
"""

import argparse
import base64
import copy
import datetime
import json
import os
import sys
import threading
import urllib.parse
import warnings
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# pysaml2 7.5.5 touches cryptography's deprecated CFB mode at import; not ours to fix.
warnings.filterwarnings("ignore", message="CFB has been moved")

from freezegun import freeze_time
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, saml
from saml2.attribute_converter import AttributeConverter
from saml2.client import Saml2Client
from saml2.config import IdPConfig, SPConfig
from saml2.mdstore import MetadataStore
from saml2.metadata import create_metadata_string
from saml2.saml import NAME_FORMAT_BASIC, NAMEID_FORMAT_UNSPECIFIED, NameID
from saml2.s_utils import sid
from saml2.server import Server
from saml2.sigver import SIGNER_ALGS, extract_rsa_key_from_x509_cert, pem_format, verify_redirect_signature
from saml2.xmldsig import DIGEST_SHA1, DIGEST_SHA256, SIG_RSA_SHA1, SIG_RSA_SHA256

XMLSEC1 = os.environ.get("PORTCULLIS_XMLSEC1", "/usr/bin/xmlsec1")

NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
}
SAML = "{%s}" % NS["saml"]
DS = "{%s}" % NS["ds"]

ALGS = {"sha256": (SIG_RSA_SHA256, DIGEST_SHA256), "sha1": (SIG_RSA_SHA1, DIGEST_SHA1)}
SIGN_MODES = {"assertion": (True, False), "response": (False, True), "both": (True, True), "none": (False, False)}

# The attributes we release, under their own names (NameFormat basic, no OID mapping: pysaml2's
# default maps would rename `email` to urn:mace:dir:attribute-def:email).
ATTRIBUTE_MAP = {
    "identifier": NAME_FORMAT_BASIC,
    "fro": {"groups": "groups", "email": "email"},
    "to": {"groups": "groups", "email": "email"},
}


class BadRequest(Exception):
    """Answered as 400 with the message as body."""


def log(verbose, *args):
    if verbose:
        print("idp:", *args, file=sys.stderr, flush=True)


def idp_config(entity_id, base, key_file, cert_file):
    conf = IdPConfig()
    conf.load(
        {
            "entityid": entity_id,
            "xmlsec_binary": XMLSEC1,
            "key_file": key_file,
            "cert_file": cert_file,
            "metadata_key_usage": "signing",
            "service": {
                "idp": {
                    "endpoints": {
                        "single_sign_on_service": [(f"{base}/sso/redirect", BINDING_HTTP_REDIRECT)],
                        "single_logout_service": [(f"{base}/slo", BINDING_HTTP_REDIRECT)],
                    },
                    "name_id_format": [NAMEID_FORMAT_UNSPECIFIED],
                    # Request signatures are checked by us (see verify_redirect), not by pysaml2.
                    "want_authn_requests_signed": False,
                    "policy": {
                        "default": {
                            "lifetime": {"minutes": 5},
                            "attribute_restrictions": None,
                            "name_form": NAME_FORMAT_BASIC,
                        }
                    },
                }
            },
        }
    )
    converter = AttributeConverter(NAME_FORMAT_BASIC)
    converter.from_dict(ATTRIBUTE_MAP)
    conf.attribute_converters = [converter]
    return conf


class KnobServer(Server):
    """pysaml2's IdP, with per-response overrides of what pysaml2 always derives itself.

    `overrides` is set by Idp.respond while it holds Idp.lock; the assertion is changed before
    pysaml2 signs it, so the response is genuinely signed with the overridden values.
    """

    overrides = {}

    def setup_assertion(self, *args, **kwargs):
        assertion = super().setup_assertion(*args, **kwargs)
        if not isinstance(assertion, saml.Assertion):
            return assertion
        audience = self.overrides.get("audience")
        if audience is not None:
            for restriction in assertion.conditions.audience_restriction:
                for aud in restriction.audience:
                    aud.text = audience
        recipient = self.overrides.get("recipient")
        if recipient is not None:
            for confirmation in assertion.subject.subject_confirmation:
                confirmation.subject_confirmation_data.recipient = recipient
        return assertion


def first(params, name, default=None):
    values = params.get(name)
    return values[0] if values else default


def raw_query_parts(raw_query):
    """The query's parameters exactly as sent (still URL-encoded), first occurrence wins."""
    parts = {}
    for part in raw_query.split("&"):
        key, _, value = part.partition("=")
        parts.setdefault(urllib.parse.unquote_plus(key), value)
    return parts


class Idp:
    def __init__(self, port, directory, entity_id, verbose):
        self.base = f"http://127.0.0.1:{port}"
        self.dir = directory
        self.entity_id = entity_id or f"{self.base}/idp/metadata"
        self.verbose = verbose
        # pysaml2 objects are not thread-safe, and freezegun moves the clock of the whole process.
        self.lock = threading.Lock()
        self.servers = {}
        for name in ("idp", "other"):
            conf = idp_config(self.entity_id, self.base, self.path(f"{name}.key"), self.path(f"{name}.crt"))
            self.servers[name] = KnobServer(config=conf)
        conf = self.servers["idp"].config
        self.metadata = create_metadata_string(None, config=conf)
        nocert = idp_config(self.entity_id, self.base, None, None)
        self.metadata_nocert = create_metadata_string(None, config=nocert)
        self.sp_metadata = {}
        self.install_sp_metadata()
        self.test_sps = {}
        self.last_request = None
        self.last_slo = None

    def path(self, name):
        return os.path.join(self.dir, name)

    # --- SP registry ------------------------------------------------------------------------

    def register_sp(self, xml):
        try:
            root = etree.fromstring(xml.encode(), parser=safe_parser())
        except etree.XMLSyntaxError as e:
            raise BadRequest(f"SP metadata is not XML: {e}")
        entity_id = root.get("entityID")
        if not entity_id:
            raise BadRequest("SP metadata has no entityID")
        with self.lock:
            sps = dict(self.sp_metadata)
            sps[entity_id] = xml
            try:
                self.install_sp_metadata(sps)
            except Exception as e:
                raise BadRequest(f"pysaml2 refused the SP metadata: {type(e).__name__}: {e}")
            self.sp_metadata = sps
        return entity_id

    def install_sp_metadata(self, sps=None):
        """Gives every server a metadata store of exactly `sps` (entity ID -> XML), or of none.

        Rebuilt rather than added to, so re-registering an SP replaces it; nothing changes
        unless pysaml2 accepts all of it.
        """
        stores = {}
        for name, server in self.servers.items():
            store = MetadataStore(server.config.attribute_converters, server.config)
            for sp_xml in (sps or {}).values():
                store.load("inline", sp_xml)
            stores[name] = store
        for name, server in self.servers.items():
            server.metadata = server.sec.metadata = server.config.metadata = stores[name]

    def authn_requests_signed(self, sp):
        for descriptor in self.servers["idp"].metadata[sp].get("spsso_descriptor", []):
            if str(descriptor.get("authn_requests_signed", "false")).lower() == "true":
                return True
        return False

    # --- AuthnRequest -----------------------------------------------------------------------

    def verify_redirect(self, raw_query, issuer):
        """Checks an HTTP-Redirect request signature against the SP's metadata certificates.

        SAML bindings §3.4.4.1: the signed octets are `SAMLRequest=..&RelayState=..&SigAlg=..`
        as they appear in the URL (still encoded), so they are taken from the raw query.
        pysaml2's own check (verify_redirect_signature) re-encodes the decoded values with
        urllib's quote_plus instead, which only agrees when the SP encoded exactly like Python;
        its verdict is reported as `verified_reencoded`.
        """
        if issuer not in self.sp_metadata:
            return False, False
        parts = raw_query_parts(raw_query)
        sigalg = urllib.parse.unquote_plus(parts["SigAlg"])
        try:
            signature = base64.b64decode(urllib.parse.unquote_plus(parts["Signature"]), validate=True)
        except ValueError:
            return False, False
        signer = SIGNER_ALGS.get(sigalg)
        if signer is None:
            return False, False
        octets = "&".join(f"{k}={parts[k]}" for k in ("SAMLRequest", "RelayState", "SigAlg") if k in parts)
        server = self.servers["idp"]
        certs = [cert for _, cert in server.metadata.certs(issuer, "any", "signing")]
        verified = False
        for cert in certs:
            key = extract_rsa_key_from_x509_cert(pem_format(cert))
            try:
                verified = verified or bool(signer.verify(octets.encode("ascii"), signature, key))
            except Exception:
                pass
        decoded = {k: urllib.parse.unquote_plus(v) for k, v in parts.items()}
        msg = {k: decoded[k] for k in ("SAMLRequest", "RelayState", "SigAlg", "Signature") if k in decoded}
        reencoded = False
        for cert in certs:
            try:
                reencoded = reencoded or verify_redirect_signature(msg, server.sec.sec_backend, cert)
            except Exception:
                pass
        return verified, reencoded

    def sso_redirect(self, params, raw_query):
        saml_request = first(params, "SAMLRequest")
        if not saml_request:
            raise BadRequest("no SAMLRequest")
        server = self.servers["idp"]
        with self.lock:
            try:
                req = server.parse_authn_request(saml_request, BINDING_HTTP_REDIRECT)
            except Exception as e:
                raise BadRequest(f"AuthnRequest refused by pysaml2: {type(e).__name__}: {e}")
            if req is None:
                raise BadRequest("AuthnRequest refused by pysaml2")
            message = req.message
            issuer = message.issuer.text.strip() if message.issuer is not None else None
            # A Signature inside the XML has already been verified by pysaml2 against the SP's
            # metadata (parse_authn_request raises otherwise); the binding's detached one is ours.
            signature = None
            verified = reencoded = False
            if "Signature" in params:
                if "SigAlg" not in params:
                    raise BadRequest("Signature without SigAlg")
                signature = "redirect"
                verified, reencoded = self.verify_redirect(raw_query, issuer)
            elif message.signature is not None:
                signature = "embedded"
                verified = True
            signed = signature is not None
            policy = message.name_id_policy
            self.last_request = {
                "id": message.id,
                "signed": signed,
                "signature": signature,
                "verified": verified,
                "verified_reencoded": reencoded,
                "acs": message.assertion_consumer_service_url,
                "issuer": issuer,
                "destination": message.destination,
                "name_id_policy_format": policy.format if policy is not None else None,
                "relay_state": first(params, "RelayState"),
                "xml": req.xmlstr.decode() if isinstance(req.xmlstr, bytes) else req.xmlstr,
            }
            try:
                if not issuer or issuer not in self.sp_metadata:
                    raise BadRequest(f"unknown SP {issuer!r}: POST its metadata to /sp first")
                if signed and not verified:
                    raise BadRequest("AuthnRequest signature does not verify with the SP's metadata certificates")
                if not signed and self.authn_requests_signed(issuer):
                    raise BadRequest("SP metadata says AuthnRequestsSigned=true but the request is unsigned")
                try:
                    args = server.response_args(message, [BINDING_HTTP_POST])
                except Exception as e:
                    raise BadRequest(f"no HTTP-POST AssertionConsumerService for this request in SP metadata: {e}")
            except BadRequest as e:
                self.last_request["refused"] = str(e)
                raise
        fmt = first(params, "nameid_format") or (policy.format if policy is not None else None)
        return self.respond(
            params,
            sp=issuer,
            acs=args["destination"],
            in_response_to=message.id,
            relay_state=first(params, "RelayState"),
            nameid_format=fmt,
        )

    def sso_unsolicited(self, params):
        sp = first(params, "sp")
        if not sp or sp not in self.sp_metadata:
            raise BadRequest(f"unknown SP {sp!r}: POST its metadata to /sp first")
        with self.lock:
            try:
                _, acs = self.servers["idp"].pick_binding(
                    "assertion_consumer_service", bindings=[BINDING_HTTP_POST], entity_id=sp
                )
            except Exception as e:
                raise BadRequest(f"no HTTP-POST AssertionConsumerService in SP metadata: {e}")
        return self.respond(
            params,
            sp=sp,
            acs=acs,
            in_response_to=None,
            relay_state=first(params, "relay_state"),
            nameid_format=first(params, "nameid_format"),
        )

    # --- Response ---------------------------------------------------------------------------

    def respond(self, params, sp, acs, in_response_to, relay_state, nameid_format):
        user = first(params, "user")
        if not user:
            raise BadRequest("missing user=")
        sign = first(params, "sign", "assertion")
        if sign not in SIGN_MODES:
            raise BadRequest(f"sign must be one of {sorted(SIGN_MODES)}")
        alg = first(params, "alg", "sha256")
        if alg not in ALGS:
            raise BadRequest(f"alg must be one of {sorted(ALGS)}")
        key = first(params, "key", "idp")
        if key not in self.servers:
            raise BadRequest(f"key must be one of {sorted(self.servers)}")
        try:
            shift = int(first(params, "shift", "0"))
        except ValueError:
            raise BadRequest("shift must be an integer (seconds)")
        variant = first(params, "variant")
        if variant is not None and variant not in VARIANTS:
            raise BadRequest(f"variant must be one of {sorted(VARIANTS)}")
        if variant in ASSERTION_SIGNATURE_VARIANTS and sign != "assertion":
            raise BadRequest(f"variant {variant} is only made for sign=assertion")
        if "in_response_to" in params:
            in_response_to = first(params, "in_response_to") or None

        job = {
            "server": self.servers[key],
            "sp": sp,
            "acs": acs,
            "in_response_to": in_response_to,
            "groups": [g for g in first(params, "groups", "").split(",") if g],
            "email": first(params, "email"),
            "nameid_format": nameid_format or NAMEID_FORMAT_UNSPECIFIED,
            "sign": SIGN_MODES[sign],
            "alg": ALGS[alg],
            "issuer": first(params, "issuer"),
            "overrides": {"audience": first(params, "audience"), "recipient": first(params, "recipient")},
            "shift": shift,
        }
        xml = self.genuine(job, user)
        root = etree.fromstring(xml, parser=safe_parser())
        assertion = root.find("saml:Assertion", NS)
        answer = {
            "acs": acs,
            "RelayState": relay_state,
            "assertion_id": assertion.get("ID") if assertion is not None else None,
            "response_id": root.get("ID"),
        }
        if variant is not None:
            xml, extra = VARIANTS[variant](self, job, root)
            answer.update(extra)
        answer["SAMLResponse"] = base64.b64encode(xml).decode("ascii")
        log(self.verbose, f"response for {user} to {acs} ({variant or 'genuine'}):", xml.decode("utf-8", "replace"))
        return answer

    def genuine(self, job, user):
        """One response made and signed by pysaml2, as the serialised bytes it produced."""
        server = job["server"]
        sign_assertion, sign_response = job["sign"]
        sign_alg, digest_alg = job["alg"]
        identity = {}
        if job["groups"]:
            identity["groups"] = job["groups"]
        if job["email"]:
            identity["email"] = [job["email"]]
        with self.lock:
            server.overrides = job["overrides"]
            clock = None
            if job["shift"]:
                now = datetime.datetime.now(datetime.timezone.utc)
                clock = freeze_time(now + datetime.timedelta(seconds=job["shift"]), tick=True)
                clock.start()
            try:
                response = server.create_authn_response(
                    identity,
                    in_response_to=job["in_response_to"],
                    destination=job["acs"],
                    sp_entity_id=job["sp"],
                    name_id=NameID(format=job["nameid_format"], text=user),
                    authn={"class_ref": saml.AUTHN_PASSWORD_PROTECTED},
                    issuer=job["issuer"],
                    sign_assertion=sign_assertion,
                    sign_response=sign_response,
                    encrypt_assertion=False,
                    sign_alg=sign_alg,
                    digest_alg=digest_alg,
                )
            finally:
                if clock is not None:
                    clock.stop()
                server.overrides = {}
        if isinstance(response, list):
            raise BadRequest("pysaml2 made an error response: " + "\n".join(response))
        if not isinstance(response, (str, bytes)):
            response = response.to_string()
        if isinstance(response, str):
            response = response.encode("utf-8")
        return response

    # --- SLO and test SPs -------------------------------------------------------------------

    def slo(self, params, raw_query):
        record = {"query": raw_query, "params": {k: v[0] for k, v in params.items()}}
        saml_request = first(params, "SAMLRequest")
        if saml_request:
            try:
                record["xml"] = zlib.decompress(base64.b64decode(saml_request), -15).decode("utf-8")
            except Exception as e:
                record["xml_error"] = str(e)
        with self.lock:
            self.last_slo = record

    def test_sp_metadata(self, params):
        entity_id = first(params, "entity_id")
        acs = first(params, "acs")
        if not entity_id or not acs:
            raise BadRequest("entity_id= and acs= are required")
        signed = first(params, "signed", "0") in ("1", "true")
        endpoints = {"assertion_consumer_service": [(acs, BINDING_HTTP_POST)]}
        if first(params, "slo"):
            endpoints["single_logout_service"] = [(first(params, "slo"), BINDING_HTTP_REDIRECT)]
        conf = SPConfig()
        conf.load(
            {
                "entityid": entity_id,
                "xmlsec_binary": XMLSEC1,
                "key_file": self.path("other.key"),
                "cert_file": self.path("other.crt"),
                "metadata_key_usage": "signing",
                "metadata": {"inline": [self.metadata.decode("utf-8")]},
                "service": {
                    "sp": {
                        "endpoints": endpoints,
                        "authn_requests_signed": signed,
                        "want_assertions_signed": True,
                        "want_response_signed": False,
                        "name_id_format": [NAMEID_FORMAT_UNSPECIFIED],
                    }
                },
            }
        )
        xml = create_metadata_string(None, config=conf).decode("utf-8")
        with self.lock:
            self.test_sps[entity_id] = (conf, signed)
        self.register_sp(xml)
        return xml

    def test_authn_request(self, params):
        sp = first(params, "sp")
        with self.lock:
            entry = self.test_sps.get(sp)
        if entry is None:
            raise BadRequest(f"unknown test SP {sp!r}: make it with /test/sp-metadata first")
        conf, signed = entry
        client = Saml2Client(config=conf)
        _, info = client.prepare_for_authenticate(
            entityid=self.entity_id,
            relay_state=first(params, "relay_state", ""),
            binding=BINDING_HTTP_REDIRECT,
            sign=signed,
            sigalg=SIG_RSA_SHA256 if signed else None,
        )
        location = dict(info["headers"])["Location"]
        return {"location": location}


# --- Attack variants ----------------------------------------------------------------------------
#
# Each takes the genuine response (parsed) and returns (bytes, extra JSON fields). "Verifies"
# below means `xmlsec1 --verify` with the IdP certificate, the ID attributes of Assertion and
# Response registered, succeeds on the first ds:Signature in document order; tests/saml_idp.rs
# checks every claim.

# Variants that attack the assertion's own signature: made only for sign=assertion.
ASSERTION_SIGNATURE_VARIANTS = {"wrap-before", "wrap-after", "wrap-around", "wrap-advice", "two-assertions"}


def safe_parser():
    return etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)


def qname(element):
    local = etree.QName(element).localname
    return f"{element.prefix}:{local}" if element.prefix else local


def serialize(root, doctype=None):
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8", doctype=doctype)


def signed_assertion(root):
    assertion = root.find("saml:Assertion", NS)
    if assertion is None:
        raise BadRequest("the genuine response has no Assertion")
    return assertion


def name_id(assertion):
    node = assertion.find("saml:Subject/saml:NameID", NS)
    if node is None:
        raise BadRequest("the genuine assertion has no NameID")
    return node


def attribute_values(assertion, name):
    return assertion.findall(f"saml:AttributeStatement/saml:Attribute[@Name='{name}']/saml:AttributeValue", NS)


def evil_copy(original, user="admin"):
    """An unsigned copy of the assertion naming someone else, under a fresh ID."""
    evil = copy.deepcopy(original)
    for sig in evil.findall("ds:Signature", NS):
        evil.remove(sig)
    evil.set("ID", "_evil-" + sid())
    name_id(evil).text = user
    return evil


def variant_nameid_changed(idp, job, root):
    # Tampering after signing: the NameID becomes `mallory`. The assertion's digest no longer
    # matches: does NOT verify.
    name_id(signed_assertion(root)).text = "mallory"
    return serialize(root), {}


def variant_attr_changed(idp, job, root):
    # Tampering after signing: the first `groups` value becomes `admins`. Does NOT verify.
    values = attribute_values(signed_assertion(root), "groups")
    if not values:
        raise BadRequest("variant attr-changed needs groups=")
    values[0].text = "admins"
    return serialize(root), {}


def variant_unsigned(idp, job, root):
    # Every ds:Signature removed (response and assertion): nothing to verify; xmlsec1 fails
    # because it finds no Signature node.
    for sig in root.iter(DS + "Signature"):
        sig.getparent().remove(sig)
    return serialize(root), {}


def variant_comment_nameid(idp, job, root):
    # CVE-2017-11427 and relatives (Duo, 2018): the IdP signs the NameID the attacker registered,
    # e.g. alice@example.com.evil.test; a comment is then put inside it:
    # alice@example.com<!---->.evil.test. Exclusive c14n drops comments, so the digest is
    # unchanged: STILL VERIFIES. An SP reading only the first text node sees alice@example.com.
    # The comment goes before the second-to-last '.', or mid-string without two dots.
    node = name_id(signed_assertion(root))
    text = node.text or ""
    dots = [i for i, c in enumerate(text) if c == "."]
    cut = dots[-2] if len(dots) >= 2 else len(text) // 2
    node.text = text[:cut]
    comment = etree.Comment("")
    comment.tail = text[cut:]
    node.append(comment)
    return serialize(root), {"name_id_before_comment": text[:cut]}


def wrap_sibling(root, before):
    original = signed_assertion(root)
    evil = evil_copy(original)
    if before:
        original.addprevious(evil)
    else:
        original.addnext(evil)
    return serialize(root), {"evil_assertion_id": evil.get("ID")}


def variant_wrap_before(idp, job, root):
    # XSW3 (SAML Raider's numbering of the wrapping attacks in Somorovsky et al., "On Breaking
    # SAML: Be Whoever You Want to Be", USENIX Security 2012): an unsigned copy naming `admin` is
    # inserted before the signed assertion. The signature's reference (#ID) still finds the
    # untouched original: STILL VERIFIES. An SP taking the first Assertion logs in `admin`.
    return wrap_sibling(root, before=True)


def variant_wrap_after(idp, job, root):
    # XSW3, other order: the unsigned `admin` copy follows the signed assertion. STILL VERIFIES;
    # an SP taking the last Assertion (or verifying one and reading another) logs in `admin`.
    return wrap_sibling(root, before=False)


def variant_wrap_around(idp, job, root):
    # XSW4: the evil unsigned `admin` assertion takes the original's place in the Response, and
    # the signed original becomes its last child (a direct child, which the schema forbids).
    # Exclusive c14n of the moved subtree is unchanged: STILL VERIFIES. An SP that checks
    # "some signature verified" and reads Response/Assertion gets `admin`.
    original = signed_assertion(root)
    evil = evil_copy(original)
    original.addprevious(evil)
    evil.append(original)
    return serialize(root), {"evil_assertion_id": evil.get("ID")}


def variant_wrap_advice(idp, job, root):
    # Advice wrapping: the evil unsigned `admin` assertion is the Response's top-level assertion
    # and the signed original sits in its <saml:Advice> (schema-valid: Advice may hold
    # Assertions). STILL VERIFIES. An SP that searches the document for "an assertion whose
    # signature verifies" finds the original, then reads the top-level `admin` one.
    original = signed_assertion(root)
    evil = evil_copy(original)
    for advice in evil.findall("saml:Advice", NS):
        evil.remove(advice)
    advice = etree.Element(SAML + "Advice")
    # Schema order: Issuer, Signature?, Subject?, Conditions?, Advice?, statements.
    anchor = evil.find("saml:Conditions", NS)
    if anchor is None:
        anchor = evil.find("saml:Subject", NS)
    anchor.addnext(advice)
    original.addprevious(evil)
    advice.append(original)
    return serialize(root), {"evil_assertion_id": evil.get("ID")}


def variant_doctype(idp, job, root):
    # A bare <!DOCTYPE> on an otherwise genuine response. No SAML message needs a DTD, and the
    # DTD is the door for xxe and billion-laughs, so an SP's parser should refuse any DOCTYPE.
    # STILL VERIFIES: the document type declaration is not part of the signed content.
    return serialize(root, doctype=f"<!DOCTYPE {qname(root)}>"), {}


def entity_in_attribute(root, entity):
    values = attribute_values(signed_assertion(root), "email") or attribute_values(signed_assertion(root), "groups")
    if not values:
        raise BadRequest("this variant needs email= or groups=")
    value = values[0]
    value.text = None
    for child in list(value):
        value.remove(child)
    value.append(etree.Entity(entity))


def variant_xxe(idp, job, root):
    # XML external entity: the first email (else groups) AttributeValue becomes &xxe;, declared
    # as SYSTEM "file:///etc/passwd". A parser that resolves it puts the file into the attribute.
    # Does NOT verify with xmlsec1 (the signed text changed), but an SP must refuse the DOCTYPE
    # before it gets that far.
    entity_in_attribute(root, "xxe")
    doctype = f'<!DOCTYPE {qname(root)} [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>'
    return serialize(root, doctype=doctype), {}


def variant_billion_laughs(idp, job, root):
    # Entity expansion bomb: &lol9; expands to 10^9 "lol"s (about 3 GB). Placed like xxe; an SP
    # must refuse the DOCTYPE instead of expanding it. Not given to xmlsec1 by the tests.
    entity_in_attribute(root, "lol9")
    entities = ['<!ENTITY lol "lol">']
    prev = "lol"
    for i in range(1, 10):
        name = f"lol{i}"
        entities.append(f'<!ENTITY {name} "{("&" + prev + ";") * 10}">')
        prev = name
    doctype = f"<!DOCTYPE {qname(root)} [ {' '.join(entities)} ]>"
    return serialize(root, doctype=doctype), {}


def variant_two_assertions(idp, job, root):
    # Two assertions, both genuinely signed by the IdP: the requested user's and one for `admin`
    # (same SP, same attributes) taken from a second genuine response. BOTH VERIFY. SAML web SSO
    # profile §4.1.4.2 allows several assertions, so an SP must pick deliberately (one subject)
    # or refuse; one that verifies the first and reads the last is fooled.
    second = etree.fromstring(idp.genuine(job, "admin"), parser=safe_parser())
    other = signed_assertion(second)
    signed_assertion(root).addnext(other)
    return serialize(root), {"second_assertion_id": other.get("ID")}


VARIANTS = {
    "nameid-changed": variant_nameid_changed,
    "attr-changed": variant_attr_changed,
    "unsigned": variant_unsigned,
    "comment-nameid": variant_comment_nameid,
    "wrap-before": variant_wrap_before,
    "wrap-after": variant_wrap_after,
    "wrap-around": variant_wrap_around,
    "wrap-advice": variant_wrap_advice,
    "doctype": variant_doctype,
    "xxe": variant_xxe,
    "billion-laughs": variant_billion_laughs,
    "two-assertions": variant_two_assertions,
}


# --- HTTP ---------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    idp = None  # set in main
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        log(self.idp.verbose, fmt % args)

    def reply(self, status, body, content_type="text/plain; charset=utf-8"):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def reply_json(self, value):
        self.reply(200, json.dumps(value), "application/json")

    def handle_safely(self, route):
        try:
            route()
        except BadRequest as e:
            log(self.idp.verbose, "400:", e)
            self.reply(400, f"{e}\n")
        except Exception as e:
            print(f"idp: error on {self.command} {self.path}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            self.reply(500, f"{type(e).__name__}: {e}\n")

    def do_GET(self):
        self.handle_safely(self.get)

    def do_POST(self):
        self.handle_safely(self.post)

    def get(self):
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        idp = self.idp
        if url.path == "/idp/metadata":
            self.reply(200, idp.metadata, "application/samlmetadata+xml")
        elif url.path == "/idp/metadata-nocert":
            self.reply(200, idp.metadata_nocert, "application/samlmetadata+xml")
        elif url.path == "/sso/redirect":
            self.reply_json(idp.sso_redirect(params, url.query))
        elif url.path == "/sso/unsolicited":
            self.reply_json(idp.sso_unsolicited(params))
        elif url.path == "/slo":
            idp.slo(params, url.query)
            self.reply(200, "logged out at idp\n")
        elif url.path == "/last-request":
            with idp.lock:
                self.reply_json(idp.last_request)
        elif url.path == "/last-slo":
            with idp.lock:
                self.reply_json(idp.last_slo)
        elif url.path == "/test/sp-metadata":
            self.reply(200, idp.test_sp_metadata(params), "application/samlmetadata+xml")
        elif url.path == "/test/authn-request":
            self.reply_json(idp.test_authn_request(params))
        else:
            self.reply(404, "not found\n")

    def post(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        if urllib.parse.urlsplit(self.path).path == "/sp":
            self.reply(200, self.idp.register_sp(body))
        else:
            self.reply(404, "not found\n")


def exit_at_stdin_eof():
    sys.stdin.buffer.read()
    os._exit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--entity-id")
    parser.add_argument("--verbose", action="store_true", help="log requests and responses to stderr")
    parser.add_argument("--exit-with-stdin", action="store_true", help="exit when stdin reaches EOF")
    args = parser.parse_args()
    if args.exit_with_stdin:
        # The harness holds our stdin open: EOF means it is gone (even if it was killed).
        threading.Thread(target=exit_at_stdin_eof, daemon=True).start()
    # Bound first, so --port 0 works: the URLs in the metadata use the port actually bound.
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    Handler.idp = Idp(port, args.dir, args.entity_id, args.verbose)
    print(f"READY {port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
