//! What each workload reports having applied, per path: the table behind
//! `RotationStatus`.

use std::{collections::HashMap, sync::Mutex, time::SystemTime};

use coffer_proto::v1;

use crate::{auth::WorkloadIdentity, error::ApiError, path::SecretPath};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WorkloadKey {
    namespace: String,
    service_account: String,
    pod: String,
}

#[derive(Debug, Clone)]
struct Ack {
    version: u64,
    state: v1::ApplyState,
    at: SystemTime,
}

/// Acknowledgements by path, then by workload.
#[derive(Default)]
pub(super) struct AckTable {
    by_path: Mutex<HashMap<String, HashMap<WorkloadKey, Ack>>>,
}

impl AckTable {
    /// Records what a workload reports having applied.
    pub(super) fn record(
        &self,
        who: &WorkloadIdentity,
        applied: Vec<v1::AppliedVersion>,
    ) -> Result<(), ApiError> {
        let key = WorkloadKey {
            namespace: who.namespace.clone(),
            service_account: who.service_account.clone(),
            pod: who.pod_name.clone().unwrap_or_default(),
        };
        let mut acks = self.by_path.lock().unwrap_or_else(|p| p.into_inner());
        for item in applied {
            let path = SecretPath::parse(&item.path)?;
            let state = item.state();
            tracing::info!(
                target: "coffer::ack",
                namespace = %key.namespace,
                service_account = %key.service_account,
                pod = %key.pod,
                path = %path,
                version = item.version,
                state = state.as_str_name(),
                reason = %item.reason.chars().take(128).collect::<String>(),
                "workload acknowledged a version"
            );
            acks.entry(path.to_string()).or_default().insert(
                key.clone(),
                Ack {
                    version: item.version,
                    state,
                    at: SystemTime::now(),
                },
            );
        }
        Ok(())
    }

    /// What every workload last acknowledged for `base` (or one of its
    /// `#key`s), sorted by namespace and pod.
    pub(super) fn workloads(&self, base: &str) -> Vec<v1::WorkloadVersion> {
        let acks = self.by_path.lock().unwrap_or_else(|p| p.into_inner());
        let mut workloads: Vec<v1::WorkloadVersion> = acks
            .iter()
            .filter(|(acked_path, _)| {
                // `app/db#key` acknowledgements count for `app/db`.
                acked_path.split('#').next() == Some(base)
            })
            .flat_map(|(_, by_workload)| by_workload.iter())
            .map(|(k, a)| v1::WorkloadVersion {
                namespace: k.namespace.clone(),
                service_account: k.service_account.clone(),
                pod: k.pod.clone(),
                version: a.version,
                state: a.state as i32,
                acknowledged_at: Some(a.at.into()),
            })
            .collect();
        workloads.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        workloads
    }
}
