//! A real SAML 2.0 Identity Provider for the tests: `tests/saml/idp.py`, pysaml2 signing with
//! the `xmlsec1` binary, started on a free loopback port with its own RSA keys and killed on
//! drop.
//!
//! The gateway redirects the browser to the IdP; a test hands that `Location` to
//! [`Idp::sso`] together with [`SsoOpts`] (who signs in, with which groups, and which attack
//! to make of the response) and gets back what the browser would POST to the gateway's ACS
//! ([`IdpPost`]). [`Idp::unsolicited`] makes an IdP-initiated response instead. Every response
//! is genuinely signed by pysaml2; the attack variants are made from such a response after
//! signing (see the comment on each in `idp.py`, and `tests/saml_idp.rs`, which proves with
//! `xmlsec1 --verify` what each one is).
//!
//! The IdP runs in the venv made by `scripts/saml-idp-env.sh` (`make test` runs it): see
//! [`python`].

#![allow(dead_code)]

use std::env;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use base64::Engine as _;
use tempfile::TempDir;

use super::{parse_response, Response, WAIT};

/// The repository root (where `scripts/` and `tests/saml/` are).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python that runs the IdP: `$PORTCULLIS_SAML_PYTHON`, else `bin/python` of the venv that
/// `scripts/saml-idp-env.sh` makes (`$PORTCULLIS_SAML_VENV`, default `target/saml-idp-venv`).
/// Panics when it is missing: SAML tests are never skipped silently.
pub fn python() -> PathBuf {
    if let Some(python) = env::var_os("PORTCULLIS_SAML_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = env::var_os("PORTCULLIS_SAML_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/saml-idp-venv"));
    let python = repo().join(venv).join("bin/python");
    if !python.exists() {
        panic!(
            "no Python for the test SAML IdP at {}: run scripts/saml-idp-env.sh (make test does)",
            python.display()
        );
    }
    python
}

/// Test-only knobs of one IdP response (query parameters of `/sso/redirect` and
/// `/sso/unsolicited`; `idp.py` documents each).
#[derive(Clone, Debug, Default)]
pub struct SsoOpts {
    /// The NameID (required).
    pub user: String,
    /// Values of the multi-valued `groups` attribute (none: no attribute).
    pub groups: Vec<String>,
    /// The `email` attribute.
    pub email: Option<String>,
    /// An attack variant: `nameid-changed`, `attr-changed`, `unsigned`, `comment-nameid`,
    /// `wrap-before`, `wrap-after`, `wrap-around`, `wrap-advice`, `doctype`, `xxe`,
    /// `billion-laughs`, `two-assertions`.
    pub variant: Option<String>,
    /// The IdP's clock is moved by this many seconds for the whole response.
    pub shift_secs: i64,
    /// What is signed: `assertion` (default), `response`, `both` or `none`.
    pub sign: Option<String>,
    /// `sha256` (default) or `sha1` (rsa-sha1 signature, sha1 digest).
    pub alg: Option<String>,
    /// Overrides of what pysaml2 derives, signed as given.
    pub audience: Option<String>,
    pub recipient: Option<String>,
    pub issuer: Option<String>,
    /// `Some("")` omits InResponseTo.
    pub in_response_to: Option<String>,
    /// `idp` (default) or `other`: a key whose certificate is in no metadata.
    pub key: Option<String>,
    /// RelayState of an unsolicited response (a solicited one echoes the request's).
    pub relay_state: Option<String>,
    /// NameID Format (default: the request's NameIDPolicy, else unspecified).
    pub nameid_format: Option<String>,
    /// Any other query parameters, appended as given.
    pub extra: Vec<(String, String)>,
}

impl SsoOpts {
    pub fn user(name: &str) -> Self {
        SsoOpts {
            user: name.to_string(),
            ..SsoOpts::default()
        }
    }

    pub fn groups(mut self, groups: &[&str]) -> Self {
        self.groups = groups.iter().map(|g| g.to_string()).collect();
        self
    }

    pub fn variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.to_string());
        self
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = vec![("user".to_string(), self.user.clone())];
        if !self.groups.is_empty() {
            pairs.push(("groups".into(), self.groups.join(",")));
        }
        if self.shift_secs != 0 {
            pairs.push(("shift".into(), self.shift_secs.to_string()));
        }
        let optional = [
            ("email", &self.email),
            ("variant", &self.variant),
            ("sign", &self.sign),
            ("alg", &self.alg),
            ("audience", &self.audience),
            ("recipient", &self.recipient),
            ("issuer", &self.issuer),
            ("in_response_to", &self.in_response_to),
            ("key", &self.key),
            ("relay_state", &self.relay_state),
            ("nameid_format", &self.nameid_format),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                pairs.push((name.to_string(), value.clone()));
            }
        }
        pairs.extend(self.extra.iter().cloned());
        pairs
    }
}

/// What the IdP's auto-submitting form would POST to the SP's ACS.
#[derive(Clone, Debug)]
pub struct IdpPost {
    pub acs: String,
    /// Base64, as posted.
    pub saml_response: String,
    pub relay_state: Option<String>,
    /// ID of the genuine signed assertion (the original one in the wrapping variants).
    pub assertion_id: String,
    pub response_id: String,
    /// The IdP's whole answer (`evil_assertion_id`, `second_assertion_id`, …).
    pub json: serde_json::Value,
}

impl IdpPost {
    /// `application/x-www-form-urlencoded` body: `SAMLResponse=…[&RelayState=…]`.
    pub fn form_body(&self) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("SAMLResponse", &self.saml_response);
        if let Some(relay_state) = &self.relay_state {
            form.append_pair("RelayState", relay_state);
        }
        form.finish()
    }

    /// The response XML (base64-decoded).
    pub fn xml(&self) -> String {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.saml_response)
            .expect("SAMLResponse is base64");
        String::from_utf8(bytes).expect("SAMLResponse is UTF-8")
    }

    fn from_json(json: serde_json::Value) -> IdpPost {
        let text = |name: &str| json[name].as_str().map(str::to_string);
        IdpPost {
            acs: text("acs").expect("IdP answer has acs"),
            saml_response: text("SAMLResponse").expect("IdP answer has SAMLResponse"),
            relay_state: text("RelayState"),
            assertion_id: text("assertion_id").unwrap_or_default(),
            response_id: text("response_id").unwrap_or_default(),
            json,
        }
    }
}

/// A running `idp.py` with its keys (`idp.key`/`idp.crt` announced in its metadata,
/// `other.key`/`other.crt` announced nowhere). Killed on drop; it also exits by itself when
/// the test process goes away (it watches its stdin).
pub struct Idp {
    child: Child,
    /// Held open so the IdP outlives nothing but us.
    _stdin: ChildStdin,
    port: u16,
    dir: TempDir,
}

impl Idp {
    /// Makes two RSA 2048 self-signed certificates with `openssl`, starts the IdP on a port it
    /// binds itself (`--port 0`, no race) and waits up to 30 s for `READY <port>`.
    pub fn start() -> Idp {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-idp-")
            .tempdir()
            .expect("temp dir for the IdP");
        let keygens: Vec<_> = ["idp", "other"]
            .iter()
            .map(|name| {
                Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    ])
                    .arg("-subj")
                    .arg(format!("/CN=portcullis-test-{name}"))
                    .arg("-keyout")
                    .arg(dir.path().join(format!("{name}.key")))
                    .arg("-out")
                    .arg(dir.path().join(format!("{name}.crt")))
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("run openssl (scripts/install-deps.sh installs it)")
            })
            .collect();
        for keygen in keygens {
            let out = keygen.wait_with_output().expect("wait for openssl");
            assert!(
                out.status.success(),
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let stderr_path = dir.path().join("idp.stderr");
        let stderr = fs::File::create(&stderr_path).expect("create idp.stderr");
        let mut cmd = Command::new(python());
        cmd.arg(repo().join("tests/saml/idp.py"))
            .args(["--port", "0", "--exit-with-stdin", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if env::var_os("PORTCULLIS_SAML_VERBOSE").is_some() {
            cmd.arg("--verbose");
        }
        let mut child = cmd.spawn().expect("start tests/saml/idp.py");
        let stdin = child.stdin.take().expect("IdP stdin");
        let stdout = child.stdout.take().expect("IdP stdout");

        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line.strip_prefix("READY ") {
                    let _ = tx.send(port.trim().parse::<u16>().ok());
                }
            }
        });
        let port = match rx.recv_timeout(WAIT) {
            Ok(Some(port)) => port,
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the SAML IdP did not become ready ({outcome:?}); its stderr:\n{}",
                    fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        Idp {
            child,
            _stdin: stdin,
            port,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The IdP's entity ID, which is also its metadata URL.
    pub fn entity_id(&self) -> String {
        self.metadata_url()
    }

    pub fn metadata_url(&self) -> String {
        format!("{}/idp/metadata", self.base_url())
    }

    /// Its single sign-on endpoint (HTTP-Redirect binding).
    pub fn sso_url(&self) -> String {
        format!("{}/sso/redirect", self.base_url())
    }

    /// Its single logout endpoint (HTTP-Redirect binding).
    pub fn slo_url(&self) -> String {
        format!("{}/slo", self.base_url())
    }

    pub fn metadata_xml(&self) -> String {
        self.get_ok("/idp/metadata")
    }

    pub fn write_metadata(&self, path: &Path) {
        fs::write(path, self.metadata_xml()).expect("write IdP metadata");
    }

    /// The same metadata without any KeyDescriptor (an SP must refuse to trust it).
    pub fn metadata_xml_without_cert(&self) -> String {
        self.get_ok("/idp/metadata-nocert")
    }

    /// The directory holding the keys and the IdP's stderr (`idp.stderr`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir().join("idp.crt")
    }

    pub fn other_cert_path(&self) -> PathBuf {
        self.dir().join("other.crt")
    }

    /// PEM of the certificate in the metadata.
    pub fn cert_pem(&self) -> String {
        fs::read_to_string(self.cert_path()).expect("read idp.crt")
    }

    /// PEM of the certificate that is in no metadata.
    pub fn other_cert_pem(&self) -> String {
        fs::read_to_string(self.other_cert_path()).expect("read other.crt")
    }

    /// What the IdP wrote to stderr so far (quiet unless `PORTCULLIS_SAML_VERBOSE` is set).
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir().join("idp.stderr")).unwrap_or_default()
    }

    /// Registers an SP from its metadata (again: replaces it); returns its entity ID.
    pub fn register_sp(&self, sp_metadata_xml: &str) -> String {
        let resp = self.request("POST", "/sp", sp_metadata_xml.as_bytes());
        self.expect_ok(&resp, "POST /sp");
        resp.text()
    }

    /// Metadata of a pysaml2-made SP (`AuthnRequestsSigned` as `signed`, signing key
    /// `other.key`), already registered. Only for testing the IdP without the gateway.
    pub fn test_sp_metadata(&self, entity_id: &str, acs: &str, signed: bool) -> String {
        let query = encode_query(&[
            ("entity_id", entity_id),
            ("acs", acs),
            ("signed", if signed { "1" } else { "0" }),
        ]);
        self.get_ok(&format!("/test/sp-metadata?{query}"))
    }

    /// The redirect URL (to [`Idp::sso_url`]) that the test SP `sp` would send a browser to.
    pub fn test_authn_request(&self, sp: &str, relay_state: &str) -> String {
        let query = encode_query(&[("sp", sp), ("relay_state", relay_state)]);
        let json: serde_json::Value =
            serde_json::from_str(&self.get_ok(&format!("/test/authn-request?{query}")))
                .expect("JSON from /test/authn-request");
        json["location"]
            .as_str()
            .expect("location in /test/authn-request")
            .to_string()
    }

    /// Follows the gateway's redirect `location` (which must point at [`Idp::sso_url`]) with
    /// `opts` appended, and returns what the browser would POST to the ACS.
    pub fn sso(&self, location: &str, opts: &SsoOpts) -> IdpPost {
        self.try_sso(location, opts)
            .unwrap_or_else(|(status, body)| panic!("IdP refused the sign-on: {status} {body}"))
    }

    /// Like [`Idp::sso`], but a refusal (the IdP's status and message) is returned.
    pub fn try_sso(&self, location: &str, opts: &SsoOpts) -> Result<IdpPost, (u16, String)> {
        let sso = self.sso_url();
        let query = location
            .strip_prefix(&sso)
            .and_then(|rest| rest.strip_prefix('?'))
            .unwrap_or_else(|| panic!("redirect {location:?} does not go to the IdP's {sso}"));
        let target = format!(
            "/sso/redirect?{query}&{}",
            encode_query(&opts.query_pairs())
        );
        self.post_from(&target)
    }

    /// An IdP-initiated response (no InResponseTo) for the registered SP `sp_entity_id`.
    pub fn unsolicited(&self, sp_entity_id: &str, opts: &SsoOpts) -> IdpPost {
        self.try_unsolicited(sp_entity_id, opts)
            .unwrap_or_else(|(status, body)| panic!("IdP refused the sign-on: {status} {body}"))
    }

    pub fn try_unsolicited(
        &self,
        sp_entity_id: &str,
        opts: &SsoOpts,
    ) -> Result<IdpPost, (u16, String)> {
        let mut pairs = vec![("sp".to_string(), sp_entity_id.to_string())];
        pairs.extend(opts.query_pairs());
        self.post_from(&format!("/sso/unsolicited?{}", encode_query(&pairs)))
    }

    /// The last AuthnRequest received: `id`, `signed`, `verified`, `verified_reencoded`,
    /// `acs`, `issuer`, `destination`, `name_id_policy_format`, `relay_state`, `xml`.
    pub fn last_request(&self) -> serde_json::Value {
        serde_json::from_str(&self.get_ok("/last-request")).expect("JSON from /last-request")
    }

    /// The last request to the SLO endpoint: `query` (raw), `params`, and `xml` when it
    /// carried a SAMLRequest.
    pub fn last_slo(&self) -> Option<serde_json::Value> {
        let json: serde_json::Value =
            serde_json::from_str(&self.get_ok("/last-slo")).expect("JSON from /last-slo");
        (!json.is_null()).then_some(json)
    }

    fn post_from(&self, target: &str) -> Result<IdpPost, (u16, String)> {
        let resp = self.request("GET", target, b"");
        if resp.status != 200 {
            return Err((resp.status, resp.text()));
        }
        let json = serde_json::from_slice(&resp.body).expect("JSON from the IdP");
        Ok(IdpPost::from_json(json))
    }

    fn get_ok(&self, target: &str) -> String {
        let resp = self.request("GET", target, b"");
        self.expect_ok(&resp, target);
        resp.text()
    }

    fn expect_ok(&self, resp: &Response, what: &str) {
        assert_eq!(
            resp.status,
            200,
            "IdP {what}: {}\nIdP stderr:\n{}",
            resp.text(),
            self.stderr()
        );
    }

    /// One HTTP/1.1 exchange (`Connection: close`), bounded by [`WAIT`].
    fn request(&self, method: &str, target: &str, body: &[u8]) -> Response {
        let deadline = Instant::now() + WAIT;
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the IdP");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        stream.set_write_timeout(Some(WAIT)).expect("write timeout");
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\
             Content-Type: application/xml\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("write to the IdP");
        stream.write_all(body).expect("write to the IdP");
        let mut buf = Vec::new();
        while Instant::now() < deadline {
            let mut chunk = [0u8; 16384];
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading from the IdP ({method} {target}): {e}"),
            }
        }
        parse_response(&buf)
            .map(|(resp, _)| resp)
            .unwrap_or_else(|| {
                panic!(
                    "no HTTP response from the IdP for {method} {target}\nIdP stderr:\n{}",
                    self.stderr()
                )
            })
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode_query<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        form.append_pair(name.as_ref(), value.as_ref());
    }
    form.finish()
}

/// Whether `xmlsec1 --verify` accepts the `nth` (1-based, document order) `ds:Signature` of
/// `xml` with the public key of `cert` only (an embedded KeyInfo certificate is not trusted),
/// `ID` registered as the ID attribute of Assertion and Response, same-document references
/// only. The independent check of what the IdP's responses claim to be.
pub fn xmlsec1_verifies(xml: &str, cert: &Path, nth: usize) -> bool {
    let file = tempfile::Builder::new()
        .suffix(".xml")
        .tempfile()
        .expect("temp file for xmlsec1");
    fs::write(file.path(), xml).expect("write XML for xmlsec1");
    let signature = format!(
        "(//*[local-name()='Signature' and namespace-uri()='http://www.w3.org/2000/09/xmldsig#'])[{nth}]"
    );
    let out = Command::new("xmlsec1")
        .arg("--verify")
        .arg("--pubkey-cert-pem")
        .arg(cert)
        .args([
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:protocol:Response",
            "--enabled-reference-uris",
            "same-doc",
            "--node-xpath",
            &signature,
        ])
        .arg(file.path())
        .output()
        .expect("run xmlsec1 (scripts/install-deps.sh installs it)");
    out.status.success()
}

/// Evaluates the XPath 1.0 `expr` on `xml` (lxml in the IdP's venv, entities left unresolved)
/// with the prefixes `samlp`, `saml`, `ds` and `md` bound. One string per result: text and
/// attribute values as they are, numbers without a trailing `.0`, elements as their local name.
pub fn xpath(xml: &str, expr: &str) -> Vec<String> {
    const SCRIPT: &str = r#"
import json, sys
from lxml import etree
parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
root = etree.fromstring(sys.stdin.buffer.read(), parser)
ns = {"samlp": "urn:oasis:names:tc:SAML:2.0:protocol", "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
      "ds": "http://www.w3.org/2000/09/xmldsig#", "md": "urn:oasis:names:tc:SAML:2.0:metadata"}
result = root.xpath(sys.argv[1], namespaces=ns)
out = []
for v in result if isinstance(result, list) else [result]:
    if isinstance(v, etree._Element):
        v = etree.QName(v).localname
    elif isinstance(v, bool):
        v = "true" if v else "false"
    elif isinstance(v, float):
        v = str(int(v)) if v.is_integer() else str(v)
    out.append(str(v))
print(json.dumps(out))
"#;
    let mut child = Command::new(python())
        .args(["-c", SCRIPT, expr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the venv's python for xpath");
    child
        .stdin
        .take()
        .expect("python stdin")
        .write_all(xml.as_bytes())
        .expect("write XML to python");
    let out = child.wait_with_output().expect("wait for python");
    assert!(
        out.status.success(),
        "xpath {expr:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the xpath script")
}

/// The single result of [`xpath`] (panics on none or several).
pub fn xpath1(xml: &str, expr: &str) -> String {
    let mut values = xpath(xml, expr);
    assert_eq!(values.len(), 1, "xpath {expr:?} gave {values:?}");
    values.remove(0)
}
