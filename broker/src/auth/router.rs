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
