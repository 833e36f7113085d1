//! Config validation (issue 2, item 3): `portcullis check` reports every error as
//! `FILE:LINE:COL: message`, all at once, and exits non-zero; `serve` refuses an invalid
//! config with one clear line. Each test builds a site on disk and breaks it on purpose.

mod common;

use common::*;

/// Asserts `check` failed with exit 1 and reported `file_name` at `line`; returns the output.
fn assert_reported(out: &CmdOutput, file_name: &str, line: u32, what: &str) {
    assert_eq!(out.code, Some(1), "{what}: check must exit 1\n{out}");
    let locations = error_locations(&out.combined(), file_name);
    assert!(
        locations.iter().any(|(l, _, _)| *l == line),
        "{what}: expected an error at {file_name}:{line}:COL, got {locations:?}\n{out}"
    );
}

#[test]
fn check_accepts_the_valid_config() {
    let site = Site::new(Opts::default());
    let out = site.check();
    assert_eq!(out.code, Some(0), "valid config must pass\n{out}");
    assert!(
        out.stdout
            .contains(&format!("ok: 2 tenants, {DEFAULT_ROUTES} routes")),
        "expected `ok: 2 tenants, {DEFAULT_ROUTES} routes`\n{out}"
    );
}

#[test]
fn check_reports_unknown_key_with_file_and_line() {
    let site = Site::new(Opts::default());
    let mut text = site.globex_policy("");
    text.push_str("colour = \"red\"\n");
    let line = line_of(&text, "colour");
    site.write("policies/globex.toml", &text);
    assert_reported(&site.check(), "globex.toml", line, "unknown top-level key");
}

#[test]
fn check_reports_unknown_route_key_with_file_and_line() {
    let site = Site::new(Opts::default());
    let text = site.globex_policy("").replacen(
        "access = \"public\"",
        "access = \"public\"\ntimeout = 5",
        1,
    );
    let line = line_of(&text, "timeout = 5");
    site.write("policies/globex.toml", &text);
    assert_reported(
        &site.check(),
        "globex.toml",
        line,
        "unknown key in [[routes]]",
    );
}

#[test]
fn check_reports_unknown_key_in_main_config_with_file_and_line() {
    let site = Site::new(Opts::default());
    let text = site
        .config_toml()
        .replacen("[proxy]\n", "[proxy]\nmax_bodybytes = 5\n", 1);
    let line = line_of(&text, "max_bodybytes");
    site.write("portcullis.toml", &text);
    assert_reported(
        &site.check(),
        "portcullis.toml",
        line,
        "unknown key in [proxy]",
    );
}

#[test]
fn check_reports_duplicate_host_with_file_and_line() {
    let site = Site::new(Opts::default());
    let text = site.globex_policy("").replacen(
        "hosts = [\"globex.localhost\"]",
        "hosts = [\"globex.localhost\", \"acme.localhost\"]",
        1,
    );
    // `hosts` is on line 2 in both policies, so either file may carry the error.
    let line = line_of(&text, "hosts =");
    assert_eq!(line, 2);
    site.write("policies/globex.toml", &text);
    let out = site.check();
    assert_eq!(out.code, Some(1), "duplicate host must fail\n{out}");
    let combined = out.combined();
    let mut locations = error_locations(&combined, "globex.toml");
    locations.extend(error_locations(&combined, "acme.toml"));
    assert!(
        locations
            .iter()
            .any(|(l, _, msg)| *l == line && msg.contains("acme.localhost")),
        "expected an error naming acme.localhost at acme.toml:2 or globex.toml:2, got \
         {locations:?}\n{out}"
    );
}

#[test]
fn check_takes_client_timeouts_and_refuses_zero() {
    let site = Site::new(Opts {
        client_send_timeout_ms: Some(2500),
        client_header_timeout_ms: Some(2500),
        client_idle_timeout_ms: Some(2500),
        client_body_timeout_ms: Some(2500),
        client_body_min_rate: Some(0),
        ..Opts::default()
    });
    let out = site.check();
    assert_eq!(out.code, Some(0), "a client send timeout must pass\n{out}");
    // Zero, and more than a day.
    for (value, why) in [
        (0, "must be greater than 0"),
        (86_400_001, "must be at most 86400000 (one day)"),
    ] {
        for key in [
            "client_send_timeout_ms",
            "client_header_timeout_ms",
            "client_idle_timeout_ms",
            "client_body_timeout_ms",
        ] {
            let mut opts = Opts::default();
            let slot = match key {
                "client_send_timeout_ms" => &mut opts.client_send_timeout_ms,
                "client_header_timeout_ms" => &mut opts.client_header_timeout_ms,
                "client_body_timeout_ms" => &mut opts.client_body_timeout_ms,
                _ => &mut opts.client_idle_timeout_ms,
            };
            *slot = Some(value);
            let site = Site::new(opts);
            let line = line_of(&site.config_toml(), key);
            let out = site.check();
            assert_reported(&out, "portcullis.toml", line, &format!("{key} = {value}"));
            assert!(out.combined().contains(&format!("{key} {why}")), "{out}");
        }
    }
}

#[test]
fn check_refuses_a_body_min_rate_past_a_gibibyte_per_second() {
    let site = Site::new(Opts {
        client_body_min_rate: Some((1 << 30) + 1),
        ..Opts::default()
    });
    let line = line_of(&site.config_toml(), "client_body_min_rate");
    let out = site.check();
    assert_reported(
        &out,
        "portcullis.toml",
        line,
        "client_body_min_rate = 1073741825",
    );
    assert!(
        out.combined()
            .contains("client_body_min_rate must be at most 1073741824"),
        "{out}"
    );
}

#[test]
fn check_reports_bad_cidr_with_file_and_line() {
    for cidr in ["10.0.0.0/33", "not-a-cidr", "300.1.1.1/8"] {
        let site = Site::new(Opts {
            trusted_proxies: vec![cidr.to_string()],
            ..Opts::default()
        });
        let line = line_of(&site.config_toml(), "trusted_proxies");
        assert_reported(
            &site.check(),
            "portcullis.toml",
            line,
            &format!("trusted_proxies = [{cidr:?}]"),
        );
    }
}

#[test]
fn check_reports_invalid_policy_values_with_line() {
    let site = Site::new(Opts::default());
    let base = site.globex_policy("");
    let cases = [
        (
            "prefix without leading slash",
            base.replacen("prefix = \"/api\"", "prefix = \"api\"", 1),
            "prefix = \"api\"",
        ),
        (
            "upstream with an unsupported scheme",
            base.replacen(
                &format!("upstream = \"{}\"", site.echo_upstream()),
                "upstream = \"ftp://127.0.0.1:21\"",
                1,
            ),
            "ftp://",
        ),
        (
            "unknown access value",
            base.replacen("access = \"public\"", "access = \"everyone\"", 1),
            "everyone",
        ),
        (
            "id differs from the file stem",
            base.replacen("id = \"globex\"", "id = \"initech\"", 1),
            "initech",
        ),
        (
            "empty hosts",
            base.replacen("hosts = [\"globex.localhost\"]", "hosts = []", 1),
            "hosts = []",
        ),
    ];
    let mut failures = Vec::new();
    for (what, text, needle) in &cases {
        assert_ne!(text, &base, "{what}: the case did not change the policy");
        let line = line_of(text, needle);
        site.write("policies/globex.toml", text);
        let out = site.check();
        let locations = error_locations(&out.combined(), "globex.toml");
        if out.code != Some(1) || !locations.iter().any(|(l, _, _)| *l == line) {
            failures.push(format!(
                "{what}: expected exit 1 and globex.toml:{line}, got exit {:?} {locations:?}\n{}",
                out.code,
                out.combined()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_reports_toml_syntax_error_with_line() {
    let site = Site::new(Opts::default());
    let text = site
        .globex_policy("")
        .replacen("display_name", "this is not toml\ndisplay_name", 1);
    let line = line_of(&text, "this is not toml");
    site.write("policies/globex.toml", &text);
    assert_reported(&site.check(), "globex.toml", line, "TOML syntax error");
}

#[test]
fn check_reports_all_errors_at_once() {
    let site = Site::new(Opts::default());
    let mut acme = site.acme_policy("");
    acme.push_str("flavour = \"vanilla\"\n");
    let acme_line = line_of(&acme, "flavour");
    let globex = site
        .globex_policy("")
        .replacen("prefix = \"/api\"", "prefix = \"api\"", 1);
    let globex_line = line_of(&globex, "prefix = \"api\"");
    let config = site.config_toml().replace(
        "trusted_proxies = []",
        "trusted_proxies = [\"10.1.2.3/99\"]",
    );
    let config_line = line_of(&config, "trusted_proxies");
    site.write("policies/acme.toml", &acme);
    site.write("policies/globex.toml", &globex);
    site.write("portcullis.toml", &config);

    let out = site.check();
    assert_eq!(out.code, Some(1), "three broken places must fail\n{out}");
    let combined = out.combined();
    let mut missing = Vec::new();
    for (file, line) in [
        ("acme.toml", acme_line),
        ("globex.toml", globex_line),
        ("portcullis.toml", config_line),
    ] {
        if !error_locations(&combined, file)
            .iter()
            .any(|(l, _, _)| *l == line)
        {
            missing.push(format!("{file}:{line}"));
        }
    }
    assert!(
        missing.is_empty(),
        "errors not reported (all must be, in one run): {missing:?}\n{out}"
    );
}

#[test]
fn serve_refuses_an_invalid_config() {
    let site = Site::new(Opts::default());
    let mut text = site.globex_policy("");
    text.push_str("colour = \"red\"\n");
    let line = line_of(&text, "colour");
    site.write("policies/globex.toml", &text);
    let config = site.config_path();
    let out = run_cli(&["serve", "--config", &config.to_string_lossy()]);
    assert_eq!(
        out.code,
        Some(1),
        "serve must exit 1 on an invalid config\n{out}"
    );
    let error_lines: Vec<&str> = out
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(
        error_lines.len(),
        1,
        "serve must print one `error: ...` line\n{out}"
    );
    assert!(
        error_locations(&out.stderr, "globex.toml")
            .iter()
            .any(|(l, _, _)| *l == line),
        "serve must name globex.toml:{line}\n{out}"
    );
    assert!(
        admin_get(site.ports.admin, "/healthz").is_none(),
        "the operator listener is up although serve refused"
    );
}
