//! What a record says: one decision ([`AuditEvent`], borrowed from the
//! request) and its owned copy ([`Entry`]) that crosses to the writer
//! thread. Neither has a field that could carry a secret value or a token.

use serde::Serialize;

use crate::{auth::WorkloadIdentity, policy::Capability, store::Holder};

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

/// One decision, as the broker describes it. Borrowed, and free of values
/// and tokens by construction.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub request_id: &'a str,
    pub peer: Option<&'a str>,
    pub identity: Option<&'a WorkloadIdentity>,
    pub rpc: &'a str,
    pub path: Option<&'a str>,
    pub capability: Option<Capability>,
    pub version: Option<u64>,
    pub decision: Outcome,
    pub reason: &'a str,
    pub rule: Option<&'a str>,
    /// The Vault lease of the credential served or acted on (never the
    /// credential).
    pub lease_id: Option<&'a str>,
    /// Who acted when not the caller: `broker` for its own lease actions.
    pub actor: Option<&'a str>,
    /// The workload a lease belongs to, in the broker's own lease records.
    pub owner: Option<&'a Holder>,
}

/// Who, as a record names a workload.
#[derive(Serialize, Clone)]
struct Identity {
    issuer: String,
    namespace: String,
    service_account: String,
    pod: Option<String>,
}

impl From<&Holder> for Identity {
    fn from(owner: &Holder) -> Self {
        Self {
            issuer: owner.issuer.clone(),
            namespace: owner.namespace.clone(),
            service_account: owner.service_account.clone(),
            pod: owner.pod_name.clone().or_else(|| owner.pod_uid.clone()),
        }
    }
}

/// An event copied out of the request, ready to cross to the writer thread.
#[derive(Serialize, Clone)]
pub(super) struct Entry {
    request_id: String,
    pub(super) peer: Option<String>,
    identity: Option<Identity>,
    pub(super) rpc: String,
    path: Option<String>,
    capability: Option<&'static str>,
    version: Option<u64>,
    decision: Outcome,
    pub(super) reason: String,
    rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<Identity>,
}

impl From<&AuditEvent<'_>> for Entry {
    fn from(event: &AuditEvent<'_>) -> Self {
        Self {
            request_id: event.request_id.to_string(),
            peer: event.peer.map(str::to_string),
            identity: event.identity.map(|w| Identity {
                issuer: w.issuer.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                pod: w.pod_name.clone(),
            }),
            rpc: event.rpc.to_string(),
            path: event.path.map(str::to_string),
            capability: event.capability.map(Capability::as_str),
            version: event.version,
            decision: event.decision,
            reason: event.reason.to_string(),
            rule: event.rule.map(str::to_string),
            lease_id: event.lease_id.map(str::to_string),
            actor: event.actor.map(str::to_string),
            owner: event.owner.map(Identity::from),
        }
    }
}
