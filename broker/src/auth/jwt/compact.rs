//! The compact form of a JWS, `header.payload.signature`: split and sized
//! before anything is decoded, so an oversized part costs nothing; and
//! [`peek`], the one unverified read of the claims, for routing only.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;

use super::claims::json_error;
use crate::auth::{AuthError, MAX_TOKEN_BYTES};

/// The largest decoded JOSE header accepted. Kubernetes headers are ~100 bytes.
pub const MAX_HEADER_BYTES: usize = 1024;
/// The largest decoded claims set accepted. Kubernetes claims are ~1 KiB.
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024;
/// The largest decoded signature accepted: an RSA-8192 signature.
pub const MAX_SIGNATURE_BYTES: usize = 1024;

/// The three parts of a compact JWS, size-checked but not decoded.
pub(crate) struct Parts<'a> {
    pub(crate) header: &'a str,
    pub(crate) payload: &'a str,
    pub(super) signature: &'a str,
}

/// The longest base64url text that decodes to at most `bytes` bytes.
pub(super) const fn encoded_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

/// Splits `token` into its three parts, each within its size limit.
pub(crate) fn split(token: &str) -> Result<Parts<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    if header.len() > encoded_len(MAX_HEADER_BYTES)
        || payload.len() > encoded_len(MAX_PAYLOAD_BYTES)
        || signature.len() > encoded_len(MAX_SIGNATURE_BYTES)
    {
        return Err(AuthError::TooLarge);
    }
    // An empty signature is left to the signature check, so that an
    // `alg: none` token is refused for its algorithm, the precise reason.
    if header.is_empty() || payload.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Parts {
        header,
        payload,
        signature,
    })
}

/// Decodes one base64url part.
pub(crate) fn decode_part(part: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)
}

/// Claims that are only peeked at, never trusted: see [`peek`].
#[derive(Debug, Default, Deserialize)]
pub struct PeekedClaims {
    /// The token's unverified `iss`.
    #[serde(default)]
    pub iss: Option<String>,
    /// The token's unverified `exp`.
    #[serde(default)]
    pub exp: Option<u64>,
}

/// Reads `iss` and `exp` WITHOUT verifying anything, with the same size
/// limits. Only for choosing which verifier runs and for bounding how long a
/// remote answer is cached; never for deciding who the caller is.
pub fn peek(token: &str) -> Result<PeekedClaims, AuthError> {
    let parts = split(token)?;
    let payload = decode_part(parts.payload)?;
    serde_json::from_slice(&payload).map_err(json_error)
}
