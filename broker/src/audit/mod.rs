//! The audit trail: one JSON line per decision, hash-chained.
//!
//! Each record names who asked (identity, peer, request id), what for (RPC,
//! path, capability), the decision with its reason and rule, and for reads
//! the version served. It never holds a secret value or a token: the
//! [`AuditEvent`] type has no field that could carry one.
//!
//! Every record carries `prev`, the hex SHA-256 of the previous record's line
//! (without its newline), and `seq`, one more than the previous record's. The
//! first record of a chain has `seq` 0 and `prev` [`GENESIS`]. Editing or
//! deleting a record breaks the chain at the next record; [`verify`] finds
//! it. With an HMAC key ([`AuditOptions::hmac_key`]) the link is
//! HMAC-SHA256 keyed by it instead, and every record says
//! `"chain":"hmac-sha256"`: whoever can write the file but not read the key
//! cannot forge a chain that [`verify_keyed`] accepts.
//!
//! A file sink rotates by size (`FILE` → `FILE.000001`, ...), keeps at most
//! [`AuditOptions::keep`] rotated files, and the chain continues across
//! files; on restart it continues from the last record on disk. A write that
//! fails half-way (a full disk) is cut back to the last whole record, so the
//! chain goes on once space is freed.
//!
//! All file I/O happens on one writer thread fed by a channel; each caller
//! awaits its own record's outcome, so the async workers never block on the
//! disk and a request still fails closed when its record is not written.
//! Authentication failures are aggregated there: per (peer IP, RPC, reason)
//! the first failure of an interval is written at once and the rest are
//! counted into one record at the end of the interval (`count`).
//!
//! The rooms: `event` (what a record says), `chain` (how records link),
//! `writer` (the writer thread, aggregation, the chain head), `file` (the
//! rotating file sink), `verify` (checking a trail offline), `error`.

mod chain;
mod error;
mod event;
mod file;
#[cfg(test)]
mod fixtures;
mod verify;
mod writer;

pub use chain::{GENESIS, HMAC_CHAIN};
pub use error::AuditError;
pub use event::{AuditEvent, Outcome};
pub use verify::{Anchor, BrokenChain, ChainSummary, verify, verify_anchored, verify_keyed};
pub use writer::{
    AuditLog, AuditOptions, AuditSink, DEFAULT_AGGREGATE_INTERVAL, DEFAULT_HEAD_INTERVAL,
    DEFAULT_KEEP,
};
