//! One incoming call: who makes it (the bearer token, verified) and the
//! audit records written for it.

use std::sync::Arc;

use tonic::Request;

use super::{Allowed, Broker, holder};
use crate::{
    audit::{AuditEvent, Outcome},
    auth::{BearerToken, Verified, WorkloadIdentity},
    error::ApiError,
    path::SecretPath,
    policy::Capability,
};

/// One incoming call, as the audit trail names it. The request id and the
/// peer's text are made only when a record is written: with the audit trail
/// off, an allowed request allocates neither.
pub(super) struct Call {
    pub(super) rpc: &'static str,
    given_id: Option<String>,
    id: std::sync::OnceLock<String>,
    remote: Option<std::net::SocketAddr>,
    peer: std::sync::OnceLock<Option<String>>,
}

impl Call {
    /// Takes a well-formed `x-request-id` from the caller, or makes one later.
    pub(super) fn of<T>(request: &Request<T>, rpc: &'static str) -> Self {
        let given_id = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                (1..=64).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
            .map(str::to_string);
        Self {
            rpc,
            given_id,
            id: std::sync::OnceLock::new(),
            remote: request.remote_addr(),
            peer: std::sync::OnceLock::new(),
        }
    }

    fn id(&self) -> &str {
        self.id
            .get_or_init(|| self.given_id.clone().unwrap_or_else(new_request_id))
    }

    fn peer(&self) -> Option<&str> {
        self.peer
            .get_or_init(|| self.remote.map(|a| a.to_string()))
            .as_deref()
    }

    pub(super) fn event<'a>(
        &'a self,
        who: Option<&'a WorkloadIdentity>,
        path: Option<&'a str>,
        capability: Option<Capability>,
        decision: Outcome,
        reason: &'a str,
    ) -> AuditEvent<'a> {
        AuditEvent {
            request_id: self.id(),
            peer: self.peer(),
            identity: who,
            rpc: self.rpc,
            path,
            capability,
            version: None,
            decision,
            reason,
            rule: None,
            lease_id: None,
            actor: None,
            owner: None,
        }
    }
}

pub(super) fn new_request_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves zeros: the id is for correlation only.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    data_encoding::HEXLOWER.encode(&bytes)
}

/// The audit reason for an allowed read that served nothing.
pub(super) fn read_reason<T>(result: &Result<T, ApiError>) -> &'static str {
    match result {
        Ok(_) => "allowed",
        Err(ApiError::Store(crate::store::StoreError::NotFound))
        | Err(ApiError::Store(crate::store::StoreError::VersionNotFound(_)))
        | Err(ApiError::Store(crate::store::StoreError::VersionDeleted(_))) => "not_found",
        Err(ApiError::Store(crate::store::StoreError::Throttled)) => "throttled",
        Err(_) => "store_error",
    }
}

impl Broker {
    /// Writes one audit record. Fails closed unless the log is fail-open.
    pub(super) async fn audit(&self, event: &AuditEvent<'_>) -> Result<(), ApiError> {
        self.write_audit(event, false).await
    }

    /// Writes (or counts, see [`AuditLog::record_auth_failure`]) the record
    /// of a failed authentication. Fails closed like [`Broker::audit`].
    async fn audit_auth_failure(&self, event: &AuditEvent<'_>) -> Result<(), ApiError> {
        self.write_audit(event, true).await
    }

    async fn write_audit(
        &self,
        event: &AuditEvent<'_>,
        auth_failure: bool,
    ) -> Result<(), ApiError> {
        let Some(log) = self.audit_log() else {
            return Ok(());
        };
        // The write happens on the audit writer thread; this only awaits it.
        let result = if auth_failure {
            log.record_auth_failure(event).await
        } else {
            log.record(event).await
        };
        match result {
            Ok(()) => Ok(()),
            Err(error) if log.is_fail_open() => {
                tracing::error!(%error, "audit record lost (audit is fail-open)");
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "audit record not written: refusing the request");
                Err(ApiError::AuditUnavailable)
            }
        }
    }

    /// Records what an allowed request was served.
    pub(super) async fn audit_served(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        path: &SecretPath,
        allowed: &Allowed,
        version: Option<u64>,
        reason: &str,
    ) -> Result<(), ApiError> {
        if self.audit_log().is_none() {
            // No trail: nothing to format.
            return Ok(());
        }
        // A leased path's record names the lease the credential came from.
        let lease_id = version.and_then(|v| {
            let leases = self.inner.store.lease_store()?;
            leases.lease_of(&holder(who), path.name(), v)
        });
        let path = path.to_string();
        let mut event = call.event(
            Some(who),
            Some(&path),
            Some(allowed.capability),
            Outcome::Allow,
            reason,
        );
        event.version = version;
        event.rule = Some(&allowed.rule);
        event.lease_id = lease_id.as_deref();
        self.audit(&event).await
    }

    pub(super) async fn authenticate<T>(
        &self,
        request: &Request<T>,
        call: &Call,
    ) -> Result<Caller, ApiError> {
        self.authenticate_until(request, call).await.map(Caller)
    }

    /// [`Self::authenticate`], also saying until when the verification
    /// holds: a watch stream ends then.
    pub(super) async fn authenticate_until<T>(
        &self,
        request: &Request<T>,
        call: &Call,
    ) -> Result<Arc<Verified>, ApiError> {
        match self.verify_caller(request).await {
            Ok(who) => Ok(who),
            Err(error) => {
                self.audit_auth_failure(&call.event(
                    None,
                    None,
                    None,
                    Outcome::Deny,
                    error.reason(),
                ))
                .await?;
                Err(error.into())
            }
        }
    }

    async fn verify_caller<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Arc<Verified>, crate::auth::AuthError> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or(crate::auth::AuthError::MissingToken)?;
        // A sidecar sends the same token on every call: its cached answer
        // is found by the digest of the header's bytes, before the token
        // is checked, copied into a zeroizing buffer and wiped again. Only
        // a token verified before has an entry (see
        // `BearerToken::digest_of_header`).
        let digest = BearerToken::digest_of_header(header.as_bytes());
        if let Some(hit) = digest.and_then(|digest| self.inner.authn.cached(&digest)) {
            return Ok(hit);
        }
        let header = header
            .to_str()
            .map_err(|_| crate::auth::AuthError::MalformedHeader)?;
        let token = BearerToken::from_header(header)?;
        // A miss is verified and kept under the digest already made, not
        // hashed again.
        match digest {
            Some(digest) => {
                self.inner
                    .authn
                    .authenticate_digested(&token, &digest)
                    .await
            }
            None => self.inner.authn.authenticate_shared(&token).await,
        }
    }
}

/// A verified caller: the authenticator's answer, shared with its cache
/// rather than copied for each request.
pub(super) struct Caller(Arc<Verified>);

impl std::ops::Deref for Caller {
    type Target = WorkloadIdentity;

    fn deref(&self) -> &WorkloadIdentity {
        &self.0.identity
    }
}
