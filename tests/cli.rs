//! Command line (DESIGN "Command line"; SPEC "CLI"): every command has `--help`, every
//! failure prints one `error: ...` line on stderr and exits 1, and `dev-certs` writes a CA and
//! chained leaf certificates with PKCS#8 keys.

mod common;

use std::process::Command;

use common::*;

/// Asserts a failure: exit 1 and exactly one non-empty stderr line, starting `error:`.
fn assert_one_line_failure(out: &CmdOutput, what: &str) {
    assert_eq!(out.code, Some(1), "{what}: must exit 1\n{out}");
    let lines = out.stderr_lines();
    assert!(
        lines.len() == 1 && lines[0].starts_with("error:"),
        "{what}: stderr must be exactly one `error: ...` line\n{out}"
    );
}

#[test]
fn every_command_has_help() {
    // Walk the command tree from `--help`, so commands added later are covered too.
    let mut failures = Vec::new();
    let mut pending: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = run_cli(&args);
        seen += 1;
        if out.code != Some(0) || !out.stdout.contains("Usage") {
            failures.push(format!("portcullis {}: {out}", args.join(" ")));
            continue;
        }
        for sub in help_commands(&out.stdout) {
            let mut next = path.clone();
            next.push(sub);
            pending.push(next);
        }
    }
    assert!(seen >= 6, "only {seen} commands found in --help");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn top_level_help_lists_the_commands() {
    let out = run_cli(&["--help"]);
    for command in ["serve", "check", "demo", "dev-certs", "echo-backend"] {
        assert!(
            out.stdout.contains(command),
            "--help must list {command}\n{out}"
        );
    }
}

#[test]
fn bad_flag_fails_with_one_line() {
    for args in [
        vec!["serve", "--no-such-flag"],
        vec!["check", "--no-such-flag"],
        vec!["dev-certs", "--bogus"],
        vec!["--bogus"],
    ] {
        assert_one_line_failure(&run_cli(&args), &format!("portcullis {}", args.join(" ")));
    }
}

#[test]
fn unknown_command_fails_with_one_line() {
    assert_one_line_failure(&run_cli(&["frobnicate"]), "portcullis frobnicate");
}

#[test]
fn missing_config_file_fails_with_one_error_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let missing = missing.to_string_lossy();
    for command in ["check", "serve"] {
        let out = run_cli(&[command, "--config", &missing]);
        // Config problems may be listed one per line before the one `error:` line.
        assert_eq!(out.code, Some(1), "{command} with a missing config\n{out}");
        let errors = out
            .stderr_lines()
            .into_iter()
            .filter(|l| l.starts_with("error:"))
            .count();
        assert_eq!(errors, 1, "{command}: one `error:` line\n{out}");
        assert!(
            out.stderr.contains("nope.toml"),
            "{command}: the missing file must be named\n{out}"
        );
    }
}

#[test]
fn dev_certs_writes_ca_and_chained_leaf_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_cli_in(Some(dir.path()), &["dev-certs", "--out", "certs"]);
    assert_eq!(out.code, Some(0), "dev-certs\n{out}");
    let certs = dir.path().join("certs");
    let ca = certs.join("ca.crt");
    assert!(ca.is_file(), "ca.crt missing");
    assert!(certs.join("ca.key").is_file(), "ca.key missing");
    for host in ["acme.localhost", "globex.localhost", "localhost"] {
        let crt = certs.join(format!("{host}.crt"));
        let key = certs.join(format!("{host}.key"));
        let crt_text = std::fs::read_to_string(&crt).unwrap_or_else(|e| panic!("{host}.crt: {e}"));
        let key_text = std::fs::read_to_string(&key).unwrap_or_else(|e| panic!("{host}.key: {e}"));
        assert_eq!(
            crt_text.matches("BEGIN CERTIFICATE").count(),
            2,
            "{host}.crt must hold the leaf and the CA"
        );
        assert!(
            key_text.contains("BEGIN PRIVATE KEY"),
            "{host}.key must be PKCS#8 PEM"
        );
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg("-verify_hostname")
            .arg(host)
            .arg(&crt)
            .output()
            .expect("run openssl verify");
        assert!(
            verify.status.success(),
            "{host}.crt does not verify against ca.crt for {host}: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
}

#[test]
fn dev_certs_hosts_flag_overrides_the_host_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("c");
    let out = run_cli(&[
        "dev-certs",
        "--out",
        &out_dir.to_string_lossy(),
        "--hosts",
        "one.localhost,two.localhost",
    ]);
    assert_eq!(out.code, Some(0), "dev-certs --hosts\n{out}");
    for host in ["one.localhost", "two.localhost"] {
        assert!(out_dir.join(format!("{host}.crt")).is_file(), "{host}.crt");
        assert!(out_dir.join(format!("{host}.key")).is_file(), "{host}.key");
    }
    assert!(
        !out_dir.join("acme.localhost.crt").exists(),
        "--hosts must replace the default list"
    );
}
