//! The audit sink: request handlers hand events over without ever waiting on storage.
//!
//! ```text
//! handlers ──record()──▶ bounded queue ──▶ writer thread ──append(batch)──▶ AuditStore
//!              │ full?                       one transaction per batch
//!              └──▶ dropped += 1, rate-limited warning
//! ```
//!
//! A flood of bad requests can fill the queue; it must never slow the proxy, so a full queue
//! drops the event and counts it ([`AuditSink::dropped`]) rather than blocking.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::AuditEvent;
use crate::store::AuditStore;

/// Default queue length: events waiting for the writer before new ones are dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;

/// Most events written in one transaction.
const MAX_BATCH: usize = 512;

/// At most one "events dropped" / "write failed" log line per this interval, so the log
/// cannot become the next bottleneck during a flood.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

enum Command {
    // Boxed: an event is far larger than a flush request.
    Record(Box<AuditEvent>),
    /// Record, and say when it is on disk (or failed: the sender learns which).
    RecordDurable(Box<AuditEvent>, tokio::sync::oneshot::Sender<bool>),
    Flush(SyncSender<()>),
}

/// Handle for recording audit events. Cheap to clone; all clones feed one writer thread.
///
/// Dropping the last handle closes the queue, lets the writer store what is still queued, and
/// waits for it to finish (so it blocks briefly; drop it at shutdown, not on an async worker
/// in the middle of serving).
#[derive(Clone)]
pub struct AuditSink {
    // Declared before `_writer`: fields drop in order, so the last handle closes the queue
    // before joining the writer thread (which exits once the queue is closed and drained).
    tx: SyncSender<Command>,
    stats: Arc<Stats>,
    _writer: Arc<WriterThread>,
}

struct Stats {
    dropped: AtomicU64,
    failed: AtomicU64,
    drop_log: RateLimit,
    fail_log: RateLimit,
}

impl AuditSink {
    /// Starts the writer thread over `store`, with a queue of `capacity` events (at least 1).
    pub fn start(store: Arc<dyn AuditStore>, capacity: usize) -> io::Result<AuditSink> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let stats = Arc::new(Stats {
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            drop_log: RateLimit::new(),
            fail_log: RateLimit::new(),
        });
        let writer_stats = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run_writer(store.as_ref(), &rx, &writer_stats))?;
        Ok(AuditSink {
            tx,
            stats,
            _writer: Arc::new(WriterThread(Some(handle))),
        })
    }

    /// Queues `event` for storage without blocking. If the queue is full the event is dropped
    /// and counted (see [`dropped`](Self::dropped)).
    pub fn record(&self, event: AuditEvent) {
        match self.tx.try_send(Command::Record(Box::new(event))) {
            Ok(()) => {}
            // Disconnected only if the writer thread died; the event is lost either way.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let total = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if self.stats.drop_log.allow() {
                    tracing::warn!(
                        dropped_total = total,
                        "audit queue full: events dropped (the writer cannot keep up)"
                    );
                }
            }
        }
    }

    /// Records `event` and returns once it is committed to the store (fsynced): for security
    /// events, so a crash right after the action cannot lose its record. Batched with other
    /// events, so it costs one shared commit, not one each. Returns false if it was not stored.
    pub async fn record_durable(&self, event: AuditEvent) -> bool {
        let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
        let command = Command::RecordDurable(Box::new(event), ack_tx);
        let queued = match self.tx.try_send(command) {
            Ok(()) => true,
            // A full queue is waited out on a blocking thread rather than dropping the event.
            Err(TrySendError::Full(command)) => {
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(command).is_ok())
                    .await
                    .unwrap_or(false)
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
        let stored = queued && ack_rx.await.unwrap_or(false);
        if !stored {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        stored
    }

    /// Blocks until every event queued before this call has been written (or has failed).
    /// For tests and shutdown; from async code call it via `spawn_blocking`.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if self.tx.send(Command::Flush(ack_tx)).is_ok() {
            // An error means the writer is gone, so there is nothing left to wait for.
            let _ = ack_rx.recv();
        }
    }

    /// Events dropped because the queue was full (since start).
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// Events lost because the store refused the write (since start).
    pub fn failed(&self) -> u64 {
        self.stats.failed.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("dropped", &self.dropped())
            .field("failed", &self.failed())
            .finish_non_exhaustive()
    }
}

/// Joins the writer when the last sink handle goes away.
struct WriterThread(Option<JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            if handle.join().is_err() {
                tracing::error!("audit writer thread panicked");
            }
        }
    }
}

/// Takes whatever is queued (up to [`MAX_BATCH`]), writes it in one transaction, then
/// acknowledges the flushes that were waiting for it. Returns when every handle is gone.
fn run_writer(store: &dyn AuditStore, rx: &Receiver<Command>, stats: &Stats) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut acks = Vec::new();
    let mut durable_acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(command) = next {
            match command {
                Command::Record(event) => batch.push(*event),
                Command::RecordDurable(event, ack) => {
                    batch.push(*event);
                    durable_acks.push(ack);
                }
                Command::Flush(ack) => acks.push(ack),
            }
            next = if batch.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let mut stored = true;
        if !batch.is_empty() {
            if let Err(error) = store.append(&batch) {
                stored = false;
                let total = stats
                    .failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed)
                    + batch.len() as u64;
                if stats.fail_log.allow() {
                    tracing::error!(%error, failed_total = total, "audit write failed; events lost");
                }
            }
            batch.clear();
        }
        for ack in acks.drain(..) {
            // The flusher may have given up waiting; nothing to do then.
            let _ = ack.send(());
        }
        for ack in durable_acks.drain(..) {
            let _ = ack.send(stored);
        }
    }
}

/// Lets one event through per [`LOG_INTERVAL`], lock-free.
struct RateLimit {
    start: Instant,
    /// Milliseconds after `start` of the last allowed event; `u64::MAX` before the first.
    last_ms: AtomicU64,
}

impl RateLimit {
    fn new() -> Self {
        RateLimit {
            start: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
        }
    }

    fn allow(&self) -> bool {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= LOG_INTERVAL.as_millis() as u64;
        // Only the thread that wins the exchange logs, so concurrent drops log once.
        due && self
            .last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::ChainReport;
    use crate::audit::{AuditRecord, EventKind, Outcome};
    use crate::store::{AuditQuery, SqliteStore, StoreError};
    use std::sync::Mutex;
    use time::OffsetDateTime;

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            reason: Some(format!("e{n}")),
            ..AuditEvent::new(
                OffsetDateTime::from_unix_timestamp(n).expect("valid time"),
                "acme",
                EventKind::BadRequestRejected,
                Outcome::Denied,
            )
        }
    }

    /// A store whose `append` blocks until the test opens the gate, and records what it got.
    struct GatedStore {
        entered: Mutex<SyncSender<()>>,
        gate: Mutex<Receiver<()>>,
        stored: Mutex<Vec<AuditEvent>>,
    }

    impl AuditStore for GatedStore {
        fn append(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
            let _ = self.entered.lock().expect("lock").send(());
            let _ = self.gate.lock().expect("lock").recv();
            self.stored.lock().expect("lock").extend_from_slice(events);
            Ok(())
        }
        fn query(&self, _: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
            Ok(Vec::new())
        }
        fn prune(&self, _: &str, _: OffsetDateTime) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn verify_chain(&self, _: &str) -> Result<ChainReport, StoreError> {
            Ok(ChainReport::Intact { records: 0 })
        }
    }

    /// A store that refuses every write.
    struct BrokenStore;

    impl AuditStore for BrokenStore {
        fn append(&self, _: &[AuditEvent]) -> Result<(), StoreError> {
            Err(StoreError::Corrupt("disk on fire".into()))
        }
        fn query(&self, _: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
            Ok(Vec::new())
        }
        fn prune(&self, _: &str, _: OffsetDateTime) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn verify_chain(&self, _: &str) -> Result<ChainReport, StoreError> {
            Ok(ChainReport::Intact { records: 0 })
        }
    }

    fn stored_reasons(store: &dyn AuditStore) -> Vec<String> {
        store
            .query(&AuditQuery::new("acme"))
            .expect("query")
            .into_iter()
            .rev()
            .filter_map(|r| r.event.reason)
            .collect()
    }

    #[test]
    fn flush_returns_once_recorded_events_are_stored_in_order() {
        let store = Arc::new(SqliteStore::open_in_memory().expect("open"));
        let sink = AuditSink::start(store.clone(), 64).expect("start");
        let clone = sink.clone();
        for n in 1..=3 {
            clone.record(event(n));
        }
        sink.flush();
        assert_eq!(stored_reasons(store.as_ref()), ["e1", "e2", "e3"]);
        assert_eq!(sink.dropped(), 0);
        assert_eq!(sink.failed(), 0);
    }

    #[test]
    fn recorded_events_survive_dropping_the_sink_and_reopening_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/portcullis.db");
        {
            let store = Arc::new(SqliteStore::open(&path).expect("open"));
            let sink = AuditSink::start(store, 16).expect("start");
            sink.record(event(1));
            sink.flush();
            // Not flushed: dropping the last handle must still store it.
            sink.record(event(2));
        }
        let reopened = SqliteStore::open(&path).expect("reopen");
        assert_eq!(stored_reasons(&reopened), ["e1", "e2"]);
    }

    #[test]
    fn full_queue_drops_and_counts_events_instead_of_blocking() {
        let (entered_tx, entered_rx) = mpsc::sync_channel(16);
        let (gate_tx, gate_rx) = mpsc::sync_channel(16);
        let store = Arc::new(GatedStore {
            entered: Mutex::new(entered_tx),
            gate: Mutex::new(gate_rx),
            stored: Mutex::new(Vec::new()),
        });
        let sink = AuditSink::start(store.clone(), 1).expect("start");

        sink.record(event(1));
        // The writer has taken event 1 and is stuck in the store: the queue is empty.
        entered_rx.recv().expect("writer entered append");
        sink.record(event(2)); // fills the one-slot queue
        sink.record(event(3)); // dropped
        sink.record(event(4)); // dropped
        assert_eq!(sink.dropped(), 2);

        // Open the gate for good (a closed channel never blocks) and drain.
        drop(gate_tx);
        sink.flush();
        let stored = store.stored.lock().expect("lock");
        let reasons: Vec<_> = stored.iter().filter_map(|e| e.reason.as_deref()).collect();
        assert_eq!(reasons, ["e1", "e2"]);
    }

    #[test]
    fn store_errors_are_counted_and_the_writer_keeps_running() {
        let sink = AuditSink::start(Arc::new(BrokenStore), 16).expect("start");
        sink.record(event(1));
        sink.record(event(2));
        sink.flush();
        assert_eq!(sink.failed(), 2);
        sink.record(event(3));
        sink.flush();
        assert_eq!(sink.failed(), 3, "writer survived the first failure");
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn log_rate_limit_allows_one_line_per_interval() {
        let limit = RateLimit::new();
        assert!(limit.allow());
        assert!(!limit.allow());
    }
}
