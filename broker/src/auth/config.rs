//! Building the broker's authenticator from configuration.
//!
//! `--jwks/--issuer/--audience` is the single-issuer shorthand; an
//! `--auth-config` YAML file lists any number of authenticators, one per
//! issuer. Either way the result is an [`IssuerRouter`] behind a
//! [`CachingAuthenticator`]:
//!
//! ```yaml
//! cacheEntries: 10000            # optional
//! authenticators:
//!   - issuer: https://kubernetes.default.svc.cluster.local
//!     audiences: [coffer]
//!     leewaySeconds: 30          # optional
//!     maxLifetimeSeconds: 86400  # optional
//!     allowMissingAudience: false
//!     oidc:
//!       discoveryUrl: https://kubernetes.default.svc/.well-known/openid-configuration
//!       caFile: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
//!       tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
//!       timeoutSeconds: 10
//!       minRefreshIntervalSeconds: 30
//!       refreshIntervalSeconds: 300
//!   - issuer: https://air-gapped.example
//!     audiences: [coffer]
//!     jwksFile: {path: /etc/coffer/jwks.json, checkIntervalSeconds: 10}
//!   - issuer: https://legacy.example
//!     audiences: [coffer]
//!     pemFile: {path: /etc/coffer/sa.pub}
//!   - issuer: https://kubernetes.default.svc.cluster.local
//!     audiences: [coffer]
//!     tokenReview:
//!       server: https://kubernetes.default.svc
//!       caFile: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
//!       tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
//!       ttlSeconds: 60
//!       negativeTtlSeconds: 5      # optional: refused tokens are not re-asked
//!       maxConcurrent: 8           # optional: reviews in flight at most
//!       ratePerSecond: 20          # optional: reviews started per second
//! ```
//!
//! Exactly one of `oidc`, `jwksFile`, `pemFile`, `tokenReview` per entry.

use std::{num::NonZeroUsize, path::PathBuf, sync::Arc, time::Duration};

use serde::Deserialize;

use super::{
    Authenticator,
    cache::{CachingAuthenticator, DEFAULT_CACHE_ENTRIES},
    files::{DEFAULT_CHECK_INTERVAL, FileKeys, KeyFileError, KeyFileFormat},
    http::{HttpConfig, HttpError},
    jwt::{DEFAULT_LEEWAY, JwtVerifier, VerifierConfig},
    oidc::{DEFAULT_MIN_REFRESH_INTERVAL, DEFAULT_REFRESH_INTERVAL, OidcConfig, OidcKeys},
    router::IssuerRouter,
    tokenreview::{
        DEFAULT_NEGATIVE_TTL, DEFAULT_REVIEW_TTL, TokenReviewAuthenticator, TokenReviewConfig,
    },
};

/// The `--auth-config` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// Bound of the verification cache.
    #[serde(default)]
    pub cache_entries: Option<usize>,
    /// One entry per trusted issuer.
    pub authenticators: Vec<AuthenticatorConfig>,
}

/// One trusted issuer and how its tokens are verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthenticatorConfig {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The audiences accepted; a token's `aud` must contain one.
    pub audiences: Vec<String>,
    #[serde(default)]
    pub leeway_seconds: Option<u64>,
    #[serde(default)]
    pub max_lifetime_seconds: Option<u64>,
    #[serde(default)]
    pub allow_missing_audience: bool,
    #[serde(default)]
    pub oidc: Option<OidcSection>,
    #[serde(default)]
    pub jwks_file: Option<FileSection>,
    #[serde(default)]
    pub pem_file: Option<FileSection>,
    #[serde(default)]
    pub token_review: Option<TokenReviewSection>,
}

/// `oidc:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcSection {
    #[serde(default)]
    pub discovery_url: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub min_refresh_interval_seconds: Option<u64>,
    #[serde(default)]
    pub refresh_interval_seconds: Option<u64>,
}

/// `jwksFile:` and `pemFile:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSection {
    pub path: PathBuf,
    #[serde(default)]
    pub check_interval_seconds: Option<u64>,
}

/// `tokenReview:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenReviewSection {
    pub server: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// How long a refused token is refused without asking again.
    #[serde(default)]
    pub negative_ttl_seconds: Option<u64>,
    /// Reviews in flight at most.
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// Reviews started per second at most.
    #[serde(default)]
    pub rate_per_second: Option<u32>,
}

/// Why the authentication configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid authentication config: {0}")]
    Yaml(String),
    #[error("no authenticator is configured")]
    Empty,
    #[error("issuer {0:?}: give exactly one of oidc, jwksFile, pemFile, tokenReview")]
    Mode(String),
    #[error("issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    #[error("issuer {0:?} needs at least one non-empty audience")]
    NoAudience(String),
    #[error("cacheEntries must be at least 1")]
    CacheSize,
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Http(#[from] HttpError),
}

impl AuthConfig {
    /// Reads and parses a YAML file.
    pub fn load(path: &std::path::Path) -> Result<Self, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses YAML.
    pub fn parse(yaml: &str) -> Result<Self, AuthConfigError> {
        serde_norway::from_str(yaml).map_err(|e| AuthConfigError::Yaml(e.to_string()))
    }

    /// The single-issuer shorthand: one static JWKS file.
    pub fn single_jwks_file(
        jwks: PathBuf,
        issuer: String,
        audience: String,
        leeway: Duration,
    ) -> Self {
        Self {
            cache_entries: None,
            authenticators: vec![AuthenticatorConfig {
                issuer,
                audiences: vec![audience],
                leeway_seconds: Some(leeway.as_secs()),
                max_lifetime_seconds: None,
                allow_missing_audience: false,
                oidc: None,
                jwks_file: Some(FileSection {
                    path: jwks,
                    check_interval_seconds: None,
                }),
                pem_file: None,
                token_review: None,
            }],
        }
    }

    /// Builds the authenticator: every file is loaded and every OIDC issuer
    /// fetched once (a failed fetch is logged and retried when tokens come).
    pub async fn build(&self) -> Result<Arc<CachingAuthenticator>, AuthConfigError> {
        if self.authenticators.is_empty() {
            return Err(AuthConfigError::Empty);
        }
        let capacity = NonZeroUsize::new(self.cache_entries.unwrap_or(DEFAULT_CACHE_ENTRIES))
            .ok_or(AuthConfigError::CacheSize)?;
        let mut router = IssuerRouter::new();
        for entry in &self.authenticators {
            let authenticator = entry.build().await?;
            if !router.add(entry.issuer.clone(), authenticator) {
                return Err(AuthConfigError::DuplicateIssuer(entry.issuer.clone()));
            }
        }
        Ok(Arc::new(CachingAuthenticator::new(
            Arc::new(router),
            capacity,
        )))
    }
}

fn seconds(value: Option<u64>, default: Duration) -> Duration {
    value.map_or(default, Duration::from_secs)
}

impl AuthenticatorConfig {
    fn verifier_config(&self) -> VerifierConfig {
        VerifierConfig {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            leeway: seconds(self.leeway_seconds, DEFAULT_LEEWAY),
            max_lifetime: self.max_lifetime_seconds.map(Duration::from_secs),
            allow_missing_audience: self.allow_missing_audience,
        }
    }

    async fn build(&self) -> Result<Arc<dyn Authenticator>, AuthConfigError> {
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(AuthConfigError::NoAudience(self.issuer.clone()));
        }
        let modes = [
            self.oidc.is_some(),
            self.jwks_file.is_some(),
            self.pem_file.is_some(),
            self.token_review.is_some(),
        ];
        if modes.iter().filter(|m| **m).count() != 1 {
            return Err(AuthConfigError::Mode(self.issuer.clone()));
        }
        let file =
            |section: &FileSection, format| -> Result<Arc<dyn Authenticator>, AuthConfigError> {
                let keys = FileKeys::load(
                    &section.path,
                    format,
                    seconds(section.check_interval_seconds, DEFAULT_CHECK_INTERVAL),
                )?;
                Ok(Arc::new(JwtVerifier::with_source(
                    self.verifier_config(),
                    Arc::new(keys),
                )))
            };
        if let Some(section) = &self.jwks_file {
            return file(section, KeyFileFormat::Jwks);
        }
        if let Some(section) = &self.pem_file {
            return file(section, KeyFileFormat::Pem);
        }
        if let Some(oidc) = &self.oidc {
            let keys = Arc::new(OidcKeys::new(OidcConfig {
                issuer: self.issuer.clone(),
                discovery_url: oidc.discovery_url.clone(),
                http: HttpConfig {
                    ca_file: oidc.ca_file.clone(),
                    timeout: oidc.timeout_seconds.map(Duration::from_secs),
                    token_file: oidc.token_file.clone(),
                },
                min_refresh_interval: seconds(
                    oidc.min_refresh_interval_seconds,
                    DEFAULT_MIN_REFRESH_INTERVAL,
                ),
                refresh_interval: seconds(oidc.refresh_interval_seconds, DEFAULT_REFRESH_INTERVAL),
            })?)
            .start()
            .await;
            return Ok(Arc::new(JwtVerifier::with_source(
                self.verifier_config(),
                keys,
            )));
        }
        if let Some(review) = &self.token_review {
            let mut config = TokenReviewConfig::new(
                self.issuer.clone(),
                review.server.clone(),
                self.audiences.clone(),
            );
            config.http = HttpConfig {
                ca_file: review.ca_file.clone(),
                timeout: review.timeout_seconds.map(Duration::from_secs),
                token_file: review.token_file.clone(),
            };
            config.ttl = seconds(review.ttl_seconds, DEFAULT_REVIEW_TTL);
            config.negative_ttl = seconds(review.negative_ttl_seconds, DEFAULT_NEGATIVE_TTL);
            if let Some(max) = review.max_concurrent {
                config.max_concurrent = max;
            }
            if let Some(rate) = review.rate_per_second {
                config.rate_per_second = rate;
            }
            return Ok(Arc::new(TokenReviewAuthenticator::new(config)?));
        }
        Err(AuthConfigError::Mode(self.issuer.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("config.rs");
        let yaml: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| {
                format!(
                    "{}\n",
                    l.trim_start_matches("//!").strip_prefix(' ').unwrap_or("")
                )
            })
            .collect();
        let config = AuthConfig::parse(&yaml).unwrap();
        assert_eq!(config.authenticators.len(), 4);
        assert!(config.authenticators[3].token_review.is_some());
    }

    #[tokio::test]
    async fn mistakes_are_refused() {
        let two_modes = "authenticators:\n  - issuer: i\n    audiences: [a]\n    jwksFile: {path: /x}\n    pemFile: {path: /y}\n";
        assert!(matches!(
            AuthConfig::parse(two_modes).unwrap().build().await,
            Err(AuthConfigError::Mode(_))
        ));
        let no_aud =
            "authenticators:\n  - issuer: i\n    audiences: []\n    jwksFile: {path: /x}\n";
        assert!(matches!(
            AuthConfig::parse(no_aud).unwrap().build().await,
            Err(AuthConfigError::NoAudience(_))
        ));
        assert!(matches!(
            AuthConfig::parse("authenticators: []\n")
                .unwrap()
                .build()
                .await,
            Err(AuthConfigError::Empty)
        ));
        assert!(AuthConfig::parse("authenticators: []\nsurprise: 1\n").is_err());
    }
}
