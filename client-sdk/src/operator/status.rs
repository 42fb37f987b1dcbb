//! Which workloads applied which version of a path: [`Client::status`],
//! merged by the broker over its replicas.

use std::time::{Duration, SystemTime};

use coffer_proto::v1;

use crate::{ApplyState, Client, Error};

/// Which workloads hold which version of a path ([`Client::status`]).
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

impl Client {
    /// Which workloads acknowledged which version of `path`, merged over
    /// every broker replica (capability `status`).
    pub async fn status(&self, path: &str) -> Result<RotationStatus, Error> {
        Ok(self.rotation_status(path, false).await?.into())
    }

    /// The broker's answer for `path`; `local_only` asks the one replica
    /// connected alone, without its peers (what replicas ask each other,
    /// merging the answers in this wire form).
    pub(crate) async fn rotation_status(
        &self,
        path: &str,
        local_only: bool,
    ) -> Result<v1::RotationStatusResponse, Error> {
        let response = self
            .retrying(|| async {
                let request = self.request(v1::RotationStatusRequest {
                    path: path.to_string(),
                    local_only,
                })?;
                self.operator()
                    .rotation_status(request)
                    .await
                    .map_err(Error::status)
            })
            .await?;
        Ok(response.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_keeps_its_state_and_times_from_the_wire() {
        let wire = v1::RotationStatusResponse {
            current_version: 3,
            workloads: vec![v1::WorkloadVersion {
                pod: "web-0".into(),
                version: 3,
                state: v1::ApplyState::Applied as i32,
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
            watches_refused: Some(v1::WatchRefusals {
                per_pod: 2,
                per_account: 1,
                process: 0,
            }),
            ..Default::default()
        };
        let status = RotationStatus::from(wire);
        let workload = &status.workloads[0];
        assert_eq!(workload.state, ApplyState::Applied);
        assert_eq!(workload.time_to_apply, Some(Duration::new(1, 7)));
        assert!(workload.acknowledged_at.is_some());
        assert_eq!(status.watches_refused.total(), 3);
        assert_eq!(status.watches_refused_all_paths, WatchRefusals::default());
    }
}
