//! Reload (issue 2, item 3): a valid change (file poll or SIGHUP) swaps in atomically without
//! dropping requests; an invalid one is rejected, logged with file and line, and the old
//! config keeps serving; listener addresses cannot change.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Polls `GET https://<host><path>` until it answers `status` (bounded by `WAIT`).
async fn wait_for_status(gw: &Gateway, host: &str, path: &str, status: u16) -> bool {
    let client = gw.client_h1();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(resp) = client.get(gw.url(host, path)).send().await {
            if resp.status().as_u16() == status {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn status_of(gw: &Gateway, host: &str, path: &str) -> u16 {
    gw.client_h1()
        .get(gw.url(host, path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
        .status()
        .as_u16()
}

#[tokio::test]
async fn changed_policy_is_applied_on_file_change() {
    let gw = Gateway::start_default();
    assert_eq!(status_of(&gw, "globex.localhost", "/new").await, 404);

    let echo = gw.site.echo_upstream();
    gw.site.write(
        "policies/globex.toml",
        &gw.site
            .globex_policy(&route("new", "/new", &echo, "public")),
    );
    assert!(
        wait_for_status(&gw, "globex.localhost", "/new", 200).await,
        "the new route never served; logs:\n{}",
        gw.logs()
    );
    assert_eq!(status_of(&gw, "globex.localhost", "/api/x").await, 200);

    let reloads: f64 = gw
        .metrics()
        .iter()
        .filter(|s| s.name == "portcullis_config_reloads_total")
        .map(|s| s.value)
        .sum();
    assert!(
        reloads >= 1.0,
        "portcullis_config_reloads_total not counted"
    );
}

#[tokio::test]
async fn invalid_policy_is_rejected_and_the_old_config_keeps_serving() {
    let gw = Gateway::start_default();
    let echo = gw.site.echo_upstream();
    let mut bad = gw
        .site
        .globex_policy(&route("sneaky", "/sneaky", &echo, "public"));
    bad.push_str("\ncolour = \"red\"\n");
    let bad_line = line_of(&bad, "colour");
    gw.site.write("policies/globex.toml", &bad);

    assert!(
        gw.wait_for_log("config rejected", WAIT),
        "no `config rejected` log line; logs:\n{}",
        gw.logs()
    );
    let logs = gw.logs();
    let locations = error_locations(&logs, "globex.toml");
    assert!(
        locations.iter().any(|(line, _, _)| *line == bad_line),
        "the rejection must name globex.toml:{bad_line}; logs:\n{logs}"
    );
    assert_eq!(status_of(&gw, "globex.localhost", "/api/x").await, 200);
    assert_eq!(
        status_of(&gw, "globex.localhost", "/sneaky").await,
        404,
        "a route from the rejected file is serving"
    );

    // A valid file afterwards is applied again.
    gw.site.write(
        "policies/globex.toml",
        &gw.site
            .globex_policy(&route("fixed", "/fixed", &echo, "public")),
    );
    assert!(
        wait_for_status(&gw, "globex.localhost", "/fixed", 200).await,
        "a valid config after a rejected one never served; logs:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn sighup_triggers_reload() {
    // Poll once an hour: only the signal can apply the change within the test.
    let gw = Gateway::start(Opts {
        reload_poll_ms: 3_600_000,
        ..Opts::default()
    });
    let echo = gw.site.echo_upstream();
    gw.site.write(
        "policies/globex.toml",
        &gw.site
            .globex_policy(&route("hup", "/hup", &echo, "public")),
    );
    assert_eq!(status_of(&gw, "globex.localhost", "/hup").await, 404);
    gw.sighup();
    assert!(
        wait_for_status(&gw, "globex.localhost", "/hup", 200).await,
        "SIGHUP did not apply the new route; logs:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn listener_address_change_is_rejected() {
    let gw = Gateway::start_default();
    let other = free_port();
    gw.site
        .write("portcullis.toml", &gw.site.config_toml_with_listen(other));
    assert!(
        gw.wait_for_log("config rejected", WAIT),
        "changing https_listen was not rejected; logs:\n{}",
        gw.logs()
    );
    assert_eq!(status_of(&gw, "acme.localhost", "/api/x").await, 200);
}

/// The client idle timeout is fixed at start (pingora takes HTTP/2's at start-up): a reload
/// that changes it is rejected, saying so, and the gateway keeps serving.
#[tokio::test]
async fn a_client_idle_timeout_change_is_rejected_until_a_restart() {
    let gw = Gateway::start_default();
    gw.site.write_proxy_lines("client_idle_timeout_ms = 5000\n");
    assert!(
        gw.wait_for_log("client_idle_timeout_ms changed; restart to apply", WAIT),
        "changing client_idle_timeout_ms was not rejected; logs:\n{}",
        gw.logs()
    );
    assert_eq!(status_of(&gw, "acme.localhost", "/api/x").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing() {
    let gw = Arc::new(Gateway::start_default());
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + Duration::from_secs(3);

    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (gw, ok, failures) = (gw.clone(), ok.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let client = gw.client();
            let host = if worker % 2 == 0 {
                "acme.localhost"
            } else {
                "globex.localhost"
            };
            let mut i = 0u32;
            while Instant::now() < deadline {
                i += 1;
                let url = gw.url(host, &format!("/api/load/{worker}/{i}"));
                match client.get(url).send().await {
                    Ok(resp) if resp.status() == 200 => match resp.bytes().await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures
                            .lock()
                            .expect("failures")
                            .push(format!("{host} #{i}: body: {e}")),
                    },
                    Ok(resp) => failures
                        .lock()
                        .expect("failures")
                        .push(format!("{host} #{i}: status {}", resp.status())),
                    Err(e) => failures
                        .lock()
                        .expect("failures")
                        .push(format!("{host} #{i}: {e}")),
                }
            }
        }));
    }

    // Rewrite both policies several times while the load runs.
    let echo = gw.site.echo_upstream();
    let mut last = 0;
    for n in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let extra = route(
            &format!("extra-{n}"),
            &format!("/extra-{n}"),
            &echo,
            "public",
        );
        gw.site
            .write("policies/globex.toml", &gw.site.globex_policy(&extra));
        gw.site
            .write("policies/acme.toml", &gw.site.acme_policy(&extra));
        last = n;
    }
    for t in tasks {
        t.await.expect("load task");
    }
    // Six rewrites 400 ms apart with a 200 ms poll: several swaps happened under load.
    let reloads: f64 = gw
        .metrics()
        .iter()
        .filter(|s| s.name == "portcullis_config_reloads_total")
        .map(|s| s.value)
        .sum();

    let failures = failures.lock().expect("failures").clone();
    let served = ok.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during reloads:\n{}",
        failures.len(),
        failures.len() + served,
        failures.join("\n")
    );
    assert!(
        served >= 40,
        "only {served} requests in 3 s: the load was not real"
    );
    assert!(
        reloads >= 3.0,
        "only {reloads} reloads during the load window; logs:\n{}",
        gw.logs()
    );
    assert!(
        wait_for_status(&gw, "globex.localhost", &format!("/extra-{last}"), 200).await,
        "the last rewrite never applied (so no reload happened under load); logs:\n{}",
        gw.logs()
    );
}
