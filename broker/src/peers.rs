//! Several broker replicas behaving as one.
//!
//! After a write, a replica tells each peer (`--peer URL`) to re-read that
//! path (`NotifyChanged`), so watchers on every replica get the new version
//! at once; the store's metadata poll remains the safety net. Peers
//! authenticate with the broker's own token (`--peer-token-file`), and a
//! replica accepts `NotifyChanged` only from the identities it names
//! (`--peer-identity NAMESPACE/SERVICEACCOUNT`): never unauthenticated.
//! `RotationStatus` on any replica asks its peers too, with the operator's
//! own token, and merges their answers.

use std::{path::PathBuf, time::Duration};

use coffer::{Client, TokenSource};
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
    /// `namespace/serviceaccount` of identities allowed to call `NotifyChanged`.
    pub identities: Vec<String>,
}

/// The peers of this replica.
pub struct Peers {
    clients: Vec<(String, Client)>,
    identities: Vec<String>,
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
    #[error("--peer-identity {0:?} is not NAMESPACE/SERVICEACCOUNT")]
    Identity(String),
}

/// How long one call to a peer may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

impl Peers {
    /// Lazily connected clients for every peer.
    pub async fn new(config: PeerConfig) -> Result<Self, PeerError> {
        for id in &config.identities {
            if id.split('/').filter(|p| !p.is_empty()).count() != 2 {
                return Err(PeerError::Identity(id.clone()));
            }
        }
        let mut clients = Vec::with_capacity(config.urls.len());
        if !config.urls.is_empty() {
            let token = config.token_file.as_ref().ok_or(PeerError::NoToken)?;
            for url in &config.urls {
                let mut builder = Client::builder(url.clone())
                    .token(TokenSource::file(token))
                    .connect_timeout(PEER_TIMEOUT)
                    .timeout(PEER_TIMEOUT);
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
            identities: config.identities,
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

    /// Whether `who` may tell this replica that a path changed.
    pub fn accepts(&self, who: &WorkloadIdentity) -> bool {
        self.identities
            .iter()
            .any(|id| *id == format!("{}/{}", who.namespace, who.service_account))
    }

    /// Tells every peer that `path` changed, in the background.
    pub fn notify(&self, path: &str) {
        for (url, client) in &self.clients {
            let (url, client, path) = (url.clone(), client.clone(), path.to_string());
            tokio::spawn(async move {
                match client.notify_changed(&path).await {
                    Ok(()) => tracing::debug!(peer = %url, path, "peer told of the change"),
                    Err(error) => {
                        tracing::warn!(peer = %url, path, %error, "peer not told of the change: it sees it at its next poll")
                    }
                }
            });
        }
    }

    /// Every peer's own rotation status of `path`, asked with `token` (the
    /// operator's): the answers that came.
    pub async fn statuses(&self, path: &str, token: &str) -> Vec<v1::RotationStatusResponse> {
        let asks = self.clients.iter().map(|(url, client)| {
            let client = client.with_token(TokenSource::from_static(token.to_string()));
            async move {
                match client.status_local(path).await {
                    Ok(status) => Some(v1::RotationStatusResponse::from(status)),
                    Err(error) => {
                        tracing::warn!(peer = %url, path, %error, "peer did not answer RotationStatus");
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
    local
}
