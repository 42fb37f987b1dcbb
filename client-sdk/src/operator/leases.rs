//! The live leases of dynamic secrets (never the credentials), and
//! revoking one.

use std::time::SystemTime;

use coffer_proto::v1;

use crate::{Client, Error};

/// The live leases of dynamic secrets ([`Client::leases`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Leases {
    /// The leases, by path and lease id.
    pub leases: Vec<Lease>,
    /// More matched than one answer holds: narrow the path.
    pub truncated: bool,
}

/// One live lease: never the credential.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Lease {
    /// Vault's lease id (`pki:<serial>` for a certificate).
    pub lease_id: String,
    /// The broker path.
    pub path: String,
    /// The owner's token issuer.
    pub issuer: String,
    /// The owner's namespace.
    pub namespace: String,
    /// The owner's service account.
    pub service_account: String,
    /// The owner's pod, when its token names one (else empty).
    pub pod: String,
    /// The owner's pod uid, when its token names one (else empty).
    pub pod_uid: String,
    /// The credential's version.
    pub version: u64,
    /// When the credential was issued.
    pub issued_at: Option<SystemTime>,
    /// When the lease ends unless renewed.
    pub expires_at: Option<SystemTime>,
    /// Whether renewals succeed.
    pub renewal: RenewalState,
}

/// Whether a lease's renewals succeed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RenewalState {
    /// The last renewal (or the issue) succeeded.
    Ok,
    /// Renewals fail since `since`; the credential is served until it
    /// expires. `kind` is a fixed word (`unavailable`, `throttled`,
    /// `refused`, `error`), never the backend's text.
    Failing {
        since: Option<SystemTime>,
        kind: String,
    },
    /// A state this SDK does not know (a newer broker).
    #[default]
    Unknown,
}

impl RenewalState {
    /// `ok`, `failing` or `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failing { .. } => "failing",
            Self::Unknown => "unknown",
        }
    }
}

impl From<v1::LeaseInfo> for Lease {
    fn from(wire: v1::LeaseInfo) -> Self {
        let renewal = match v1::RenewalState::try_from(wire.renewal) {
            Ok(v1::RenewalState::Ok) => RenewalState::Ok,
            Ok(v1::RenewalState::Failing) => RenewalState::Failing {
                since: wire
                    .failing_since
                    .and_then(|t| SystemTime::try_from(t).ok()),
                kind: wire.failure_kind,
            },
            _ => RenewalState::Unknown,
        };
        Self {
            lease_id: wire.lease_id,
            path: wire.path,
            issuer: wire.issuer,
            namespace: wire.namespace,
            service_account: wire.service_account,
            pod: wire.pod,
            pod_uid: wire.pod_uid,
            version: wire.version,
            issued_at: wire.issued_at.and_then(|t| SystemTime::try_from(t).ok()),
            expires_at: wire.expires_at.and_then(|t| SystemTime::try_from(t).ok()),
            renewal,
        }
    }
}

impl From<v1::ListLeasesResponse> for Leases {
    fn from(wire: v1::ListLeasesResponse) -> Self {
        Self {
            leases: wire.leases.into_iter().map(Lease::from).collect(),
            truncated: wire.truncated,
        }
    }
}

impl Client {
    /// The live leases of dynamic secrets on the replica connected, of
    /// `path` and the paths under it (`None`: every path); only those the
    /// caller has `list` on (capability `list`).
    pub async fn leases(&self, path: Option<&str>) -> Result<Leases, Error> {
        let response = self
            .retrying(|| async {
                let request = self.request(v1::ListLeasesRequest {
                    path: path.unwrap_or_default().to_string(),
                })?;
                self.operator()
                    .list_leases(request)
                    .await
                    .map_err(Error::status)
            })
            .await?;
        Ok(response.into_inner().into())
    }

    /// Revokes `lease_id` now; its holder's watches get a new credential
    /// (capability `revoke` on the lease's path). Returns the lease as it
    /// was.
    pub async fn revoke_lease(&self, lease_id: &str) -> Result<Lease, Error> {
        let request = self.request(v1::RevokeLeaseRequest {
            lease_id: lease_id.to_string(),
        })?;
        let revoked = self
            .operator()
            .revoke_lease(request)
            .await
            .map_err(Error::status)?
            .into_inner()
            .revoked
            .unwrap_or_default();
        Ok(revoked.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_lease_keeps_its_kind_and_time() {
        let wire = v1::LeaseInfo {
            lease_id: "database/creds/shop/x".into(),
            renewal: v1::RenewalState::Failing as i32,
            failing_since: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            failure_kind: "unavailable".into(),
            ..Default::default()
        };
        let lease = Lease::from(wire);
        assert_eq!(lease.renewal.as_str(), "failing");
        assert!(
            matches!(lease.renewal, RenewalState::Failing { ref kind, since: Some(_) } if kind == "unavailable")
        );
        assert_eq!(
            Lease::from(v1::LeaseInfo::default()).renewal,
            RenewalState::Unknown
        );
    }
}
