//! The audit log (issue 7, items 1, 2 and 5) against real processes: every event type is
//! produced by its real action (through the gateway, the CLI or the operator API) and read
//! back with `portcullis audit`; the CLI's time and event filters; the hash chain catches an
//! edited, a deleted and a reordered record (tampered with the `sqlite3` CLI on copies of a
//! stopped gateway's store); no password, code, cookie, CSRF token or JWT is ever stored in an
//! event; a tenant admin never sees another tenant's events.

#[path = "common/admin.rs"]
mod admin_support;
#[path = "common/audit.rs"]
mod audit_support;
mod common;
#[path = "common/mfa.rs"]
mod mfa;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use audit_support::*;
use common::*;
use portcullis::audit::EventKind;

const ACME: &str = "acme.localhost";
const GLOBEX: &str = "globex.localhost";

// ---------------------------------------------------------------------------------------------
// The event types, pinned
// ---------------------------------------------------------------------------------------------

/// Every event type name, in the order of `EventKind::ALL` (src/audit/mod.rs). The const check
/// below fails the build if the product's list changes without this test changing with it.
const EVENT_NAMES: [&str; 27] = [
    "config_reloaded",
    "config_rejected",
    "request_denied",
    "bad_request_rejected",
    "login_succeeded",
    "login_failed",
    "logout",
    "session_expired",
    "session_revoked",
    "password_changed",
    "user_created",
    "user_disabled",
    "user_enabled",
    "login_throttled",
    "account_locked",
    "account_unlocked",
    "mfa_enrolled",
    "mfa_verified",
    "mfa_failed",
    "mfa_replay_rejected",
    "recovery_code_used",
    "mfa_removed",
    "mfa_reset",
    "config_reload_requested",
    "saml_assertion_accepted",
    "saml_assertion_rejected",
    "user_idp_changed",
];

const fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// Compile-time: the pinned list is exactly `EventKind::ALL`, name by name.
const _: () = {
    assert!(
        EVENT_NAMES.len() == EventKind::ALL.len(),
        "EventKind gained or lost a variant: update EVENT_NAMES and the test that produces it"
    );
    let mut i = 0;
    while i < EVENT_NAMES.len() {
        assert!(
            same_str(EVENT_NAMES[i], EventKind::ALL[i].as_str()),
            "EVENT_NAMES differs from EventKind::ALL"
        );
        i += 1;
    }
};

/// Where an event type is produced and checked.
#[derive(Debug, Clone, Copy)]
enum Covered {
    /// By `every_event_type_is_produced_by_its_real_action`: expected in `tenant`'s log with
    /// this outcome, about `user` (its actor or subject: a username, or the route of a
    /// denied request) when given.
    Here {
        tenant: &'static str,
        outcome: &'static str,
        user: Option<&'static str>,
    },
    /// By another named test (too slow to drive here).
    #[allow(dead_code)]
    Elsewhere(&'static str),
}

/// How each event type is covered. An exhaustive match (no `_` arm): a new variant does not
/// compile until it is given a real action here or a named test elsewhere.
fn coverage(kind: EventKind) -> Covered {
    use EventKind as K;
    let acme = |outcome, user| Covered::Here {
        tenant: "acme",
        outcome,
        user,
    };
    let operator = |outcome| Covered::Here {
        tenant: OPERATOR,
        outcome,
        user: None,
    };
    match kind {
        K::ConfigReloaded => operator("success"),
        K::ConfigRejected => operator("failure"),
        K::ConfigReloadRequested => operator("success"),
        K::RequestDenied => acme("denied", Some("app")),
        K::BadRequestRejected => acme("denied", None),
        K::LoginSucceeded => acme("success", Some("bob")),
        K::LoginFailed => acme("failure", Some("bob")),
        K::Logout => acme("success", Some("bob")),
        K::SessionExpired => acme("denied", Some("ivan")),
        K::SessionRevoked => acme("success", Some("bob")),
        K::PasswordChanged => acme("success", Some("bob")),
        K::UserCreated => acme("success", Some("alice")),
        K::UserDisabled => acme("success", Some("bob")),
        K::UserEnabled => acme("success", Some("bob")),
        K::LoginThrottled => acme("denied", Some("lockie")),
        K::AccountLocked => acme("denied", Some("lockie")),
        K::AccountUnlocked => acme("success", Some("lockie")),
        K::MfaEnrolled => acme("success", Some("erin")),
        K::MfaVerified => acme("success", Some("erin")),
        K::MfaFailed => acme("failure", Some("erin")),
        K::MfaReplayRejected => acme("failure", Some("erin")),
        K::RecoveryCodeUsed => acme("success", Some("erin")),
        K::MfaRemoved => acme("success", Some("erin")),
        K::MfaReset => acme("success", Some("frank")),
        K::SamlAssertionAccepted => Covered::Elsewhere(
            "tests/saml.rs: sp_initiated_login_reaches_the_app_with_the_idp_identity_and_mapped_roles",
        ),
        K::SamlAssertionRejected => {
            Covered::Elsewhere("tests/saml.rs: every rejection test (World::assert_refused)")
        }
        K::UserIdpChanged => Covered::Elsewhere(
            "tests/saml.rs: accounts_move_to_a_new_idp_only_when_the_operator_rebinds_them",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Every event type from its real action
// ---------------------------------------------------------------------------------------------

const ALICE_PW: &str = "alice-admin-lantern-orchid";
const BOB_PW: &str = "bob-plain-staple-harbour";
const BOB_PW2: &str = "bob-second-quartz-meadow";
const IVAN_PW: &str = "ivan-idle-copper-kettle";
const LOCKIE_PW: &str = "lockie-right-amber-violin";
const WRONG_PW: &str = "definitely-not-the-password-9";

/// A world whose only trusted proxy is the test (127.0.0.1): `X-Forwarded-For` chooses the
/// client address, so each actor has its own brute-force budgets.
fn proxied_world() -> Gateway {
    Gateway::start(Opts {
        trusted_proxies: vec!["127.0.0.1/32".into()],
        ..Opts::default()
    })
}

/// Waits (bounded) for an event and fails with the log when it does not come.
fn expect_event(gw: &Gateway, tenant: &str, kind: &str, user: Option<&str>, after: &str) {
    let config = gw.site.config_path();
    if !wait_event(&config, tenant, kind, user) {
        let all = records(&config, tenant, &[]);
        panic!(
            "no {kind} event (about {user:?}) in tenant {tenant} after {after}; log:\n{}\n\
             gateway log tail:\n{}",
            listing(&all),
            tail(&gw.logs(), 30)
        );
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Counts of `kind` in `tenant`'s log.
fn count(gw: &Gateway, tenant: &str, kind: &str) -> usize {
    records(&gw.site.config_path(), tenant, &["--event", kind]).len()
}

#[tokio::test]
async fn every_event_type_is_produced_by_its_real_action() {
    let gw = proxied_world();
    let config = gw.site.config_path();

    // user_created (CLI) for every account of the scenario.
    gw.add_user("acme", "alice", ALICE_PW, &["admin"]);
    gw.add_user("acme", "bob", BOB_PW, &[]);
    gw.add_user("acme", "ivan", IVAN_PW, &[]);
    gw.add_user("acme", "erin", mfa::PASSWORD, &[]);
    gw.add_user("acme", "frank", mfa::PASSWORD, &[]);
    gw.add_user("acme", "lockie", LOCKIE_PW, &[]);

    // config_reloaded: edit acme's policy (a 1-minute idle timeout, used for session_expired).
    let idle_policy = format!(
        "{}\n[session]\nidle_timeout_minutes = 1\n",
        gw.site.acme_policy("")
    );
    let reloads = count(&gw, OPERATOR, "config_reloaded");
    gw.site.write("policies/acme.toml", &idle_policy);
    assert!(
        poll_until(Duration::from_secs(15), || count(
            &gw,
            OPERATOR,
            "config_reloaded"
        ) > reloads),
        "no config_reloaded after a policy edit:\n{}",
        tail(&gw.logs(), 30)
    );

    // A session left idle from now on (for session_expired at the end).
    let ivan = Agent::new(&gw, ACME, Some("198.51.100.3"));
    let ivan_session = ivan.sign_in("ivan", IVAN_PW).await;
    let ivan_since = Instant::now();
    let who = ivan.get("/.auth/whoami", Some(&ivan_session)).await;
    assert_eq!(
        who.json()["idle_timeout"],
        60,
        "the edited policy is in force for new sessions: {}",
        who.text()
    );

    // config_rejected: a policy with an unknown key, then the good one back.
    let reloads = count(&gw, OPERATOR, "config_reloaded");
    gw.site.write(
        "policies/acme.toml",
        &format!("{idle_policy}no_such_setting = true\n"),
    );
    // (The CLI refuses to read the log under a broken configuration: ask the operator API.)
    let rejected = admin_support::wait_events(&gw, "tenant=_operator&event=config_rejected", 1);
    assert_eq!(
        rejected.len(),
        1,
        "config_rejected after an invalid policy:\n{}",
        tail(&gw.logs(), 30)
    );
    gw.site.write("policies/acme.toml", &idle_policy);
    assert!(
        poll_until(Duration::from_secs(15), || count(
            &gw,
            OPERATOR,
            "config_reloaded"
        ) > reloads),
        "restoring the policy reloads it"
    );

    // config_reload_requested: the operator API.
    let reload = admin_support::operator(&gw, "POST", "/v1/reload");
    assert_eq!(reload.status, 202, "POST /v1/reload: {}", reload.text());
    expect_event(
        &gw,
        OPERATOR,
        "config_reload_requested",
        None,
        "POST /v1/reload",
    );

    // request_denied: an unauthenticated request to an authenticated route.
    let anon = Agent::new(&gw, ACME, Some("198.51.100.9"));
    let denied = anon.get("/app", None).await;
    assert_eq!(denied.status, 401, "{}", denied.text());
    // bad_request_rejected: a dot segment, percent-encoded.
    let bad = gw.raw_get(ACME, "/a/%2e%2e/b", &[]).await;
    assert_eq!(bad.status, 400, "{}", bad.text());

    // login_failed, then login_succeeded and logout.
    let bob = Agent::new(&gw, ACME, Some("198.51.100.2"));
    let wrong = bob.login("bob", WRONG_PW).await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    let session = bob.sign_in("bob", BOB_PW).await;
    let csrf = bob.csrf(&session).await;
    let out = bob
        .post_form("/.auth/logout", Some(&session), Some(&csrf), &[])
        .await;
    assert_eq!(out.status, 200, "logout: {}", out.text());

    // password_changed: bob changes his own password.
    let session = bob.sign_in("bob", BOB_PW).await;
    let csrf = bob.csrf(&session).await;
    let changed = bob
        .post_form(
            "/.auth/password",
            Some(&session),
            None,
            &[
                ("current_password", BOB_PW),
                ("new_password", BOB_PW2),
                ("confirm_password", BOB_PW2),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(changed.status, 200, "password change: {}", changed.text());
    let bob_session = changed
        .set_cookie_value(SESSION_COOKIE)
        .filter(|c| !c.is_empty())
        .expect("a fresh session after the change");

    // user_disabled: the tenant admin disables bob (ending his session) ...
    let alice = Agent::new(&gw, ACME, Some("198.51.100.1"));
    let admin = alice.sign_in("alice", ALICE_PW).await;
    let admin_csrf = alice.csrf(&admin).await;
    let disabled = alice
        .post_form(
            "/.auth/admin/users/bob/disable",
            Some(&admin),
            Some(&admin_csrf),
            &[],
        )
        .await;
    assert_eq!(disabled.status, 200, "admin disable: {}", disabled.text());
    assert_eq!(
        bob.get("/.auth/whoami", Some(&bob_session)).await.status,
        401,
        "disabling ends bob's session"
    );
    // ... user_enabled: the operator re-enables him with the CLI ...
    let out = gw.user_cli(&["enable", "--tenant", "acme", "bob"], "");
    assert_eq!(out.code, Some(0), "user enable:\n{out}");
    // ... session_revoked: the operator API ends his new session.
    let bob_session = bob.sign_in("bob", BOB_PW2).await;
    let revoked = admin_support::operator(&gw, "DELETE", "/v1/tenants/acme/users/bob/sessions");
    assert_eq!(revoked.status, 200, "revoke: {}", revoked.text());
    assert!(
        gw.wait_session_ended(ACME, &bob_session, Duration::from_secs(5))
            .await,
        "the revoked session still works"
    );

    // Second factor: erin enrols, fails, verifies, is replayed, uses a recovery code and turns
    // TOTP off; frank enrols and the operator resets his factor.
    let erin_ip = Some("198.51.100.4");
    let c = mfa::Client::new(&gw);
    let first = c.login_expect("erin", erin_ip, "done").await;
    let enrolled = c.enroll(&first.cookie, -(mfa::STEP as i64), erin_ip).await;
    mfa::fresh_window(5.0).await;
    let sf = c.login_expect("erin", erin_ip, "second_factor").await;
    let wrong = c
        .verify(
            &sf.cookie,
            &sf.csrf,
            &mfa::wrong_code(&enrolled.key),
            erin_ip,
        )
        .await;
    assert_eq!(wrong.status, 401, "wrong code: {}", wrong.describe());
    let sf = c.login_expect("erin", erin_ip, "second_factor").await;
    let verified_at = mfa::now();
    let code = mfa::oathtool(&enrolled.key, verified_at);
    let ok = c.verify(&sf.cookie, &sf.csrf, &code, erin_ip).await;
    assert_eq!(ok.status, 200, "right code: {}", ok.describe());
    let sf = c.login_expect("erin", erin_ip, "second_factor").await;
    let replay = c.verify(&sf.cookie, &sf.csrf, &code, erin_ip).await;
    assert_eq!(replay.status, 401, "replayed code: {}", replay.describe());
    let sf = c.login_expect("erin", erin_ip, "second_factor").await;
    let rec = c
        .verify_recovery(&sf.cookie, &sf.csrf, &enrolled.recovery_codes[0], erin_ip)
        .await;
    assert_eq!(rec.status, 200, "recovery code: {}", rec.describe());
    // The step after the verified one is unused and within ±1 step of now.
    let next_step = (mfa::step_of(verified_at) + 1) * mfa::STEP;
    let remove_code = mfa::oathtool(&enrolled.key, next_step);
    let erin_csrf = c.csrf_of(&rec.cookie).await;
    let removed = c
        .enroll_post(
            &rec.cookie,
            &[
                ("action", "remove"),
                ("code", &remove_code),
                ("csrf", &erin_csrf),
            ],
            erin_ip,
        )
        .await;
    assert_eq!(removed.status, 200, "turn TOTP off: {}", removed.describe());

    let frank_ip = Some("198.51.100.5");
    let first = c.login_expect("frank", frank_ip, "done").await;
    c.enroll(&first.cookie, -(mfa::STEP as i64), frank_ip).await;
    let reset = admin_support::operator(&gw, "POST", "/v1/tenants/acme/users/frank/reset-mfa");
    assert_eq!(reset.status, 200, "reset-mfa: {}", reset.text());

    // account_locked: HARD_CAP consecutive failures. Addresses known for lockie (a success
    // from each) skip the account back-off, so each gives its PAIR_FREE_FAILURES.
    use portcullis::ratelimit::{HARD_CAP, PAIR_FREE_FAILURES};
    let lock_started = Instant::now();
    let lockie = Agent::new(&gw, ACME, None);
    let pairs = HARD_CAP.div_ceil(PAIR_FREE_FAILURES) as usize;
    let known: Vec<String> = (1..=pairs).map(|i| format!("203.0.113.{i}")).collect();
    for ip in &known {
        lockie.at_ip(ip).sign_in("lockie", LOCKIE_PW).await;
    }
    // In batches, so no request waits behind more than a few hashes.
    let mut statuses = Vec::new();
    for batch in (0..HARD_CAP as usize).collect::<Vec<_>>().chunks(10) {
        let mut set = tokio::task::JoinSet::new();
        for i in batch {
            let agent = lockie.at_ip(&known[i % pairs]);
            set.spawn(async move { agent.login("lockie", WRONG_PW).await.status });
        }
        while let Some(done) = set.join_next().await {
            statuses.push(done.expect("login task"));
        }
    }
    assert!(
        statuses.iter().all(|s| *s == 401),
        "{HARD_CAP} wrong passwords from known addresses are each checked: {statuses:?}"
    );
    // login_throttled: the locked account refuses even its right password.
    let locked = lockie.at_ip("203.0.113.1").login("lockie", LOCKIE_PW).await;
    assert_eq!(locked.status, 429, "locked account: {}", locked.text());
    eprintln!(
        "note: locking the account took {:?}",
        lock_started.elapsed()
    );
    // account_unlocked: `portcullis user unlock` (through the running gateway's API).
    let out = gw.user_cli(&["unlock", "--tenant", "acme", "lockie"], "");
    assert_eq!(out.code, Some(0), "user unlock:\n{out}");
    lockie
        .at_ip("203.0.113.1")
        .sign_in("lockie", LOCKIE_PW)
        .await;

    // session_expired: ivan's session has been idle for longer than the policy's minute.
    let idle = Duration::from_secs(61) + Duration::from_millis(500);
    if let Some(left) = idle.checked_sub(ivan_since.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let late = ivan.get("/app", Some(&ivan_session)).await;
    assert_eq!(late.status, 401, "idle session: {}", late.text());

    // Read both logs (asynchronously stored events may lag) and check every type.
    let mut acme_log = Vec::new();
    let mut operator_log = Vec::new();
    let mut missing = Vec::new();
    poll_until(Duration::from_secs(15), || {
        acme_log = records(&config, "acme", &[]);
        operator_log = records(&config, OPERATOR, &[]);
        missing = EVENT_NAMES
            .iter()
            .map(|name| name.parse::<EventKind>().expect("a pinned name"))
            .filter(|k| match coverage(*k) {
                Covered::Here {
                    tenant,
                    outcome,
                    user,
                } => {
                    let log = if tenant == OPERATOR {
                        &operator_log
                    } else {
                        &acme_log
                    };
                    !log.iter().any(|r| {
                        r.kind() == k.as_str()
                            && r.field("outcome") == Some(outcome)
                            && user.is_none_or(|u| r.about(u))
                    })
                }
                Covered::Elsewhere(_) => false,
            })
            .map(|k| k.as_str())
            .collect();
        missing.is_empty()
    });
    let elsewhere: Vec<String> = EVENT_NAMES
        .iter()
        .map(|name| name.parse::<EventKind>().expect("a pinned name"))
        .filter_map(|k| match coverage(k) {
            Covered::Elsewhere(test) => Some(format!("{k} ({test})")),
            Covered::Here { .. } => None,
        })
        .collect();
    eprintln!("event types covered by other tests: {elsewhere:?}");
    assert!(
        missing.is_empty(),
        "event types not produced by their action: {missing:?}\n\
         acme:\n{}\n_operator:\n{}",
        listing(&acme_log),
        listing(&operator_log)
    );
    // And the list the test checks is the product's.
    let seen: BTreeSet<&str> = acme_log
        .iter()
        .chain(&operator_log)
        .map(|r| r.kind())
        .collect();
    for name in seen {
        assert!(
            EVENT_NAMES.contains(&name),
            "the log holds an event type the pinned list does not know: {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. CLI filters
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn audit_cli_filters_by_time_and_event() {
    let gw = Gateway::start_default();
    let config = gw.site.config_path();
    gw.add_user("acme", "bob", BOB_PW, &[]);

    // Before the cut: two failures.
    for _ in 0..2 {
        let resp = gw.login_json(ACME, "bob", WRONG_PW, None).await;
        assert_eq!(resp.status, 401, "{}", resp.text());
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // After the cut: one failure, one success, one denied request.
    let resp = gw.login_json(ACME, "bob", WRONG_PW, None).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    gw.login(ACME, "bob", BOB_PW).await;
    let denied = gw
        .get_as(ACME, "/app", None, &[("accept", "application/json")])
        .await;
    assert_eq!(denied.status, 401);
    let all = wait_records(&config, "acme", Duration::from_secs(15), |rs| {
        rs.iter().any(|r| r.kind() == "request_denied")
    });
    let kinds = |rs: &[Record]| rs.iter().map(|r| r.kind().to_string()).collect::<Vec<_>>();
    assert!(
        all.iter().any(|r| r.kind() == "request_denied"),
        "{}",
        listing(&all)
    );

    // --since 1h: every fresh event.
    let recent = records(&config, "acme", &["--since", "1h"]);
    assert_eq!(
        recent.iter().map(|r| r.seq).collect::<Vec<_>>(),
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        "--since 1h must include every event of the last minute\nall:\n{}\nrecent:\n{}",
        listing(&all),
        listing(&recent)
    );
    for kind in [
        "user_created",
        "login_failed",
        "login_succeeded",
        "request_denied",
    ] {
        assert!(
            kinds(&recent).iter().any(|k| k == kind),
            "{kind} in --since 1h"
        );
    }
    // Newest first.
    assert!(
        recent.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first: {:?}",
        recent.iter().map(|r| r.seq).collect::<Vec<_>>()
    );

    // --since an exact time: only what came after it.
    let cut_text = cut
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    let after = records(&config, "acme", &["--since", &cut_text]);
    let mut after_kinds = kinds(&after);
    after_kinds.sort();
    assert_eq!(
        after_kinds,
        ["login_failed", "login_succeeded", "request_denied"],
        "--since {cut_text}:\n{}",
        listing(&after)
    );

    // --event login_failed: those and nothing else, all three.
    let failed = records(&config, "acme", &["--event", "login_failed"]);
    assert_eq!(failed.len(), 3, "{}", listing(&failed));
    assert!(
        failed
            .iter()
            .all(|r| r.kind() == "login_failed" && r.about("bob")),
        "{}",
        listing(&failed)
    );
    // Both filters at once.
    let both = records(
        &config,
        "acme",
        &["--event", "login_failed", "--since", &cut_text],
    );
    assert_eq!(both.len(), 1, "{}", listing(&both));
    // The table form filters the same way.
    let table = audit_cli(
        &config,
        &[
            "--tenant",
            "acme",
            "--event",
            "login_failed",
            "--since",
            "1h",
        ],
    );
    assert_eq!(table.code, Some(0), "{table}");
    let lines: Vec<&str> = table.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines.iter().all(|l| l.contains("\tlogin_failed\t")),
        "{table}"
    );
    // An unknown event type is an error, not an empty answer.
    let unknown = audit_cli(&config, &["--tenant", "acme", "--event", "login_failedd"]);
    assert_ne!(unknown.code, Some(0), "{unknown}");
    assert!(unknown.stderr.contains("login_failedd"), "{unknown}");
}

// ---------------------------------------------------------------------------------------------
// 3. Chain verification
// ---------------------------------------------------------------------------------------------

fn verify(config: &std::path::Path) -> CmdOutput {
    audit_cli(config, &["--tenant", "acme", "verify"])
}

#[tokio::test]
async fn chain_verification_catches_edits_deletions_and_reordering() {
    let mut gw = Gateway::start_default();
    let config = gw.site.config_path();
    gw.add_user("acme", "bob", BOB_PW, &[]);
    for _ in 0..3 {
        let resp = gw.login_json(ACME, "bob", WRONG_PW, None).await;
        assert_eq!(resp.status, 401);
    }
    gw.login(ACME, "bob", BOB_PW).await;
    let denied = gw
        .get_as(ACME, "/app", None, &[("accept", "application/json")])
        .await;
    assert_eq!(denied.status, 401);
    gw.disable_user("acme", "bob");
    let stored = wait_records(&config, "acme", Duration::from_secs(15), |rs| {
        rs.len() >= 7 && rs.iter().any(|r| r.kind() == "request_denied")
    });
    assert!(stored.len() >= 7, "{}", listing(&stored));
    let n = stored.len();
    stop(&mut gw);

    let live = verify(&config);
    assert_eq!(live.code, Some(0), "the untouched store verifies:\n{live}");
    assert!(
        live.stdout.contains(&format!("ok: {n} record(s)")),
        "{live}"
    );

    let copies = tempfile::Builder::new()
        .prefix("portcullis-audit-tamper-")
        .tempdir()
        .expect("tempdir");
    // Middle records, away from both ends of the chain; and the newest one.
    let (a, b) = (3u64, 5u64);
    let row = |seq: u64| format!("tenant = 'acme' AND seq = {seq}");
    let cases: [(&str, String, String); 4] = [
        (
            "edit",
            format!(
                "UPDATE audit_event SET reason = 'nothing to see' WHERE {};",
                row(a)
            ),
            format!("record {a} "),
        ),
        (
            "delete",
            format!("DELETE FROM audit_event WHERE {};", row(a)),
            format!("record {a} "),
        ),
        (
            "swap",
            format!(
                "BEGIN; UPDATE audit_event SET seq = -1 WHERE {}; \
                 UPDATE audit_event SET seq = {a} WHERE {}; \
                 UPDATE audit_event SET seq = {b} WHERE tenant = 'acme' AND seq = -1; COMMIT;",
                row(a),
                row(b)
            ),
            format!("record {a} "),
        ),
        (
            "delete newest",
            format!("DELETE FROM audit_event WHERE {};", row(n as u64)),
            format!("head says {n}"),
        ),
    ];
    let untouched = copy_site(&gw.site, &copies.path().join("untouched"));
    for (name, sql, needle) in &cases {
        let copy = copy_site(&gw.site, &copies.path().join(name.replace(' ', "-")));
        let db = copy.with_file_name("data").join("portcullis.db");
        let count = "SELECT count(*) FROM audit_event WHERE tenant = 'acme';";
        let before = sqlite_at(&db, count);
        sqlite_at(&db, sql);
        let after = sqlite_at(&db, count);
        if name.starts_with("delete") {
            assert_ne!(before, after, "{name}: the delete removed a row");
        }
        let out = verify(&copy);
        eprintln!("{name}: {}", out.combined().trim());
        assert_ne!(out.code, Some(0), "{name}: verify must fail:\n{out}");
        let names_record = out
            .combined()
            .lines()
            .any(|l| l.contains("broken") && l.contains("acme") && l.contains(needle.as_str()));
        assert!(
            names_record,
            "{name}: one line naming tenant acme and {needle:?}:\n{out}"
        );
    }
    let ok = verify(&untouched);
    assert_eq!(ok.code, Some(0), "the untouched copy verifies:\n{ok}");
    assert!(ok.stdout.contains(&format!("ok: {n} record(s)")), "{ok}");
}

// ---------------------------------------------------------------------------------------------
// 4. No secrets in stored events
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_secret_appears_in_any_stored_event() {
    let gw = mfa::world();
    let c = mfa::Client::new(&gw);
    let new_pw = "sam-brand-new-cobalt-ferry";
    let wrong_pw = "sam-typo-cobalt-fery-1234";
    gw.add_user("acme", "sam", mfa::PASSWORD, &[]);
    let mut secrets: Vec<(String, String)> = vec![
        ("password".into(), mfa::PASSWORD.into()),
        ("new password".into(), new_pw.into()),
        ("wrong password".into(), wrong_pw.into()),
    ];
    // Digit codes, checked as tokens of their own.
    let mut codes: Vec<(String, String)> = Vec::new();

    // A wrong password, then the sign-in form (login CSRF token) with the right one.
    let resp = gw.login_json(ACME, "sam", wrong_pw, None).await;
    assert_eq!(resp.status, 401);
    let mut browser = gw.browser(ACME);
    let page = browser.get("/.auth/login?return_to=/app").await;
    let login_csrf = form_field(&page.text(), "csrf").expect("csrf field");
    secrets.push(("login CSRF token".into(), login_csrf.clone()));
    let signed = browser
        .post_form(
            "/.auth/login",
            &[
                ("username", "sam"),
                ("password", mfa::PASSWORD),
                ("csrf", &login_csrf),
                ("return_to", "/app"),
            ],
        )
        .await;
    assert_eq!(signed.status, 303, "form sign-in: {}", signed.text());
    let s1 = browser.session().expect("session cookie").to_string();
    secrets.push(("session cookie".into(), s1.clone()));
    let csrf1 = c.csrf_of(&s1).await;
    secrets.push(("session CSRF token".into(), csrf1));
    let jwt_of = |resp: &Response| -> String {
        resp.expect_echo()
            .header_once("x-portcullis-jwt")
            .to_string()
    };
    let app = c.get("/app", Some(&s1), true).await;
    let jwt = jwt_of(&app);
    secrets.push(("JWT".into(), jwt.clone()));
    secrets.push((
        "JWT signature".into(),
        jwt.rsplit('.').next().unwrap_or_default().to_string(),
    ));

    // TOTP: the key, the confirmation code, recovery codes.
    let e = c.enroll(&s1, -(mfa::STEP as i64), None).await;
    secrets.push(("TOTP key".into(), e.key.clone()));
    secrets.push(("session cookie after enrolment".into(), e.session.clone()));
    codes.push((
        "enrolment code".into(),
        mfa::oathtool(&e.key, e.confirmed_with),
    ));
    for (i, rc) in e.recovery_codes.iter().enumerate() {
        secrets.push((format!("recovery code {i}"), rc.clone()));
        secrets.push((format!("recovery code {i} bare"), rc.replace('-', "")));
    }

    // Second factor: a wrong code, the right one, a replay, a recovery code.
    mfa::fresh_window(5.0).await;
    let sf = c.login_expect("sam", None, "second_factor").await;
    secrets.push(("pre-MFA session cookie".into(), sf.cookie.clone()));
    secrets.push(("pre-MFA CSRF token".into(), sf.csrf.clone()));
    let wrong = mfa::wrong_code(&e.key);
    codes.push(("wrong TOTP code".into(), wrong.clone()));
    let r = c.verify(&sf.cookie, &sf.csrf, &wrong, None).await;
    assert_eq!(r.status, 401, "{}", r.describe());
    let sf = c.login_expect("sam", None, "second_factor").await;
    secrets.push(("pre-MFA session cookie 2".into(), sf.cookie.clone()));
    let code = mfa::oathtool(&e.key, mfa::now());
    codes.push(("TOTP code".into(), code.clone()));
    let ok = c.verify(&sf.cookie, &sf.csrf, &code, None).await;
    assert_eq!(ok.status, 200, "{}", ok.describe());
    let s2 = ok.cookie.clone();
    secrets.push(("session cookie after TOTP".into(), s2.clone()));
    let app = c.get("/app", Some(&s2), true).await;
    let jwt2 = jwt_of(&app);
    secrets.push(("JWT after TOTP".into(), jwt2));
    let sf = c.login_expect("sam", None, "second_factor").await;
    let r = c.verify(&sf.cookie, &sf.csrf, &code, None).await;
    assert_eq!(r.status, 401, "replay: {}", r.describe());
    let r = c
        .verify_recovery(&sf.cookie, &sf.csrf, &e.recovery_codes[3], None)
        .await;
    assert_eq!(r.status, 200, "recovery code: {}", r.describe());
    let s3 = r.cookie.clone();
    secrets.push(("session cookie after recovery".into(), s3.clone()));

    // A password change, a logout, and requests carrying secrets where an attacker might
    // hope they get logged (query strings of refused requests).
    let csrf3 = c.csrf_of(&s3).await;
    secrets.push(("CSRF token after recovery".into(), csrf3.clone()));
    let agent = Agent::new(&gw, ACME, None);
    let changed = agent
        .post_form(
            "/.auth/password",
            Some(&s3),
            Some(&csrf3),
            &[
                ("current_password", mfa::PASSWORD),
                ("new_password", new_pw),
                ("confirm_password", new_pw),
            ],
        )
        .await;
    assert_eq!(changed.status, 200, "password change: {}", changed.text());
    let s4 = changed
        .set_cookie_value(SESSION_COOKIE)
        .expect("session after change");
    secrets.push(("session cookie after change".into(), s4.clone()));
    let csrf4 = agent.csrf(&s4).await;
    let probe = agent
        .get(&format!("/app?session={s1}&jwt={jwt}&csrf={csrf4}"), None)
        .await;
    assert_eq!(probe.status, 401);
    let bad_cookie = agent.get("/app", Some(&s1)).await;
    assert_eq!(bad_cookie.status, 401, "an ended session");
    let out = agent
        .post_form("/.auth/logout", Some(&s4), Some(&csrf4), &[])
        .await;
    assert_eq!(out.status, 200, "logout: {}", out.text());
    secrets.push(("CSRF token at logout".into(), csrf4));

    // Everything stored (the asynchronous request_denied included).
    let config = gw.site.config_path();
    let stored = wait_records(&config, "acme", Duration::from_secs(15), |rs| {
        rs.iter().filter(|r| r.kind() == "request_denied").count() >= 2
            && rs.iter().any(|r| r.kind() == "logout")
    });
    for kind in [
        "login_failed",
        "login_succeeded",
        "mfa_enrolled",
        "mfa_failed",
        "mfa_verified",
        "mfa_replay_rejected",
        "recovery_code_used",
        "password_changed",
        "request_denied",
        "logout",
    ] {
        assert!(
            stored.iter().any(|r| r.kind() == kind),
            "{kind} stored:\n{}",
            listing(&stored)
        );
    }

    let dump = std::process::Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(mfa::db_path(&gw))
        .arg(".dump")
        .output()
        .expect("run sqlite3 .dump");
    assert!(dump.status.success(), "sqlite3 .dump failed");
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    let audit_rows: Vec<&str> = dump
        .lines()
        .filter(|l| {
            l.starts_with("INSERT INTO audit_event") || l.starts_with("INSERT INTO audit_chain")
        })
        .collect();
    assert!(
        audit_rows.len() > stored.len(),
        "the dump holds the audit rows ({} lines for {} records)",
        audit_rows.len(),
        stored.len()
    );
    let rows = audit_rows.join("\n");
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        assert!(secret.len() >= 8, "{what} is too short to search for");
        if rows.contains(secret.as_str()) {
            leaks.push(what.clone());
        }
    }
    for (what, code) in &codes {
        if has_token(&rows, code) {
            leaks.push(format!("{what} ({code})"));
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets in stored audit events: {leaks:?}\nrows:\n{rows}"
    );
    // Beyond the audit rows: passwords, session tokens, JWTs, recovery codes and the TOTP key
    // are stored nowhere in the clear (only CSRF tokens are kept with their sessions).
    let elsewhere: Vec<&String> = secrets
        .iter()
        .filter(|(what, _)| !what.contains("CSRF"))
        .filter(|(_, secret)| dump.contains(secret.as_str()))
        .map(|(what, _)| what)
        .collect();
    assert!(
        elsewhere.is_empty(),
        "secrets stored in the clear: {elsewhere:?}"
    );
    // The dumped rows are the same events the CLI reads (not an empty or other table).
    assert!(
        rows.contains("'mfa_replay_rejected'") && rows.contains("'sam'"),
        "{rows}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Tenant isolation of the admin audit view
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tenant_admin_sees_only_own_tenant_events() {
    let gw = admin_support::world();
    let globex_ua = "globex-only-agent/1.0";
    let globex_get = |path: &str| {
        gw.client()
            .get(gw.url(GLOBEX, path))
            .header("user-agent", globex_ua)
            .header("accept", "application/json")
    };
    // globex: failures and a success of its users, a denied request, from a recognisable
    // client.
    for user in ["dave", "carol", "nobody-at-globex"] {
        let req = gw
            .client()
            .post(gw.url(GLOBEX, "/.auth/login"))
            .header("user-agent", globex_ua)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(serde_json::json!({ "username": user, "password": WRONG_PW }).to_string());
        assert_eq!(fetch(req).await.status, 401);
    }
    gw.login(GLOBEX, "dave", admin_support::DAVE_PW).await;
    assert_eq!(fetch(globex_get("/app")).await.status, 401);
    // acme: a failure, so acme's own log has something besides sign-ins.
    let resp = gw.login_json(ACME, "bob", WRONG_PW, None).await;
    assert_eq!(resp.status, 401);

    // The globex events exist (operator view).
    let globex = admin_support::wait_events(&gw, "tenant=globex&limit=1000", 6);
    assert!(
        globex.iter().any(|e| e["event"] == "request_denied")
            && globex.iter().any(|e| e["event"] == "login_failed"),
        "globex events: {globex:?}"
    );

    let (alice, _) = admin_support::sign_in(&gw, ACME, "alice", admin_support::ALICE_PW).await;
    let globex_words = ["globex", "dave", "carol", "nobody-at-globex", globex_ua];
    for query in [
        "",
        "&tenant=globex",
        "&user=dave",
        "&user=carol",
        "&event=login_failed",
        "&tenant=globex&user=dave&event=request_denied",
    ] {
        let path = format!("/.auth/admin/audit?format=json&limit=1000{query}");
        let resp = admin_support::get_json(&gw, ACME, &path, Some(&alice)).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        let events = resp.json()["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for e in &events {
            assert_eq!(e["tenant"], "acme", "{path}: another tenant's event {e}");
        }
        let text = resp.text();
        for word in globex_words {
            assert!(
                !text.contains(word),
                "{path}: acme's admin sees {word:?}:\n{text}"
            );
        }
        if query.is_empty() {
            // Positive control: acme's own events are there.
            assert!(
                events
                    .iter()
                    .any(|e| e["event"] == "login_failed" && e["subject"] == "bob"),
                "acme's own events: {text}"
            );
        }
    }
}
