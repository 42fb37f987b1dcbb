//! What the audit tests share: an event, and a trail read back from disk.

use std::path::Path;

use super::{AuditEvent, BrokenChain, ChainSummary, Outcome, file::rotated_files, verify_keyed};
use crate::policy::Capability;

pub(super) fn event(rid: &str) -> AuditEvent<'_> {
    AuditEvent {
        request_id: rid,
        peer: Some("127.0.0.1:1"),
        identity: None,
        rpc: "GetSecret",
        path: Some("app/db"),
        capability: Some(Capability::Read),
        version: Some(3),
        decision: Outcome::Allow,
        reason: "allowed",
        rule: Some("r"),
        lease_id: None,
        actor: None,
        owner: None,
    }
}

pub(super) fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The rotated files then the live one, as `cofferctl audit verify` takes them.
pub(super) fn trail(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = rotated_files(path)
        .unwrap()
        .into_iter()
        .map(|(_, p)| (p.display().to_string(), read(&p)))
        .collect();
    files.push((path.display().to_string(), read(path)));
    files
}

pub(super) fn verify_trail(
    files: &[(String, Vec<u8>)],
    key: Option<&[u8]>,
) -> Result<ChainSummary, BrokenChain> {
    verify_keyed(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())), key)
}
