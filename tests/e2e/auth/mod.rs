//! Who may call: tokens good and bad, issuers, JWKS, OIDC discovery, TokenReview, `cofferctl auth`.

mod access;
mod bad_tokens;
mod cli;
mod issuers;
mod jwks_keys;
mod oidc_credentials;
mod oidc_jwks_media_type;
mod oidc_rotation;
mod static_keys;
mod token_lifetime;
mod tokenreview;
mod tokenreview_refresh;
