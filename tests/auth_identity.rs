//! The identity a backend receives (issue 3, items 6, 8 and 10): `X-Portcullis-*` headers
//! set by the gateway only, the session cookie kept from the backend, and an upstream JWT
//! that verifies against the JWKS for exactly its tenant and route — while `alg: none`,
//! HS256 keyed with our public key, and other forgeries do not.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use portcullis::auth::jwt::verify;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use common::*;

const ACME: &str = "acme.localhost";
const GLOBEX: &str = "globex.localhost";
const ALICE_PW: &str = "alice-correct-horse-battery";
const BOB_PW: &str = "bob-staple-lantern-orchid";
const GINA_PW: &str = "gina-correct-horse-battery";
/// Clock skew allowed when verifying.
const LEEWAY: u64 = 5;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A gateway with alice (roles admin, ops) signed in on acme.
struct World {
    gw: Gateway,
    alice: String,
}

impl World {
    async fn start() -> World {
        let gw = Gateway::start_default();
        gw.add_user("acme", "alice", ALICE_PW, &["admin", "ops"]);
        let alice = gw.login(ACME, "alice", ALICE_PW).await;
        World { gw, alice }
    }

    /// What the backend received for `path` with `session`.
    async fn echo(&self, host: &str, path: &str, session: &str) -> Echo {
        let resp = self.gw.get_as(host, path, Some(session), &[]).await;
        assert_eq!(resp.status, 200, "{host}{path}: {}", resp.text());
        resp.expect_echo()
    }

    async fn jwt(&self, host: &str, path: &str, session: &str) -> String {
        self.echo(host, path, session)
            .await
            .header_once("x-portcullis-jwt")
            .to_string()
    }

    async fn jwks(&self, host: &str) -> Value {
        let resp = self.gw.get_as(host, "/.auth/jwks.json", None, &[]).await;
        assert_eq!(resp.status, 200, "JWKS: {}", resp.text());
        resp.json()
    }
}

fn decode_part(part: &str) -> Value {
    let bytes = B64.decode(part).expect("base64url JWT part");
    serde_json::from_slice(&bytes).expect("JSON JWT part")
}

fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        panic!("not a compact JWS: {token:?}");
    };
    (decode_part(h), decode_part(p), s.to_string())
}

fn encode_part(value: &Value) -> String {
    B64.encode(value.to_string())
}

/// HMAC-SHA256 (RFC 2104) over sha2, as an attacker would compute it.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// `header.payload.HMAC-SHA256(secret)`.
fn hs256(header: &Value, payload: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", encode_part(header), encode_part(payload));
    let sig = hmac_sha256(secret, input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

fn first_key(jwks: &Value) -> &Value {
    jwks["keys"]
        .as_array()
        .and_then(|k| k.first())
        .unwrap_or_else(|| panic!("JWKS without keys: {jwks}"))
}

#[tokio::test]
async fn backend_receives_the_identity_headers_and_a_jwt() {
    let w = World::start().await;
    let echo = w.echo(ACME, "/app/x", &w.alice).await;
    assert_eq!(echo.header_once("x-portcullis-user"), "alice");
    assert_eq!(echo.header_once("x-portcullis-tenant"), "acme");
    let mut roles: Vec<&str> = echo
        .header_once("x-portcullis-roles")
        .split(',')
        .map(str::trim)
        .collect();
    roles.sort_unstable();
    assert_eq!(roles, vec!["admin", "ops"]);
    let jwt = echo.header_once("x-portcullis-jwt");
    assert_eq!(jwt.split('.').count(), 3, "{jwt:?}");

    // Without a session: the tenant, and no identity, whatever the client claims.
    let resp =
        w.gw.get_as(
            ACME,
            "/public",
            None,
            &[
                ("x-portcullis-user", "alice"),
                ("x-portcullis-roles", "admin"),
                ("x-portcullis-jwt", "eyJhbGciOiJub25lIn0.e30."),
            ],
        )
        .await;
    let echo = resp.expect_echo();
    assert_eq!(echo.header_once("x-portcullis-tenant"), "acme");
    for name in [
        "x-portcullis-user",
        "x-portcullis-roles",
        "x-portcullis-jwt",
    ] {
        assert!(
            echo.header_all(name).is_empty(),
            "anonymous request carried {name}: {:?}",
            echo.headers
        );
    }
}

#[tokio::test]
async fn session_cookie_never_reaches_the_backend_but_other_cookies_do() {
    let w = World::start().await;
    let s = &w.alice;
    let mut failures = Vec::new();
    let cases = [
        vec![format!("Cookie: theme=dark; {SESSION_COOKIE}={s}; lang=en")],
        vec![
            format!("Cookie: {SESSION_COOKIE}={s}"),
            "Cookie: theme=dark; lang=en".to_string(),
        ],
        vec![format!(
            "Cookie: theme=dark; {LOGIN_CSRF_COOKIE}=csrf-value-1; {SESSION_COOKIE}={s}; lang=en"
        )],
    ];
    for (i, cookies) in cases.iter().enumerate() {
        let extra: Vec<&str> = cookies.iter().map(String::as_str).collect();
        let resp = w.gw.raw_get(ACME, "/app/cookies", &extra).await;
        if resp.status != 200 {
            failures.push(format!("case {i}: status {}", resp.status));
            continue;
        }
        let echo = resp.expect_echo();
        if echo.header_all("x-portcullis-user") != vec!["alice"] {
            failures.push(format!("case {i}: not signed in: {:?}", echo.headers));
        }
        let forwarded = echo.header_all("cookie").join("; ");
        for kept in ["theme=dark", "lang=en"] {
            if !forwarded.contains(kept) {
                failures.push(format!("case {i}: {kept} did not pass: {forwarded:?}"));
            }
        }
        if forwarded.to_ascii_lowercase().contains("__host-portcullis") {
            failures.push(format!("case {i}: a gateway cookie passed: {forwarded:?}"));
        }
    }
    // Over h2 (reqwest negotiates it), too.
    let resp =
        w.gw.get_as(
            ACME,
            "/app/h2",
            None,
            &[("cookie", &format!("theme=dark; {SESSION_COOKIE}={s}"))],
        )
        .await;
    let echo = resp.expect_echo();
    assert_eq!(echo.header_once("x-portcullis-user"), "alice");
    let traffic = w.gw.backend_traffic();
    if traffic.contains(s.as_str()) {
        failures.push("the session token appears in the bytes sent to the backend".into());
    }
    if !traffic.contains("theme=dark") {
        failures.push("no other cookie reached the backend at all".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn spoofed_identity_headers_from_a_signed_in_client_are_replaced() {
    let w = World::start().await;
    w.gw.add_user("acme", "bob", BOB_PW, &[]);
    let bob = w.gw.login(ACME, "bob", BOB_PW).await;
    let cookie = format!("Cookie: {SESSION_COOKIE}={bob}");
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.";
    let spoof = [
        cookie.as_str(),
        "X-Portcullis-User: alice",
        "x-portcullis-user: root",
        "X_Portcullis_User: admin",
        "X-Portcullis-Roles: admin",
        "X-Portcullis-Tenant: globex",
        "X-PORTCULLIS-JWT: eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.",
    ];
    let resp = w.gw.raw_get(ACME, "/app/spoof", &spoof).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.expect_echo();
    let names = echo.normalized_names();
    for name in [
        "x-portcullis-user",
        "x-portcullis-roles",
        "x-portcullis-tenant",
        "x-portcullis-jwt",
    ] {
        let n = names.iter().filter(|h| *h == name).count();
        assert_eq!(n, 1, "{name} received {n} times: {:?}", echo.headers);
    }
    assert_eq!(echo.header_once("x-portcullis-user"), "bob");
    assert_eq!(echo.header_once("x-portcullis-tenant"), "acme");
    assert_eq!(echo.header_once("x-portcullis-roles"), "");
    let jwt = echo.header_once("x-portcullis-jwt");
    assert_ne!(jwt, forged);
    let claims = verify(
        jwt,
        &w.jwks(ACME).await,
        "https://acme.localhost",
        "acme/app",
        now_unix(),
        LEEWAY,
    )
    .expect("the gateway's own token");
    assert_eq!(claims.sub, "bob");

    // Claimed roles open no role route.
    let admin = w.gw.raw_get(ACME, "/admin/x", &spoof).await;
    assert_eq!(admin.status, 403, "{}", admin.text());
}

#[tokio::test]
async fn upstream_jwt_verifies_against_the_jwks_for_its_route_and_host() {
    let w = World::start().await;
    let token = w.jwt(ACME, "/app/x", &w.alice).await;
    let jwks = w.jwks(ACME).await;
    let now = now_unix();
    let claims = verify(
        &token,
        &jwks,
        "https://acme.localhost",
        "acme/app",
        now,
        LEEWAY,
    )
    .unwrap_or_else(|e| panic!("reference verifier: {e}\ntoken {token}\njwks {jwks}"));
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.tenant, "acme");
    assert_eq!(claims.aud, "acme/app");
    assert_eq!(claims.iss, "https://acme.localhost");
    let mut roles = claims.roles.clone();
    roles.sort();
    assert_eq!(roles, vec!["admin", "ops"]);
    assert!(
        claims.amr.iter().any(|m| m == "pwd"),
        "amr {:?}",
        claims.amr
    );
    let who = w.gw.whoami(ACME, &w.alice).await.json();
    assert_eq!(claims.sid, who["sid"].as_str().unwrap_or_default(), "sid");
    assert_ne!(claims.sid, w.alice, "sid must not be the cookie");
    assert!(
        claims.exp > claims.iat,
        "exp {} iat {}",
        claims.exp,
        claims.iat
    );
    assert!(
        claims.exp - claims.iat <= 60,
        "lifetime {} s",
        claims.exp - claims.iat
    );
    assert!(claims.iat <= now + LEEWAY && claims.exp + LEEWAY > now);

    let (header, _, _) = parts(&token);
    assert_eq!(header["alg"], "EdDSA", "{header}");
    let kid = header["kid"].as_str().expect("kid");
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .unwrap_or_else(|| panic!("kid {kid} not in the JWKS {jwks}"));
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert!(
        key.get("d").is_none(),
        "the JWKS publishes a private key: {key}"
    );

    // An independent verifier agrees.
    let x = key["x"].as_str().expect("x");
    let decoding = jsonwebtoken::DecodingKey::from_ed_components(x).expect("Ed25519 JWK");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["acme/app"]);
    validation.set_issuer(&["https://acme.localhost"]);
    let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation)
        .unwrap_or_else(|e| panic!("jsonwebtoken: {e}"));
    assert_eq!(data.claims["sub"], "alice");

    // The wrong route of the same tenant fails the audience.
    assert!(verify(
        &token,
        &jwks,
        "https://acme.localhost",
        "acme/admin",
        now,
        LEEWAY
    )
    .is_err());
}

#[tokio::test]
async fn one_tenants_jwt_fails_another_tenants_audience_and_issuer() {
    let w = World::start().await;
    w.gw.add_user("globex", "gina", GINA_PW, &[]);
    let gina = w.gw.login(GLOBEX, "gina", GINA_PW).await;
    let acme_token = w.jwt(ACME, "/app/x", &w.alice).await;
    let globex_token = w.jwt(GLOBEX, "/app/x", &gina).await;
    let acme_jwks = w.jwks(ACME).await;
    let globex_jwks = w.jwks(GLOBEX).await;
    let now = now_unix();

    // Controls: each verifies for its own tenant.
    verify(
        &acme_token,
        &acme_jwks,
        "https://acme.localhost",
        "acme/app",
        now,
        LEEWAY,
    )
    .expect("acme's token for acme");
    verify(
        &globex_token,
        &globex_jwks,
        "https://globex.localhost",
        "globex/app",
        now,
        LEEWAY,
    )
    .expect("globex's token for globex");

    let mut failures = Vec::new();
    for (case, token, jwks, iss, aud) in [
        (
            "acme token, globex iss+aud",
            &acme_token,
            &globex_jwks,
            "https://globex.localhost",
            "globex/app",
        ),
        (
            "acme token, globex aud",
            &acme_token,
            &globex_jwks,
            "https://acme.localhost",
            "globex/app",
        ),
        (
            "acme token, globex iss",
            &acme_token,
            &globex_jwks,
            "https://globex.localhost",
            "acme/app",
        ),
        (
            "globex token, acme iss+aud",
            &globex_token,
            &acme_jwks,
            "https://acme.localhost",
            "acme/app",
        ),
        (
            "globex token, acme aud",
            &globex_token,
            &acme_jwks,
            "https://globex.localhost",
            "acme/app",
        ),
    ] {
        if let Ok(claims) = verify(token, jwks, iss, aud, now, LEEWAY) {
            failures.push(format!("{case}: accepted as {claims:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn alg_none_token_is_rejected_by_the_verifier() {
    let w = World::start().await;
    let token = w.jwt(ACME, "/app/x", &w.alice).await;
    let jwks = w.jwks(ACME).await;
    let (header, payload, signature) = parts(&token);
    let kid = header["kid"].clone();
    let mut failures = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        for with_kid in [true, false] {
            let mut h = json!({ "alg": alg, "typ": "JWT" });
            if with_kid {
                h["kid"] = kid.clone();
            }
            let input = format!("{}.{}", encode_part(&h), encode_part(&payload));
            for sig in ["", signature.as_str()] {
                let forged = format!("{input}.{sig}");
                let r = verify(
                    &forged,
                    &jwks,
                    "https://acme.localhost",
                    "acme/app",
                    now_unix(),
                    LEEWAY,
                );
                if let Ok(c) = r {
                    failures.push(format!(
                        "alg {alg:?} kid={with_kid} sig={:?}: accepted {c:?}",
                        !sig.is_empty()
                    ));
                }
            }
        }
    }
    // Two-part form (no signature segment at all).
    let bare = format!(
        "{}.{}",
        encode_part(&json!({ "alg": "none", "kid": kid })),
        encode_part(&payload)
    );
    if verify(
        &bare,
        &jwks,
        "https://acme.localhost",
        "acme/app",
        now_unix(),
        LEEWAY,
    )
    .is_ok()
    {
        failures.push("two-part alg none token accepted".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn hs256_token_keyed_with_our_public_key_is_rejected_by_the_verifier() {
    // RFC 4231 test case 2: the hand-rolled HMAC is right, so a rejection means something.
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let w = World::start().await;
    let token = w.jwt(ACME, "/app/x", &w.alice).await;
    let jwks_resp = w.gw.get_as(ACME, "/.auth/jwks.json", None, &[]).await;
    let jwks = jwks_resp.json();
    let jwks_text = jwks_resp.text();
    let (header, mut payload, _) = parts(&token);
    // A privilege the attacker wants.
    payload["roles"] = json!(["admin", "superuser"]);
    let key = first_key(&jwks);
    let x = key["x"].as_str().expect("x").to_string();
    let raw_x = B64.decode(&x).expect("x is base64url");
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("raw public key bytes", raw_x),
        ("base64url x", x.into_bytes()),
        ("the JWK as JSON", key.to_string().into_bytes()),
        ("the JWKS document as served", jwks_text.into_bytes()),
    ];
    let mut failures = Vec::new();
    for (what, secret) in &secrets {
        for alg in ["HS256", "hs256"] {
            let h = json!({ "alg": alg, "typ": "JWT", "kid": header["kid"] });
            let forged = hs256(&h, &payload, secret);
            if alg == "HS256" {
                // Control: a verifier that trusts the header's alg would accept this token.
                let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
                v.set_audience(&["acme/app"]);
                v.set_issuer(&["https://acme.localhost"]);
                jsonwebtoken::decode::<Value>(
                    &forged,
                    &jsonwebtoken::DecodingKey::from_secret(secret),
                    &v,
                )
                .unwrap_or_else(|e| panic!("the forged HS256 token is malformed ({what}): {e}"));
            }
            let r = verify(
                &forged,
                &jwks,
                "https://acme.localhost",
                "acme/app",
                now_unix(),
                LEEWAY,
            );
            if let Ok(c) = r {
                failures.push(format!("{alg} keyed with {what}: accepted {c:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn tampered_or_foreign_signed_token_is_rejected_by_the_verifier() {
    use ed25519_dalek::{Signer, SigningKey};
    let w = World::start().await;
    let token = w.jwt(ACME, "/app/x", &w.alice).await;
    let jwks = w.jwks(ACME).await;
    let (header, payload, signature) = parts(&token);
    let attacker = SigningKey::from_bytes(&[7u8; 32]);
    let attacker_x = B64.encode(attacker.verifying_key().as_bytes());
    let sign = |h: &Value, p: &Value| {
        let input = format!("{}.{}", encode_part(h), encode_part(p));
        let sig = attacker.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    };
    let mut escalated = payload.clone();
    escalated["sub"] = json!("root");
    let mut cases: Vec<(&str, String)> = vec![
        (
            "payload changed, signature kept",
            format!(
                "{}.{}.{signature}",
                encode_part(&header),
                encode_part(&escalated)
            ),
        ),
        ("signed by another key, our kid", sign(&header, &escalated)),
    ];
    let mut embedded = header.clone();
    embedded["jwk"] = json!({ "kty": "OKP", "crv": "Ed25519", "x": attacker_x });
    cases.push((
        "key embedded in the header (jwk)",
        sign(&embedded, &escalated),
    ));
    let mut jku = header.clone();
    jku["jku"] = json!("https://evil.com/jwks.json");
    cases.push(("key set URL in the header (jku)", sign(&jku, &escalated)));
    let mut unknown = header.clone();
    unknown["kid"] = json!("attacker-key");
    cases.push(("unknown kid", sign(&unknown, &escalated)));
    let mut failures = Vec::new();
    for (case, forged) in &cases {
        if let Ok(c) = verify(
            forged,
            &jwks,
            "https://acme.localhost",
            "acme/app",
            now_unix(),
            LEEWAY,
        ) {
            failures.push(format!("{case}: accepted {c:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn jwt_is_reused_per_session_and_route_and_each_route_has_its_own_audience() {
    let w = World::start().await;
    let first = w.jwt(ACME, "/app/one", &w.alice).await;
    let second = w.jwt(ACME, "/app/two", &w.alice).await;
    assert_eq!(
        first, second,
        "two quick requests to one route got two tokens"
    );

    let jwks = w.jwks(ACME).await;
    let now = now_unix();
    let mut seen = Vec::new();
    for (path, route) in [
        ("/app/x", "app"),
        ("/admin/x", "admin"),
        ("/api/private/x", "api-private"),
    ] {
        let token = w.jwt(ACME, path, &w.alice).await;
        let aud = format!("acme/{route}");
        let claims = verify(&token, &jwks, "https://acme.localhost", &aud, now, LEEWAY)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(claims.aud, aud);
        assert!(
            !seen.contains(&token),
            "{path} reused another route's token"
        );
        seen.push(token);
    }

    // Another session of the same user gets its own token (its own sid).
    let other = w.gw.login(ACME, "alice", ALICE_PW).await;
    let theirs = w.jwt(ACME, "/app/one", &other).await;
    assert_ne!(theirs, first, "two sessions share a token");
}
