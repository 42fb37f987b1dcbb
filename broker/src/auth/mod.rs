//! Authentication: who is calling, proven by a Kubernetes service-account token.
//!
//! Every request carries `authorization: Bearer <jwt>`. An [`Authenticator`]
//! turns that token into a [`WorkloadIdentity`] or a precise [`AuthError`].
//! The precise reason is for the server's log and audit trail only: clients
//! are told `Unauthenticated` and nothing more (see `crate::error`).

pub mod cache;
pub mod config;
pub mod files;
pub mod http;
pub mod inspect;
pub mod jwt;
pub mod oidc;
pub mod router;
pub mod signer;
pub mod tokenreview;

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

/// The largest token accepted, checked before anything is parsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A bearer token as received. `Debug` prints `[REDACTED]`.
pub struct BearerToken(SecretString);

impl BearerToken {
    /// Wraps a raw token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(SecretString::from(token.into()))
    }

    /// Takes the token from an `authorization` header value.
    pub fn from_header(value: &str) -> Result<Self, AuthError> {
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::MalformedHeader)?
            .trim();
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        Ok(Self::new(token))
    }

    /// The SHA-256 of the token in an `authorization` header's raw bytes,
    /// without copying or checking them: what a verification cache is
    /// asked first ([`Authenticator::cached`]). `None` when the header has
    /// no bearer token at all. The bytes are those
    /// [`BearerToken::from_header`] would take (the same prefix, ASCII
    /// whitespace trimmed), so a header whose token was verified and cached
    /// finds its entry; any other header (one [`BearerToken::from_header`]
    /// refuses included) finds none, short of a SHA-256 collision, and goes
    /// the whole way.
    pub fn digest_of_header(value: &[u8]) -> Option<cache::TokenDigest> {
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))?
            .trim_ascii();
        (!token.is_empty()).then(|| cache::digest_bytes(token))
    }

    /// The token itself: only for verification.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken([REDACTED])")
    }
}

/// Who a verified caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIdentity {
    /// The issuer that vouched for the token.
    pub issuer: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// The service account's uid, when the token names it.
    pub service_account_uid: Option<String>,
    /// The pod's name, for pod-bound tokens.
    pub pod_name: Option<String>,
    /// The pod's uid, for pod-bound tokens.
    pub pod_uid: Option<String>,
}

impl WorkloadIdentity {
    /// The Kubernetes username: `system:serviceaccount:NS:NAME`.
    pub fn subject(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// A verified identity and how long the verification holds.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Who the caller is.
    pub identity: WorkloadIdentity,
    /// Unix seconds after which the answer must not be reused and a stream
    /// opened with it must end: the token's `exp`, or less when the
    /// authenticator says so (a TokenReview's TTL). 0: not reusable at all.
    pub expires_at: u64,
    /// The key that verified the signature, when a local key did: a cached
    /// answer is dropped once that key leaves its issuer's key set.
    pub key: Option<jwt::KeyBinding>,
    /// The token's own `exp`, when it has one. An `expires_at` before it
    /// is the end of the authenticator's answer, not of the token (see
    /// [`Self::ends_before_the_token`]).
    pub token_exp: Option<u64>,
}

impl Verified {
    /// Whether the answer runs out before the token does (a TokenReview's
    /// TTL, or a token without `exp`): at `expires_at` the token is not
    /// expired, it only has to be verified again. A watch stream then ends
    /// without a failure, and the client reconnects to be reviewed again.
    pub fn ends_before_the_token(&self) -> bool {
        self.token_exp.is_none_or(|exp| self.expires_at < exp)
    }
}

/// Why a token was refused. Each variant is one reason, so tests and metrics
/// can tell them apart; none carries token bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("no bearer token")]
    MissingToken,
    #[error("authorization metadata is not `Bearer <token>`")]
    MalformedHeader,
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token is not a well-formed JWS")]
    Malformed,
    #[error("token algorithm is not allowed")]
    DisallowedAlgorithm,
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    #[error("token names a key that is not in the key set")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token lives longer than allowed")]
    LifetimeTooLong,
    #[error("token audience does not include this broker")]
    WrongAudience,
    #[error("token has no audience")]
    MissingAudience,
    #[error("token lacks required claim `{0}`")]
    MissingClaim(&'static str),
    #[error("token claims have the wrong shape")]
    InvalidClaims,
    #[error("token subject disagrees with its kubernetes.io claims")]
    SubjectMismatch,
    #[error("verification keys are unavailable")]
    KeysUnavailable,
    #[error("the API server's TokenReview did not authenticate the token")]
    ReviewRejected,
    #[error("the API server's TokenReview could not be completed")]
    ReviewUnavailable,
    #[error("too many TokenReviews at once; the call was refused")]
    ReviewThrottled,
    #[error("the token does not belong to a service account")]
    NotServiceAccount,
}

impl AuthError {
    /// A short, stable name for logs, audit records and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::MalformedHeader => "malformed_header",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::DisallowedAlgorithm => "disallowed_algorithm",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKey => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::WrongAudience => "wrong_audience",
            Self::MissingAudience => "missing_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaims => "invalid_claims",
            Self::SubjectMismatch => "subject_mismatch",
            Self::KeysUnavailable => "keys_unavailable",
            Self::ReviewRejected => "review_rejected",
            Self::ReviewUnavailable => "review_unavailable",
            Self::ReviewThrottled => "review_throttled",
            Self::NotServiceAccount => "not_service_account",
        }
    }
}

/// Turns a bearer token into an identity.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Verifies `token` completely, or says precisely why not. The answer
    /// says until when it holds ([`Verified::expires_at`]).
    async fn authenticate(&self, token: &BearerToken) -> Result<Verified, AuthError>;

    /// [`Self::authenticate`], the answer shared: a cache hands out the
    /// answer it holds instead of a copy of every name in it.
    async fn authenticate_shared(&self, token: &BearerToken) -> Result<Arc<Verified>, AuthError> {
        self.authenticate(token).await.map(Arc::new)
    }

    /// [`Self::authenticate_shared`] for a token whose SHA-256 the caller
    /// has computed already (`digest`, as [`BearerToken::digest_of_header`]
    /// makes it from the header that carried `token`): a cache keeps the
    /// answer under it instead of hashing the token a second time.
    /// Authenticators that remember nothing ignore it.
    async fn authenticate_digested(
        &self,
        token: &BearerToken,
        digest: &[u8; 32],
    ) -> Result<Arc<Verified>, AuthError> {
        let _ = digest;
        self.authenticate_shared(token).await
    }

    /// The answer remembered for the token whose SHA-256 is `digest`, if
    /// any is and still holds (its key still current, not expired): the
    /// cache's hit, asked before the token is even copied out of its
    /// header. Authenticators that remember nothing answer `None`.
    fn cached(&self, digest: &[u8; 32]) -> Option<Arc<Verified>> {
        let _ = digest;
        None
    }

    /// The issuers this authenticator accepts tokens from (policy subjects
    /// must name one when there are several).
    fn issuers(&self) -> Vec<String>;

    /// Whether this authenticator itself refuses, after the signature, a
    /// token whose `iss` is not its issuer, as a JWT verifier does with
    /// every other claim. A router whose only issuer this is then need not
    /// read `iss` before: the token is decoded once, not twice. A
    /// TokenReview answers for whatever the API server accepts, so it says
    /// no.
    fn checks_issuer(&self) -> bool {
        false
    }

    /// Forgets what is remembered of the token whose SHA-256 is `digest`
    /// (a cached answer), so that its next call is verified afresh: a
    /// watch ended for re-authentication is reviewed when it reconnects,
    /// not when the cached answer runs out. Authenticators that remember
    /// nothing ignore it.
    fn forget(&self, digest: &[u8; 32]) {
        let _ = digest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache is asked by the digest of the header's raw bytes: it must
    /// name exactly the token `from_header` takes, or nothing.
    #[test]
    fn the_digest_of_a_header_is_the_digest_of_the_token_it_carries() {
        for header in [
            "Bearer abc.def.ghi",
            "bearer abc.def.ghi",
            "Bearer  abc.def.ghi \t",
        ] {
            let token = BearerToken::from_header(header).unwrap();
            assert_eq!(
                BearerToken::digest_of_header(header.as_bytes()),
                Some(cache::token_digest(&token)),
                "{header:?}"
            );
        }
        for refused in ["Basic abc", "Bearer ", "Bearer  \t", "abc", ""] {
            assert_eq!(
                BearerToken::digest_of_header(refused.as_bytes()),
                None,
                "{refused:?}"
            );
        }
    }

    #[test]
    fn header_parsing() {
        assert_eq!(
            BearerToken::from_header("Bearer abc").unwrap().expose(),
            "abc"
        );
        assert_eq!(
            BearerToken::from_header("Basic abc").unwrap_err(),
            AuthError::MalformedHeader
        );
        assert_eq!(
            BearerToken::from_header("Bearer  ").unwrap_err(),
            AuthError::MissingToken
        );
        assert_eq!(
            format!("{:?}", BearerToken::new("eyJcanary")),
            "BearerToken([REDACTED])"
        );
    }

    fn verified(expires_at: u64, token_exp: Option<u64>) -> Verified {
        Verified {
            identity: WorkloadIdentity {
                issuer: "i".into(),
                namespace: "shop".into(),
                service_account: "web".into(),
                service_account_uid: None,
                pod_name: None,
                pod_uid: None,
            },
            expires_at,
            key: None,
            token_exp,
        }
    }

    #[test]
    fn an_answer_ends_before_the_token_only_when_it_runs_out_first() {
        // A verified JWT: the answer is the token's own lifetime.
        assert!(!verified(1_000, Some(1_000)).ends_before_the_token());
        // A review's TTL, shorter than the token.
        assert!(verified(1_000, Some(1_600)).ends_before_the_token());
        // A token without `exp`: only the TTL bounds it.
        assert!(verified(1_000, None).ends_before_the_token());
    }
}
