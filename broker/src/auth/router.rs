//! Several issuers at once: the token's issuer selects its verifier.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;

use super::{AuthError, Authenticator, BearerToken, Verified, jwt};

/// Routes each token to the authenticator configured for its `iss`.
#[derive(Default)]
pub struct IssuerRouter {
    by_issuer: HashMap<String, Arc<dyn Authenticator>>,
}

impl IssuerRouter {
    /// An empty router: it refuses every token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes tokens naming `issuer` to `authenticator`. Returns false (and
    /// changes nothing) if the issuer already has one.
    pub fn add(
        &mut self,
        issuer: impl Into<String>,
        authenticator: Arc<dyn Authenticator>,
    ) -> bool {
        match self.by_issuer.entry(issuer.into()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(authenticator);
                true
            }
        }
    }

    /// The only routed authenticator, if there is one and it refuses other
    /// issuers' tokens itself.
    fn sole_issuer_checker(&self) -> Option<&Arc<dyn Authenticator>> {
        let mut all = self.by_issuer.values();
        match (all.next(), all.next()) {
            (Some(only), None) if only.checks_issuer() => Some(only),
            _ => None,
        }
    }

    /// How many issuers are routed.
    pub fn len(&self) -> usize {
        self.by_issuer.len()
    }

    /// Whether no issuer is routed.
    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }
}

#[async_trait]
impl Authenticator for IssuerRouter {
    async fn authenticate(&self, token: &BearerToken) -> Result<Verified, AuthError> {
        // One issuer whose verifier checks `iss` itself (the common case):
        // it answers alone, and the payload is decoded once.
        if let Some(only) = self.sole_issuer_checker() {
            return only.authenticate(token).await;
        }
        // The unverified `iss` only picks which verifier runs. Trusting it is
        // safe because nothing else is taken from it: the chosen verifier
        // then checks the signature against that issuer's own keys and every
        // claim, `iss` included. A forged `iss` can only choose a verifier
        // that will refuse the token.
        let peeked = jwt::peek(token.expose())?;
        let issuer = peeked.iss.ok_or(AuthError::MissingClaim("iss"))?;
        let authenticator = self
            .by_issuer
            .get(&issuer)
            .ok_or(AuthError::UnknownIssuer)?;
        authenticator.authenticate(token).await
    }

    fn issuers(&self) -> Vec<String> {
        let mut issuers: Vec<String> = self.by_issuer.keys().cloned().collect();
        issuers.sort();
        issuers
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::{
        jwt::{JwtVerifier, KeySet, VerifierConfig},
        signer::DevSigner,
    };

    fn verifier(signer: &DevSigner) -> Arc<dyn Authenticator> {
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        Arc::new(JwtVerifier::new(
            VerifierConfig::new(signer.issuer(), "coffer"),
            keys,
        ))
    }

    fn token(signer: &DevSigner) -> BearerToken {
        BearerToken::new(
            signer
                .mint("coffer", "shop", "web", None, Duration::from_secs(600))
                .unwrap(),
        )
    }

    /// Says it does not check `iss` (as a TokenReview does not), and
    /// accepts whatever it is given.
    struct AcceptsAll;

    #[async_trait]
    impl Authenticator for AcceptsAll {
        async fn authenticate(&self, _: &BearerToken) -> Result<Verified, AuthError> {
            Err(AuthError::BadSignature)
        }

        fn issuers(&self) -> Vec<String> {
            vec!["https://a".into()]
        }
    }

    #[tokio::test]
    async fn a_sole_jwt_issuer_answers_alone_and_still_refuses_other_issuers() {
        let (a, b) = (
            DevSigner::generate("https://a").unwrap(),
            DevSigner::generate("https://b").unwrap(),
        );
        let mut router = IssuerRouter::new();
        router.add("https://a", verifier(&a));
        assert!(router.sole_issuer_checker().is_some());
        let verified = router.authenticate(&token(&a)).await.unwrap();
        assert_eq!(verified.identity.namespace, "shop");
        // Another issuer's token, signed by its own key: refused (its key is
        // not trusted, before any claim is read).
        assert!(router.authenticate(&token(&b)).await.is_err());
        // The same issuer's key set trusting b's key too: b's `iss` is
        // still refused, by the verifier's own claim check.
        let keys = |s: &DevSigner| {
            let jwks: serde_json::Value = serde_json::from_str(&s.jwks_json()).unwrap();
            jwks["keys"].as_array().unwrap().clone()
        };
        let all = [keys(&a), keys(&b)].concat();
        let jwks = serde_json::json!({ "keys": all });
        let both = KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
        let mut router = IssuerRouter::new();
        router.add(
            "https://a",
            Arc::new(JwtVerifier::new(
                VerifierConfig::new("https://a", "coffer"),
                both,
            )),
        );
        assert_eq!(
            router.authenticate(&token(&b)).await.map(|_| ()),
            Err(AuthError::UnknownIssuer)
        );
    }

    #[tokio::test]
    async fn an_authenticator_that_does_not_check_iss_is_reached_only_by_its_issuer() {
        let b = DevSigner::generate("https://b").unwrap();
        let mut router = IssuerRouter::new();
        router.add("https://a", Arc::new(AcceptsAll));
        assert!(router.sole_issuer_checker().is_none());
        // b's token never reaches it: the router read `iss` first.
        assert_eq!(
            router.authenticate(&token(&b)).await.map(|_| ()),
            Err(AuthError::UnknownIssuer)
        );
    }
}
