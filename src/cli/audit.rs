//! `portcullis audit --tenant T [--since 24h]` and `portcullis audit verify --tenant T`.

use std::path::Path;

use anyhow::{bail, Context};
use clap::Subcommand;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::audit::chain::ChainReport;
use crate::audit::EventKind;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::store::{self, AuditQuery};

/// `portcullis audit …` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the tenant's hash chain: detects changed, removed or reordered records.
    Verify,
}

/// Options of a query.
#[derive(Debug)]
pub struct Query {
    /// Only records at or after this (`24h`, `7d`, `30m` ago, or an RFC 3339 time).
    pub since: Option<String>,
    /// Only this event type.
    pub event: Option<String>,
    /// Only records about this user (actor or subject).
    pub user: Option<String>,
    /// At most this many records, newest first.
    pub limit: u32,
    /// JSON lines instead of a table.
    pub json: bool,
}

/// `--since`: the same time bounds as the admin pages' filter (RFC 3339, a date, or
/// `30m`/`24h`/`7d`/`2w` back from `now`).
pub fn parse_since(text: &str, now: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
    crate::audit::filter::parse_time(text, now)
        .with_context(|| format!("--since `{text}`: use 24h, 7d, 30m, a date or an RFC 3339 time"))
}

fn open(config: &Path, tenant: &str) -> anyhow::Result<std::sync::Arc<dyn store::Store>> {
    let config =
        Config::load(config).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let known =
        tenant == crate::audit::OPERATOR_TENANT || config.tenants.iter().any(|t| t.id == tenant);
    if !known {
        bail!("no tenant `{tenant}`");
    }
    Ok(store::open(&config.server.store)?)
}

/// Print a tenant's records, newest first.
pub fn query(config: &Path, tenant: &str, q: Query) -> anyhow::Result<()> {
    let store = open(config, tenant)?;
    let now = SystemClock.now_utc();
    let mut aq = AuditQuery::new(tenant);
    aq.since = q
        .since
        .as_deref()
        .map(|s| parse_since(s, now))
        .transpose()?;
    aq.event = q
        .event
        .as_deref()
        .map(|e| {
            e.parse::<EventKind>()
                .map_err(|_| anyhow::anyhow!("unknown event type `{e}`"))
        })
        .transpose()?;
    aq.user = q.user;
    aq.limit = q.limit;
    for record in store.query(&aq)? {
        let e = &record.event;
        if q.json {
            println!("{}", serde_json::json!({ "seq": record.seq, "event": e }));
        } else {
            let time = e.time.format(&Rfc3339).unwrap_or_default();
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            println!(
                "{time}\t{}\t{}\t{}\tactor={}\tsubject={}\tip={}\treason={}",
                record.seq,
                e.event,
                e.outcome.as_str(),
                dash(&e.actor),
                dash(&e.subject),
                e.client_ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
                dash(&e.reason),
            );
        }
    }
    Ok(())
}

/// Verify a tenant's chain; an error (non-zero exit) if it is broken.
pub fn verify(config: &Path, tenant: &str) -> anyhow::Result<()> {
    let store = open(config, tenant)?;
    match store.verify_chain(tenant)? {
        ChainReport::Intact { records } => {
            println!("ok: {records} record(s) of tenant {tenant} verified");
            Ok(())
        }
        ChainReport::Broken(b) => bail!("audit chain of tenant {tenant} is broken: {b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute_since_parse() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).expect("time");
        assert_eq!(
            parse_since("24h", now).expect("24h"),
            now - time::Duration::hours(24)
        );
        assert_eq!(
            parse_since("7d", now).expect("7d"),
            now - time::Duration::days(7)
        );
        assert!(parse_since("1970-01-12T13:46:40Z", now).is_ok());
        for bad in ["", "h", "-1h", "5y", "yesterday"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
