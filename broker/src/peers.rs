//! Several broker replicas behaving as one.
//!
//! After a write, a replica tells each peer (`--peer URL`) to re-read that
//! path (`NotifyChanged`), so watchers on every replica get the new version
//! at once; the store's metadata poll remains the safety net. Peers
//! authenticate with the broker's own token (`--peer-token-file`), and a
//! replica accepts `NotifyChanged` only from the identities it names
//! (`--peer-identity ISSUER=NAMESPACE/SERVICEACCOUNT`): never
//! unauthenticated, and never from another trusted issuer's account of the
//! same name. `RotationStatus` on any replica asks its peers too, with the
//! operator's own token, and merges their answers; the whole fan-out has
//! one deadline ([`PEER_TIMEOUT`]), however many peers and retries.

use std::{path::PathBuf, time::Duration};

use coffer::{Client, RetryPolicy, TokenSource};
use coffer_proto::v1;

use crate::auth::WorkloadIdentity;

/// How a replica reaches its peers and whom it accepts as one.
#[derive(Debug, Clone, Default)]
pub struct PeerConfig {
    /// Peer endpoints: `https://host:port`, `http://127.0.0.1:port`, `unix:/path`.
    pub urls: Vec<String>,
    /// The broker's own token, presented to peers.
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) for peers' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// Identities allowed to call `NotifyChanged`:
    /// `ISSUER=NAMESPACE/SERVICEACCOUNT`, or `NAMESPACE/SERVICEACCOUNT`
    /// when exactly one issuer is trusted.
    pub identities: Vec<String>,
    /// The issuers the broker trusts (an identity must name one of them).
    pub issuers: Vec<String>,
}

/// One identity accepted as a peer: exactly this issuer's account.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerIdentity {
    issuer: String,
    namespace: String,
    service_account: String,
}

/// The peers of this replica.
pub struct Peers {
    clients: Vec<(String, Client)>,
    identities: Vec<PeerIdentity>,
}

/// Why the peer configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    #[error("--peer needs --peer-token-file: peers are never called unauthenticated")]
    NoToken,
    #[error("peer {url}: {source}")]
    Endpoint {
        url: String,
        #[source]
        source: coffer::Error,
    },
    #[error("--peer-identity {0:?} is not ISSUER=NAMESPACE/SERVICEACCOUNT")]
    Identity(String),
    #[error(
        "--peer-identity {identity:?} names no issuer, and several are trusted ({}): \
         write ISSUER=NAMESPACE/SERVICEACCOUNT",
        issuers.join(", ")
    )]
    AmbiguousIssuer {
        identity: String,
        issuers: Vec<String>,
    },
    #[error("--peer-identity {identity:?}: issuer {issuer:?} is not configured (configured: {})", configured.join(", "))]
    UnknownIssuer {
        identity: String,
        issuer: String,
        configured: Vec<String>,
    },
}

/// How long the fan-out to the peers may take in all: one call to each,
/// its retries included, all at once.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// Parses one `--peer-identity`: `ISSUER=NAMESPACE/SERVICEACCOUNT`, or
/// `NAMESPACE/SERVICEACCOUNT` when `issuers` holds exactly one issuer.
fn parse_identity(raw: &str, issuers: &[String]) -> Result<PeerIdentity, PeerError> {
    let bad = || PeerError::Identity(raw.to_string());
    // An issuer is a URL and may hold `/`: the account is after the last `=`.
    let (issuer, account) = match raw.rsplit_once('=') {
        Some((issuer, account)) if !issuer.is_empty() => (Some(issuer), account),
        Some(_) => return Err(bad()),
        None => (None, raw),
    };
    let (namespace, service_account) = account.split_once('/').ok_or_else(bad)?;
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if !name_ok(namespace) || !name_ok(service_account) {
        return Err(bad());
    }
    let issuer = match (issuer, issuers) {
        (Some(issuer), _) if issuers.iter().any(|i| i == issuer) => issuer.to_string(),
        (Some(issuer), _) => {
            return Err(PeerError::UnknownIssuer {
                identity: raw.to_string(),
                issuer: issuer.to_string(),
                configured: issuers.to_vec(),
            });
        }
        (None, [only]) => only.clone(),
        (None, _) => {
            return Err(PeerError::AmbiguousIssuer {
                identity: raw.to_string(),
                issuers: issuers.to_vec(),
            });
        }
    };
    Ok(PeerIdentity {
        issuer,
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
    })
}

impl Peers {
    /// Lazily connected clients for every peer.
    pub async fn new(config: PeerConfig) -> Result<Self, PeerError> {
        let identities = config
            .identities
            .iter()
            .map(|raw| parse_identity(raw, &config.issuers))
            .collect::<Result<Vec<_>, _>>()?;
        let mut clients = Vec::with_capacity(config.urls.len());
        if !config.urls.is_empty() {
            let token = config.token_file.as_ref().ok_or(PeerError::NoToken)?;
            for url in &config.urls {
                let mut builder = Client::builder(url.clone())
                    .token(TokenSource::file(token))
                    .connect_timeout(PEER_TIMEOUT)
                    .timeout(PEER_TIMEOUT)
                    // A retry must fit in the one deadline of the fan-out.
                    .retry(RetryPolicy {
                        max_attempts: 2,
                        ..RetryPolicy::default()
                    });
                if let Some(ca) = &config.ca_pem {
                    builder = builder.ca_pem(ca.clone());
                }
                let client =
                    builder
                        .connect_lazy()
                        .await
                        .map_err(|source| PeerError::Endpoint {
                            url: url.clone(),
                            source,
                        })?;
                clients.push((url.clone(), client));
            }
        }
        Ok(Self {
            clients,
            identities,
        })
    }

    /// No peers, and nobody accepted as one.
    pub fn none() -> Self {
        Self {
            clients: Vec::new(),
            identities: Vec::new(),
        }
    }

    /// How many peers there are.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Whether `who` may tell this replica that a path changed: its
    /// issuer, namespace and service account are exactly one of the
    /// identities named.
    pub fn accepts(&self, who: &WorkloadIdentity) -> bool {
        self.identities.iter().any(|id| {
            id.issuer == who.issuer
                && id.namespace == who.namespace
                && id.service_account == who.service_account
        })
    }

    /// Tells every peer that `path` changed, in the background.
    pub fn notify(&self, path: &str) {
        for (url, client) in &self.clients {
            let (url, client, path) = (url.clone(), client.clone(), path.to_string());
            tokio::spawn(async move {
                match coffer::replica::notify_changed(&client, &path).await {
                    Ok(()) => tracing::debug!(peer = %url, path, "peer told of the change"),
                    Err(error) => {
                        tracing::warn!(peer = %url, path, %error, "peer not told of the change: it sees it at its next poll")
                    }
                }
            });
        }
    }

    /// Every peer's own rotation status of `path`, asked with `token` (the
    /// operator's): the answers that came within [`PEER_TIMEOUT`] of the
    /// call, all peers asked at once. A peer that accepts the connection
    /// and never answers costs that deadline once, not once per try.
    pub async fn statuses(&self, path: &str, token: &str) -> Vec<v1::RotationStatusResponse> {
        self.statuses_within(path, token, PEER_TIMEOUT).await
    }

    async fn statuses_within(
        &self,
        path: &str,
        token: &str,
        timeout: Duration,
    ) -> Vec<v1::RotationStatusResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        let asks = self.clients.iter().map(|(url, client)| {
            let client = client.with_token(TokenSource::from_static(token.to_string()));
            async move {
                match tokio::time::timeout_at(deadline, coffer::replica::status_local(&client, path)).await {
                    Ok(Ok(status)) => Some(status),
                    Ok(Err(error)) => {
                        tracing::warn!(peer = %url, path, %error, "peer did not answer RotationStatus");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(
                            peer = %url,
                            path,
                            timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                            "peer did not answer RotationStatus in time"
                        );
                        None
                    }
                }
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Merges replicas' answers: every workload once (a pod watching two
/// replicas counts once, by its most recent acknowledgement), the counts
/// recomputed from the merged list.
pub fn merge(
    mut local: v1::RotationStatusResponse,
    others: Vec<v1::RotationStatusResponse>,
) -> v1::RotationStatusResponse {
    use std::collections::BTreeMap;
    let current = others
        .iter()
        .map(|s| s.current_version)
        .fold(local.current_version, u64::max);
    let refused = sum_refusals(
        local.watches_refused.take(),
        others.iter().filter_map(|s| s.watches_refused.as_ref()),
    );
    let refused_all = sum_refusals(
        local.watches_refused_all_paths.take(),
        others
            .iter()
            .filter_map(|s| s.watches_refused_all_paths.as_ref()),
    );
    let mut by_key: BTreeMap<(String, String, String, String, String), v1::WorkloadVersion> =
        BTreeMap::new();
    for w in std::mem::take(&mut local.workloads)
        .into_iter()
        .chain(others.into_iter().flat_map(|s| s.workloads))
    {
        let key = (
            w.namespace.clone(),
            w.pod.clone(),
            w.pod_uid.clone(),
            w.issuer.clone(),
            w.service_account.clone(),
        );
        match by_key.get_mut(&key) {
            Some(seen) => {
                let watching = seen.watching || w.watching;
                if (w.version, w.acknowledged_at.map(|t| t.seconds))
                    > (seen.version, seen.acknowledged_at.map(|t| t.seconds))
                {
                    *seen = w;
                }
                seen.watching = watching;
            }
            None => {
                by_key.insert(key, w);
            }
        }
    }
    let workloads: Vec<v1::WorkloadVersion> = by_key.into_values().collect();
    let watching = workloads.iter().filter(|w| w.watching);
    let count = |state: v1::ApplyState| {
        workloads
            .iter()
            .filter(|w| w.watching && w.state == state as i32)
            .count() as u32
    };
    local.expected = watching.count() as u32;
    local.applied = count(v1::ApplyState::Applied);
    local.failed = count(v1::ApplyState::Failed);
    local.pending = local.expected.saturating_sub(local.applied + local.failed);
    local.current_version = current;
    local.workloads = workloads;
    local.watches_refused = refused;
    local.watches_refused_all_paths = refused_all;
    local
}

/// `local`'s refusals plus every other replica's.
fn sum_refusals<'a>(
    local: Option<v1::WatchRefusals>,
    others: impl Iterator<Item = &'a v1::WatchRefusals>,
) -> Option<v1::WatchRefusals> {
    let mut sum = local.unwrap_or_default();
    for other in others {
        sum.per_pod = sum.per_pod.saturating_add(other.per_pod);
        sum.per_account = sum.per_account.saturating_add(other.per_account);
        sum.process = sum.process.saturating_add(other.process);
    }
    (sum != v1::WatchRefusals::default()).then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROD: &str = "https://prod.example";
    const DEV: &str = "https://dev.example";

    fn who(issuer: &str, namespace: &str, service_account: &str) -> WorkloadIdentity {
        WorkloadIdentity {
            issuer: issuer.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            service_account_uid: None,
            pod_name: None,
            pod_uid: None,
        }
    }

    async fn accepting(identities: &[&str], issuers: &[&str]) -> Result<Peers, PeerError> {
        Peers::new(PeerConfig {
            identities: identities.iter().map(|s| s.to_string()).collect(),
            issuers: issuers.iter().map(|s| s.to_string()).collect(),
            ..PeerConfig::default()
        })
        .await
    }

    #[tokio::test]
    async fn a_peer_identity_names_its_issuer_and_only_that_issuers_account_is_a_peer() {
        let peers = accepting(&["https://prod.example=coffer/coffer-broker"], &[DEV, PROD])
            .await
            .unwrap();
        assert!(peers.accepts(&who(PROD, "coffer", "coffer-broker")));
        assert!(!peers.accepts(&who(DEV, "coffer", "coffer-broker")));
        assert!(!peers.accepts(&who(PROD, "coffer", "other")));
        assert!(!peers.accepts(&who(PROD, "other", "coffer-broker")));
    }

    #[tokio::test]
    async fn the_old_form_binds_the_one_issuer_and_is_refused_with_several() {
        let peers = accepting(&["coffer/coffer-broker"], &[PROD]).await.unwrap();
        assert!(peers.accepts(&who(PROD, "coffer", "coffer-broker")));
        assert!(matches!(
            accepting(&["coffer/coffer-broker"], &[DEV, PROD]).await,
            Err(PeerError::AmbiguousIssuer { .. })
        ));
        assert!(matches!(
            accepting(&["https://other.example=coffer/coffer-broker"], &[PROD]).await,
            Err(PeerError::UnknownIssuer { .. })
        ));
        for bad in [
            "coffer",
            "coffer/",
            "/coffer",
            "a/b/c",
            "=coffer/coffer-broker",
            "https://prod.example=coffer",
            "coffer/coffer broker",
        ] {
            assert!(
                matches!(
                    accepting(&[bad], &[PROD]).await,
                    Err(PeerError::Identity(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_peer_costs_one_deadline_for_the_whole_fan_out() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "not-a-real-token").unwrap();
        let mut urls = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..3 {
            // Accepts (the kernel completes the handshake) and never answers.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            urls.push(format!("http://{}", listener.local_addr().unwrap()));
            listeners.push(listener);
        }
        let peers = Peers::new(PeerConfig {
            urls,
            token_file: Some(token),
            ..PeerConfig::default()
        })
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let answers = peers
            .statuses_within("shop/db", "operator-token", Duration::from_millis(400))
            .await;
        let took = started.elapsed();
        assert!(answers.is_empty());
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
            "three silent peers took {took:?}"
        );
    }

    #[test]
    fn merged_answers_sum_their_refusals() {
        let refusals = |per_pod, process| {
            Some(v1::WatchRefusals {
                per_pod,
                per_account: 0,
                process,
            })
        };
        let local = v1::RotationStatusResponse {
            watches_refused: refusals(1, 0),
            watches_refused_all_paths: refusals(1, 2),
            ..Default::default()
        };
        let peer = v1::RotationStatusResponse {
            watches_refused: refusals(0, 3),
            ..Default::default()
        };
        let merged = merge(local, vec![peer, v1::RotationStatusResponse::default()]);
        assert_eq!(merged.watches_refused, refusals(1, 3));
        assert_eq!(merged.watches_refused_all_paths, refusals(1, 2));
        let none = merge(v1::RotationStatusResponse::default(), Vec::new());
        assert_eq!(none.watches_refused, None);
    }
}
