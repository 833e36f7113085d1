//! Configuration reload on SIGHUP and on file change.
//!
//! A valid new configuration is swapped in atomically: requests already running finish under
//! the configuration they started with, new ones see the new one, none is dropped. An invalid
//! one is rejected, logged with every error, audited, and the old one keeps serving.
//! Listener addresses, threads and the store are fixed for the life of the process: a change
//! to them is rejected with a message saying a restart is needed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};

use crate::audit::{AuditEvent, EventKind, Outcome, OPERATOR_TENANT};
use crate::config::Config;
use crate::gateway::state::Shared;

/// How often the SIGHUP flag is looked at.
const TICK: Duration = Duration::from_millis(100);

/// Watches for SIGHUP and changed files, and reloads.
pub struct Reloader {
    shared: Arc<Shared>,
    hangup: Arc<AtomicBool>,
    /// What the files looked like when the configuration in force was read.
    initial: [u8; 32],
}

impl Reloader {
    /// A reloader over shared state. Registers the SIGHUP handler at once, so a HUP that
    /// arrives before the service runs is not the default "terminate".
    pub fn new(shared: Arc<Shared>) -> Self {
        let hangup = Arc::new(AtomicBool::new(false));
        if let Err(e) =
            signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangup))
        {
            tracing::error!("cannot watch SIGHUP, reload on file change only: {e}");
        }
        // Taken now, before anything serves, so an edit made right after start-up is seen.
        let initial = fingerprint(&shared);
        Self {
            shared,
            hangup,
            initial,
        }
    }
}

/// Try to put the configuration on disk in force. Returns whether it was applied.
fn reload(shared: &Shared) -> bool {
    let current = shared.runtime.load_full();
    let outcome = shared
        .source
        .load()
        .map_err(|e| e.to_string())
        .and_then(|new| fixed_settings_unchanged(&current.config, &new).map(|()| new));
    let (event, outcome_kind, reason) = match outcome {
        Ok(new) => {
            let tenants = new.tenants.len();
            shared.install(new);
            shared.metrics.config_reload("applied");
            tracing::info!(tenants, "config reloaded");
            (EventKind::ConfigReloaded, Outcome::Success, None)
        }
        Err(errors) => {
            shared.metrics.config_reload("rejected");
            for line in errors.lines() {
                tracing::error!("config rejected: {line}");
            }
            (EventKind::ConfigRejected, Outcome::Failure, Some(errors))
        }
    };
    let applied = matches!(outcome_kind, Outcome::Success);
    shared.audit.record(AuditEvent {
        time: shared.clock.now_utc(),
        tenant: OPERATOR_TENANT.to_string(),
        event,
        actor: None,
        subject: None,
        client_ip: None,
        user_agent: None,
        request_id: None,
        outcome: outcome_kind,
        reason,
    });
    // This runs on a blocking thread: wait until the record is on disk, like every action.
    shared.audit.flush();
    applied
}

/// A digest of every file the configuration depends on, plus the policy folder listing.
fn fingerprint(shared: &Shared) -> [u8; 32] {
    let rt = shared.runtime.load();
    let mut files: Vec<PathBuf> = rt.config.source_files();
    if let Ok(entries) = std::fs::read_dir(&rt.config.server.policies_dir) {
        files.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    }
    files.sort();
    files.dedup();
    let mut hash = Sha256::new();
    for f in files {
        hash.update(f.as_os_str().as_encoded_bytes());
        // A missing or unreadable file hashes differently from any content.
        match std::fs::read(&f) {
            Ok(bytes) => {
                hash.update([1]);
                hash.update(bytes);
            }
            Err(_) => hash.update([0]),
        }
    }
    hash.finalize().into()
}

/// Settings bound at start-up cannot change by reload.
fn fixed_settings_unchanged(old: &Config, new: &Config) -> Result<(), String> {
    let (o, n) = (&old.server, &new.server);
    let same = o.https_listen == n.https_listen
        && o.http_redirect_listen == n.http_redirect_listen
        && o.threads == n.threads
        && o.store == n.store
        && old.proxy.client_idle_timeout == new.proxy.client_idle_timeout
        && old.admin == new.admin;
    if same {
        Ok(())
    } else {
        Err(format!(
            "{}: listeners, threads, admin, store or client_idle_timeout_ms changed; restart to apply them",
            new.path.display()
        ))
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = self.initial;
        let mut last_poll = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let poll = self.shared.runtime.load().config.server.reload_poll;
            let hup = self.hangup.swap(false, Ordering::SeqCst);
            let due = !poll.is_zero() && last_poll.elapsed() >= poll;
            if !hup && !due {
                continue;
            }
            last_poll = Instant::now();
            // File reads happen on a blocking thread: never stall the async runtime.
            let shared = Arc::clone(&self.shared);
            let seen = last;
            let checked = tokio::task::spawn_blocking(move || {
                let now = fingerprint(&shared);
                if hup || now != seen {
                    reload(&shared);
                    // After a reload the watched set may differ (new certificates): start
                    // from it. A rejected file is reported once, not every poll.
                    return fingerprint(&shared);
                }
                now
            })
            .await;
            if let Ok(now) = checked {
                last = now;
            }
        }
    }
}
