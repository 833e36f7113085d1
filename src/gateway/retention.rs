//! Runs audit retention: at start and every hour, each tenant's audit records older than its
//! retention are pruned (and expired sessions purged).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::audit::retention::prune_all;
use crate::gateway::state::Shared;

/// How often pruning runs.
const EVERY: Duration = Duration::from_secs(3600);

/// The background pruner.
pub struct Pruner {
    shared: Arc<Shared>,
}

impl Pruner {
    /// A pruner over shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for Pruner {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let shared = Arc::clone(&self.shared);
            let pruned = tokio::task::spawn_blocking(move || {
                let rt = shared.runtime.load();
                prune_all(
                    shared.store.as_ref(),
                    &rt.config.tenants,
                    shared.clock.now_utc(),
                )
            })
            .await;
            match pruned {
                Ok(Ok(n)) if n > 0 => tracing::info!(records = n, "audit retention pruned records"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("audit retention failed: {e}"),
                Err(_) => tracing::error!("audit retention task failed"),
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    }
}
