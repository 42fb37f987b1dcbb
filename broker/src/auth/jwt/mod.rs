//! Kubernetes projected service-account tokens: verified against a key set,
//! and (for the dev command and tests) minted.
//!
//! - `verify`: [`JwtVerifier`], the one verification entry, and the fixed
//!   order of its steps (sizes, header, signature, claims).
//! - `compact`: the `header.payload.signature` form, split and sized before
//!   decoding, and the unverified [`peek`] used only for routing.
//! - `claims`: what the claims must say ([`VerifierConfig`]) and the checks.
//! - `keys`: the [`KeySet`] of an issuer, where it comes from
//!   ([`KeySource`]) and the [`KeyBinding`] of a cached answer.
//! - `mint`: claims shaped as the kubelet's, signed with a key the caller
//!   holds.
//!
//! # Minting and the `testing` feature
//!
//! The shipped binary mints tokens at run time: `coffer-broker dev` signs
//! the demo's workload and operator tokens with a key of its own through
//! [`crate::auth::signer::DevSigner`]. So `DevSigner` (generate a key, its
//! JWKS, mint a kubelet-shaped token) stays in every build, and the minting
//! code behind it is always compiled. What only tests need is the rest of
//! the minting surface: `ProjectedClaims` with public fields to tamper with,
//! and `sign` with any key and `kid` (fixture keys, foreign keys). Those are
//! public only with the `testing` feature, which the tests crate, the
//! benches and the load generator enable; a plain `coffer-broker` build
//! offers no way to sign arbitrary claims.

mod claims;
mod compact;
mod keys;
// Compiled always (the dev command signs through `DevSigner`), exported only
// with `testing`: without it, its `pub` items are deliberately unreachable.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
mod mint;
mod verify;

pub use claims::{Audience, DEFAULT_LEEWAY, VerifierConfig};
pub(crate) use claims::{is_name, unix_now};
pub use compact::{MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES, MAX_SIGNATURE_BYTES, PeekedClaims, peek};
pub(crate) use compact::{decode_part, split};
pub use keys::{FixedKeys, KeyBinding, KeyFingerprint, KeySet, KeySetError, KeySource};
#[cfg(not(feature = "testing"))]
pub(crate) use mint::ProjectedClaims;
#[cfg(feature = "testing")]
pub use mint::{KubernetesClaims, ObjectRef, ProjectedClaims};
pub use verify::{ALLOWED_ALGORITHMS, JwtVerifier};
