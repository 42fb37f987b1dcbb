//! TokenReview: ask the API server whether a token is valid
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`).
//!
//! The API server checks everything it knows, including whether the pod or
//! secret the token is bound to still exists, which no offline verifier can.
//! The broker authenticates with its own credentials (its service account
//! needs `system:auth-delegator`, see docs/auth.md) and passes its expected
//! audiences. Positive answers are cached for the shorter of the token's
//! `exp` and a short TTL, so revocation takes effect within that TTL.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use std::collections::HashMap;

use super::{
    AuthError, Authenticator, BearerToken, Verified, WorkloadIdentity,
    http::{HttpClient, HttpConfig, HttpError},
    jwt::{self, is_name, unix_now},
};

/// The default TTL of a positive answer.
pub const DEFAULT_REVIEW_TTL: Duration = Duration::from_secs(60);
/// The path of the TokenReview API.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The `extra` keys the API server sets for pod-bound tokens.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Settings for TokenReview.
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// The issuer named in the tokens this authenticator handles.
    pub issuer: String,
    /// The API server, e.g. `https://kubernetes.default.svc`.
    pub server: String,
    /// The audiences the token must be valid for.
    pub audiences: Vec<String>,
    /// CA bundle, timeout and the broker's own token.
    pub http: HttpConfig,
    /// How long a positive answer is reused at most.
    pub ttl: Duration,
}

/// Authenticates by TokenReview.
pub struct TokenReviewAuthenticator {
    config: TokenReviewConfig,
    url: String,
    http: HttpClient,
}

impl TokenReviewAuthenticator {
    /// Prepares the client; no request is made yet.
    pub fn new(config: TokenReviewConfig) -> Result<Self, HttpError> {
        let http = HttpClient::new(&config.http)?;
        let url = format!("{}{TOKEN_REVIEW_PATH}", config.server.trim_end_matches('/'));
        Ok(Self { config, url, http })
    }
}

#[derive(Deserialize)]
struct Review {
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Default, Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: UserInfo,
    #[serde(default)]
    audiences: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    extra: HashMap<String, Vec<String>>,
}

#[async_trait]
impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, token: &BearerToken) -> Result<WorkloadIdentity, AuthError> {
        self.authenticate_cacheable(token)
            .await
            .map(|verified| verified.identity)
    }

    async fn authenticate_cacheable(&self, token: &BearerToken) -> Result<Verified, AuthError> {
        // Unverified: used only to cache no longer than the token lives. The
        // API server decides validity.
        let exp = jwt::peek(token.expose()).ok().and_then(|c| c.exp);
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token.expose(), "audiences": self.config.audiences },
        });
        let review: Review = self
            .http
            .post_json(&self.url, body.to_string().into_bytes())
            .await
            .map_err(|error| {
                tracing::warn!(%error, "TokenReview failed");
                AuthError::ReviewUnavailable
            })?;
        let status = review.status;
        if !status.authenticated {
            return Err(AuthError::ReviewRejected);
        }
        // The API server returns the audiences the token was valid for; an
        // answer that does not name one of ours is not an answer for us.
        let ours = status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| self.config.audiences.contains(a));
        if !ours {
            return Err(AuthError::WrongAudience);
        }
        let (namespace, service_account) =
            parse_username(&status.user.username).ok_or(AuthError::NotServiceAccount)?;
        let first = |key: &str| {
            status
                .user
                .extra
                .get(key)
                .and_then(|values| values.first())
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let now = unix_now();
        let until = now + self.config.ttl.as_secs();
        Ok(Verified {
            identity: WorkloadIdentity {
                issuer: self.config.issuer.clone(),
                namespace,
                service_account,
                service_account_uid: (!status.user.uid.is_empty())
                    .then_some(status.user.uid.clone()),
                pod_name: first(EXTRA_POD_NAME),
                pod_uid: first(EXTRA_POD_UID),
            },
            // Without an `exp` to bound it, the answer is not cached at all.
            expires_at: exp.map_or(0, |exp| exp.min(until)),
        })
    }
}

/// `system:serviceaccount:NS:NAME` into `(NS, NAME)`.
fn parse_username(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (is_name(namespace) && is_name(name)).then(|| (namespace.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_account_usernames_are_identities() {
        assert_eq!(
            parse_username("system:serviceaccount:shop:web"),
            Some(("shop".into(), "web".into()))
        );
        for bad in [
            "alice",
            "system:serviceaccount:shop",
            "system:serviceaccount:shop:web:extra",
            "system:serviceaccount::web",
            "system:node:worker-1",
        ] {
            assert_eq!(parse_username(bad), None, "{bad}");
        }
    }
}
