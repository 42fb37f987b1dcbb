//! The Coffer gRPC contract (`coffer.v1`), generated from
//! `proto/coffer/v1/coffer.proto` at build time with a vendored `protoc`.
//!
//! Secret-bearing messages ([`v1::SecretValue`], [`v1::SecretMap`]) print
//! `[REDACTED]` in `Debug` and wipe their bytes when dropped, so a value that
//! passes through a request or response leaves nothing behind in freed memory.
//!
//! ```
//! use coffer_proto::v1::{secret_value::Kind, SecretValue};
//! let v = SecretValue { kind: Some(Kind::Data(b"hunter2".to_vec())) };
//! assert_eq!(format!("{v:?}"), "SecretValue([REDACTED])");
//! ```

/// Generated messages and services of package `coffer.v1`.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
    tonic::include_proto!("coffer.v1");

    /// The servers, generated apart: their `WatchSecrets` streams send
    /// [`crate::wire::WatchReply`] (see `build.rs`).
    mod servers {
        #![allow(missing_docs, unreachable_pub, clippy::all)] // generated code
        include!(concat!(env!("OUT_DIR"), "/servers/coffer.v1.rs"));
    }
    pub use servers::*;
}

pub mod value;
pub mod wire;

pub use value::{SecretBytes, SecretData};

/// The encoded file descriptor set, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coffer_v1_descriptor");

use std::fmt;
use zeroize::Zeroize;

impl fmt::Debug for v1::SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([REDACTED])")
    }
}

impl fmt::Debug for v1::secret_value::Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kind([REDACTED])")
    }
}

impl fmt::Debug for v1::SecretMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key names are not secret and help debugging; values are.
        let mut keys: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_struct("SecretMap")
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

impl Drop for v1::SecretValue {
    fn drop(&mut self) {
        if let Some(v1::secret_value::Kind::Data(bytes)) = &mut self.kind {
            bytes.zeroize();
        }
        // A `Map` wipes itself in its own Drop.
    }
}

impl Drop for v1::SecretMap {
    fn drop(&mut self) {
        for value in self.entries.values_mut() {
            value.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{SecretMap, SecretValue, secret_value::Kind};

    #[test]
    fn map_debug_shows_keys_not_values() {
        let map = SecretMap {
            entries: [("password".to_string(), b"canary-123".to_vec())].into(),
        };
        let printed = format!(
            "{:?}",
            SecretValue {
                kind: Some(Kind::Map(map.clone()))
            }
        );
        assert!(!printed.contains("canary"));
        let printed = format!("{map:?}");
        assert!(printed.contains("password"));
        assert!(!printed.contains("canary"));
    }

    #[test]
    fn descriptor_set_names_the_services() {
        let text = String::from_utf8_lossy(super::FILE_DESCRIPTOR_SET);
        assert!(text.contains("SecretBroker"));
        assert!(text.contains("SecretOperator"));
    }
}
