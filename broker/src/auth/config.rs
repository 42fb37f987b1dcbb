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
//!     trustDomain: air-gapped.example  # SPIFFE IDs of pki certificates
//!     jwksFile: {path: /etc/coffer/jwks.json, checkIntervalSeconds: 10}
//!   - issuer: https://legacy.example
//!     audiences: [coffer]
//!     pemFile: {path: /etc/coffer/sa.pub}
//!   - issuer: https://kubernetes.default.svc.cluster.local
//!     audiences: [coffer]
//!     tokenReview:
//!       server: https://kubernetes.default.svc  # optional in a pod, see below
//!       caFile: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
//!       tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
//!       ttlSeconds: 60
//!       negativeTtlSeconds: 5      # optional: refused tokens are not re-asked
//!       maxConcurrent: 8           # optional: reviews in flight at most
//!       ratePerSecond: 20          # optional: reviews started per second
//! ```
//!
//! Exactly one of `oidc`, `jwksFile`, `pemFile`, `tokenReview` per entry.
//!
//! In a pod, `tokenReview.server` defaults to the API server the kubelet
//! names (`https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`), and
//! for that API server `caFile` and `tokenFile` default to the pod's own
//! service-account files when they exist. The environment and that
//! directory come in as an [`InCluster`], so tests pass their own.

use std::{
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use coffer::env::{Env, ProcessEnv};
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
    /// The SPIFFE trust domain of this issuer's workloads, named in the
    /// certificates a `pki` mount issues them
    /// (`spiffe://<trustDomain>/ns/<namespace>/sa/<serviceaccount>`).
    /// Required for every issuer when several are trusted and a `pki`
    /// mount is served (docs/dynamic.md).
    #[serde(default)]
    pub trust_domain: Option<String>,
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
    /// The API server; in a pod, the one the kubelet names by default.
    #[serde(default)]
    pub server: Option<String>,
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
    #[error(
        "issuer {0:?}: tokenReview.server is not set and this is not a pod \
         ({SERVICE_HOST_ENV} and {SERVICE_PORT_ENV} are not both set): \
         give the API server's URL as server"
    )]
    NoReviewServer(String),
    #[error(
        "issuer {issuer:?}: tokenReview.server is not set and \
         {SERVICE_HOST_ENV}/{SERVICE_PORT_ENV} do not make a URL: {url:?}"
    )]
    BadServiceEnv { issuer: String, url: String },
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// The variable naming the API server's address in every pod.
pub const SERVICE_HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
/// The variable naming the API server's port in every pod.
pub const SERVICE_PORT_ENV: &str = "KUBERNETES_SERVICE_PORT";
/// Where the kubelet mounts a pod's own service-account token and CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What configuration defaults may come from: the environment and the
/// pod's service-account directory. [`InCluster::process`] is the real
/// thing; tests pass a map and a directory of their own.
pub struct InCluster<'a> {
    /// The environment (`KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT`).
    pub env: &'a dyn Env,
    /// The directory holding `ca.crt` and `token`.
    pub service_account_dir: &'a Path,
}

impl InCluster<'static> {
    /// The process's environment and [`SERVICE_ACCOUNT_DIR`].
    pub fn process() -> Self {
        Self {
            env: &ProcessEnv,
            service_account_dir: Path::new(SERVICE_ACCOUNT_DIR),
        }
    }
}

impl InCluster<'_> {
    /// `https://HOST:PORT` from the service variables (an IPv6 host
    /// bracketed), as client-go's in-cluster configuration builds it;
    /// `None` unless both are set.
    pub fn api_server(&self) -> Option<String> {
        let host = self.env.get(SERVICE_HOST_ENV).filter(|h| !h.is_empty())?;
        let port = self.env.get(SERVICE_PORT_ENV).filter(|p| !p.is_empty())?;
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Some(format!("https://{host}:{port}"))
    }

    /// `name` in the service-account directory, if that file exists.
    fn service_account_file(&self, name: &str) -> Option<PathBuf> {
        let path = self.service_account_dir.join(name);
        path.is_file().then_some(path)
    }
}

/// Whether `server` is this cluster's own API server: the one the
/// environment names, or the in-cluster service name. Only that server is
/// given the pod's own CA and token by default: a server elsewhere (another
/// cluster's, for another issuer) must never receive this pod's token.
fn is_own_api_server(server: &str, in_cluster: Option<&str>) -> bool {
    let Ok(url) = url::Url::parse(server) else {
        return false;
    };
    if in_cluster
        .and_then(|own| url::Url::parse(own).ok())
        .is_some_and(|own| own.origin() == url.origin())
    {
        return true;
    }
    // Exact names only: a look-alike (`kubernetes.default.svc.example.com`)
    // may be anyone's.
    url.scheme() == "https"
        && url.host_str().is_some_and(|host| {
            matches!(
                host.trim_end_matches('.'),
                "kubernetes.default"
                    | "kubernetes.default.svc"
                    | "kubernetes.default.svc.cluster.local"
            )
        })
}

/// A `tokenReview:` section with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewTarget {
    /// The API server's URL.
    pub server: String,
    /// The CA bundle; the system roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// The broker's own token; none sent when `None`.
    pub token_file: Option<PathBuf>,
}

impl TokenReviewSection {
    /// The server, CA and token file: as configured, else the defaults
    /// `in_cluster` allows. Without a server and outside a pod the
    /// configuration is refused, never guessed.
    pub fn target(
        &self,
        issuer: &str,
        in_cluster: &InCluster<'_>,
    ) -> Result<ReviewTarget, AuthConfigError> {
        let own = in_cluster.api_server();
        let server = match (&self.server, &own) {
            (Some(server), _) => server.clone(),
            (None, Some(own)) => {
                if url::Url::parse(own).is_err() {
                    return Err(AuthConfigError::BadServiceEnv {
                        issuer: issuer.to_string(),
                        url: own.clone(),
                    });
                }
                own.clone()
            }
            (None, None) => return Err(AuthConfigError::NoReviewServer(issuer.to_string())),
        };
        let own_server = is_own_api_server(&server, own.as_deref());
        let default = |name| {
            own_server
                .then(|| in_cluster.service_account_file(name))
                .flatten()
        };
        Ok(ReviewTarget {
            ca_file: self.ca_file.clone().or_else(|| default("ca.crt")),
            token_file: self.token_file.clone().or_else(|| default("token")),
            server,
        })
    }
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
                trust_domain: None,
            }],
        }
    }

    /// Each authenticator's issuer and its `trustDomain`, in order.
    pub fn trust_domains(&self) -> Vec<(String, Option<String>)> {
        self.authenticators
            .iter()
            .map(|a| (a.issuer.clone(), a.trust_domain.clone()))
            .collect()
    }

    /// Builds the authenticator: every file is loaded and every OIDC issuer
    /// fetched once (a failed fetch is logged and retried when tokens come).
    /// Defaults come from this process's environment and service account.
    pub async fn build(&self) -> Result<Arc<CachingAuthenticator>, AuthConfigError> {
        self.build_in(&InCluster::process()).await
    }

    /// [`Self::build`], the defaults taken from `in_cluster`.
    pub async fn build_in(
        &self,
        in_cluster: &InCluster<'_>,
    ) -> Result<Arc<CachingAuthenticator>, AuthConfigError> {
        if self.authenticators.is_empty() {
            return Err(AuthConfigError::Empty);
        }
        let capacity = NonZeroUsize::new(self.cache_entries.unwrap_or(DEFAULT_CACHE_ENTRIES))
            .ok_or(AuthConfigError::CacheSize)?;
        let mut router = IssuerRouter::new();
        for entry in &self.authenticators {
            let authenticator = entry.build(in_cluster).await?;
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

    async fn build(
        &self,
        in_cluster: &InCluster<'_>,
    ) -> Result<Arc<dyn Authenticator>, AuthConfigError> {
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
            let target = review.target(&self.issuer, in_cluster)?;
            let mut config =
                TokenReviewConfig::new(self.issuer.clone(), target.server, self.audiences.clone());
            config.http = HttpConfig {
                ca_file: target.ca_file,
                timeout: review.timeout_seconds.map(Duration::from_secs),
                token_file: target.token_file,
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

    /// A pod's surroundings: `env` and a service-account directory holding
    /// `files`.
    struct Pod {
        env: std::collections::HashMap<String, String>,
        dir: tempfile::TempDir,
    }

    impl Pod {
        fn new(env: &[(&str, &str)], files: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            for name in files {
                std::fs::write(dir.path().join(name), "x").unwrap();
            }
            Self {
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                dir,
            }
        }

        fn in_cluster(&self) -> InCluster<'_> {
            InCluster {
                env: &self.env,
                service_account_dir: self.dir.path(),
            }
        }

        fn target(&self, section: &TokenReviewSection) -> Result<ReviewTarget, AuthConfigError> {
            section.target("https://i", &self.in_cluster())
        }
    }

    const IN_A_POD: &[(&str, &str)] = &[(SERVICE_HOST_ENV, "10.96.0.1"), (SERVICE_PORT_ENV, "443")];

    fn review(yaml: &str) -> TokenReviewSection {
        let yaml = format!(
            "authenticators:\n  - issuer: https://i\n    audiences: [a]\n    tokenReview: {yaml}\n"
        );
        AuthConfig::parse(&yaml).unwrap().authenticators[0]
            .token_review
            .clone()
            .unwrap()
    }

    #[test]
    fn in_a_pod_the_review_goes_to_its_api_server_with_its_own_ca_and_token() {
        let pod = Pod::new(IN_A_POD, &["ca.crt", "token"]);
        let target = pod.target(&review("{}")).unwrap();
        assert_eq!(target.server, "https://10.96.0.1:443");
        assert_eq!(target.ca_file, Some(pod.dir.path().join("ca.crt")));
        assert_eq!(target.token_file, Some(pod.dir.path().join("token")));
    }

    #[test]
    fn an_ipv6_service_host_is_bracketed() {
        let pod = Pod::new(
            &[
                (SERVICE_HOST_ENV, "fd00:10:96::1"),
                (SERVICE_PORT_ENV, "6443"),
            ],
            &[],
        );
        let target = pod.target(&review("{}")).unwrap();
        assert_eq!(target.server, "https://[fd00:10:96::1]:6443");
        assert!(url::Url::parse(&target.server).is_ok());
    }

    #[test]
    fn without_a_server_outside_a_pod_the_config_is_refused() {
        for env in [
            &[][..],
            &[(SERVICE_HOST_ENV, "10.96.0.1")][..],
            &[(SERVICE_PORT_ENV, "443")][..],
            &[(SERVICE_HOST_ENV, ""), (SERVICE_PORT_ENV, "443")][..],
        ] {
            let pod = Pod::new(env, &["ca.crt", "token"]);
            let error = pod.target(&review("{}")).unwrap_err();
            assert!(
                matches!(&error, AuthConfigError::NoReviewServer(i) if i == "https://i"),
                "{env:?}: {error}"
            );
            assert!(error.to_string().contains("server"), "{error}");
        }
        let pod = Pod::new(
            &[(SERVICE_HOST_ENV, "10.96.0.1"), (SERVICE_PORT_ENV, "https")],
            &[],
        );
        assert!(matches!(
            pod.target(&review("{}")),
            Err(AuthConfigError::BadServiceEnv { .. })
        ));
    }

    #[test]
    fn absent_service_account_files_are_not_defaults() {
        let pod = Pod::new(IN_A_POD, &["ca.crt"]);
        let target = pod.target(&review("{}")).unwrap();
        assert_eq!(target.ca_file, Some(pod.dir.path().join("ca.crt")));
        assert_eq!(target.token_file, None);
        let pod = Pod::new(IN_A_POD, &[]);
        let target = pod.target(&review("{}")).unwrap();
        assert_eq!((target.ca_file, target.token_file), (None, None));
    }

    #[test]
    fn configured_values_win_over_the_defaults() {
        let pod = Pod::new(IN_A_POD, &["ca.crt", "token"]);
        let target = pod
            .target(&review(
                "{server: 'https://kubernetes.default.svc', caFile: /etc/ca.pem, tokenFile: /etc/t}",
            ))
            .unwrap();
        assert_eq!(
            target,
            ReviewTarget {
                server: "https://kubernetes.default.svc".into(),
                ca_file: Some("/etc/ca.pem".into()),
                token_file: Some("/etc/t".into()),
            }
        );
    }

    #[test]
    fn the_in_cluster_service_name_gets_the_pods_own_ca_and_token() {
        let pod = Pod::new(IN_A_POD, &["ca.crt", "token"]);
        for server in [
            "https://kubernetes.default.svc",
            "https://kubernetes.default.svc.cluster.local:443",
            "https://kubernetes.default",
            "https://10.96.0.1",
        ] {
            let target = pod
                .target(&review(&format!("{{server: '{server}'}}")))
                .unwrap();
            assert_eq!(target.server, server);
            assert_eq!(
                target.token_file,
                Some(pod.dir.path().join("token")),
                "{server}"
            );
        }
    }

    #[test]
    fn another_api_server_never_gets_this_pods_token() {
        let pod = Pod::new(IN_A_POD, &["ca.crt", "token"]);
        for server in [
            "https://api.other-cluster.example:6443",
            "https://10.96.0.1:6443",
            "https://kubernetes.default.svc.example.com",
            "https://kubernetes.default.svc.cluster.local.example.com",
        ] {
            let target = pod
                .target(&review(&format!("{{server: '{server}'}}")))
                .unwrap();
            assert_eq!(
                (target.ca_file, target.token_file),
                (None, None),
                "{server}"
            );
        }
    }

    #[tokio::test]
    async fn a_review_without_a_server_outside_a_pod_is_refused_at_build() {
        let pod = Pod::new(&[], &[]);
        let config = AuthConfig::parse(
            "authenticators:\n  - issuer: https://i\n    audiences: [a]\n    tokenReview: {}\n",
        )
        .unwrap();
        assert!(matches!(
            config.build_in(&pod.in_cluster()).await,
            Err(AuthConfigError::NoReviewServer(_))
        ));
    }
}
