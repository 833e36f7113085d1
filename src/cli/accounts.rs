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
        #[arg(long)]
        password_stdin: bool,
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
            let password = read_password(password_stdin, &username, &ctx.tenant)?;
            let phc = hash_password(&password)?;
            ctx.store.create_user(&User {
                tenant: ctx.tenant.id.clone(),
                username: username.clone(),
                password_hash: Some(phc),
                roles,
                disabled: false,
                created_at: now,
                password_changed_at: now,
            })?;
            ctx.audit(EventKind::UserCreated, &username, None);
            println!("created user {username} in tenant {}", ctx.tenant.id);
        }
        UserCommand::Passwd {
            username,
            password_stdin,
        } => {
            ctx.existing(&username)?;
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
                    "{}\t{}\troles={}",
                    u.username,
                    if u.disabled { "disabled" } else { "active" },
                    u.roles.join(",")
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
    }
    ctx.audit.flush();
    Ok(())
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
