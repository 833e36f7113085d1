//! Per-tenant hash chain over stored audit records, so a changed, removed or reordered record
//! is detectable.
//!
//! Record `n` of a tenant stores `hash_n = SHA-256(DOMAIN ‖ hash_{n-1} ‖ n ‖ fields)`, with
//! `hash_0` = [`GENESIS`]. Stores keep the chain *head* (last seq and hash) next to the records,
//! so deleting the newest records is caught too, and an *anchor* (seq and hash of the last
//! pruned record), so retention pruning does not break verification. The logic here is
//! storage-independent; every store backend uses the same [`link`] and [`ChainVerifier`].

use std::fmt;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::{unix_ms, AuditEvent, AuditRecord};

/// Separates our hashes from any other SHA-256 use; bump the version if the encoding changes.
const DOMAIN: &[u8] = b"portcullis/audit-chain/v1\0";

/// A link of the chain: SHA-256 output.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash(pub [u8; 32]);

/// The hash "before" a tenant's first record.
pub const GENESIS: ChainHash = ChainHash([0; 32]);

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

impl Serialize for ChainHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The hash of record `seq` holding `event`, following `prev`.
///
/// `event` must be the stored form ([`AuditEvent::sanitized`]). Every field is length-prefixed
/// (and optional ones tagged) so no two different records encode to the same bytes.
pub fn link(prev: &ChainHash, seq: u64, event: &AuditEvent) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    hasher.update(prev.0);
    hasher.update(seq.to_be_bytes());
    hasher.update(unix_ms(event.time).to_be_bytes());
    put_str(&mut hasher, &event.tenant);
    put_str(&mut hasher, event.event.as_str());
    put_str(&mut hasher, event.outcome.as_str());
    put_opt(&mut hasher, event.actor.as_deref());
    put_opt(&mut hasher, event.subject.as_deref());
    put_opt(
        &mut hasher,
        event.client_ip.map(|ip| ip.to_string()).as_deref(),
    );
    put_opt(&mut hasher, event.user_agent.as_deref());
    put_opt(&mut hasher, event.request_id.as_deref());
    put_opt(&mut hasher, event.reason.as_deref());
    ChainHash(hasher.finalize().into())
}

fn put_str(hasher: &mut Sha256, value: &str) {
    hasher.update((value.len() as u64).to_be_bytes());
    hasher.update(value.as_bytes());
}

fn put_opt(hasher: &mut Sha256, value: Option<&str>) {
    match value {
        None => hasher.update([0u8]),
        Some(v) => {
            hasher.update([1u8]);
            put_str(hasher, v);
        }
    }
}

/// Where a tenant's chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// A record is missing (deleted) or out of order.
    #[error("record {expected} is missing (next record found is {found})")]
    Gap {
        /// The seq that should come next.
        expected: u64,
        /// The seq that came instead.
        found: u64,
    },
    /// A record's content, position or predecessor differs from what was hashed.
    #[error("record {seq} was altered or moved")]
    Altered {
        /// The first record whose hash does not match.
        seq: u64,
    },
    /// The newest records do not end where the stored head says (deleted or appended outside
    /// the store).
    #[error("chain ends at record {last}, but the head says {head}")]
    HeadMismatch {
        /// Head seq kept by the store.
        head: u64,
        /// Last seq actually found.
        last: u64,
    },
}

/// Result of verifying one tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainReport {
    /// Every remaining record checked out.
    Intact {
        /// Number of records verified (pruned ones excluded).
        records: u64,
    },
    /// The chain is broken here.
    Broken(ChainBreak),
}

/// Walks a tenant's records in seq order, starting after the anchor.
#[derive(Debug)]
pub struct ChainVerifier {
    last_seq: u64,
    prev: ChainHash,
    checked: u64,
}

impl ChainVerifier {
    /// Starts after the anchor (`0` and [`GENESIS`] if nothing was ever pruned).
    pub fn new(anchor_seq: u64, anchor_hash: ChainHash) -> Self {
        ChainVerifier {
            last_seq: anchor_seq,
            prev: anchor_hash,
            checked: 0,
        }
    }

    /// Checks the next record (records must be fed in ascending seq order).
    pub fn check(&mut self, record: &AuditRecord) -> Result<(), ChainBreak> {
        let expected = self.last_seq + 1;
        if record.seq != expected {
            return Err(ChainBreak::Gap {
                expected,
                found: record.seq,
            });
        }
        let computed = link(&self.prev, record.seq, &record.event);
        if computed != record.hash {
            return Err(ChainBreak::Altered { seq: record.seq });
        }
        self.last_seq = record.seq;
        self.prev = computed;
        self.checked += 1;
        Ok(())
    }

    /// Compares where the records ended with the store's head.
    pub fn finish(self, head_seq: u64, head_hash: &ChainHash) -> ChainReport {
        if self.last_seq != head_seq || self.prev != *head_hash {
            return ChainReport::Broken(ChainBreak::HeadMismatch {
                head: head_seq,
                last: self.last_seq,
            });
        }
        ChainReport::Intact {
            records: self.checked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{EventKind, Outcome};
    use time::OffsetDateTime;

    fn event(reason: Option<&str>) -> AuditEvent {
        AuditEvent {
            reason: reason.map(str::to_owned),
            ..AuditEvent::new(
                OffsetDateTime::UNIX_EPOCH,
                "acme",
                EventKind::RequestDenied,
                Outcome::Denied,
            )
        }
    }

    #[test]
    fn absent_and_empty_fields_hash_differently() {
        assert_ne!(
            link(&GENESIS, 1, &event(None)),
            link(&GENESIS, 1, &event(Some("")))
        );
    }

    #[test]
    fn hash_depends_on_position_and_predecessor() {
        let e = event(Some("x"));
        let first = link(&GENESIS, 1, &e);
        assert_ne!(first, link(&GENESIS, 2, &e));
        assert_ne!(link(&first, 2, &e), link(&GENESIS, 2, &e));
    }

    #[test]
    fn verifier_accepts_a_chain_and_rejects_a_swapped_pair() {
        let (a, b) = (event(Some("a")), event(Some("b")));
        let ha = link(&GENESIS, 1, &a);
        let hb = link(&ha, 2, &b);
        let rec = |seq, hash, event: &AuditEvent| AuditRecord {
            seq,
            hash,
            event: event.clone(),
        };

        let mut ok = ChainVerifier::new(0, GENESIS);
        assert_eq!(ok.check(&rec(1, ha, &a)), Ok(()));
        assert_eq!(ok.check(&rec(2, hb, &b)), Ok(()));
        assert_eq!(ok.finish(2, &hb), ChainReport::Intact { records: 2 });

        let mut swapped = ChainVerifier::new(0, GENESIS);
        assert_eq!(
            swapped.check(&rec(1, hb, &b)),
            Err(ChainBreak::Altered { seq: 1 })
        );
    }

    #[test]
    fn hash_prints_as_lowercase_hex() {
        assert_eq!(GENESIS.to_string(), "0".repeat(64));
    }
}
