//! `ListLeases` and `RevokeLease`: operators' view of dynamic secrets'
//! leases (docs/dynamic.md). A lease is authorized on its broker path:
//! `list` to see it, `revoke` to revoke it.

use coffer_proto::v1;
use tonic::{Request, Response, Status};

use super::{Broker, Call};
use crate::{
    audit::Outcome,
    error::ApiError,
    path::SecretPath,
    policy::Capability,
    store::{LeaseInfo, StoreError},
};

/// The most leases one `ListLeases` answer holds.
pub const MAX_LEASES_LISTED: usize = 1000;

/// The longest lease id accepted.
const MAX_LEASE_ID_LEN: usize = 512;

impl Broker {
    pub(super) async fn list_leases_rpc(
        &self,
        request: Request<v1::ListLeasesRequest>,
    ) -> Result<Response<v1::ListLeasesResponse>, Status> {
        let call = Call::of(&request, "ListLeases");
        let who = self.authenticate(&request, &call).await?;
        let prefix = super::parse_folder(&request.get_ref().path, "a path prefix")?;
        let under = |path: &str| {
            prefix.is_empty()
                || path == prefix
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        // Only leases of paths the caller may list: the rest are not
        // counted either, so `truncated` reveals nothing about them.
        let policy = self.policy();
        let leases = self.inner.store.lease_store();
        let mut visible: Vec<LeaseInfo> = leases
            .map(|l| l.leases())
            .unwrap_or_default()
            .into_iter()
            .filter(|l| under(&l.path))
            .filter(|l| {
                SecretPath::parse(&l.path)
                    .is_ok_and(|p| policy.decide(&who, &p, Capability::List).is_allowed())
            })
            .collect();
        visible.sort_by(|a, b| (&a.path, &a.lease_id).cmp(&(&b.path, &b.lease_id)));
        let truncated = visible.len() > MAX_LEASES_LISTED;
        visible.truncate(MAX_LEASES_LISTED);
        self.audit(&call.event(
            Some(&who),
            Some(prefix.as_str()).filter(|p| !p.is_empty()),
            Some(Capability::List),
            Outcome::Allow,
            "listed",
        ))
        .await?;
        Ok(Response::new(v1::ListLeasesResponse {
            leases: visible.iter().map(to_wire).collect(),
            truncated,
        }))
    }

    pub(super) async fn revoke_lease_rpc(
        &self,
        request: Request<v1::RevokeLeaseRequest>,
    ) -> Result<Response<v1::RevokeLeaseResponse>, Status> {
        let call = Call::of(&request, "RevokeLease");
        let who = self.authenticate(&request, &call).await?;
        let lease_id = request.get_ref().lease_id.as_str();
        if lease_id.is_empty()
            || lease_id.len() > MAX_LEASE_ID_LEN
            || !lease_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ApiError::InvalidArgument(format!(
                "a lease id is 1 to {MAX_LEASE_ID_LEN} printable characters"
            ))
            .into());
        }
        let leases = self.inner.store.lease_store();
        let live = leases
            .map(|l| l.leases())
            .unwrap_or_default()
            .into_iter()
            .find(|l| l.lease_id == lease_id);
        // Authorized on the lease's path; an unknown id on every path it
        // could belong to, so that a caller without `revoke` there gets the
        // same refusal whether the lease exists or not.
        let paths = match &live {
            Some(lease) => vec![lease.path.clone()],
            None => leases.map(|l| l.lease_paths(lease_id)).unwrap_or_default(),
        };
        let paths: Vec<SecretPath> = paths
            .iter()
            .filter_map(|p| SecretPath::parse(p).ok())
            .collect();
        let Some(first) = paths.first() else {
            // No leased mount could hold it: nothing exists to hide.
            self.audit_lease_call(&call, &who, None, lease_id, "unknown_lease", None)
                .await?;
            return Err(ApiError::LeaseNotFound.into());
        };
        let policy = self.policy();
        let allowed_on = paths
            .iter()
            .find(|p| policy.decide(&who, p, Capability::Revoke).is_allowed());
        let Some(path) = allowed_on else {
            // Audits the denial.
            let _ = self
                .authorize(&call, &who, first, Capability::Revoke)
                .await?;
            return Err(ApiError::PermissionDenied.into());
        };
        let Some(lease) = live else {
            self.audit_lease_call(&call, &who, Some(path), lease_id, "not_found", None)
                .await?;
            return Err(ApiError::LeaseNotFound.into());
        };
        let allowed = self
            .authorize(&call, &who, path, Capability::Revoke)
            .await?;
        // Audited before it acts, like every write-side call.
        self.audit_lease_call(
            &call,
            &who,
            Some(path),
            &lease.lease_id,
            "allowed",
            Some(&allowed.rule),
        )
        .await?;
        let Some(leases) = self.inner.store.lease_store() else {
            return Err(ApiError::LeaseNotFound.into());
        };
        let revoked = match leases.revoke_lease(lease_id).await {
            Ok(revoked) => revoked,
            Err(StoreError::NotFound) => return Err(ApiError::LeaseNotFound.into()),
            Err(e) => return Err(ApiError::from(e).into()),
        };
        tracing::info!(path = %path, lease_id = %lease_id, "lease revoked by an operator");
        Ok(Response::new(v1::RevokeLeaseResponse {
            revoked: Some(to_wire(&revoked)),
        }))
    }

    /// The record of a `RevokeLease` decision, naming the lease.
    async fn audit_lease_call(
        &self,
        call: &Call,
        who: &crate::auth::WorkloadIdentity,
        path: Option<&SecretPath>,
        lease_id: &str,
        reason: &str,
        allowed_by: Option<&str>,
    ) -> Result<(), ApiError> {
        // Allowed by a rule, or else denied.
        let decision = if allowed_by.is_some() {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        let path = path.map(SecretPath::to_string);
        let mut event = call.event(
            Some(who),
            path.as_deref(),
            Some(Capability::Revoke),
            decision,
            reason,
        );
        event.lease_id = Some(lease_id);
        event.rule = allowed_by;
        self.audit(&event).await
    }
}

fn to_wire(lease: &LeaseInfo) -> v1::LeaseInfo {
    let (renewal, failing_since, failure_kind) = match lease.failing {
        None => (v1::RenewalState::Ok, None, String::new()),
        Some((since, kind)) => (
            v1::RenewalState::Failing,
            Some(since.into()),
            kind.to_string(),
        ),
    };
    v1::LeaseInfo {
        lease_id: lease.lease_id.clone(),
        path: lease.path.clone(),
        issuer: lease.owner.issuer.clone(),
        namespace: lease.owner.namespace.clone(),
        service_account: lease.owner.service_account.clone(),
        pod: lease.owner.pod_name.clone().unwrap_or_default(),
        pod_uid: lease.owner.pod_uid.clone().unwrap_or_default(),
        version: lease.version,
        issued_at: Some(lease.issued_at.into()),
        expires_at: Some(lease.expires_at.into()),
        renewal: renewal as i32,
        failing_since,
        failure_kind,
    }
}

impl Broker {
    /// Writes the broker's own lease actions (issue, failed renewal,
    /// revoke) to the audit trail as records whose actor is the broker.
    pub(super) fn audit_lease_actions(&self) {
        let Some(mut events) = self
            .inner
            .store
            .lease_store()
            .and_then(|l| l.lease_events())
        else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime: the broker's lease actions are not audited");
            return;
        };
        let broker = self.clone();
        runtime.spawn(async move {
            while let Some(lease) = events.recv().await {
                let request_id = super::call::new_request_id();
                let event = crate::audit::AuditEvent {
                    request_id: &request_id,
                    peer: None,
                    identity: None,
                    rpc: lease.action.as_str(),
                    path: Some(&lease.path),
                    capability: None,
                    version: Some(lease.version),
                    decision: Outcome::Allow,
                    reason: lease.reason,
                    rule: None,
                    lease_id: Some(&lease.lease_id),
                    actor: Some("broker"),
                    owner: Some(&lease.owner),
                };
                // Refusing has no caller to refuse: a lost record is logged.
                if broker.audit(&event).await.is_err() {
                    tracing::error!(lease_id = %lease.lease_id, "lease action not audited");
                }
            }
        });
    }
}
