//! Typed requests and results of the operator calls.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use coffer_proto::{SecretData, v1};

/// A new version to write with [`crate::Client::put`].
///
/// ```
/// use coffer::{Put, SecretData};
/// let put = Put::new("app/db", SecretData::Bytes(b"s3cret".to_vec().into()))
///     .content_type("text/plain")
///     .only_if_version(3);
/// # let _ = put;
/// ```
#[derive(Debug)]
pub struct Put {
    pub(crate) path: String,
    pub(crate) data: SecretData,
    pub(crate) content_type: String,
    pub(crate) cas: Option<u64>,
    pub(crate) labels: BTreeMap<String, String>,
}

impl Put {
    /// Writes `data` at `path`, whatever the current version.
    pub fn new(path: impl Into<String>, data: SecretData) -> Self {
        Self {
            path: path.into(),
            data,
            content_type: String::new(),
            cas: None,
            labels: BTreeMap::new(),
        }
    }

    /// A MIME type hint (`text/plain`, `application/json`).
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Check-and-set: write only if the current version is `version`;
    /// otherwise [`crate::Error::FailedPrecondition`].
    pub fn only_if_version(mut self, version: u64) -> Self {
        self.cas = Some(version);
        self
    }

    /// Write only if the path does not exist yet.
    pub fn only_if_absent(mut self) -> Self {
        self.cas = Some(0);
        self
    }

    /// Check-and-set from an optional version (`None`: always write).
    pub fn cas(mut self, version: Option<u64>) -> Self {
        self.cas = version;
        self
    }

    /// A non-secret label stored with the version.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// How the broker generates a value for [`crate::Client::rotate`]. Unset
/// fields come from the spec stored with the secret, then the defaults (32
/// characters of `[A-Za-z0-9]`); a spec given is stored for next time.
#[derive(Debug, Clone)]
pub struct Rotate {
    pub(crate) path: String,
    pub(crate) length: Option<u32>,
    pub(crate) alphabet: Option<String>,
    pub(crate) encoding: Option<Encoding>,
    pub(crate) key: Option<String>,
}

/// What [`crate::Client::rotate_detailed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rotated {
    /// The new version.
    pub version: u64,
    /// The map key that got the new value; `None` when the whole value was
    /// replaced.
    pub key: Option<String>,
}

/// The form of a generated value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encoding {
    /// Characters drawn from the alphabet.
    Chars,
    /// Random bytes, hex-encoded.
    Hex,
    /// Random bytes, base64-encoded.
    Base64,
}

impl Encoding {
    /// The name the broker knows it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chars => "chars",
            Self::Hex => "hex",
            Self::Base64 => "base64",
        }
    }
}

impl std::str::FromStr for Encoding {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "chars" => Ok(Self::Chars),
            "hex" => Ok(Self::Hex),
            "base64" => Ok(Self::Base64),
            _ => Err(crate::Error::InvalidArgument(
                "encoding must be chars, hex or base64".into(),
            )),
        }
    }
}

impl Rotate {
    /// Rotates `path` with the stored spec.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            length: None,
            alphabet: None,
            encoding: None,
            key: None,
        }
    }

    /// Characters to generate (random bytes for hex and base64).
    pub fn length(mut self, length: u32) -> Self {
        self.length = Some(length);
        self
    }

    /// The characters to draw from (for [`Encoding::Chars`]).
    pub fn alphabet(mut self, alphabet: impl Into<String>) -> Self {
        self.alphabet = Some(alphabet.into());
        self
    }

    /// The form of the value.
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = Some(encoding);
        self
    }

    /// For a map secret: the key to rotate; the others are kept.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub(crate) fn into_wire(self) -> v1::RotateSecretRequest {
        let spec = (self.length.is_some()
            || self.alphabet.is_some()
            || self.encoding.is_some()
            || self.key.is_some())
        .then(|| v1::RotationSpec {
            length: self.length,
            alphabet: self.alphabet,
            encoding: self.encoding.map(|e| e.as_str().to_string()),
            key: self.key,
        });
        v1::RotateSecretRequest {
            path: self.path,
            spec,
        }
    }
}

/// What [`crate::Client::change_versions`] does to versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionAction {
    /// Soft-delete: unreadable until undeleted.
    Delete,
    /// Restore soft-deleted versions.
    Undelete,
    /// Remove the values for good.
    Destroy,
}

/// The versions of a secret ([`crate::Client::versions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Versions {
    /// The version reads return.
    pub current: u64,
    /// Every version the backend keeps, oldest first.
    pub versions: Vec<VersionInfo>,
    /// The rotation spec stored with the secret: its `coffer.rotate/*`
    /// labels (e.g. `coffer.rotate/length` = `40`), read by the broker from
    /// the secret's metadata, never from its value. Empty when none is
    /// stored.
    pub rotation_labels: BTreeMap<String, String>,
}

/// One version's non-secret facts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionInfo {
    /// The version number.
    pub version: u64,
    /// When it was written.
    pub created_at: Option<SystemTime>,
    /// Whether it can be read.
    pub state: VersionState,
}

/// Whether a version can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionState {
    /// Readable.
    Live,
    /// Soft-deleted: unreadable until undeleted.
    Deleted,
    /// Destroyed for good.
    Destroyed,
}

impl From<v1::ListVersionsResponse> for Versions {
    fn from(wire: v1::ListVersionsResponse) -> Self {
        Self {
            current: wire.current_version,
            rotation_labels: wire.rotation_labels.into_iter().collect(),
            versions: wire
                .versions
                .into_iter()
                .map(|v| VersionInfo {
                    version: v.version,
                    created_at: v.created_at.and_then(|t| SystemTime::try_from(t).ok()),
                    state: if v.destroyed {
                        VersionState::Destroyed
                    } else if v.deleted {
                        VersionState::Deleted
                    } else {
                        VersionState::Live
                    },
                })
                .collect(),
        }
    }
}

/// What a workload reports, or the broker says, about one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ApplyState {
    /// Written where the application reads it.
    Applied,
    /// Writing failed; the previous version is still in place.
    Failed,
    /// Watching, but not acknowledged the current version yet.
    Pending,
    /// A state this SDK does not know (a newer broker).
    #[default]
    Unknown,
}

impl ApplyState {
    /// A short lowercase name (`applied`, `failed`, `pending`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Failed => "failed",
            Self::Pending => "pending",
            Self::Unknown => "unknown",
        }
    }

    fn from_wire(state: i32) -> Self {
        match v1::ApplyState::try_from(state) {
            Ok(v1::ApplyState::Applied) => Self::Applied,
            Ok(v1::ApplyState::Failed) => Self::Failed,
            Ok(v1::ApplyState::Pending) => Self::Pending,
            _ => Self::Unknown,
        }
    }

    fn to_wire(self) -> v1::ApplyState {
        match self {
            Self::Applied => v1::ApplyState::Applied,
            Self::Failed => v1::ApplyState::Failed,
            Self::Pending => v1::ApplyState::Pending,
            Self::Unknown => v1::ApplyState::Unspecified,
        }
    }
}

/// One acknowledgement for [`crate::Client::ack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The path as watched.
    pub path: String,
    /// The version written (or not).
    pub version: u64,
    /// Applied or failed.
    pub state: ApplyState,
    /// A short, non-secret reason for a failure.
    pub reason: String,
}

impl From<Applied> for v1::AppliedVersion {
    fn from(a: Applied) -> Self {
        Self {
            path: a.path,
            version: a.version,
            state: a.state.to_wire() as i32,
            reason: a.reason,
        }
    }
}

/// Which workloads hold which version of a path ([`crate::Client::status`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RotationStatus {
    /// The version reads return.
    pub current_version: u64,
    /// Workloads watching the path now.
    pub expected: u32,
    /// Of them, those that applied the current version.
    pub applied: u32,
    /// Those that failed to.
    pub failed: u32,
    /// Those that have not said yet.
    pub pending: u32,
    /// Broker replicas asked.
    pub replicas: u32,
    /// Replicas that answered.
    pub replicas_answered: u32,
    /// One entry per workload.
    pub workloads: Vec<WorkloadStatus>,
    /// Watches of this path the replicas that answered refused since they
    /// started (`RESOURCE_EXHAUSTED`): those pods watch nothing, so they
    /// are not in `expected`.
    pub watches_refused: WatchRefusals,
    /// Watches of every path they refused since they started.
    pub watches_refused_all_paths: WatchRefusals,
}

/// Watch streams a broker refused, by the bound that refused them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WatchRefusals {
    /// The pod (its token's pod uid) held its bound.
    pub per_pod: u64,
    /// Tokens bound to no pod: their service account held its bound.
    pub per_account: u64,
    /// The broker held as many streams as it may.
    pub process: u64,
}

impl WatchRefusals {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.per_pod
            .saturating_add(self.per_account)
            .saturating_add(self.process)
    }
}

impl From<Option<v1::WatchRefusals>> for WatchRefusals {
    fn from(wire: Option<v1::WatchRefusals>) -> Self {
        let wire = wire.unwrap_or_default();
        Self {
            per_pod: wire.per_pod,
            per_account: wire.per_account,
            process: wire.process,
        }
    }
}

impl From<WatchRefusals> for Option<v1::WatchRefusals> {
    fn from(refused: WatchRefusals) -> Self {
        (refused != WatchRefusals::default()).then_some(v1::WatchRefusals {
            per_pod: refused.per_pod,
            per_account: refused.per_account,
            process: refused.process,
        })
    }
}

/// What one workload last acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WorkloadStatus {
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// Its pod, when its token names one (else empty).
    pub pod: String,
    /// Its pod's uid, when its token names one (else empty).
    pub pod_uid: String,
    /// The issuer that vouched for its token.
    pub issuer: String,
    /// The version it acknowledged.
    pub version: u64,
    /// Applied, failed or pending.
    pub state: ApplyState,
    /// Its short reason for a failure (else empty).
    pub reason: String,
    /// Whether it watches the path now.
    pub watching: bool,
    /// When it acknowledged.
    pub acknowledged_at: Option<SystemTime>,
    /// From the current version's creation to its acknowledgement.
    pub time_to_apply: Option<Duration>,
}

impl From<v1::RotationStatusResponse> for RotationStatus {
    fn from(wire: v1::RotationStatusResponse) -> Self {
        Self {
            current_version: wire.current_version,
            expected: wire.expected,
            applied: wire.applied,
            failed: wire.failed,
            pending: wire.pending,
            replicas: wire.replicas,
            replicas_answered: wire.replicas_answered,
            watches_refused: wire.watches_refused.into(),
            watches_refused_all_paths: wire.watches_refused_all_paths.into(),
            workloads: wire
                .workloads
                .into_iter()
                .map(|w| WorkloadStatus {
                    namespace: w.namespace,
                    service_account: w.service_account,
                    pod: w.pod,
                    pod_uid: w.pod_uid,
                    issuer: w.issuer,
                    version: w.version,
                    state: ApplyState::from_wire(w.state),
                    reason: w.reason,
                    watching: w.watching,
                    acknowledged_at: w.acknowledged_at.and_then(|t| SystemTime::try_from(t).ok()),
                    time_to_apply: w.time_to_apply.and_then(|d| Duration::try_from(d).ok()),
                })
                .collect(),
        }
    }
}

/// Back to the wire form, for a broker replica merging its peers' answers.
impl From<RotationStatus> for v1::RotationStatusResponse {
    fn from(status: RotationStatus) -> Self {
        Self {
            current_version: status.current_version,
            expected: status.expected,
            applied: status.applied,
            failed: status.failed,
            pending: status.pending,
            replicas: status.replicas,
            replicas_answered: status.replicas_answered,
            watches_refused: status.watches_refused.into(),
            watches_refused_all_paths: status.watches_refused_all_paths.into(),
            workloads: status
                .workloads
                .into_iter()
                .map(|w| v1::WorkloadVersion {
                    namespace: w.namespace,
                    service_account: w.service_account,
                    pod: w.pod,
                    pod_uid: w.pod_uid,
                    issuer: w.issuer,
                    version: w.version,
                    state: w.state.to_wire() as i32,
                    reason: w.reason,
                    watching: w.watching,
                    acknowledged_at: w.acknowledged_at.map(Into::into),
                    time_to_apply: w.time_to_apply.and_then(|d| d.try_into().ok()),
                })
                .collect(),
        }
    }
}

/// The live leases of dynamic secrets ([`crate::Client::leases`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_survives_the_round_trip_through_the_wire_form() {
        let wire = v1::RotationStatusResponse {
            current_version: 3,
            expected: 1,
            applied: 1,
            replicas: 2,
            replicas_answered: 2,
            workloads: vec![v1::WorkloadVersion {
                namespace: "shop".into(),
                service_account: "web".into(),
                pod: "web-0".into(),
                version: 3,
                state: v1::ApplyState::Applied as i32,
                watching: true,
                acknowledged_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                time_to_apply: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 7,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let typed = RotationStatus::from(wire.clone());
        assert_eq!(typed.workloads[0].state, ApplyState::Applied);
        assert_eq!(v1::RotationStatusResponse::from(typed), wire);
    }

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

    #[test]
    fn a_rotate_without_options_sends_no_spec() {
        assert!(Rotate::new("a/b").into_wire().spec.is_none());
        let spec = Rotate::new("a/b").encoding(Encoding::Hex).into_wire().spec;
        assert_eq!(spec.unwrap().encoding.as_deref(), Some("hex"));
    }
}
