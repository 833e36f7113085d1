//! TLS promises (issue 2, item 2): only TLS 1.2/1.3 with the allowlisted suites and groups,
//! SNI picks the tenant certificate, unknown or missing SNI is refused, ALPN h2 and http/1.1,
//! no 0-RTT, HSTS on every response. Negotiation is driven with `openssl s_client`.

mod common;

use std::process::Command;

use common::*;

/// `s_client` arguments for a verified handshake with `host` as SNI.
fn verified(host: &str) -> Vec<&str> {
    vec![
        "-servername",
        host,
        "-verify_hostname",
        host,
        "-verify_return_error",
    ]
}

/// A default handshake must work, so that a refused handshake later proves something.
fn assert_control_handshake(gw: &Gateway) {
    let hs = gw.s_client(&verified("acme.localhost"));
    assert!(
        hs.established && hs.verified(),
        "control handshake (defaults, SNI acme.localhost) failed:\n{}",
        hs.output
    );
}

/// Asserts that the server refused each `(case, s_client args)`; collects every failure.
fn assert_all_refused(gw: &Gateway, cases: &[(&str, Vec<&str>)]) {
    let mut failures = Vec::new();
    for (name, args) in cases {
        let hs = gw.s_client(args);
        if hs.refused_by_client() {
            failures.push(format!(
                "{name}: openssl refused to offer it itself, the case proves nothing:\n{}",
                hs.output
            ));
        } else if hs.established {
            failures.push(format!(
                "{name}: server accepted it ({} {}), must refuse",
                hs.protocol, hs.cipher
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Asserts that each `(case, expected protocol, expected cipher, args)` handshake succeeds
/// with exactly that protocol and cipher and a verified chain.
fn assert_all_negotiated(gw: &Gateway, cases: &[(&str, &str, &str, Vec<&str>)]) {
    let mut failures = Vec::new();
    for (name, protocol, cipher, args) in cases {
        let hs = gw.s_client(args);
        if !hs.established || !hs.verified() || hs.protocol != *protocol || hs.cipher != *cipher {
            failures.push(format!(
                "{name}: expected {protocol} {cipher} with a verified chain, got established={} \
                 protocol={:?} cipher={:?} verified={}\n{}",
                hs.established,
                hs.protocol,
                hs.cipher,
                hs.verified(),
                hs.output
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Whether the dev leaf certificate carries an EC key (rcgen's default) rather than RSA.
fn leaf_is_ecdsa(gw: &Gateway) -> bool {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(gw.site.path("certs/acme.localhost.crt"))
        .output()
        .expect("run openssl x509");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "openssl x509 failed on the dev cert");
    text.contains("id-ecPublicKey")
}

#[test]
fn tls_1_1_and_1_0_are_refused() {
    let gw = Gateway::start_default();
    assert_control_handshake(&gw);
    // SECLEVEL=0 so that OpenSSL 3 itself is willing to speak the old versions: a failure
    // then means the server refused.
    assert_all_refused(
        &gw,
        &[
            (
                "TLS 1.1",
                vec![
                    "-servername",
                    "acme.localhost",
                    "-tls1_1",
                    "-cipher",
                    "DEFAULT:@SECLEVEL=0",
                ],
            ),
            (
                "TLS 1.0",
                vec![
                    "-servername",
                    "acme.localhost",
                    "-tls1",
                    "-cipher",
                    "DEFAULT:@SECLEVEL=0",
                ],
            ),
        ],
    );
}

#[test]
fn tls12_cbc_suites_are_refused() {
    let gw = Gateway::start_default();
    assert_control_handshake(&gw);
    let suites = [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA256",
        "ECDHE-RSA-AES256-SHA384",
        // Every ECDHE suite that is not an AEAD, offered at once.
        "ECDHE:!AESGCM:!CHACHA20:!AESCCM:!ARIAGCM",
    ];
    let ciphers: Vec<String> = suites.iter().map(|s| format!("{s}:@SECLEVEL=0")).collect();
    let cases: Vec<(&str, Vec<&str>)> = suites
        .iter()
        .zip(&ciphers)
        .map(|(name, c)| {
            (
                *name,
                vec!["-servername", "acme.localhost", "-tls1_2", "-cipher", c],
            )
        })
        .collect();
    assert_all_refused(&gw, &cases);
}

#[test]
fn tls12_non_ecdhe_suite_is_refused() {
    let gw = Gateway::start_default();
    assert_control_handshake(&gw);
    assert_all_refused(
        &gw,
        &[
            (
                "DHE-RSA-AES128-GCM-SHA256",
                vec![
                    "-servername",
                    "acme.localhost",
                    "-tls1_2",
                    "-cipher",
                    "DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0",
                ],
            ),
            (
                "DHE-RSA-CHACHA20-POLY1305",
                vec![
                    "-servername",
                    "acme.localhost",
                    "-tls1_2",
                    "-cipher",
                    "DHE-RSA-CHACHA20-POLY1305:@SECLEVEL=0",
                ],
            ),
        ],
    );
}

#[test]
fn tls12_static_rsa_suite_is_refused() {
    let gw = Gateway::start_default();
    assert_control_handshake(&gw);
    assert_all_refused(
        &gw,
        &[
            (
                "AES128-GCM-SHA256",
                vec![
                    "-servername",
                    "acme.localhost",
                    "-tls1_2",
                    "-cipher",
                    "AES128-GCM-SHA256:@SECLEVEL=0",
                ],
            ),
            (
                "AES256-GCM-SHA384",
                vec![
                    "-servername",
                    "acme.localhost",
                    "-tls1_2",
                    "-cipher",
                    "AES256-GCM-SHA384:@SECLEVEL=0",
                ],
            ),
        ],
    );
}

#[test]
fn tls13_ccm_suites_are_refused() {
    let gw = Gateway::start_default();
    assert_control_handshake(&gw);
    assert_all_refused(
        &gw,
        &[
            (
                "TLS_AES_128_CCM_SHA256",
                vec![
                    "-servername",
                    "acme.localhost",
                    "-tls1_3",
                    "-ciphersuites",
                    "TLS_AES_128_CCM_SHA256",
                ],
            ),
            (
                "TLS_AES_128_CCM_8_SHA256",
                vec![
                    "-servername",
                    "acme.localhost",
                    "-tls1_3",
                    "-ciphersuites",
                    "TLS_AES_128_CCM_8_SHA256",
                ],
            ),
        ],
    );
}

#[test]
fn tls13_allowed_suites_succeed() {
    let gw = Gateway::start_default();
    let suites = [
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
    ];
    let cases: Vec<(&str, &str, &str, Vec<&str>)> = suites
        .iter()
        .map(|s| {
            let mut args = verified("acme.localhost");
            args.extend(["-tls1_3", "-ciphersuites", s]);
            (*s, "TLSv1.3", *s, args)
        })
        .collect();
    assert_all_negotiated(&gw, &cases);
}

#[test]
fn tls12_allowed_suites_for_the_cert_key_type_succeed() {
    let gw = Gateway::start_default();
    let suites: [&str; 3] = if leaf_is_ecdsa(&gw) {
        [
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        ]
    } else {
        [
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-RSA-CHACHA20-POLY1305",
        ]
    };
    let cases: Vec<(&str, &str, &str, Vec<&str>)> = suites
        .iter()
        .map(|s| {
            let mut args = verified("acme.localhost");
            args.extend(["-tls1_2", "-cipher", s]);
            (*s, "TLSv1.2", *s, args)
        })
        .collect();
    assert_all_negotiated(&gw, &cases);
}

#[test]
fn allowed_key_exchange_groups_succeed_and_others_are_refused() {
    // TLS 1.3 only: in TLS 1.2 the client's group list also limits which ECDSA certificate
    // curves it accepts, so a P-256 certificate would fail for client-side reasons.
    let gw = Gateway::start_default();
    let mut failures = Vec::new();
    for (group, temp_key) in [
        ("X25519", "X25519"),
        ("P-256", "prime256v1"),
        ("P-384", "secp384r1"),
    ] {
        let mut args = verified("acme.localhost");
        args.extend(["-tls1_3", "-groups", group]);
        let hs = gw.s_client(&args);
        let negotiated = hs
            .output
            .lines()
            .find(|l| l.starts_with("Server Temp Key:"))
            .unwrap_or("");
        if !hs.established || !negotiated.contains(temp_key) {
            failures.push(format!(
                "{group}: must be negotiated, got established={} {negotiated:?}:\n{}",
                hs.established, hs.output
            ));
        }
    }
    for group in ["P-521", "X448", "ffdhe2048"] {
        let hs = gw.s_client(&["-servername", "acme.localhost", "-tls1_3", "-groups", group]);
        if hs.refused_by_client() {
            failures.push(format!(
                "{group}: openssl refused it itself:\n{}",
                hs.output
            ));
        } else if hs.established {
            failures.push(format!(
                "{group}: must be refused, got {} {}",
                hs.protocol, hs.cipher
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A rustls client on the aws-lc-rs provider (an implementation other than the gateway's
/// server side) offering only `groups` and `versions`: the handshake's outcome and the group
/// it agreed on.
fn rustls_handshake(
    gw: &Gateway,
    groups: &[&'static dyn rustls::crypto::SupportedKxGroup],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Option<rustls::NamedGroup>, String> {
    use std::io::{Read, Write};
    let pem = std::fs::read(gw.site.ca_path()).expect("read ca.crt");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.expect("CA PEM")).expect("add CA root");
    }
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: groups.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("acme.localhost").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("conn");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", gw.https_port())).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: acme.localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply);
    if !reply.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "no 200 over the handshake: {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(80)])
        ));
    }
    Ok(tls.conn.negotiated_key_exchange_group().map(|g| g.name()))
}

#[test]
fn post_quantum_hybrid_group_is_preferred_and_classic_groups_still_work() {
    use rustls::crypto::aws_lc_rs::kx_group;
    use rustls::NamedGroup;
    let gw = Gateway::start_default();
    let tls13 = &[&rustls::version::TLS13];
    // A browser-like client offering the hybrid first gets it.
    assert_eq!(
        rustls_handshake(&gw, &[kx_group::X25519MLKEM768, kx_group::X25519], tls13),
        Ok(Some(NamedGroup::X25519MLKEM768))
    );
    // So does one that offers nothing else; one without it gets X25519.
    assert_eq!(
        rustls_handshake(&gw, &[kx_group::X25519MLKEM768], tls13),
        Ok(Some(NamedGroup::X25519MLKEM768))
    );
    assert_eq!(
        rustls_handshake(&gw, &[kx_group::X25519, kx_group::SECP256R1], tls13),
        Ok(Some(NamedGroup::X25519))
    );
    // The pure post-quantum group is not on the allowlist, and the hybrid is never used for
    // TLS 1.2 (a 1.2 client with only the hybrid has no group in common).
    assert!(rustls_handshake(&gw, &[kx_group::MLKEM768], tls13).is_err());
    assert!(
        rustls_handshake(&gw, &[kx_group::X25519MLKEM768], &[&rustls::version::TLS12]).is_err()
    );
}

#[test]
fn sni_selects_the_tenant_certificate() {
    let gw = Gateway::start_default();
    for host in ["acme.localhost", "globex.localhost"] {
        let hs = gw.s_client(&verified(host));
        assert!(
            hs.established && hs.verified(),
            "SNI {host}: handshake with hostname verification must succeed:\n{}",
            hs.output
        );
    }
}

#[test]
fn unknown_sni_is_refused() {
    let gw = Gateway::start_default();
    assert_control_handshake(&gw);
    // other.localhost has a valid certificate from our CA, but the gateway does not serve it.
    let hs = gw.s_client(&["-servername", "other.localhost"]);
    assert!(
        !hs.established,
        "handshake with unknown SNI other.localhost must be refused, got {} {}",
        hs.protocol, hs.cipher
    );
    let hs = gw.s_client(&["-servername", "evil.example"]);
    assert!(
        !hs.established,
        "handshake with unknown SNI evil.example must be refused, got {} {}",
        hs.protocol, hs.cipher
    );
}

#[test]
fn missing_sni_is_refused() {
    let gw = Gateway::start_default();
    assert_control_handshake(&gw);
    let hs = gw.s_client(&["-noservername"]);
    assert!(
        !hs.established,
        "handshake without SNI must be refused, got {} {}",
        hs.protocol, hs.cipher
    );
}

#[test]
fn alpn_offers_h2_and_http11() {
    let gw = Gateway::start_default();
    for proto in ["h2", "http/1.1"] {
        let mut args = verified("acme.localhost");
        args.extend(["-alpn", proto]);
        let hs = gw.s_client(&args);
        assert!(
            hs.established,
            "ALPN {proto}: handshake failed:\n{}",
            hs.output
        );
        assert_eq!(
            hs.alpn.as_deref(),
            Some(proto),
            "ALPN {proto} must be negotiated:\n{}",
            hs.output
        );
    }
}

#[test]
fn zero_rtt_is_not_offered_or_accepted() {
    let gw = Gateway::start_default();
    let sess = gw.site.path("tls13.sess");
    let sess_arg = sess.to_string_lossy().into_owned();
    let request = b"GET /api/0rtt HTTP/1.1\r\nHost: acme.localhost\r\nConnection: close\r\n\r\n";

    // First connection: read the response so the session tickets arrive, save the session.
    let mut args = verified("acme.localhost");
    args.extend(["-tls1_3", "-sess_out", &sess_arg]);
    let first = gw.s_client_with_input(&args, request);
    assert!(
        first.established,
        "first TLS 1.3 connection failed:\n{}",
        first.output
    );

    let out = Command::new("openssl")
        .args(["sess_id", "-noout", "-text", "-in"])
        .arg(&sess)
        .output()
        .expect("run openssl sess_id");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        if let Some(v) = line.trim().strip_prefix("Max Early Data:") {
            assert_eq!(
                v.trim(),
                "0",
                "the server's session ticket allows 0-RTT:\n{text}"
            );
        }
    }

    // Second connection: try to resume with early data anyway.
    let early = gw.site.path("early.txt");
    std::fs::write(&early, request).expect("write early data file");
    let early_arg = early.to_string_lossy().into_owned();
    let mut args = verified("acme.localhost");
    args.extend(["-tls1_3", "-sess_in", &sess_arg, "-early_data", &early_arg]);
    let second = gw.s_client(&args);
    assert!(
        second.established,
        "resumption attempt failed:\n{}",
        second.output
    );
    assert!(
        !second.output.contains("Early data was accepted"),
        "the server accepted 0-RTT data:\n{}",
        second.output
    );
}

#[tokio::test]
async fn hsts_header_on_every_response() {
    let gw = Gateway::start_default();
    let client = gw.client();
    let mut failures = Vec::new();
    let mut check = |case: &str, status: u16, hsts: Option<String>, expected_status: u16| {
        if status != expected_status {
            failures.push(format!(
                "{case}: status {status}, expected {expected_status}"
            ));
        }
        if hsts.as_deref() != Some(HSTS_VALUE) {
            failures.push(format!(
                "{case}: Strict-Transport-Security = {hsts:?}, expected {HSTS_VALUE:?}"
            ));
        }
    };
    for (case, host, path, expected) in [
        ("200 proxied", "acme.localhost", "/api/x", 200),
        ("404 no route", "globex.localhost", "/nothing-here", 404),
        ("401 authenticated route", "acme.localhost", "/app", 401),
        ("502 dead upstream", "acme.localhost", "/dead", 502),
    ] {
        let resp = client
            .get(gw.url(host, path))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{case}: request failed: {e}"));
        let hsts = resp
            .headers()
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string());
        check(case, resp.status().as_u16(), hsts, expected);
    }
    for (case, sni, host, target, expected) in [
        (
            "404 unknown host",
            "acme.localhost",
            "nope.localhost",
            "/",
            404,
        ),
        (
            "421 SNI/Host mismatch",
            "acme.localhost",
            "globex.localhost",
            "/api",
            421,
        ),
        (
            "400 bad path",
            "acme.localhost",
            "acme.localhost",
            "/a%2Fb",
            400,
        ),
    ] {
        let req = request_bytes("GET", target, host, &[], b"");
        let resp = gw.raw(sni, &req).await.single();
        let hsts = resp.header("strict-transport-security").map(str::to_string);
        check(case, resp.status, hsts, expected);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
