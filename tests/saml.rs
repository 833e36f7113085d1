//! Issue 6: SAML SSO per tenant, end to end through the gateway, against a real IdP (pysaml2
//! with xmlsec1, started on loopback by `common::saml::Idp`). Every attack the issue names is
//! its own test, each showing that the response is refused (403, no session, the `/app`
//! route still asks for sign-in) and that the audit log says why.

#[path = "common/audit.rs"]
mod audit_support;
mod common;

use audit_support::{records, sqlite_at};
use common::saml::{Idp, IdpPost, SsoOpts};
use common::*;

/// The gateway and the IdP of one test.
struct World {
    idp: Idp,
    gw: Gateway,
}

const ACME_SAML: &str = r#"
[saml]
idp_metadata_file = "acme-idp.xml"
groups_attribute = "groups"
default_roles = ["staff"]

[saml.role_map]
"portcullis-admins" = ["admin"]
"#;

const GLOBEX_SAML: &str = r#"
[saml]
idp_metadata_file = "globex-idp.xml"
allow_idp_initiated = true
"#;

/// A world where acme and globex both sign in through the one test IdP (as two SPs).
/// `acme_extra` goes after acme's `[saml]` table (more `[saml]` keys cannot: use
/// `acme_saml` for a whole replacement).
async fn world_with(acme_saml: &str, tune: impl FnOnce(&mut Opts)) -> World {
    let idp = Idp::start();
    let mut opts = Opts {
        acme_policy_extra: acme_saml.to_string(),
        globex_policy_extra: GLOBEX_SAML.to_string(),
        files: vec![
            ("policies/acme-idp.xml".into(), idp.metadata_xml()),
            ("policies/globex-idp.xml".into(), idp.metadata_xml()),
        ],
        ..Opts::default()
    };
    tune(&mut opts);
    let gw = Gateway::start(opts);
    let w = World { idp, gw };
    for host in ["acme.localhost", "globex.localhost"] {
        if let Some(xml) = w.sp_metadata(host).await {
            w.idp.register_sp(&xml);
        }
    }
    w
}

async fn world() -> World {
    world_with(ACME_SAML, |_| {}).await
}

impl World {
    async fn sp_metadata(&self, host: &str) -> Option<String> {
        let resp = fetch(
            self.gw
                .client()
                .get(self.gw.url(host, "/.auth/saml/metadata")),
        )
        .await;
        (resp.status == 200).then(|| resp.text())
    }

    fn acs(&self, host: &str) -> String {
        format!("{}/.auth/saml/acs", self.gw.origin(host))
    }

    fn entity_id(&self, host: &str) -> String {
        format!("{}/.auth/saml/metadata", self.gw.origin(host))
    }

    /// Starts an SP-initiated login in `browser` and returns the IdP's redirect target.
    async fn start_login(&self, browser: &mut Browser, return_to: &str) -> String {
        let r = browser
            .get(&format!(
                "/.auth/saml/login?return_to={}",
                query_encode(return_to)
            ))
            .await;
        assert_eq!(r.status, 302, "saml login: {}", r.text());
        let location = r.location().expect("Location").to_string();
        assert!(
            location.starts_with(&self.idp.sso_url()),
            "redirect goes to the IdP: {location}"
        );
        location
    }

    /// The IdP's answer for `opts`, after a login started in `browser`.
    async fn idp_answer(&self, browser: &mut Browser, opts: &SsoOpts) -> IdpPost {
        let location = self.start_login(browser, "/app/after").await;
        self.idp.sso(&location, opts)
    }

    /// What the IdP's auto-post form does: a cross-site POST to the ACS.
    async fn post_acs(&self, browser: &mut Browser, post: &IdpPost) -> Response {
        let origin = self.idp.base_url();
        browser
            .post(
                "/.auth/saml/acs",
                "application/x-www-form-urlencoded",
                post.form_body(),
                &[("origin", &origin), ("sec-fetch-site", "cross-site")],
            )
            .await
    }

    /// A full SP-initiated login for `opts` in a fresh acme browser; returns the browser and
    /// the ACS answer.
    async fn login(&self, opts: &SsoOpts) -> (Browser, Response) {
        let mut browser = self.gw.browser("acme.localhost");
        let post = self.idp_answer(&mut browser, opts).await;
        let r = self.post_acs(&mut browser, &post).await;
        (browser, r)
    }

    /// The reasons of acme's `saml_assertion_rejected` events, oldest first.
    fn rejections(&self, tenant: &str) -> Vec<String> {
        let mut reasons: Vec<String> = records(
            &self.gw.site.config_path(),
            tenant,
            &["--event", "saml_assertion_rejected"],
        )
        .iter()
        .map(|r| r.field("reason").unwrap_or_default().to_string())
        .collect();
        reasons.reverse();
        reasons
    }

    /// The response was refused for `reason`: 403, no session, `/app` still asks to sign in,
    /// and the audit log names the reason.
    async fn assert_refused(&self, browser: &mut Browser, r: &Response, reason: &str) {
        assert_eq!(r.status, 403, "ACS answer: {}", r.text());
        assert!(
            r.set_cookie("__Host-portcullis").is_none(),
            "no session cookie on a refusal"
        );
        let app = browser.get("/app/").await;
        assert!(
            is_browser_login_challenge(app.status, app.location(), "acme.localhost"),
            "not signed in after a refused response: {} {:?}",
            app.status,
            app.location()
        );
        assert!(app.echo().is_none(), "nothing reached the backend");
        let reasons = self.rejections("acme");
        assert_eq!(
            reasons.last().map(String::as_str),
            Some(reason),
            "audit reasons: {reasons:?}"
        );
    }

    /// Sign in with `opts` after the IdP's answer was changed by `variant`, and check the
    /// refusal reason.
    async fn refused_variant(&self, variant: &str, reason: &str) {
        let opts = SsoOpts {
            email: Some("alice@example.com".into()),
            ..SsoOpts::user("alice")
                .groups(&["engineering"])
                .variant(variant)
        };
        let (mut browser, r) = self.login(&opts).await;
        self.assert_refused(&mut browser, &r, reason).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Happy paths
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sp_initiated_login_reaches_the_app_with_the_idp_identity_and_mapped_roles() {
    let w = world().await;
    let (mut browser, r) = w
        .login(&SsoOpts::user("alice").groups(&["portcullis-admins", "unmapped"]))
        .await;
    assert_eq!(r.status, 303, "ACS answer: {}", r.text());
    assert_eq!(r.location(), Some("/app/after"));
    assert!(browser.session().is_some(), "session cookie set");

    // The request the IdP received: our entity ID, our ACS, a 160-bit ID.
    let req = w.idp.last_request();
    assert_eq!(req["issuer"], w.entity_id("acme.localhost"));
    assert_eq!(req["acs"], w.acs("acme.localhost"));
    assert_eq!(req["id"].as_str().map(str::len), Some(41));

    let app = browser.get("/app/after").await;
    let echo = app.expect_echo();
    assert_eq!(echo.header_once("x-portcullis-user"), "alice");
    assert_eq!(echo.header_once("x-portcullis-tenant"), "acme");
    assert_eq!(echo.header_once("x-portcullis-roles"), "admin,staff");
    let admin = browser.get("/admin/").await;
    assert_eq!(admin.status, 200, "the mapped admin role opens /admin");

    let who = browser
        .get_with("/.auth/whoami", &[("accept", "application/json")])
        .await
        .json();
    assert_eq!(who["user"], "alice");
    assert_eq!(who["amr"], serde_json::json!(["saml"]));

    let accepted = records(
        &w.gw.site.config_path(),
        "acme",
        &["--event", "saml_assertion_accepted"],
    );
    assert_eq!(accepted.len(), 1);
    assert!(accepted[0].about("alice"));
    let created = records(
        &w.gw.site.config_path(),
        "acme",
        &["--event", "user_created"],
    );
    assert!(
        created.iter().any(|r| r.about("alice")),
        "JIT provisioning audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_signed_as_a_whole_or_twice_are_accepted_too() {
    let w = world().await;
    for sign in ["response", "both"] {
        let (mut browser, r) = w
            .login(&SsoOpts {
                sign: Some(sign.into()),
                ..SsoOpts::user("alice")
            })
            .await;
        assert_eq!(r.status, 303, "sign={sign}: {}", r.text());
        let echo = browser.get("/app/after").await.expect_echo();
        assert_eq!(echo.header_once("x-portcullis-user"), "alice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_started_on_another_host_of_the_tenant_moves_to_the_first_host() {
    let w = world().await;
    let site = &w.gw.site;
    let mut config = site.config_toml();
    config.push_str(
        "\n[[tls.certificates]]\nhosts = [\"other.localhost\"]\n\
         cert = \"certs/other.localhost.crt\"\nkey = \"certs/other.localhost.key\"\n",
    );
    let policy = std::fs::read_to_string(site.path("policies/acme.toml"))
        .expect("acme policy")
        .replace(
            "hosts = [\"acme.localhost\"]",
            "hosts = [\"acme.localhost\", \"other.localhost\"]",
        );
    // The certificate first: a reload between the two writes serves the host as unknown (404),
    // never without a certificate.
    site.write("portcullis.toml", &config);
    site.write("policies/acme.toml", &policy);
    w.gw.sighup();
    assert!(
        w.gw.wait_for_log("config reloaded", WAIT),
        "{}",
        w.gw.logs()
    );
    let mut moved = None;
    for _ in 0..100 {
        let mut b = w.gw.browser("other.localhost");
        let r = b.get("/.auth/saml/login?return_to=/app/x").await;
        if r.status == 302 {
            moved = r.location().map(str::to_string);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        moved.as_deref(),
        Some(
            format!(
                "{}/.auth/saml/login?return_to=%2Fapp%2Fx",
                w.gw.origin("acme.localhost")
            )
            .as_str()
        ),
        "{}",
        w.gw.logs()
    );
    // No request was stored for the other host: only the first host's login starts one.
    let (_, r) = w.login(&SsoOpts::user("alice")).await;
    assert_eq!(r.status, 303, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sp_metadata_names_the_tenant_host_and_acs() {
    let w = world().await;
    let resp = fetch(
        w.gw.client()
            .get(w.gw.url("acme.localhost", "/.auth/saml/metadata")),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/samlmetadata+xml")
    );
    let xml = resp.text();
    assert!(xml.contains(&format!("entityID=\"{}\"", w.entity_id("acme.localhost"))));
    assert!(xml.contains(&format!("Location=\"{}\"", w.acs("acme.localhost"))));
    assert!(xml.contains("WantAssertionsSigned=\"true\""));
    assert!(xml.contains("AuthnRequestsSigned=\"false\""));
    // A tenant without SAML has none.
    let w2 = fetch(
        w.gw.client()
            .get(w.gw.url("globex.localhost", "/.auth/saml/metadata")),
    )
    .await;
    assert_eq!(w2.status, 200, "globex has SAML too");
    assert!(w2.text().contains(&w.entity_id("globex.localhost")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_initiated_login_works_where_the_tenant_allows_it() {
    let w = world().await;
    let post = w.idp.unsolicited(
        &w.entity_id("globex.localhost"),
        &SsoOpts {
            relay_state: Some("/app/from-idp".into()),
            ..SsoOpts::user("gina")
        },
    );
    let mut browser = w.gw.browser("globex.localhost");
    let r = w.post_acs(&mut browser, &post).await;
    assert_eq!(r.status, 303, "ACS answer: {}", r.text());
    assert_eq!(r.location(), Some("/app/from-idp"));
    let echo = browser.get("/app/from-idp").await.expect_echo();
    assert_eq!(echo.header_once("x-portcullis-user"), "gina");
    assert_eq!(echo.header_once("x-portcullis-tenant"), "globex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_initiated_login_is_refused_where_the_tenant_did_not_turn_it_on() {
    let w = world().await;
    let post = w
        .idp
        .unsolicited(&w.entity_id("acme.localhost"), &SsoOpts::user("alice"));
    let mut browser = w.gw.browser("acme.localhost");
    let r = w.post_acs(&mut browser, &post).await;
    w.assert_refused(&mut browser, &r, "idp_initiated_disabled")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_initiated_tenants_still_check_in_response_to_of_solicited_answers() {
    let w = world().await;
    let mut browser = w.gw.browser("globex.localhost");
    let post = w.idp.unsolicited(
        &w.entity_id("globex.localhost"),
        &SsoOpts {
            in_response_to: Some("_0123456789abcdef0123456789abcdef01234567".into()),
            ..SsoOpts::user("gina")
        },
    );
    let r = w.post_acs(&mut browser, &post).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        w.rejections("globex").last().map(String::as_str),
        Some("unknown_in_response_to")
    );
}

// ---------------------------------------------------------------------------------------------
// Rejections: changed after signing, unsigned, wrong key, weak algorithm
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nameid_changed_after_signing_is_refused() {
    world()
        .await
        .refused_variant("nameid-changed", "bad_signature")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_changed_after_signing_is_refused() {
    world()
        .await
        .refused_variant("attr-changed", "bad_signature")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_response_is_refused() {
    world()
        .await
        .refused_variant("unsigned", "bad_signature")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_signed_by_another_key_is_refused() {
    let w = world().await;
    let (mut browser, r) = w
        .login(&SsoOpts {
            key: Some("other".into()),
            ..SsoOpts::user("alice")
        })
        .await;
    w.assert_refused(&mut browser, &r, "bad_signature").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha1_signature_is_refused() {
    let w = world().await;
    let (mut browser, r) = w
        .login(&SsoOpts {
            alg: Some("sha1".into()),
            ..SsoOpts::user("alice")
        })
        .await;
    w.assert_refused(&mut browser, &r, "weak_algorithm").await;
}

// ---------------------------------------------------------------------------------------------
// Rejections: time, audience, recipient, issuer
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_assertion_is_refused() {
    let w = world().await;
    let (mut browser, r) = w
        .login(&SsoOpts {
            shift_secs: -3600,
            ..SsoOpts::user("alice")
        })
        .await;
    w.assert_refused(&mut browser, &r, "expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_assertion_is_refused() {
    let w = world().await;
    let (mut browser, r) = w
        .login(&SsoOpts {
            shift_secs: 3600,
            ..SsoOpts::user("alice")
        })
        .await;
    w.assert_refused(&mut browser, &r, "not_yet_valid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowed_clock_skew_is_per_tenant() {
    // An IdP clock 90 s ahead: beyond acme's default 60 s, within globex's 300 s.
    let w = world_with(ACME_SAML, |o| {
        o.globex_policy_extra.push_str("clock_skew_seconds = 300\n");
    })
    .await;
    let ahead = SsoOpts {
        shift_secs: 90,
        ..SsoOpts::user("alice")
    };
    let (mut browser, r) = w.login(&ahead).await;
    w.assert_refused(&mut browser, &r, "not_yet_valid").await;
    let post = w.idp.unsolicited(
        &w.entity_id("globex.localhost"),
        &SsoOpts {
            shift_secs: 90,
            ..SsoOpts::user("gina")
        },
    );
    let mut browser = w.gw.browser("globex.localhost");
    let r = w.post_acs(&mut browser, &post).await;
    assert_eq!(r.status, 303, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_is_refused() {
    let w = world().await;
    let (mut browser, r) = w
        .login(&SsoOpts {
            audience: Some("https://evil.example/sp".into()),
            ..SsoOpts::user("alice")
        })
        .await;
    w.assert_refused(&mut browser, &r, "wrong_audience").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_recipient_is_refused() {
    let w = world().await;
    let (mut browser, r) = w
        .login(&SsoOpts {
            recipient: Some("https://evil.example/acs".into()),
            ..SsoOpts::user("alice")
        })
        .await;
    w.assert_refused(&mut browser, &r, "wrong_recipient").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_issuer_is_refused() {
    let w = world().await;
    let (mut browser, r) = w
        .login(&SsoOpts {
            issuer: Some("https://evil.example/idp".into()),
            ..SsoOpts::user("alice")
        })
        .await;
    w.assert_refused(&mut browser, &r, "wrong_issuer").await;
}

// ---------------------------------------------------------------------------------------------
// Rejections: replay, InResponseTo, browser binding, other tenant
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_assertion_is_refused() {
    let w = world().await;
    let mut browser = w.gw.browser("acme.localhost");
    let post = w.idp_answer(&mut browser, &SsoOpts::user("alice")).await;
    let first = w.post_acs(&mut browser, &post).await;
    assert_eq!(first.status, 303, "{}", first.text());
    // The same browser posts the same response again (its request is used up): and a new
    // request is open, so only the replay cache or InResponseTo can stop it.
    let mut again = w.gw.browser("acme.localhost");
    w.start_login(&mut again, "/").await;
    let r = w.post_acs(&mut again, &post).await;
    w.assert_refused(&mut again, &r, "unknown_in_response_to")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_unsolicited_assertion_is_refused_by_the_replay_cache() {
    let w = world().await;
    let post = w
        .idp
        .unsolicited(&w.entity_id("globex.localhost"), &SsoOpts::user("gina"));
    let mut first = w.gw.browser("globex.localhost");
    assert_eq!(w.post_acs(&mut first, &post).await.status, 303);
    let mut second = w.gw.browser("globex.localhost");
    let r = w.post_acs(&mut second, &post).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.set_cookie("__Host-portcullis").is_none());
    assert_eq!(
        w.rejections("globex").last().map(String::as_str),
        Some("replayed_assertion")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_in_response_to_is_refused() {
    let w = world().await;
    let (mut browser, r) = w
        .login(&SsoOpts {
            in_response_to: Some("_ffffffffffffffffffffffffffffffffffffffff".into()),
            ..SsoOpts::user("alice")
        })
        .await;
    w.assert_refused(&mut browser, &r, "unknown_in_response_to")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_used_in_response_to_is_refused() {
    let w = world().await;
    let mut browser = w.gw.browser("acme.localhost");
    let location = w.start_login(&mut browser, "/app/").await;
    let first = w.idp.sso(&location, &SsoOpts::user("alice"));
    // A second, genuinely signed answer to the same request (a new assertion ID).
    let second = w.idp.sso(&location, &SsoOpts::user("mallory"));
    assert_ne!(first.assertion_id, second.assertion_id);
    assert_eq!(w.post_acs(&mut browser, &first).await.status, 303);
    let mut other = w.gw.browser("acme.localhost");
    let binding = browser
        .cookie("__Host-portcullis-saml")
        .expect("binding cookie")
        .to_string();
    other.set_cookie("__Host-portcullis-saml", &binding);
    let r = w.post_acs(&mut other, &second).await;
    w.assert_refused(&mut other, &r, "unknown_in_response_to")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_posted_from_another_browser_is_refused() {
    // Login CSRF: the attacker starts a login, gets their own signed answer and makes the
    // victim's browser post it.
    let w = world().await;
    let mut attacker = w.gw.browser("acme.localhost");
    let post = w.idp_answer(&mut attacker, &SsoOpts::user("mallory")).await;
    let mut victim = w.gw.browser("acme.localhost");
    let r = w.post_acs(&mut victim, &post).await;
    w.assert_refused(&mut victim, &r, "wrong_browser").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_b_response_at_tenant_a_acs_is_refused() {
    let w = world().await;
    // A genuine answer for globex (its audience and ACS), posted to acme.
    let post = w
        .idp
        .unsolicited(&w.entity_id("globex.localhost"), &SsoOpts::user("gina"));
    assert_eq!(post.acs, w.acs("globex.localhost"));
    let mut browser = w.gw.browser("acme.localhost");
    w.start_login(&mut browser, "/").await;
    let r = w.post_acs(&mut browser, &post).await;
    w.assert_refused(&mut browser, &r, "wrong_destination")
        .await;
}

// ---------------------------------------------------------------------------------------------
// Rejections: XML tricks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_injected_in_nameid_is_refused() {
    world()
        .await
        .refused_variant("comment-nameid", "xml_comment")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_evil_assertion_before_the_signed_one_is_refused() {
    world()
        .await
        .refused_variant("wrap-before", "assertion_count")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_evil_assertion_after_the_signed_one_is_refused() {
    world()
        .await
        .refused_variant("wrap-after", "assertion_count")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evil_assertion_around_the_signed_one_is_refused() {
    world()
        .await
        .refused_variant("wrap-around", "assertion_count")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_assertion_hidden_in_advice_is_refused() {
    world()
        .await
        .refused_variant("wrap-advice", "assertion_count")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_signed_assertions_are_refused() {
    world()
        .await
        .refused_variant("two-assertions", "assertion_count")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctype_is_refused() {
    world().await.refused_variant("doctype", "doctype").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xxe_is_refused() {
    world().await.refused_variant("xxe", "doctype").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_expansion_is_refused() {
    world()
        .await
        .refused_variant("billion-laughs", "doctype")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_post_is_refused_before_parsing() {
    let w = world().await;
    let mut browser = w.gw.browser("acme.localhost");
    let body = format!("SAMLResponse={}", "A".repeat(600 * 1024));
    let r = browser
        .post(
            "/.auth/saml/acs",
            "application/x-www-form-urlencoded",
            body,
            &[],
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.set_cookie("__Host-portcullis").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_flood_the_saml_endpoints() {
    // Each start stores a request and each post costs a signature check: one address gets
    // a burst of 30 and 10 a second.
    let w = world().await;
    let mut browser = w.gw.browser("acme.localhost");
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(browser.get("/.auth/saml/login").await.status);
    }
    assert_eq!(statuses[0], 302);
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(throttled >= 10, "statuses: {statuses:?}");
    let r = browser.get("/.auth/saml/login").await;
    if r.status == 429 {
        assert!(r.header("retry-after").is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_posts_get_clear_errors_and_change_nothing() {
    let w = world().await;
    let mut browser = w.gw.browser("acme.localhost");
    for (body, status) in [
        ("RelayState=x", 400),
        ("SAMLResponse=%%%", 403),
        ("SAMLResponse=PHg%2BPC94Pg%3D%3D", 403),
    ] {
        let r = browser
            .post(
                "/.auth/saml/acs",
                "application/x-www-form-urlencoded",
                body.to_string(),
                &[],
            )
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.set_cookie("__Host-portcullis").is_none());
    }
    let r = browser
        .post("/.auth/saml/acs", "application/json", "{}".into(), &[])
        .await;
    assert_eq!(r.status, 415);
    let mut gw = w.gw;
    assert!(gw.is_running());
}

// ---------------------------------------------------------------------------------------------
// Identity: namespacing, JIT, SSO-only tenants, break-glass
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_identity_never_takes_over_a_local_account() {
    let w = world().await;
    w.gw.add_user("acme", "bob", "correct horse battery staple 42", &["admin"]);
    let (mut browser, r) = w.login(&SsoOpts::user("bob")).await;
    w.assert_refused(&mut browser, &r, "local_account_conflict")
        .await;
    // And the local account still signs in with its password.
    let session =
        w.gw.login("acme.localhost", "bob", "correct horse battery staple 42")
            .await;
    assert!(!session.is_empty());
}

/// A tenant moves to a new IdP (a new entity ID): its accounts stay bound to the old one, so
/// the new IdP cannot sign them in until the operator moves them with `user rebind-idp`, which
/// moves only accounts of the named old IdP, never a local account, and is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_move_to_a_new_idp_only_when_the_operator_rebinds_them() {
    let w = world().await;
    for user in ["alice", "carol"] {
        let (_, r) = w.login(&SsoOpts::user(user)).await;
        assert_eq!(r.status, 303, "{user} via the first IdP: {}", r.text());
    }
    w.gw.add_user("acme", "bob", "correct horse battery staple 42", &[]);
    let old_entity = w.idp.entity_id();

    // Switch acme to a second IdP process (another entity ID) and let it know the SP.
    let World { idp: old_idp, gw } = w;
    let w = World {
        idp: Idp::start(),
        gw,
    };
    assert_ne!(w.idp.entity_id(), old_entity);
    w.replace_acme_metadata(&w.idp.metadata_xml());
    let sp = w.sp_metadata("acme.localhost").await.expect("sp metadata");
    w.idp.register_sp(&sp);
    drop(old_idp);

    let (mut b, r) = w.login(&SsoOpts::user("alice")).await;
    w.assert_refused(&mut b, &r, "other_idp_account").await;

    // Refused, changing nothing: a local account, an unknown IdP, the current IdP.
    for (args, why) in [
        (vec!["--from", old_entity.as_str(), "bob"], "local account"),
        (vec!["--from", "https://unknown.example/idp"], "unknown IdP"),
        (
            vec!["--from", "https://unknown.example/idp", "alice"],
            "not of that IdP",
        ),
        (vec!["--from", &w.idp.entity_id()], "already current"),
        (
            vec!["--from", old_entity.as_str(), "nobody"],
            "no such user",
        ),
    ] {
        let mut full = vec!["rebind-idp", "--tenant", "acme"];
        full.extend(args);
        let out = w.gw.user_cli(&full, "");
        assert_ne!(out.code, Some(0), "{why}: {out}");
        assert!(
            !out.stderr.trim().is_empty(),
            "{why}: a reason is given: {out}"
        );
    }
    let (mut b, r) = w.login(&SsoOpts::user("alice")).await;
    w.assert_refused(&mut b, &r, "other_idp_account").await;

    // One account first, then the rest.
    let out = w.gw.user_cli(
        &[
            "rebind-idp",
            "--tenant",
            "acme",
            "--from",
            &old_entity,
            "alice",
        ],
        "",
    );
    assert_eq!(out.code, Some(0), "{out}");
    let (mut b, r) = w.login(&SsoOpts::user("alice")).await;
    assert_eq!(r.status, 303, "alice via the new IdP: {}", r.text());
    assert_eq!(
        b.get("/app/after")
            .await
            .expect_echo()
            .header_once("x-portcullis-user"),
        "alice"
    );
    let (mut b, r) = w.login(&SsoOpts::user("carol")).await;
    w.assert_refused(&mut b, &r, "other_idp_account").await;
    let out = w.gw.user_cli(
        &["rebind-idp", "--tenant", "acme", "--from", &old_entity],
        "",
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("carol"), "{out}");
    let (_, r) = w.login(&SsoOpts::user("carol")).await;
    assert_eq!(r.status, 303, "carol via the new IdP: {}", r.text());

    // bob is still a local account: the new IdP cannot take it over, his password works.
    let (mut b, r) = w.login(&SsoOpts::user("bob")).await;
    w.assert_refused(&mut b, &r, "local_account_conflict").await;
    assert!(!w
        .gw
        .login("acme.localhost", "bob", "correct horse battery staple 42")
        .await
        .is_empty());

    let moved = records(
        &w.gw.site.config_path(),
        "acme",
        &["--event", "user_idp_changed"],
    );
    let subjects: Vec<&str> = moved.iter().filter_map(|r| r.field("subject")).collect();
    assert_eq!(moved.len(), 2, "{subjects:?}");
    assert!(subjects.contains(&"alice") && subjects.contains(&"carol"));
    for r in &moved {
        let reason = r.field("reason").unwrap_or_default();
        assert!(reason.contains(&old_entity), "{reason}");
        assert!(reason.contains(&w.idp.entity_id()), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sso_user_has_no_password_here() {
    let w = world().await;
    let (_, r) = w.login(&SsoOpts::user("alice")).await;
    assert_eq!(r.status, 303);
    let out = w.gw.user_cli(
        &["passwd", "--tenant", "acme", "alice", "--password-stdin"],
        "another long passphrase here\n",
    );
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("IdP"), "{out}");
    let r =
        w.gw.login_json("acme.localhost", "alice", "any password at all here", None)
            .await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_jit_only_added_sso_users_sign_in() {
    let w = world_with(ACME_SAML, |o| {
        o.acme_policy_extra = o
            .acme_policy_extra
            .replace("default_roles", "jit_provisioning = false\ndefault_roles");
    })
    .await;
    let (mut browser, r) = w.login(&SsoOpts::user("dana")).await;
    w.assert_refused(&mut browser, &r, "not_provisioned").await;
    let out =
        w.gw.user_cli(&["add", "--tenant", "acme", "--sso", "dana"], "");
    assert_eq!(out.code, Some(0), "{out}");
    let (_, r) = w.login(&SsoOpts::user("dana")).await;
    assert_eq!(r.status, 303, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_only_tenants_refuse_passwords_except_break_glass_admins() {
    let saml_only =
        format!("\n[login]\nmethods = [\"saml\"]\nbreak_glass = [\"root\"]\n{ACME_SAML}");
    let w = world_with(&saml_only, |_| {}).await;
    w.gw.add_user("acme", "root", "emergency access passphrase 1", &["admin"]);
    w.gw.add_user("acme", "carol", "ordinary user passphrase 22", &[]);
    let r =
        w.gw.login_json(
            "acme.localhost",
            "carol",
            "ordinary user passphrase 22",
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let session =
        w.gw.login("acme.localhost", "root", "emergency access passphrase 1")
            .await;
    assert!(!session.is_empty());
    let mut browser = w.gw.browser("acme.localhost");
    let page = browser.get("/.auth/login").await;
    let html = page.text();
    assert!(html.contains("/.auth/saml/login"), "{html}");
    assert!(html.contains("Emergency administrator sign-in"), "{html}");
    let failed = records(
        &w.gw.site.config_path(),
        "acme",
        &["--event", "login_failed"],
    );
    assert!(failed
        .iter()
        .any(|r| r.about("carol") && r.field("reason") == Some("password_login_disabled")));
}

// ---------------------------------------------------------------------------------------------
// Logout, metadata by URL, signed requests, secrets in logs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_and_goes_to_the_idp_slo() {
    let w = world_with(ACME_SAML, |o| {
        o.acme_policy_extra = o
            .acme_policy_extra
            .replace("default_roles", "logout_redirect = true\ndefault_roles");
    })
    .await;
    let (mut browser, r) = w.login(&SsoOpts::user("alice")).await;
    assert_eq!(r.status, 303);
    let session = browser.session().expect("session").to_string();
    let who = browser
        .get_with("/.auth/whoami", &[("accept", "application/json")])
        .await
        .json();
    let csrf = who["csrf"].as_str().expect("csrf").to_string();
    let r = browser.post_form("/.auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), Some(w.idp.slo_url().as_str()));
    assert!(
        w.gw.wait_session_ended("acme.localhost", &session, WAIT)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_from_an_url_is_fetched_and_used() {
    let idp_url_policy = |url: &str| format!("\n[saml]\nidp_metadata_url = \"{url}\"\n");
    let idp = Idp::start();
    let url = idp.metadata_url();
    let gw = Gateway::start(Opts {
        acme_policy_extra: idp_url_policy(&url),
        ..Opts::default()
    });
    let w = World { idp, gw };
    let xml = w.sp_metadata("acme.localhost").await.expect("SP metadata");
    w.idp.register_sp(&xml);
    // The first fetch happens right after start.
    let mut ok = false;
    for _ in 0..100 {
        let mut b = w.gw.browser("acme.localhost");
        let r = b.get("/.auth/saml/login").await;
        if r.status == 302 {
            ok = true;
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "metadata was fetched:\n{}", w.gw.logs());
    let (_, r) = w.login(&SsoOpts::user("alice")).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(
        w.gw.site.path("data/saml/acme.xml").exists(),
        "the fetched copy is kept on disk"
    );
}

/// The base64 body of a PEM certificate, as metadata carries it.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
}

/// `metadata` with the signing KeyDescriptor that holds `old` changed: `both` keeps it and
/// adds one for `new` (an IdP's rollover window), otherwise `new` replaces it.
fn rotated_metadata(metadata: &str, old: &str, new: &str, both: bool) -> String {
    let at = metadata
        .find(old)
        .expect("the IdP certificate is in its metadata");
    let start = metadata[..at]
        .rfind("KeyDescriptor")
        .and_then(|i| metadata[..i].rfind('<'))
        .expect("KeyDescriptor start");
    let close = metadata[at..]
        .find("KeyDescriptor>")
        .expect("KeyDescriptor end")
        + at;
    let end = close + "KeyDescriptor>".len();
    let descriptor = &metadata[start..end];
    let replacement = if both {
        format!("{descriptor}{}", descriptor.replace(old, new))
    } else {
        descriptor.replace(old, new)
    };
    format!("{}{replacement}{}", &metadata[..start], &metadata[end..])
}

impl World {
    /// Writes acme's IdP metadata file and waits until a reload has applied it.
    fn replace_acme_metadata(&self, xml: &str) {
        let reloads = || self.gw.logs().matches("config reloaded").count();
        let before = reloads();
        self.gw.site.write("policies/acme-idp.xml", xml);
        self.gw.sighup();
        assert!(
            poll_until(WAIT, || reloads() > before),
            "{}",
            self.gw.logs()
        );
    }
}

/// An IdP rolls its signing key over: a key the metadata does not list is refused; while the
/// metadata lists both certificates either key signs in; once the old certificate is gone
/// from the metadata (file edited, config reloaded) its signatures are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_signing_key_rollover_takes_effect_on_reload() {
    let w = world().await;
    let old = pem_body(&w.idp.cert_pem());
    let new = pem_body(&w.idp.other_cert_pem());
    let metadata = w.idp.metadata_xml();
    let old_key = SsoOpts::user("alice");
    let new_key = SsoOpts {
        key: Some("other".into()),
        ..SsoOpts::user("alice")
    };

    let (mut b, r) = w.login(&new_key).await;
    w.assert_refused(&mut b, &r, "bad_signature").await;

    w.replace_acme_metadata(&rotated_metadata(&metadata, &old, &new, true));
    for (name, opts) in [("old", &old_key), ("new", &new_key)] {
        let (mut b, r) = w.login(opts).await;
        assert_eq!(
            r.status,
            303,
            "{name} key during the rollover: {}",
            r.text()
        );
        let echo = b.get("/app/after").await.expect_echo();
        assert_eq!(echo.header_once("x-portcullis-user"), "alice");
    }

    w.replace_acme_metadata(&rotated_metadata(&metadata, &old, &new, false));
    let (_, r) = w.login(&new_key).await;
    assert_eq!(r.status, 303, "new key after the rollover: {}", r.text());
    let (mut b, r) = w.login(&old_key).await;
    w.assert_refused(&mut b, &r, "bad_signature").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_authn_requests_verify_at_the_idp() {
    let w = world_with(ACME_SAML, |o| {
        o.acme_policy_extra = o
            .acme_policy_extra
            .replace("default_roles", "sign_authn_requests = true\ndefault_roles");
    })
    .await;
    let xml = w.sp_metadata("acme.localhost").await.expect("metadata");
    assert!(xml.contains("AuthnRequestsSigned=\"true\""));
    assert!(xml.contains("X509Certificate"));
    let (_, r) = w.login(&SsoOpts::user("alice")).await;
    assert_eq!(r.status, 303, "{}", r.text());
    let req = w.idp.last_request();
    assert_eq!(req["signed"], true, "{req}");
    assert_eq!(req["verified"], true, "{req}");
    // The SP key is stored sealed (AES-256-GCM under the master key), never as PEM.
    let stored = sqlite_at(
        &w.gw.site.path("data/portcullis.db"),
        "SELECT sealed_key FROM saml_sp_key WHERE tenant = 'acme'",
    );
    assert!(stored.trim().starts_with("v1."), "{stored}");
    assert!(!stored.contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_saml_response_or_cookie_reaches_the_logs() {
    let w = world().await;
    let mut browser = w.gw.browser("acme.localhost");
    let post = w.idp_answer(&mut browser, &SsoOpts::user("alice")).await;
    assert_eq!(w.post_acs(&mut browser, &post).await.status, 303);
    let bad = w
        .idp_answer(
            &mut browser,
            &SsoOpts::user("alice").variant("nameid-changed"),
        )
        .await;
    assert_eq!(w.post_acs(&mut browser, &bad).await.status, 403);
    let logs = w.gw.logs();
    for secret in [&post.saml_response, &bad.saml_response] {
        assert!(
            !logs.contains(&secret[..40]),
            "a SAMLResponse is in the logs"
        );
    }
    let session = browser.session().expect("session");
    assert!(!logs.contains(session));
    let binding = browser.cookie("__Host-portcullis-saml").expect("binding");
    assert!(!logs.contains(binding));
    // Nor in the audit log.
    let audit = audit_support::listing(&records(&w.gw.site.config_path(), "acme", &[]));
    assert!(!audit.contains(&post.saml_response[..40]));
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn idp_metadata_without_a_signing_certificate_is_refused_with_file_and_line() {
    let idp = Idp::start();
    let site = Site::new(Opts::default());
    site.write("policies/acme-idp.xml", &idp.metadata_xml_without_cert());
    let policy = format!(
        "{}\n[saml]\nidp_metadata_file = \"acme-idp.xml\"\n",
        site.acme_policy("")
    );
    site.write("policies/acme.toml", &policy);
    let out = site.check();
    assert_ne!(out.code, Some(0), "{out}");
    let line = line_of(&policy, "idp_metadata_file");
    let found = error_locations(&out.combined(), "acme.toml");
    assert!(
        found
            .iter()
            .any(|(l, _, m)| *l == line && m.contains("no signing certificate")),
        "{out}"
    );
}

#[test]
fn saml_config_mistakes_are_reported_with_file_and_line() {
    let site = Site::new(Opts::default());
    for (extra, needle, message) in [
        (
            "\n[login]\nmethods = [\"saml\"]\n",
            "methods",
            "needs a [saml] table",
        ),
        (
            "\n[saml]\nidp_metadata_url = \"http://idp.example/m\"\n",
            "idp_metadata_url",
            "must be https",
        ),
        (
            "\n[saml]\nidp_metadata_file = \"missing.xml\"\n",
            "idp_metadata_file",
            "cannot read IdP metadata",
        ),
        (
            "\n[saml]\nidp_metadata_url = \"https://idp.example/m\"\nclock_skew_seconds = 3600\n",
            "clock_skew_seconds",
            "at most 600",
        ),
        (
            "\n[saml]\nidp_metadata_url = \"https://idp.example/m\"\nsurprise = 1\n",
            "surprise",
            "unknown field",
        ),
    ] {
        let policy = format!("{}{extra}", site.acme_policy(""));
        site.write("policies/acme.toml", &policy);
        let out = site.check();
        assert_ne!(out.code, Some(0), "{extra}: {out}");
        let line = line_of(&policy, needle);
        let found = error_locations(&out.combined(), "acme.toml");
        assert!(
            found
                .iter()
                .any(|(l, _, m)| *l == line && m.contains(message)),
            "{extra}: want line {line} `{message}`, got {found:?}\n{out}"
        );
    }
}
