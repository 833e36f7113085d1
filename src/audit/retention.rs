//! Retention: each tenant's audit records are kept for its retention period (90 days by
//! default), then pruned; operator-level records are kept for the default period.

use std::time::Duration;

use time::OffsetDateTime;

use super::OPERATOR_TENANT;
use crate::config::Tenant;
use crate::store::{Store, StoreError};

/// Prune every tenant's records older than its retention at `now`, and expired sessions.
/// Returns how many audit records were removed.
pub fn prune_all(
    store: &dyn Store,
    tenants: &[Tenant],
    now: OffsetDateTime,
) -> Result<u64, StoreError> {
    let default = Duration::from_secs(crate::config::DEFAULT_AUDIT_RETENTION_DAYS * 86_400);
    let mut removed = 0;
    let periods = tenants
        .iter()
        .map(|t| (t.id.as_str(), t.audit_retention))
        .chain(std::iter::once((OPERATOR_TENANT, default)));
    for (tenant, keep) in periods {
        removed += store.prune(tenant, now - keep)?;
    }
    store.purge_sessions(u64::try_from(now.unix_timestamp()).unwrap_or(0))?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, EventKind, Outcome};
    use crate::clock::{Clock, ManualClock};
    use crate::store::{AuditQuery, AuditStore, SqliteStore};

    fn tenant(id: &str, days: u64) -> Tenant {
        Tenant {
            id: id.into(),
            display_name: id.into(),
            hosts: vec![],
            routes: vec![],
            session: Default::default(),
            password: Default::default(),
            mfa: Default::default(),
            audit_retention: Duration::from_secs(days * 86_400),
            login: Default::default(),
            saml: None,
            source: "t.toml".into(),
        }
    }

    #[test]
    fn records_past_retention_are_pruned_with_a_moved_clock() {
        let store = SqliteStore::open_in_memory().expect("store");
        let clock = ManualClock::at(Duration::from_secs(1_700_000_000));
        let event = |tenant: &str, clock: &ManualClock| {
            AuditEvent::new(
                clock.now_utc(),
                tenant,
                EventKind::LoginFailed,
                Outcome::Failure,
            )
        };
        store
            .append(&[event("acme", &clock), event("globex", &clock)])
            .expect("old");
        clock.advance(Duration::from_secs(40 * 86_400));
        store
            .append(&[event("acme", &clock), event("globex", &clock)])
            .expect("newer");
        clock.advance(Duration::from_secs(55 * 86_400));
        // acme keeps 90 days (default): the first record is 95 days old, the second 55.
        // globex keeps 30 days: both are older.
        let tenants = [tenant("acme", 90), tenant("globex", 30)];
        let removed = prune_all(&store, &tenants, clock.now_utc()).expect("pruned");
        assert_eq!(removed, 3);
        assert_eq!(store.query(&AuditQuery::new("acme")).expect("q").len(), 1);
        assert_eq!(store.query(&AuditQuery::new("globex")).expect("q").len(), 0);
        assert!(matches!(
            store.verify_chain("acme").expect("verify"),
            crate::audit::chain::ChainReport::Intact { .. }
        ));
    }
}
