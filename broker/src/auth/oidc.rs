//! Keys from an OIDC issuer: `/.well-known/openid-configuration`, then its
//! `jwks_uri`, as a Kubernetes API server publishes them.
//!
//! Keys are cached. A token naming an unknown `kid` triggers a new fetch at
//! most once per `min_refresh_interval`, so a flood of forged kids costs the
//! issuer at most one request per interval. A background task also refreshes
//! every `refresh_interval`, so removed keys stop verifying. A failed fetch
//! keeps the last good keys.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::Deserialize;

use super::{
    http::{ACCEPT_JWKS, HttpClient, HttpConfig, HttpError},
    jwt::{KeySet, KeySetError, KeySource},
};

/// The default lower bound between two fetches.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// The default interval of the background refresh.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// Settings for one OIDC issuer.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer, exactly as in tokens and in the discovery document.
    pub issuer: String,
    /// Where the discovery document is; `<issuer>/.well-known/openid-configuration`
    /// when unset. In-cluster, the issuer's host often is not resolvable
    /// from a pod, while `https://kubernetes.default.svc` is.
    pub discovery_url: Option<String>,
    /// CA bundle, timeout and the broker's own token for the fetches.
    pub http: HttpConfig,
    /// Lower bound between two fetches.
    pub min_refresh_interval: Duration,
    /// Interval of the background refresh.
    pub refresh_interval: Duration,
}

impl OidcConfig {
    /// Defaults for `issuer`.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            discovery_url: None,
            http: HttpConfig::default(),
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
        }
    }
}

/// Why keys could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("discovery document names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("jwks_uri {0:?} is not https")]
    InsecureJwksUri(String),
    #[error("JWKS: {0}")]
    Keys(#[from] KeySetError),
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// An OIDC issuer's keys, fetched and cached.
pub struct OidcKeys {
    config: OidcConfig,
    discovery_url: String,
    http: HttpClient,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// When the last fetch was attempted; held across the fetch so that
    /// concurrent unknown kids wait for one fetch instead of starting many.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl OidcKeys {
    /// Prepares the source; no request is made yet (see [`Self::start`]).
    pub fn new(config: OidcConfig) -> Result<Self, HttpError> {
        let discovery_url = config.discovery_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                config.issuer.trim_end_matches('/')
            )
        });
        // The broker's own token goes to the discovery URL's origin only.
        let http = HttpClient::new(&config.http, &discovery_url)?;
        Ok(Self {
            config,
            discovery_url,
            http,
            keys: RwLock::new(None),
            last_attempt: tokio::sync::Mutex::new(None),
        })
    }

    /// Fetches the keys once (a failure is logged: tokens are refused until
    /// a later fetch succeeds) and starts the background refresh, which ends
    /// when the last other reference to the source is dropped.
    pub async fn start(self: Arc<Self>) -> Arc<Self> {
        self.refresh(Duration::ZERO).await;
        let weak = Arc::downgrade(&self);
        let every = self.config.refresh_interval.max(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(source) = weak.upgrade() else { return };
                source.refresh(Duration::ZERO).await;
            }
        });
        self
    }

    /// Fetches discovery then the JWKS.
    pub async fn fetch(&self) -> Result<KeySet, OidcError> {
        let discovery: Discovery = self.http.get_json(&self.discovery_url).await?;
        // OIDC Discovery 1.0 §4.3: the document must name the issuer exactly.
        if discovery.issuer != self.config.issuer {
            return Err(OidcError::IssuerMismatch {
                expected: self.config.issuer.clone(),
                found: discovery.issuer,
            });
        }
        if !discovery.jwks_uri.starts_with("https://") {
            return Err(OidcError::InsecureJwksUri(discovery.jwks_uri));
        }
        // The API server answers 406 to a JWKS request that does not accept
        // `application/jwk-set+json`.
        let jwks: serde_json::Value = self
            .http
            .get_json_accepting(&discovery.jwks_uri, ACCEPT_JWKS)
            .await?;
        Ok(KeySet::from_jwks_json(jwks.to_string().as_bytes())?)
    }

    /// Fetches again unless a fetch was attempted less than `at_least` ago.
    async fn refresh(&self, at_least: Duration) -> Option<Arc<KeySet>> {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|at| at.elapsed() < at_least) {
            return self.current();
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(issuer = %self.config.issuer, keys = keys.len(), "JWKS fetched");
                let keys = Arc::new(keys);
                *self.keys.write() = Some(keys.clone());
                Some(keys)
            }
            Err(error) => {
                tracing::warn!(issuer = %self.config.issuer, %error, "JWKS fetch failed; keeping the last good keys");
                self.current()
            }
        }
    }
}

#[async_trait]
impl KeySource for OidcKeys {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().clone()
    }

    async fn refresh_for_unknown_kid(&self) -> Option<Arc<KeySet>> {
        self.refresh(self.config.min_refresh_interval).await
    }
}
