//! TOTP two-factor authentication (issue 5) through a real gateway over real TLS, with codes
//! made by the independent `oathtool` binary: enrolment (QR, key, confirmation, recovery
//! codes), no session after the password alone, rotation at the second factor, ±1 step
//! accepted and ±2 refused, single use (also under 20 parallel requests), recovery codes,
//! `mfa = "required"` and `reset-mfa`, removal, secrets at rest and in logs, and the
//! brute-force limiter on wrong codes.
//!
//! Codes change every 30 s: every sequence that makes a code and then uses it first makes
//! sure enough of the current window is left ([`fresh_window`]).

mod common;
#[path = "common/mfa.rs"]
mod mfa;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mfa::*;

/// Recovery codes as the gateway shows them: `xxxx-xxxx-xxxx` in Crockford's alphabet.
fn looks_like_recovery_code(code: &str) -> bool {
    let groups: Vec<&str> = code.split('-').collect();
    groups.len() == 3
        && groups.iter().all(|g| {
            g.len() == 4
                && g.bytes()
                    .all(|b| b"0123456789abcdefghjkmnpqrstvwxyz".contains(&b))
        })
}

#[tokio::test]
async fn enrolment_shows_qr_and_key_and_only_a_valid_oathtool_code_turns_totp_on() {
    let gw = world();
    let c = Client::new(&gw);
    let session = c.new_user(&gw, "erin").await;

    // The page: a QR code and the key written out.
    let (key, csrf, html) = c.open_enrolment(&session).await;
    assert!(html.contains("<svg"), "no QR <svg> on the page:\n{html}");
    let secret = data_encoding::BASE32_NOPAD
        .decode(key.as_bytes())
        .unwrap_or_else(|e| panic!("key {key:?} is not base32: {e}"));
    assert!(
        secret.len() >= 20,
        "secret has {} bits, want at least 160",
        secret.len() * 8
    );

    // A wrong code does not turn TOTP on.
    fresh_window(4.0).await;
    let wrong = wrong_code(&key);
    let refused = c
        .enroll_post(
            &session,
            &[("action", "confirm"), ("code", &wrong), ("csrf", &csrf)],
            None,
        )
        .await;
    assert_eq!(refused.status, 400, "wrong code: {}", refused.describe());
    assert!(
        refused.body.get("recovery_codes").is_none(),
        "recovery codes for a wrong code: {}",
        refused.describe()
    );
    let still_off = c.login_expect("erin", None, "done").await;
    assert!(
        c.whoami(&still_off.cookie).await.status == 200,
        "after a wrong enrolment code the password alone must still sign in"
    );

    // A code from oathtool for the current time turns it on (with the key now shown).
    let (key, csrf, _) = c.open_enrolment(&session).await;
    fresh_window(4.0).await;
    let code = oathtool(&key, now());
    let done = c
        .enroll_post(
            &session,
            &[("action", "confirm"), ("code", &code), ("csrf", &csrf)],
            None,
        )
        .await;
    assert_eq!(done.status, 200, "valid code: {}", done.describe());
    assert_eq!(done.next, "done", "{}", done.describe());
    let codes: Vec<String> = done.body["recovery_codes"]
        .as_array()
        .unwrap_or_else(|| panic!("no recovery_codes: {}", done.describe()))
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    assert_eq!(codes.len(), 10, "recovery codes: {codes:?}");
    assert_eq!(
        codes.iter().collect::<HashSet<_>>().len(),
        10,
        "recovery codes not distinct: {codes:?}"
    );
    assert!(
        codes.iter().all(|c| looks_like_recovery_code(c)),
        "recovery codes: {codes:?}"
    );

    // Enrolling rotated the session; the new one is active and says otp.
    assert!(
        !done.cookie.is_empty() && done.cookie != session,
        "enrolment did not rotate the session: {}",
        done.describe()
    );
    let who = c.whoami(&done.cookie).await;
    assert_eq!(who.status, 200, "{}", who.text());
    assert!(
        amr(&who.json()).contains(&"otp".to_string()),
        "{}",
        who.text()
    );
    assert_eq!(
        c.whoami(&session).await.status,
        401,
        "pre-enrolment session still works"
    );

    // From now on the password alone stops at the second factor.
    c.login_expect("erin", None, "second_factor").await;
    assert!(
        audit_count(&gw, "mfa_enrolled", "erin", 1) >= 1,
        "no mfa_enrolled audit event:\n{}",
        audit_summary(&gw)
    );
}

#[tokio::test]
async fn password_alone_gives_no_session_once_totp_is_on_and_the_jwt_says_otp() {
    let gw = world();
    let c = Client::new(&gw);
    let e = c.enrolled_user(&gw, "paul").await;

    let sf = c.login_expect("paul", None, "second_factor").await;
    assert_eq!(sf.body["return_to"], "/.auth/mfa", "{}", sf.describe());
    assert!(!sf.csrf.is_empty(), "no csrf: {}", sf.describe());

    // The cookie of the password step opens nothing.
    let probe = "/app/second-factor-probe";
    let browser = c.get(probe, Some(&sf.cookie), false).await;
    assert!(
        is_browser_login_challenge(browser.status, browser.location(), ACME),
        "browser with a second_factor session: {} {:?}",
        browser.status,
        browser.headers
    );
    let api = c.get(probe, Some(&sf.cookie), true).await;
    assert_eq!(api.status, 401, "API client: {}", api.text());
    assert_eq!(c.whoami(&sf.cookie).await.status, 401);
    assert!(
        !gw.backend_traffic().contains(probe),
        "the backend saw a request before the second factor"
    );

    // After a valid code the route is reachable and the upstream JWT says otp.
    fresh_window(4.0).await;
    let code = oathtool(&e.key, now());
    let ok = c.verify(&sf.cookie, &sf.csrf, &code, None).await;
    assert_eq!(ok.status, 200, "valid code: {}", ok.describe());
    assert_eq!(ok.next, "done", "{}", ok.describe());
    let resp = c.get("/app/after-code", Some(&ok.cookie), false).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let jwt = resp
        .expect_echo()
        .header_once("x-portcullis-jwt")
        .to_string();
    let claims = jwt_payload(&jwt);
    let methods = amr(&claims);
    assert!(
        methods.contains(&"otp".to_string()) && methods.contains(&"pwd".to_string()),
        "JWT amr: {claims}"
    );
    assert_eq!(claims["sub"], "paul", "{claims}");
}

#[tokio::test]
async fn session_cookie_is_rotated_at_the_second_factor() {
    let gw = world();
    let c = Client::new(&gw);
    let e = c.enrolled_user(&gw, "rosa").await;

    let sf = c.login_expect("rosa", None, "second_factor").await;
    fresh_window(4.0).await;
    let ok = c
        .verify(&sf.cookie, &sf.csrf, &oathtool(&e.key, now()), None)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.describe());
    assert!(!ok.cookie.is_empty(), "no new cookie: {}", ok.describe());
    assert_ne!(ok.cookie, sf.cookie, "the session cookie was not rotated");
    assert_eq!(c.whoami(&ok.cookie).await.status, 200);
    // The password-step token is dead: not active, and no longer a second-factor session.
    assert_eq!(c.whoami(&sf.cookie).await.status, 401);
    let again = c
        .verify(&sf.cookie, &sf.csrf, &oathtool(&e.key, now() + STEP), None)
        .await;
    assert_eq!(
        again.status,
        401,
        "the pre-rotation token still verifies codes: {}",
        again.describe()
    );
}

#[tokio::test]
async fn codes_one_step_off_are_accepted_and_two_steps_off_are_not() {
    let gw = world();
    let c = Client::new(&gw);
    // Both users are enrolled with the code of the previous step (now − 30 s).
    let minus = c.enrolled_user(&gw, "minus").await;
    let plus = c.enrolled_user(&gw, "plus").await;

    // +30 s is accepted; ±60 s are not.
    let sf = c.login_expect("plus", None, "second_factor").await;
    fresh_window(4.0).await;
    let t = now();
    let window: Vec<String> = [t - STEP, t, t + STEP]
        .iter()
        .map(|&s| oathtool(&plus.key, s))
        .collect();
    for offset in [-60i64, 60] {
        let code = oathtool(&plus.key, t.saturating_add_signed(offset));
        if window.contains(&code) {
            eprintln!("note: the code for {offset:+} s equals one in the window; not checked");
            continue;
        }
        let r = c.verify(&sf.cookie, &sf.csrf, &code, None).await;
        assert_eq!(r.status, 401, "code for now{offset:+}s: {}", r.describe());
    }
    let r = c.verify(&sf.cookie, &sf.csrf, &window[2], None).await;
    assert_eq!(r.status, 200, "code for now+30s: {}", r.describe());
    assert_eq!(r.next, "done", "{}", r.describe());

    // −30 s is accepted. Enrolment used the step before the one it happened in, so wait for
    // the next window: then now − 30 s is a step after the used one.
    wait_past_step_of(minus.confirmed_with + STEP).await;
    let sf = c.login_expect("minus", None, "second_factor").await;
    fresh_window(4.0).await;
    let code = code_at_offset(&minus.key, -(STEP as i64));
    let r = c.verify(&sf.cookie, &sf.csrf, &code, None).await;
    assert_eq!(r.status, 200, "code for now-30s: {}", r.describe());
    assert_eq!(r.next, "done", "{}", r.describe());
    assert_eq!(c.whoami(&r.cookie).await.status, 200);
}

#[tokio::test]
async fn the_same_code_twice_is_rejected_and_audited() {
    let gw = world();
    let c = Client::new(&gw);
    let e = c.enrolled_user(&gw, "ruth").await;

    fresh_window(8.0).await;
    let code = oathtool(&e.key, now());
    let first = c.login_expect("ruth", None, "second_factor").await;
    let ok = c.verify(&first.cookie, &first.csrf, &code, None).await;
    assert_eq!(ok.status, 200, "first use: {}", ok.describe());

    let second = c.login_expect("ruth", None, "second_factor").await;
    let replay = c.verify(&second.cookie, &second.csrf, &code, None).await;
    assert_eq!(replay.status, 401, "second use: {}", replay.describe());
    assert_eq!(
        c.whoami(&second.cookie).await.status,
        401,
        "a replayed code gave a session"
    );
    assert_eq!(
        audit_count(&gw, "mfa_replay_rejected", "ruth", 1),
        1,
        "replay not audited:\n{}",
        audit_summary(&gw)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_code_in_20_parallel_requests_succeeds_exactly_once() {
    const N: usize = 20;
    let gw = world();
    let c = Client::new(&gw);
    gw.add_user("acme", "race", PASSWORD, &[]);

    // Ten client addresses, each made known for the account by a password-only sign-in
    // before TOTP is on. The 40 credential checks below (20 logins, 20 codes) then spread
    // 4 per (account, address) pair: under the limiter's 5 free failures, so every one of
    // the 20 codes is really checked rather than throttled.
    let ips: Vec<String> = (1..=10).map(|i| format!("10.20.0.{i}")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for ip in ips.clone() {
        let c = c.clone();
        tasks.spawn(async move { c.login_expect("race", Some(&ip), "done").await });
    }
    let mut active = Vec::new();
    while let Some(step) = tasks.join_next().await {
        active.push(step.expect("login task").cookie);
    }
    let e = c.enroll(&active[0], -(STEP as i64), Some(&ips[0])).await;

    // 20 sessions of the same user at the second-factor stage, each on its own client.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let c = Client::new(&gw);
        let ip = ips[i % ips.len()].clone();
        tasks.spawn(async move {
            let step = c.login_expect("race", Some(&ip), "second_factor").await;
            // Opens the connection now, so the code requests below leave together.
            let form = c.get("/.auth/mfa", Some(&step.cookie), false).await;
            assert_eq!(form.status, 200, "code form: {}", form.text());
            (c, ip, step)
        });
    }
    let mut pending = Vec::new();
    while let Some(r) = tasks.join_next().await {
        pending.push(r.expect("login task"));
    }
    let distinct: HashSet<&String> = pending.iter().map(|(_, _, s)| &s.cookie).collect();
    assert_eq!(distinct.len(), N, "sessions are not distinct");

    fresh_window(6.0).await;
    let code = oathtool(&e.key, now());
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for (c, ip, step) in pending {
        let (barrier, code) = (barrier.clone(), code.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let r = c.verify(&step.cookie, &step.csrf, &code, Some(&ip)).await;
            (c, r)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.expect("verify task"));
    }
    let statuses: Vec<u16> = results.iter().map(|(_, r)| r.status).collect();
    let winners: Vec<&(Client, Step)> = results.iter().filter(|(_, r)| r.status == 200).collect();
    assert_eq!(
        winners.len(),
        1,
        "{} of {N} parallel uses of one code succeeded; statuses {statuses:?}",
        winners.len()
    );
    assert!(
        results
            .iter()
            .all(|(_, r)| r.status == 200 || r.status == 401),
        "every other use must be checked and refused (401), not throttled or failed: \
         {statuses:?}\n{}",
        results
            .iter()
            .filter(|(_, r)| r.status != 200 && r.status != 401)
            .map(|(_, r)| r.describe())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (wc, w) = winners[0];
    assert_eq!(w.next, "done", "{}", w.describe());
    assert_eq!(wc.whoami(&w.cookie).await.status, 200);
    assert_eq!(
        audit_count(&gw, "mfa_replay_rejected", "race", N - 1),
        N - 1,
        "replays audited:\n{}",
        audit_summary(&gw)
    );
}

#[tokio::test]
async fn recovery_codes_work_once_each_and_give_an_active_session() {
    let gw = world();
    let c = Client::new(&gw);
    let e = c.enrolled_user(&gw, "rico").await;
    assert_eq!(e.recovery_codes.len(), 10);

    for (i, code) in e.recovery_codes.iter().take(2).enumerate() {
        let sf = c.login_expect("rico", None, "second_factor").await;
        let ok = c.verify_recovery(&sf.cookie, &sf.csrf, code, None).await;
        assert_eq!(ok.status, 200, "recovery code {i}: {}", ok.describe());
        assert_eq!(ok.next, "done", "{}", ok.describe());
        let who = c.whoami(&ok.cookie).await;
        assert_eq!(who.status, 200, "session after recovery code {i}");
        let page = c.get("/app/recovered", Some(&ok.cookie), false).await;
        assert_eq!(page.status, 200, "route after recovery code {i}");

        let sf = c.login_expect("rico", None, "second_factor").await;
        let again = c.verify_recovery(&sf.cookie, &sf.csrf, code, None).await;
        assert_eq!(
            again.status,
            401,
            "recovery code {i} used twice: {}",
            again.describe()
        );
        assert_eq!(c.whoami(&sf.cookie).await.status, 401);
    }
    assert!(
        audit_count(&gw, "recovery_code_used", "rico", 2) >= 2,
        "recovery code use not audited:\n{}",
        audit_summary(&gw)
    );
}

#[tokio::test]
async fn required_mfa_enrols_before_any_session_and_reset_mfa_sends_the_user_back() {
    let gw = world();
    let c = Client::new(&gw);
    gw.add_user("acme", "quinn", PASSWORD, &[]);
    let reloads_before = metric_sum(
        &gw,
        "portcullis_config_reloads_total",
        Some(("result", "applied")),
    );
    gw.site.write(
        "policies/acme.toml",
        &format!("mfa = \"required\"\n{}", gw.site.acme_policy("")),
    );
    assert!(
        poll_until(Duration::from_secs(15), || metric_sum(
            &gw,
            "portcullis_config_reloads_total",
            Some(("result", "applied"))
        ) > reloads_before),
        "policy with mfa = \"required\" was not loaded; logs:\n{}",
        gw.logs()
    );

    // The password leads to enrolment, with no active session yet.
    let en = c.login_expect("quinn", None, "enroll_mfa").await;
    assert_eq!(
        en.body["return_to"],
        "/.auth/mfa/enroll",
        "{}",
        en.describe()
    );
    assert_eq!(c.whoami(&en.cookie).await.status, 401);
    assert_eq!(c.get("/app/x", Some(&en.cookie), true).await.status, 401);
    let e = c.enroll(&en.cookie, -(STEP as i64), None).await;
    assert_eq!(e.recovery_codes.len(), 10);
    assert_eq!(c.whoami(&e.session).await.status, 200);
    assert_eq!(c.get("/app/x", Some(&e.session), true).await.status, 200);

    // A second sign-in goes through the code.
    let sf = c.login_expect("quinn", None, "second_factor").await;
    fresh_window(4.0).await;
    let ok = c
        .verify(&sf.cookie, &sf.csrf, &oathtool(&e.key, now()), None)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.describe());

    // Lost device: the operator resets; every session ends, and enrolment comes again.
    let out = gw.user_cli(&["reset-mfa", "--tenant", "acme", "quinn"], "");
    assert_eq!(out.code, Some(0), "reset-mfa:\n{out}");
    for s in [&e.session, &ok.cookie] {
        assert!(
            gw.wait_session_ended(ACME, s, Duration::from_secs(5)).await,
            "a session survived reset-mfa"
        );
    }
    let again = c.login_expect("quinn", None, "enroll_mfa").await;
    assert_eq!(c.whoami(&again.cookie).await.status, 401);
    assert!(
        audit_count(&gw, "mfa_reset", "quinn", 1) >= 1,
        "reset-mfa not audited:\n{}",
        audit_summary(&gw)
    );
}

#[tokio::test]
async fn removing_totp_needs_a_current_code() {
    let gw = world();
    let c = Client::new(&gw);
    let e = c.enrolled_user(&gw, "remy").await;
    let csrf = c.csrf_of(&e.session).await;

    let manage = c.enroll_page(&e.session).await;
    assert_eq!(manage.status, 200, "{}", manage.text());
    assert!(
        manage.text().contains("value=\"remove\""),
        "no removal form:\n{}",
        manage.text()
    );

    fresh_window(4.0).await;
    for code in [wrong_code(&e.key), String::new()] {
        let r = c
            .enroll_post(
                &e.session,
                &[("action", "remove"), ("code", &code), ("csrf", &csrf)],
                None,
            )
            .await;
        assert_eq!(r.status, 400, "removal with {code:?}: {}", r.describe());
    }
    // Still on: the password alone stops at the code.
    c.login_expect("remy", None, "second_factor").await;

    fresh_window(4.0).await;
    let code = oathtool(&e.key, now());
    let r = c
        .enroll_post(
            &e.session,
            &[("action", "remove"), ("code", &code), ("csrf", &csrf)],
            None,
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "removal with a current code: {}",
        r.describe()
    );
    c.login_expect("remy", None, "done").await;
}

#[tokio::test]
async fn secrets_and_codes_appear_neither_in_a_dump_of_the_store_nor_in_the_logs() {
    let gw = world();
    let c = Client::new(&gw);
    let e = c.enrolled_user(&gw, "sara").await;
    let secret = data_encoding::BASE32_NOPAD
        .decode(e.key.as_bytes())
        .expect("base32 key");

    // Use a code and a recovery code, so both went through the gateway.
    let sf = c.login_expect("sara", None, "second_factor").await;
    fresh_window(4.0).await;
    let code = oathtool(&e.key, now());
    let ok = c.verify(&sf.cookie, &sf.csrf, &code, None).await;
    assert_eq!(ok.status, 200, "{}", ok.describe());
    let sf = c.login_expect("sara", None, "second_factor").await;
    let ok = c
        .verify_recovery(&sf.cookie, &sf.csrf, &e.recovery_codes[0], None)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.describe());
    let confirm_code = oathtool(&e.key, e.confirmed_with);

    // The text forms that must not be stored or logged.
    let mut needles: Vec<(String, String)> = vec![
        ("base32 key".into(), e.key.clone()),
        ("lowercase base32 key".into(), e.key.to_lowercase()),
        ("hex of the secret".into(), hex::encode(&secret)),
        ("uppercase hex".into(), hex::encode_upper(&secret)),
        (
            "base64 of the secret".into(),
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &secret),
        ),
    ];
    for (i, rc) in e.recovery_codes.iter().enumerate() {
        needles.push((format!("recovery code {i}"), rc.clone()));
        needles.push((
            format!("recovery code {i} without dashes"),
            rc.replace('-', ""),
        ));
    }

    let dump = sqlite(&gw, ".dump");
    assert!(
        dump.contains("CREATE TABLE recovery_code"),
        "not a dump of the store:\n{dump}"
    );
    let found: Vec<&String> = needles
        .iter()
        .filter(|(_, n)| dump.contains(n.as_str()))
        .map(|(what, _)| what)
        .collect();
    assert!(found.is_empty(), "the store dump contains {found:?}");
    assert_eq!(
        sqlite(
            &gw,
            "SELECT count(*) FROM user WHERE username = 'sara' AND totp_secret IS NOT NULL;"
        )
        .trim(),
        "1",
        "the secret is not stored at all, so the dump proves nothing"
    );

    // The files themselves (database and WAL): neither the text forms nor the raw bytes.
    for file in ["portcullis.db", "portcullis.db-wal"] {
        let Ok(bytes) = std::fs::read(gw.site.path(&format!("data/{file}"))) else {
            continue;
        };
        assert!(
            !contains(&bytes, &secret),
            "{file} contains the raw secret bytes"
        );
        for (what, n) in &needles {
            assert!(
                !contains(&bytes, n.as_bytes()),
                "{file} contains the {what}"
            );
        }
    }

    // The logs: no key, no recovery code, no TOTP code.
    let logs = gw.logs();
    for (what, n) in &needles {
        assert!(
            !logs.contains(n.as_str()),
            "the gateway logs contain the {what}"
        );
    }
    for (what, c) in [("code", &code), ("enrolment code", &confirm_code)] {
        assert!(
            !has_code_token(&logs, c),
            "the gateway logs contain the {what} {c}:\n{logs}"
        );
    }
    let traffic = gw.backend_traffic();
    assert!(
        !traffic.contains(&e.key) && !has_code_token(&traffic, &code),
        "the backend received a secret or a code"
    );
}

#[tokio::test]
async fn wrong_codes_go_through_the_brute_force_limiter() {
    let gw = world();
    let c = Client::new(&gw);
    let e = c.enrolled_user(&gw, "walt").await;
    let ip = Some("10.30.0.7");

    // The login itself is the first attempt of the pair's budget; wrong codes follow.
    fresh_window(10.0).await;
    let sf = c.login_expect("walt", ip, "second_factor").await;
    let mut statuses = Vec::new();
    let mut throttled = None;
    for _ in 0..8 {
        let r = c
            .verify(&sf.cookie, &sf.csrf, &wrong_code(&e.key), ip)
            .await;
        statuses.push(r.status);
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
        assert_eq!(r.status, 401, "wrong code: {}", r.describe());
    }
    let Some(r) = throttled else {
        panic!("wrong codes were never throttled: {statuses:?}");
    };
    let retry: u64 = r
        .resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {}", r.describe()))
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    assert!(
        statuses.len() <= 6,
        "throttled only after {} wrong codes: {statuses:?}",
        statuses.len() - 1
    );

    // While throttled, even the right code is not checked (the back-off is short, so a
    // success is only allowed once Retry-After has passed).
    let throttled_at = std::time::Instant::now();
    let right = c
        .verify(&sf.cookie, &sf.csrf, &oathtool(&e.key, now()), ip)
        .await;
    if right.status != 429 {
        assert!(
            throttled_at.elapsed() >= Duration::from_secs(retry.saturating_sub(1)),
            "a code was checked {:?} into a Retry-After of {retry} s: {}",
            throttled_at.elapsed(),
            right.describe()
        );
    } else {
        assert_eq!(c.whoami(&sf.cookie).await.status, 401);
    }
    assert!(
        audit_count(&gw, "mfa_failed", "walt", 1) >= 1,
        "wrong codes not audited:\n{}",
        audit_summary(&gw)
    );
}
