//! Keeps SAML state fresh: IdP metadata from URLs (at start, then as each tenant's refresh
//! period comes due; failures retried every minute) and expired SAML requests and replay
//! entries purged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::gateway::state::Shared;

/// How often the refresher looks.
const EVERY: Duration = Duration::from_secs(60);

/// The background refresher.
pub struct IdpRefresher {
    shared: Arc<Shared>,
}

impl IdpRefresher {
    /// A refresher over shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for IdpRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        {
            let rt = self.shared.runtime.load();
            self.shared
                .auth
                .saml
                .load_cached(&rt.config.tenants, &rt.config.server.data_dir);
        }
        loop {
            let rt = self.shared.runtime.load_full();
            self.shared
                .auth
                .saml
                .refresh_due(&rt.config.tenants, &rt.config.server.data_dir)
                .await;
            let (store, now) = (
                Arc::clone(&self.shared.store),
                self.shared.clock.unix_secs(),
            );
            match tokio::task::spawn_blocking(move || store.purge_saml(now)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("purging SAML state failed: {e}"),
                Err(_) => tracing::warn!("purging SAML state failed"),
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    }
}
