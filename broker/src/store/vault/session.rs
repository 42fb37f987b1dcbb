//! The broker's own Vault identity: log in, renew before expiry, log in
//! again when renewal fails or the token reaches its max TTL.
//!
//! Vault Agent once stopped renewing at the max TTL and never logged in
//! again (hashicorp/vault#6659). Here a renewal that comes back shorter than
//! the token's creation TTL marks the token as capped, and the next wake-up
//! logs in afresh instead of renewing.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use coffer_runtime::Backoff;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use zeroize::Zeroizing;

use super::config::{AuthConfig, VaultConfig};
use super::limits::{Class, classify};
use super::nodes::{NodeState, Nodes};
use crate::store::StoreError;

/// What Vault said about the token we hold.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Zero: the token does not expire.
    ttl: Duration,
    renewable: bool,
    obtained: Instant,
}

/// The current login, and the node it talks to.
pub(super) struct Session {
    config: Arc<VaultConfig>,
    nodes: Nodes,
    /// The client for the node in use, holding the current token, and the
    /// login generation.
    client: RwLock<(Arc<VaultClient>, u64)>,
    lease: Mutex<Lease>,
    relogin: tokio::sync::Mutex<()>,
}

impl Session {
    /// A session that has not logged in yet (generation 0): every call
    /// before the first login is refused by the store as unavailable.
    pub(super) fn new(config: Arc<VaultConfig>) -> Result<Arc<Self>, StoreError> {
        let urls = config
            .nodes()
            .into_iter()
            .map(|a| {
                url::Url::parse(a)
                    .map_err(|e| StoreError::Internal(format!("invalid Vault address: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let probes = urls
            .iter()
            .map(|u| build_client(&config, u, ""))
            .collect::<Result<Vec<_>, _>>()?;
        let anonymous = build_client(&config, &urls[0], "")?;
        Ok(Arc::new(Self {
            nodes: Nodes::new(urls, probes),
            config,
            client: RwLock::new((Arc::new(anonymous), 0)),
            lease: Mutex::new(Lease {
                ttl: Duration::ZERO,
                renewable: false,
                obtained: Instant::now(),
            }),
            relogin: tokio::sync::Mutex::new(()),
        }))
    }

    /// Logs in once; fails when the configuration or Vault refuses.
    pub(super) async fn connect(config: Arc<VaultConfig>) -> Result<Arc<Self>, StoreError> {
        let session = Self::new(config)?;
        session.check_node().await;
        session.relogin(0).await?;
        Ok(session)
    }

    /// Whether a login has succeeded yet.
    pub(super) fn logged_in(&self) -> bool {
        self.client().1 > 0
    }

    /// After a failed first login: tries again until it succeeds, pausing
    /// with jittered exponential backoff (0.5 s doubling to 30 s) before each
    /// attempt, so the broker can start before Vault does. Returns false if
    /// `shutdown` came first.
    pub(super) async fn retry_first_login(&self, shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut attempt: u32 = 1;
        loop {
            let pause = backoff.next_delay();
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(pause) => {}
            }
            attempt = attempt.saturating_add(1);
            self.check_node().await;
            match self.relogin(0).await {
                Ok(()) => return true,
                Err(error) => tracing::warn!(
                    %error,
                    attempt,
                    "Vault login failed; not serving until it succeeds"
                ),
            }
        }
    }

    /// The client holding the current token, and the login generation.
    pub(super) fn client(&self) -> (Arc<VaultClient>, u64) {
        let guard = self.client.read();
        (Arc::clone(&guard.0), guard.1)
    }

    /// A client without a token, for unauthenticated endpoints.
    pub(super) fn anonymous(&self) -> Result<VaultClient, StoreError> {
        build_client(&self.config, self.nodes.current(), "")
    }

    /// The number of moves to another node so far: a failed call notes it
    /// before the call, for [`Self::fail_over`].
    pub(super) fn node_epoch(&self) -> u64 {
        self.nodes.epoch()
    }

    /// With several addresses, after a call that failed at node epoch
    /// `epoch`: moves to the active node if it is another (or someone else
    /// just did); whether the call should be retried at once on the new
    /// node. The token is kept: tokens replicate to every node.
    pub(super) async fn fail_over(&self, epoch: u64) -> bool {
        let timeout = self.probe_timeout();
        self.nodes
            .find_active(epoch, timeout, || self.follow_node())
            .await
            .is_some()
    }

    /// Probes the node in use; with several addresses, moves to the
    /// active one when it no longer answers active.
    pub(super) async fn check_node(&self) {
        let epoch = self.nodes.epoch();
        if self.nodes.probe_current(self.probe_timeout()).await != NodeState::Active {
            self.fail_over(epoch).await;
        }
    }

    /// Whether the node in use answered active when last probed (a
    /// standby's "not found" may only be its lag).
    pub(super) fn on_active_node(&self) -> bool {
        self.nodes.on_active()
    }

    fn probe_timeout(&self) -> Duration {
        self.config
            .limits
            .request_timeout
            .min(Duration::from_secs(2))
    }

    /// Rebuilds the client for the node now in use, with the same token.
    fn follow_node(&self) {
        let mut guard = self.client.write();
        let token = Zeroizing::new(guard.0.settings.token.clone());
        match build_client(&self.config, self.nodes.current(), &token) {
            Ok(client) => guard.0 = Arc::new(client),
            // The same settings built a client at start: only a CA file
            // that vanished since can fail here; the next failure retries.
            Err(error) => tracing::warn!(%error, "cannot build a client for the active Vault node"),
        }
    }

    fn lease(&self) -> Lease {
        *self.lease.lock()
    }

    /// Logs in again unless someone already did since `generation`.
    pub(super) async fn relogin(&self, generation: u64) -> Result<(), StoreError> {
        let _one_at_a_time = self.relogin.lock().await;
        if self.client().1 != generation {
            return Ok(());
        }
        let anonymous = self.anonymous()?;
        let (token, lease) = login(&self.config, &anonymous).await?;
        *self.lease.lock() = lease;
        // Built under the lock for the node in use then: a move to another
        // node meanwhile rebuilds after this, with this token.
        let mut guard = self.client.write();
        let client = build_client(&self.config, self.nodes.current(), &token)?;
        *guard = (Arc::new(client), generation + 1);
        tracing::info!(
            method = method_name(&self.config.auth),
            first = generation == 0,
            "logged in to Vault"
        );
        Ok(())
    }

    /// After a 403: whether the token itself is bad (then log in again and
    /// return true) or the token is fine and the policy said no (false).
    pub(super) async fn recover_from_forbidden(&self, generation: u64) -> bool {
        let (client, current) = self.client();
        if current != generation {
            return true;
        }
        match vaultrs::token::lookup_self(&*client).await {
            Ok(_) => false,
            Err(e) if classify(&e) == Class::Forbidden => {
                tracing::warn!("Vault token no longer valid; logging in again");
                match self.relogin(generation).await {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::warn!(%error, "Vault login failed");
                        false
                    }
                }
            }
            Err(_) => false,
        }
    }

    /// Keeps the token alive until `shutdown`.
    pub(super) fn spawn_renewer(self: &Arc<Self>, shutdown: CancellationToken) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move { renew_loop(weak, shutdown).await });
    }
}

async fn renew_loop(weak: Weak<Session>, shutdown: CancellationToken) {
    let mut failures = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let wait = {
            let Some(session) = weak.upgrade() else {
                return;
            };
            let lease = session.lease();
            if lease.ttl.is_zero() {
                // A token that never expires: look again now and then, in case
                // the token file is replaced.
                Duration::from_secs(60)
            } else {
                (lease.ttl * 2 / 3).saturating_sub(lease.obtained.elapsed())
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(session) = weak.upgrade() else {
            return;
        };
        let lease = session.lease();
        let (client, generation) = session.client();
        let result = if lease.ttl.is_zero() {
            if matches!(session.config.auth, AuthConfig::Token { .. }) {
                refresh_token_file(&session, generation).await
            } else {
                Ok(())
            }
        } else if lease.renewable {
            match vaultrs::token::renew_self(&*client, None).await {
                Ok(auth) => {
                    let ttl = Duration::from_secs(auth.lease_duration);
                    // Shorter than before: the max TTL caps it, and renewing
                    // again will not help. Log in afresh next time.
                    let capped = ttl < lease.ttl;
                    *session.lease.lock() = Lease {
                        ttl,
                        renewable: auth.renewable && !capped,
                        obtained: Instant::now(),
                    };
                    tracing::debug!(
                        ttl_seconds = ttl.as_secs(),
                        capped,
                        "renewed the Vault token"
                    );
                    Ok(())
                }
                Err(error) => {
                    tracing::warn!(error = %error, "renewing the Vault token failed; logging in again");
                    session.relogin(generation).await
                }
            }
        } else {
            session.relogin(generation).await
        };
        match result {
            Ok(()) => failures.reset(),
            Err(error) => {
                tracing::warn!(%error, "keeping the Vault login alive failed; will retry");
                let pause = failures.next_delay();
                // Retry soon rather than at 2/3 of a lease we no longer hold.
                *session.lease.lock() = Lease {
                    ttl: pause * 3 / 2,
                    renewable: false,
                    obtained: Instant::now(),
                };
            }
        }
    }
}

/// For the token-file method: pick up a token that was replaced in the file.
async fn refresh_token_file(session: &Session, generation: u64) -> Result<(), StoreError> {
    let AuthConfig::Token { token_file } = &session.config.auth else {
        return Ok(());
    };
    let token = read_secret_file(token_file)?;
    let (client, _) = session.client();
    if client.settings.token.as_str() != token.as_str() {
        session.relogin(generation).await?;
    }
    Ok(())
}

fn method_name(auth: &AuthConfig) -> &'static str {
    match auth {
        AuthConfig::Token { .. } => "token",
        AuthConfig::Approle { .. } => "approle",
        AuthConfig::Kubernetes { .. } => "kubernetes",
        AuthConfig::Jwt { .. } => "jwt",
    }
}

fn read_secret_file(path: &std::path::Path) -> Result<Zeroizing<String>, StoreError> {
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot read {}: {e}", path.display()))
        })?);
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// One login with the configured method.
async fn login(
    config: &VaultConfig,
    anonymous: &VaultClient,
) -> Result<(Zeroizing<String>, Lease), StoreError> {
    let failed = |e: vaultrs::error::ClientError| match classify(&e) {
        Class::Transient => StoreError::Unavailable(format!("Vault login: {e}")),
        _ => StoreError::Internal(format!("Vault login refused: {e}")),
    };
    let auth = match &config.auth {
        AuthConfig::Token { token_file } => {
            let token = read_secret_file(token_file)?;
            let client = build_client(config, &anonymous.settings.address, &token)?;
            let info = vaultrs::token::lookup_self(&client).await.map_err(failed)?;
            let lease = Lease {
                ttl: Duration::from_secs(info.ttl),
                renewable: info.renewable.unwrap_or(false),
                obtained: Instant::now(),
            };
            return Ok((token, lease));
        }
        AuthConfig::Approle {
            role_id_file,
            secret_id_file,
            mount,
        } => {
            let role_id = read_secret_file(role_id_file)?;
            let secret_id = read_secret_file(secret_id_file)?;
            vaultrs::auth::approle::login(anonymous, mount, &role_id, &secret_id)
                .await
                .map_err(failed)?
        }
        AuthConfig::Kubernetes {
            role,
            token_file,
            mount,
        } => {
            let jwt = read_secret_file(token_file)?;
            vaultrs::auth::kubernetes::login(anonymous, mount, role, &jwt)
                .await
                .map_err(failed)?
        }
        AuthConfig::Jwt {
            role,
            token_file,
            mount,
        } => {
            let jwt = read_secret_file(token_file)?;
            vaultrs::auth::oidc::login(anonymous, mount, &jwt, Some(role.clone()))
                .await
                .map_err(failed)?
        }
    };
    let lease = Lease {
        ttl: Duration::from_secs(auth.lease_duration),
        renewable: auth.renewable,
        obtained: Instant::now(),
    };
    Ok((Zeroizing::new(auth.client_token), lease))
}

/// A vaultrs client with everything set explicitly, so no `VAULT_*`
/// environment variable changes what the broker trusts.
fn build_client(
    config: &VaultConfig,
    address: &url::Url,
    token: &str,
) -> Result<VaultClient, StoreError> {
    let mut settings = VaultClientSettingsBuilder::default();
    settings
        .address(address.as_str())
        .token(token)
        .ca_certs(
            config
                .ca_file
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        )
        .identity(None)
        .verify(true)
        .timeout(Some(config.limits.request_timeout));
    if let Some(namespace) = &config.namespace {
        settings.set_namespace(namespace.clone());
    }
    let settings = settings
        .build()
        .map_err(|e| StoreError::Internal(format!("Vault client settings: {e}")))?;
    VaultClient::new(settings).map_err(|e| StoreError::Internal(format!("Vault client: {e}")))
}
