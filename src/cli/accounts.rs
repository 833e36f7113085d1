//! `portcullis keygen` and `portcullis user …`: operator commands on keys and accounts.
//! They work on the store directly, so they run while the gateway serves.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;
use zeroize::Zeroizing;

use crate::audit::{AuditEvent, AuditSink, EventKind, Outcome, DEFAULT_QUEUE_CAPACITY};
use crate::auth::jwt::Keyring;
use crate::auth::password::hash_password;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Tenant};
use crate::keys::{MasterKey, Sealer};
use crate::store::{self, Store, User};

/// `portcullis user …`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account (password read from standard input).
    Add {
        /// The username.
        username: String,
        /// A role to grant (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Read the password from the first line of standard input.
        #[arg(long, conflicts_with = "sso")]
        password_stdin: bool,
        /// A user who signs in through the tenant's SAML IdP (no password): needed when the
        /// tenant's `jit_provisioning` is off.
        #[arg(long)]
        sso: bool,
    },
    /// Set a new password (read from standard input); ends the user's sessions.
    Passwd {
        /// The username.
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account and end its sessions.
    Disable {
        /// The username.
        username: String,
    },
    /// Enable a disabled account.
    Enable {
        /// The username.
        username: String,
    },
    /// List the tenant's accounts.
    List,
    /// End every session of a user.
    RevokeSessions {
        /// The username.
        username: String,
    },
    /// Remove a user's second factor (lost device) and end their sessions; they enrol again
    /// at next sign-in where MFA is required.
    ResetMfa {
        /// The username.
        username: String,
    },
    /// Move SSO accounts from the tenant's previous IdP to its current one (after the
    /// tenant's IdP, and so its entity ID, changed). Local accounts are never moved.
    RebindIdp {
        /// The previous IdP's entity ID: only accounts it provisioned move.
        #[arg(long)]
        from: String,
        /// Move only this account (default: every account of the previous IdP).
        username: Option<String>,
    },
    /// Clear the brute-force lock and failure streak of an account.
    Unlock {
        /// The username (also works for names that have no account: they are limited too).
        username: String,
    },
}

/// Usernames: 1–128 of letters, digits and `. _ @ + -` (safe in headers, logs and URLs).
pub fn validate_username(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b));
    if !ok {
        bail!("username must be 1-128 of letters, digits and . _ @ + -");
    }
    Ok(())
}

struct Ctx {
    config: Config,
    tenant: Tenant,
    store: Arc<dyn Store>,
    audit: AuditSink,
    clock: SystemClock,
}

impl Ctx {
    fn open(config: &Path, tenant: &str) -> anyhow::Result<Ctx> {
        let config =
            Config::load(config).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
        let tenant = config
            .tenants
            .iter()
            .find(|t| t.id == tenant)
            .cloned()
            .with_context(|| {
                format!(
                    "no tenant `{tenant}` in {}",
                    config.server.policies_dir.display()
                )
            })?;
        let store = store::open(&config.server.store)?;
        let audit = AuditSink::start(store.clone(), DEFAULT_QUEUE_CAPACITY)?;
        Ok(Ctx {
            config,
            tenant,
            store,
            audit,
            clock: SystemClock,
        })
    }

    fn audit(&self, event: EventKind, subject: &str, reason: Option<&str>) {
        self.audit.record(AuditEvent {
            actor: Some("operator-cli".into()),
            subject: Some(subject.to_string()),
            reason: reason.map(str::to_string),
            ..AuditEvent::new(
                self.clock.now_utc(),
                self.tenant.id.clone(),
                event,
                Outcome::Success,
            )
        });
    }

    fn existing(&self, username: &str) -> anyhow::Result<User> {
        self.store
            .user(&self.tenant.id, username)?
            .with_context(|| format!("no user `{username}` in tenant `{}`", self.tenant.id))
    }
}

fn read_password(
    password_stdin: bool,
    username: &str,
    tenant: &Tenant,
) -> anyhow::Result<Zeroizing<String>> {
    if !password_stdin {
        bail!("pass the password on standard input with --password-stdin (it is never taken as an argument)");
    }
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading standard input")?;
    let password = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string());
    tenant
        .password
        .check(&password, username)
        .map_err(|e| anyhow::anyhow!("password refused: {e}"))?;
    Ok(password)
}

/// Run a `user` subcommand for `tenant`.
pub fn user(config: &Path, tenant: &str, command: UserCommand) -> anyhow::Result<()> {
    let ctx = Ctx::open(config, tenant)?;
    let now = ctx.clock.unix_secs();
    match command {
        UserCommand::Add {
            username,
            roles,
            password_stdin,
            sso,
        } => {
            validate_username(&username)?;
            for r in &roles {
                if r.is_empty()
                    || !r
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
                {
                    bail!("role `{r}` must be letters, digits and - _ . :");
                }
            }
            let (password_hash, idp) = if sso {
                (None, Some(idp_entity_id(&ctx.config, &ctx.tenant)?))
            } else {
                let password = read_password(password_stdin, &username, &ctx.tenant)?;
                (Some(hash_password(&password)?), None)
            };
            ctx.store.create_user(&User {
                tenant: ctx.tenant.id.clone(),
                username: username.clone(),
                password_hash,
                roles,
                disabled: false,
                created_at: now,
                password_changed_at: now,
                totp_secret: None,
                idp,
            })?;
            ctx.audit(EventKind::UserCreated, &username, None);
            println!("created user {username} in tenant {}", ctx.tenant.id);
        }
        UserCommand::Passwd {
            username,
            password_stdin,
        } => {
            if ctx.existing(&username)?.idp.is_some() {
                bail!("`{username}` signs in through the tenant's IdP and has no password here");
            }
            let password = read_password(password_stdin, &username, &ctx.tenant)?;
            let phc = hash_password(&password)?;
            ctx.store
                .set_password(&ctx.tenant.id, &username, &phc, now)?;
            let ended = ctx
                .store
                .delete_user_sessions(&ctx.tenant.id, &username, None)?;
            ctx.audit(EventKind::PasswordChanged, &username, None);
            ctx.audit(
                EventKind::SessionRevoked,
                &username,
                Some("password_changed"),
            );
            println!("password changed for {username}; {ended} session(s) ended");
        }
        UserCommand::Disable { username } => {
            ctx.existing(&username)?;
            ctx.store.set_disabled(&ctx.tenant.id, &username, true)?;
            let ended = ctx
                .store
                .delete_user_sessions(&ctx.tenant.id, &username, None)?;
            ctx.audit(EventKind::UserDisabled, &username, None);
            println!("disabled {username}; {ended} session(s) ended");
        }
        UserCommand::Enable { username } => {
            ctx.existing(&username)?;
            ctx.store.set_disabled(&ctx.tenant.id, &username, false)?;
            ctx.audit(EventKind::UserEnabled, &username, None);
            println!("enabled {username}");
        }
        UserCommand::List => {
            for u in ctx.store.users(&ctx.tenant.id)? {
                println!(
                    "{}\t{}\troles={}{}",
                    u.username,
                    if u.disabled { "disabled" } else { "active" },
                    u.roles.join(","),
                    u.idp.map(|i| format!("\tsso={i}")).unwrap_or_default()
                );
            }
        }
        UserCommand::RevokeSessions { username } => {
            ctx.existing(&username)?;
            let ended = ctx
                .store
                .delete_user_sessions(&ctx.tenant.id, &username, None)?;
            ctx.audit(EventKind::SessionRevoked, &username, Some("operator"));
            println!("{ended} session(s) of {username} ended");
        }
        UserCommand::ResetMfa { username } => {
            ctx.existing(&username)?;
            ctx.store
                .set_totp(&ctx.tenant.id, &username, None, &[], 0)?;
            let ended = ctx
                .store
                .delete_user_sessions(&ctx.tenant.id, &username, None)?;
            ctx.audit(EventKind::MfaReset, &username, Some("operator"));
            println!("two-step verification removed for {username}; {ended} session(s) ended");
        }
        UserCommand::RebindIdp { from, username } => {
            let to = idp_entity_id(&ctx.config, &ctx.tenant)?;
            if from == to {
                bail!("`{from}` is already the IdP of tenant `{}`", ctx.tenant.id);
            }
            if let Some(name) = &username {
                let user = ctx.existing(name)?;
                if user.idp.as_deref() != Some(from.as_str()) {
                    bail!(
                        "`{name}` is not an account of IdP `{from}` (it is {})",
                        user.idp
                            .map_or_else(|| "a local account".into(), |i| format!("of `{i}`"))
                    );
                }
            }
            let moved = ctx
                .store
                .rebind_idp(&ctx.tenant.id, &from, &to, username.as_deref())?;
            if moved.is_empty() {
                bail!(
                    "no account of tenant `{}` belongs to IdP `{from}`",
                    ctx.tenant.id
                );
            }
            let reason = format!("from {from} to {to}");
            for name in &moved {
                ctx.audit(EventKind::UserIdpChanged, name, Some(&reason));
            }
            println!(
                "{} account(s) moved from {from} to {to}: {}",
                moved.len(),
                moved.join(", ")
            );
        }
        UserCommand::Unlock { username } => {
            let was_locked = unlock(&ctx.config, &ctx.tenant.id, &username)?;
            if let crate::config::LimiterStore::Redis(_) = ctx.config.ratelimit.login_store {
                // Through the API the gateway audits; here the CLI does.
                ctx.audit(
                    EventKind::AccountUnlocked,
                    &username,
                    Some(if was_locked {
                        "was_locked"
                    } else {
                        "was_not_locked"
                    }),
                );
            }
            println!(
                "{username} unlocked{}",
                if was_locked {
                    ""
                } else {
                    " (it was not locked)"
                }
            );
        }
    }
    ctx.audit.flush();
    Ok(())
}

/// The entity ID of the tenant's IdP, from its metadata file or the last fetched copy.
fn idp_entity_id(config: &Config, tenant: &Tenant) -> anyhow::Result<String> {
    use crate::config::MetadataSource;
    let Some(saml) = &tenant.saml else {
        bail!("tenant `{}` has no [saml] table", tenant.id);
    };
    match &saml.metadata {
        MetadataSource::File { idp, .. } => Ok(idp.entity_id.clone()),
        MetadataSource::Url { .. } => {
            let cached = config
                .server
                .data_dir
                .join("saml")
                .join(format!("{}.xml", tenant.id));
            let xml = std::fs::read_to_string(&cached).with_context(|| {
                format!(
                    "the IdP metadata of `{}` has not been fetched yet; start the gateway once",
                    tenant.id
                )
            })?;
            let idp = crate::saml::IdpMetadata::parse(&xml).map_err(anyhow::Error::msg)?;
            Ok(idp.entity_id)
        }
    }
}

/// Clear an account's lock: directly in Redis when budgets live there, otherwise through the
/// running gateway's operator API (the in-process limiter lives only in that process).
fn unlock(config: &Config, tenant: &str, username: &str) -> anyhow::Result<bool> {
    match &config.ratelimit.login_store {
        crate::config::LimiterStore::Redis(url) => {
            let limiter = crate::ratelimit::RedisLimiter::new(url)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            use crate::ratelimit::Limiter;
            Ok(rt.block_on(limiter.unlock(tenant, username))?)
        }
        crate::config::LimiterStore::Memory => {
            let token = crate::keys::token::read(&config.admin.token_file)?;
            let path = format!(
                "/v1/tenants/{}/users/{}/unlock",
                form_urlencoded::byte_serialize(tenant.as_bytes()).collect::<String>(),
                form_urlencoded::byte_serialize(username.as_bytes()).collect::<String>()
            );
            let (status, body) = operator_post(config.admin.listen, &path, &token)?;
            if status != 200 {
                bail!(
                    "the gateway's operator API at {} answered {status}",
                    config.admin.listen
                );
            }
            let v: serde_json::Value =
                serde_json::from_str(&body).context("operator API answer")?;
            Ok(v["was_locked"].as_bool().unwrap_or(false))
        }
    }
}

/// A minimal HTTP/1.1 POST to the operator listener (loopback; no body).
fn operator_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
        .with_context(|| {
            format!("cannot reach the gateway's operator listener at {addr}; is it running?")
        })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let request = Zeroizing::new(format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed answer from the operator listener")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// `portcullis keygen`: make the master key and the signing keyring if missing; with
/// `rotate`, add a new signing key (the old one stays published for the grace period).
pub fn keygen(config: &Config, rotate: bool) -> anyhow::Result<()> {
    let keys = &config.keys;
    let master = if keys.master_key.exists() {
        MasterKey::load(&keys.master_key)?
    } else {
        if let Some(dir) = keys.master_key.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let key = MasterKey::create(&keys.master_key)?;
        println!("created master key {}", keys.master_key.display());
        key
    };
    let sealer = Sealer::new(&master);
    if !config.admin.token_file.exists() {
        if let Some(dir) = config.admin.token_file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::keys::token::create(&config.admin.token_file)?;
        println!(
            "created operator API token {}",
            config.admin.token_file.display()
        );
    }
    let now = SystemClock.unix_secs();
    if !keys.jwt_keys.exists() {
        if let Some(dir) = keys.jwt_keys.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let ring = Keyring::create(&keys.jwt_keys, &sealer, now)?;
        println!(
            "created JWT signing key {} in {}",
            ring.active().kid(),
            keys.jwt_keys.display()
        );
    } else if rotate {
        let kid = Keyring::rotate(&keys.jwt_keys, &sealer, now)?;
        println!(
            "added JWT signing key {kid}; the previous key stays published for {} s",
            keys.jwt_grace.as_secs()
        );
    } else {
        Keyring::load(&keys.jwt_keys, &sealer)?;
        println!("keys already present: {}", keys.jwt_keys.display());
    }
    Ok(())
}

/// Create the demo accounts that do not exist yet.
pub fn ensure_demo_users(
    config: &Config,
    users: &[(&str, &str, &str, &[&str])],
) -> anyhow::Result<()> {
    let store = store::open(&config.server.store)?;
    let now = SystemClock.unix_secs();
    for (tenant, username, password, roles) in users {
        if store.user(tenant, username)?.is_some() {
            continue;
        }
        store.create_user(&User {
            tenant: tenant.to_string(),
            username: username.to_string(),
            password_hash: Some(hash_password(password)?),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            disabled: false,
            created_at: now,
            password_changed_at: now,
            totp_secret: None,
            idp: None,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_restricted_to_safe_characters() {
        assert!(validate_username("alice.smith@acme").is_ok());
        for bad in ["", "a b", "a\nb", "a,b", "ä", &"a".repeat(129)] {
            assert!(validate_username(bad).is_err(), "{bad:?}");
        }
    }
}
