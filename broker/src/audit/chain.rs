//! How records are chained: each line carries `seq` and `prev`, the link
//! hash of the line before it (SHA-256, or HMAC-SHA256 under a key), so an
//! edit or a deletion breaks the chain at the next record.

use data_encoding::HEXLOWER;
use ring::{
    digest::{SHA256, digest},
    hmac,
};
use serde::Serialize;

use super::event::Entry;

/// The `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `chain` field of records linked by HMAC-SHA256.
pub const HMAC_CHAIN: &str = "hmac-sha256";

/// One line of the trail: the entry with its place in the chain.
#[derive(Serialize)]
pub(super) struct Record<'a> {
    pub(super) seq: u64,
    pub(super) time: String,
    #[serde(flatten)]
    pub(super) entry: &'a Entry,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) chain: Option<&'static str>,
    pub(super) prev: &'a str,
}

/// How the chain links one record to the next.
pub(super) enum Link {
    Sha256,
    Hmac(hmac::Key),
}

impl Link {
    pub(super) fn new(key: Option<&[u8]>) -> Self {
        key.map_or(Self::Sha256, |k| {
            Self::Hmac(hmac::Key::new(hmac::HMAC_SHA256, k))
        })
    }

    pub(super) fn hash(&self, line: &[u8]) -> String {
        match self {
            Self::Sha256 => HEXLOWER.encode(digest(&SHA256, line).as_ref()),
            Self::Hmac(key) => HEXLOWER.encode(hmac::sign(key, line).as_ref()),
        }
    }

    pub(super) fn name(&self) -> Option<&'static str> {
        match self {
            Self::Sha256 => None,
            Self::Hmac(_) => Some(HMAC_CHAIN),
        }
    }
}
