//! One Vault call, the way every room of the store makes it: under the
//! request ceiling, retried with backoff on transient failures, with one
//! fresh login when the token turned out to be invalid, and its outcome
//! fed to the store's health.

use std::{
    sync::{Arc, Weak, atomic::AtomicU64},
    time::Duration,
};

use coffer_runtime::Backoff;
use tokio_util::sync::CancellationToken;
use vaultrs::{client::VaultClient, error::ClientError};

use super::{
    config::VaultConfig,
    consistency::Consistency,
    health::Health,
    limits::{Class, RateLimiter, classify, jittered},
    session::Session,
};
use crate::store::StoreError;

/// The store's connection to Vault: its login, the request ceiling and
/// health, shared by the KV reads, the pollers and the leases.
pub(super) struct Backend {
    pub(super) config: Arc<VaultConfig>,
    pub(super) session: Arc<Session>,
    limiter: RateLimiter,
    pub(super) health: Health,
    /// How many secret reads (not metadata polls) were sent.
    pub(super) secret_reads: AtomicU64,
    /// The newest storage index seen, sent with KV reads and writes.
    pub(super) consistency: Consistency,
    /// Cancelled when the store is dropped: every background task ends.
    pub(super) shutdown: CancellationToken,
}

/// Why a Vault call failed, sorted for the caller.
#[derive(Debug)]
pub(super) enum CallError {
    NotFound,
    Forbidden,
    Unavailable(String),
    Other(u16, String),
    /// A caller's request would have waited longer than it may for its
    /// turn at the request ceiling.
    Throttled,
}

impl From<CallError> for StoreError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NotFound => StoreError::NotFound,
            CallError::Forbidden => StoreError::Internal("Vault denied the broker's token".into()),
            CallError::Unavailable(detail) => StoreError::Unavailable(detail),
            CallError::Other(code, detail) => {
                StoreError::Internal(format!("Vault answered {code}: {detail}"))
            }
            CallError::Throttled => StoreError::Throttled,
        }
    }
}

impl Backend {
    pub(super) fn new(config: Arc<VaultConfig>, session: Arc<Session>, serving: bool) -> Self {
        Self {
            limiter: RateLimiter::new(config.limits.max_requests_per_second),
            health: Health::new(serving, config.cache.max_staleness),
            shutdown: CancellationToken::new(),
            secret_reads: AtomicU64::new(0),
            consistency: Consistency::default(),
            session,
            config,
        }
    }

    /// One Vault call with rate limiting, retries with backoff on transient
    /// failures, and one fresh login if the token turned out to be invalid.
    pub(super) async fn call<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        self.call_within(None, f).await
    }

    /// [`Self::call`], waiting for each turn at the request ceiling at most
    /// `max_wait` (`None`: as long as it takes), else [`CallError::Throttled`].
    pub(super) async fn call_within<T, F, Fut>(
        &self,
        max_wait: Option<Duration>,
        f: F,
    ) -> Result<T, CallError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let limits = &self.config.limits;
        let mut backoff = Backoff::new(limits.initial_backoff, limits.max_backoff);
        let mut retries = 0;
        let mut relogged = false;
        loop {
            if !self.session.logged_in() {
                return Err(CallError::Unavailable("not logged in to Vault yet".into()));
            }
            self.limiter
                .acquire_within(max_wait)
                .await
                .map_err(|_| CallError::Throttled)?;
            let (client, generation) = self.session.client();
            let node_epoch = self.session.node_epoch();
            crate::metrics::backend_read();
            let error = match f(client).await {
                Ok(value) => {
                    self.health.contact_ok();
                    return Ok(value);
                }
                Err(error) => error,
            };
            match classify(&error) {
                Class::NotFound => {
                    self.health.contact_ok();
                    return Err(CallError::NotFound);
                }
                Class::Forbidden if !relogged => {
                    relogged = true;
                    if self.session.recover_from_forbidden(generation).await {
                        continue;
                    }
                    crate::metrics::backend_error("forbidden");
                    return Err(CallError::Forbidden);
                }
                Class::Forbidden => {
                    crate::metrics::backend_error("forbidden");
                    return Err(CallError::Forbidden);
                }
                Class::Transient if retries < limits.max_retries => {
                    retries += 1;
                    // With several addresses: the node may have died or
                    // stepped down; retry at once on the active one.
                    if self.session.fail_over(node_epoch).await {
                        continue;
                    }
                    let pause = backoff.next_delay();
                    tracing::debug!(error = %error, retry = retries, pause_ms = pause.as_millis() as u64, "Vault call failed; retrying");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return Err(CallError::Unavailable("shutting down".into())),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Class::Transient => {
                    crate::metrics::backend_error("unavailable");
                    self.health.contact_failed();
                    return Err(CallError::Unavailable(error.to_string()));
                }
                Class::Permanent => {
                    crate::metrics::backend_error("other");
                    let code = match &error {
                        ClientError::APIError { code, .. } => *code,
                        _ => 0,
                    };
                    return Err(CallError::Other(code, error.to_string()));
                }
            }
        }
    }
}

/// Keeps health current when no requests flow: a cheap authenticated call
/// whenever nothing reached Vault for a poll interval. With several
/// addresses, also checks each interval that the node in use is still the
/// active one (a standby would forward, but answer reads from its own copy).
pub(super) async fn probe_loop(weak: Weak<Backend>, shutdown: CancellationToken) {
    loop {
        let interval = {
            let Some(vault) = weak.upgrade() else { return };
            vault.session.check_node().await;
            if vault.health.idle() >= vault.config.poll.interval {
                let _ = vault
                    .call(|c| async move { vaultrs::token::lookup_self(&*c).await.map(|_| ()) })
                    .await;
            }
            jittered(vault.config.poll.interval, vault.config.poll.jitter)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
