//! [`SamlStore`] on SQLite.

use std::sync::atomic::Ordering;

use rusqlite::{params, OptionalExtension};

use super::accounts::secs;
use super::{Context, SqliteStore};
use crate::store::saml::{PendingRequest, SamlStore, SpKey, MAX_PENDING_REQUESTS};
use crate::store::StoreError;

/// How often (in stores) the per-tenant bound on outstanding requests is enforced.
const BOUND_CHECK_EVERY: u64 = 64;

impl SqliteStore {
    /// [`SamlStore::put_saml_request`], then, if `cap` is given, trim the tenant's outstanding
    /// requests to it (tests use a small one).
    fn put_saml_request_within(
        &self,
        tenant: &str,
        id: &str,
        request: &PendingRequest,
        cap: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().ctx("begin store saml request")?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO saml_request (tenant, id, return_to, expires_at, browser)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    tenant,
                    id,
                    request.return_to,
                    secs(request.expires_at)?,
                    request.browser
                ],
            )
            .ctx("store saml request")?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "saml request id in `{tenant}`"
            )));
        }
        let Some(cap) = cap else {
            return tx.commit().ctx("commit saml request");
        };
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        // Over the bound, the requests closest to expiry (never the one just stored) go.
        tx.execute(
            "DELETE FROM saml_request WHERE tenant = ?1 AND id IN (
                 SELECT id FROM saml_request WHERE tenant = ?1 AND id != ?2
                 ORDER BY expires_at, id
                 LIMIT max(0, (SELECT count(*) FROM saml_request WHERE tenant = ?1) - ?3))",
            params![tenant, id, cap],
        )
        .ctx("bound saml requests")?;
        tx.commit().ctx("commit saml request")?;
        Ok(())
    }
}

impl SamlStore for SqliteStore {
    fn put_saml_request(
        &self,
        tenant: &str,
        id: &str,
        request: &PendingRequest,
    ) -> Result<(), StoreError> {
        // Counting a tenant's requests costs time in proportion to their number, so the bound
        // is enforced on every 64th store; between checks it may be passed by at most 63.
        let check = self
            .saml_puts
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(BOUND_CHECK_EVERY);
        self.put_saml_request_within(tenant, id, request, check.then_some(MAX_PENDING_REQUESTS))
    }

    fn take_saml_request(
        &self,
        tenant: &str,
        id: &str,
        now: u64,
    ) -> Result<Option<PendingRequest>, StoreError> {
        let conn = self.lock();
        // One statement: delete and read back, so two instances cannot both consume it.
        let row: Option<(String, i64, String)> = conn
            .query_row(
                "DELETE FROM saml_request WHERE tenant = ?1 AND id = ?2
                 RETURNING return_to, expires_at, browser",
                params![tenant, id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .ctx("take saml request")?;
        Ok(row.and_then(|(return_to, expires_at, browser)| {
            let expires_at = u64::try_from(expires_at).unwrap_or(0);
            (now < expires_at).then_some(PendingRequest {
                return_to,
                expires_at,
                browser,
            })
        }))
    }

    fn remember_assertion(
        &self,
        issuer: &str,
        assertion_id: &str,
        keep_until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let conn = self.lock();
        // An entry past its time no longer protects anything (the assertion itself is
        // expired by then); replace it rather than refuse.
        conn.execute(
            "DELETE FROM saml_replay WHERE issuer = ?1 AND assertion_id = ?2 AND keep_until <= ?3",
            params![issuer, assertion_id, secs(now)?],
        )
        .ctx("expire saml replay entry")?;
        let inserted = conn
            .execute(
                "INSERT OR IGNORE INTO saml_replay (issuer, assertion_id, keep_until)
                 VALUES (?1, ?2, ?3)",
                params![issuer, assertion_id, secs(keep_until)?],
            )
            .ctx("remember saml assertion")?;
        Ok(inserted == 1)
    }

    fn purge_saml(&self, now: u64) -> Result<u64, StoreError> {
        let conn = self.lock();
        let now = secs(now)?;
        let requests = conn
            .execute(
                "DELETE FROM saml_request WHERE expires_at <= ?1",
                params![now],
            )
            .ctx("purge saml requests")?;
        let replays = conn
            .execute(
                "DELETE FROM saml_replay WHERE keep_until <= ?1",
                params![now],
            )
            .ctx("purge saml replay cache")?;
        Ok((requests + replays) as u64)
    }

    fn saml_sp_key(&self, tenant: &str) -> Result<Option<SpKey>, StoreError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT sealed_key, cert_der FROM saml_sp_key WHERE tenant = ?1",
            params![tenant],
            |r| {
                Ok(SpKey {
                    sealed_key: r.get(0)?,
                    cert_der: r.get(1)?,
                })
            },
        )
        .optional()
        .ctx("read saml sp key")
    }

    fn put_saml_sp_key(&self, tenant: &str, key: &SpKey) -> Result<SpKey, StoreError> {
        self.lock()
            .execute(
                "INSERT OR IGNORE INTO saml_sp_key (tenant, sealed_key, cert_der) VALUES (?1, ?2, ?3)",
                params![tenant, key.sealed_key, key.cert_der],
            )
            .ctx("store saml sp key")?;
        self.saml_sp_key(tenant)?
            .ok_or_else(|| StoreError::Corrupt(format!("saml sp key of `{tenant}` vanished")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SqliteStore {
        SqliteStore::open_in_memory().expect("in-memory store")
    }

    fn pending(expires_at: u64) -> PendingRequest {
        PendingRequest {
            return_to: "/app".into(),
            expires_at,
            browser: "b".into(),
        }
    }

    #[test]
    fn a_request_is_consumed_exactly_once() {
        let s = store();
        s.put_saml_request("acme", "_id1", &pending(100)).unwrap();
        assert_eq!(
            s.take_saml_request("acme", "_id1", 50).unwrap(),
            Some(pending(100))
        );
        assert_eq!(s.take_saml_request("acme", "_id1", 50).unwrap(), None);
    }

    #[test]
    fn a_request_belongs_to_its_tenant_and_expires() {
        let s = store();
        s.put_saml_request("acme", "_id1", &pending(100)).unwrap();
        assert_eq!(s.take_saml_request("globex", "_id1", 50).unwrap(), None);
        s.put_saml_request("acme", "_id2", &pending(100)).unwrap();
        assert_eq!(s.take_saml_request("acme", "_id2", 100).unwrap(), None);
        // The expired one is gone too, not left for later.
        assert_eq!(s.take_saml_request("acme", "_id2", 10).unwrap(), None);
        assert!(s.put_saml_request("acme", "_id1", &pending(100)).is_err());
    }

    #[test]
    fn outstanding_requests_are_bounded_per_tenant_oldest_first() {
        let s = store();
        s.put_saml_request("globex", "_g", &pending(100)).unwrap();
        for (i, expires) in [(1, 110), (2, 120), (3, 130)] {
            s.put_saml_request_within("acme", &format!("_a{i}"), &pending(expires), Some(3))
                .unwrap();
        }
        // A fourth makes room by dropping the one closest to expiry.
        s.put_saml_request_within("acme", "_a4", &pending(140), Some(3))
            .unwrap();
        assert_eq!(s.take_saml_request("acme", "_a1", 50).unwrap(), None);
        for id in ["_a2", "_a3", "_a4"] {
            assert!(
                s.take_saml_request("acme", id, 50).unwrap().is_some(),
                "{id}"
            );
        }
        // Another tenant's requests are not touched by acme's bound.
        assert!(s.take_saml_request("globex", "_g", 50).unwrap().is_some());
        // The request just stored survives even when the bound is reached by same-age ones.
        for i in 0..3 {
            s.put_saml_request_within("acme", &format!("_z{i}"), &pending(200), Some(3))
                .unwrap();
        }
        s.put_saml_request_within("acme", "_a0", &pending(200), Some(3))
            .unwrap();
        assert!(s.take_saml_request("acme", "_a0", 50).unwrap().is_some());
        // A refused duplicate changes nothing.
        s.put_saml_request_within("acme", "_n", &pending(300), Some(3))
            .unwrap();
        assert!(s
            .put_saml_request_within("acme", "_n", &pending(300), Some(3))
            .is_err());
        assert!(s.take_saml_request("acme", "_n", 50).unwrap().is_some());
    }

    #[test]
    fn the_bound_holds_through_the_trait_within_one_check_interval() {
        let s = store();
        let count = |s: &SqliteStore| -> u64 {
            s.lock()
                .query_row(
                    "SELECT count(*) FROM saml_request WHERE tenant = 'acme'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let over = MAX_PENDING_REQUESTS + 2 * BOUND_CHECK_EVERY;
        for i in 0..over {
            s.put_saml_request("acme", &format!("_{i}"), &pending(1000 + i))
                .unwrap();
        }
        let kept = count(&s);
        assert!(
            (MAX_PENDING_REQUESTS..MAX_PENDING_REQUESTS + BOUND_CHECK_EVERY).contains(&kept),
            "{kept} outstanding"
        );
        // The newest survive; the oldest were dropped.
        assert!(s
            .take_saml_request("acme", &format!("_{}", over - 1), 0)
            .unwrap()
            .is_some());
        assert_eq!(s.take_saml_request("acme", "_0", 0).unwrap(), None);
    }

    #[test]
    fn an_assertion_id_is_accepted_once_until_it_expires() {
        let s = store();
        assert!(s.remember_assertion("idp", "_a", 100, 10).unwrap());
        assert!(!s.remember_assertion("idp", "_a", 100, 20).unwrap());
        assert!(!s.remember_assertion("idp", "_a", 200, 99).unwrap());
        assert!(s.remember_assertion("other-idp", "_a", 100, 20).unwrap());
        assert_eq!(s.purge_saml(100).unwrap(), 2);
        assert!(s.remember_assertion("idp", "_a", 300, 100).unwrap());
    }

    #[test]
    fn the_first_sp_key_stored_wins() {
        let s = store();
        assert_eq!(s.saml_sp_key("acme").unwrap(), None);
        let a = SpKey {
            sealed_key: "a".into(),
            cert_der: vec![1],
        };
        let b = SpKey {
            sealed_key: "b".into(),
            cert_der: vec![2],
        };
        assert_eq!(s.put_saml_sp_key("acme", &a).unwrap(), a);
        assert_eq!(s.put_saml_sp_key("acme", &b).unwrap(), a);
        assert_eq!(s.saml_sp_key("acme").unwrap(), Some(a));
        assert_eq!(s.saml_sp_key("globex").unwrap(), None);
    }
}
