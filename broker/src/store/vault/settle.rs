//! Reads that never go back behind what the store has seen.
//!
//! A Vault or OpenBao standby may answer reads from its own raft copy,
//! which can lag the active node: right after a version was written (by
//! the broker, or seen by a poll of another node) it may still answer the
//! version before, or "not found" for the new one. The index headers
//! ([`super::consistency`]) make a standby that knows them forward such
//! reads; this is the store's own guard, for every server: an answer older
//! than a version the store has seen, or "not found" for a version it knows
//! exists, is a node that has not caught up yet. It is asked again, with a
//! short backoff, for at most [`SETTLE_FOR`]; such an answer is never taken
//! as the latest value, pushed to watchers, or remembered as missing.

use std::time::Duration;

use coffer_runtime::Backoff;
use tokio::time::Instant;

use super::{backend::Backend, kv, poll::Versions};
use crate::store::{StoreError, StoredSecret};

/// How long a read waits for a lagging node to catch up. Raft followers
/// lag by milliseconds; an election makes reads fail (unavailable), not
/// lag.
pub(super) const SETTLE_FOR: Duration = Duration::from_secs(10);

/// What an answer to a read of `version` (`None`: the latest) means, when
/// the store has seen version `known` of the path (0: none).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// Take it.
    Current,
    /// From a node behind what the store has seen: ask again.
    Behind,
}

/// Whether an answer is behind what the store has seen.
pub(super) fn judge(
    result: &Result<StoredSecret, StoreError>,
    version: Option<u64>,
    known: u64,
) -> Answer {
    let behind = match (result, version) {
        // The latest, older than a version already seen.
        (Ok(secret), None) => secret.version < known,
        // The path "does not exist", though a version of it was seen.
        (Err(StoreError::NotFound), None) => known > 0,
        // A version "not found" that the store saw exist.
        (Err(StoreError::NotFound | StoreError::VersionNotFound(_)), Some(v)) => v <= known,
        _ => false,
    };
    if behind {
        Answer::Behind
    } else {
        Answer::Current
    }
}

/// Reads `version` of `path` (`None`: the latest), asking again while
/// the answer is behind the newest version `versions` has seen, for at
/// most [`SETTLE_FOR`].
///
/// Past that bound: a version seen to exist is answered unavailable, never
/// "not found" (a watch tries again); a latest "not found" is returned as
/// Vault says it (not remembered as missing: see [`known_to_exist`]); a
/// latest value older than the one seen is taken only then, with a warning,
/// and the store's books are set back to it: the path was deleted and
/// written anew, so its versions restarted.
pub(super) async fn read(
    vault: &Backend,
    versions: &Versions,
    path: &str,
    version: Option<u64>,
) -> Result<StoredSecret, StoreError> {
    let deadline = Instant::now() + SETTLE_FOR;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut retries: u32 = 0;
    loop {
        let known = versions.newest(path);
        let result = kv::read(vault, path, version).await;
        if judge(&result, version, known) == Answer::Current || trimmed(vault, path, &result).await
        {
            if retries > 0 {
                tracing::debug!(path, retries, "Vault caught up with a version seen before");
            }
            return result;
        }
        let pause = backoff.next_delay();
        if Instant::now() + pause > deadline {
            // A version seen to exist is never answered "not found": the
            // caller (a watch) may try again later.
            if let Some(v) = version {
                return Err(StoreError::Unavailable(format!(
                    "Vault has not caught up with version {v} of {path} yet"
                )));
            }
            if let (Ok(secret), None) = (&result, version) {
                tracing::warn!(
                    path,
                    answered = secret.version,
                    seen = known,
                    "Vault still answers an older version than one seen before; taking it (was the path deleted and written anew?)"
                );
                versions.restart(path, secret.version);
            }
            return result;
        }
        retries += 1;
        crate::metrics::backend_behind();
        tokio::select! {
            () = vault.shutdown.cancelled() => {
                return Err(StoreError::Unavailable("shutting down".into()));
            }
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Whether a "version not found" comes from a node that has reached that
/// version, so the version is gone for good (KV v2 keeps `max_versions`;
/// older ones are trimmed), not yet to come: a node behind has an older
/// current version.
async fn trimmed(vault: &Backend, path: &str, result: &Result<StoredSecret, StoreError>) -> bool {
    let Err(StoreError::VersionNotFound(v)) = result else {
        return false;
    };
    matches!(kv::metadata(vault, path).await, Ok(Some(meta)) if meta.current_version >= *v)
}

/// Whether a "not found" for `version` (`None`: the latest) of a path
/// whose newest seen version is `known` contradicts what the store has
/// seen: then it is not remembered as missing.
pub(super) fn known_to_exist(version: Option<u64>, known: u64) -> bool {
    match version {
        None => known > 0,
        Some(v) => v <= known,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::UNIX_EPOCH};

    use coffer_proto::{SecretBytes, SecretData};

    use super::*;

    fn secret(version: u64) -> Result<StoredSecret, StoreError> {
        Ok(StoredSecret {
            version,
            data: SecretData::Bytes(SecretBytes::new(b"x".to_vec())),
            content_type: String::new(),
            created_at: UNIX_EPOCH,
            ttl_hint: None,
            labels: BTreeMap::new(),
        })
    }

    #[test]
    fn an_answer_older_than_a_version_seen_is_behind() {
        assert_eq!(judge(&secret(4), None, 5), Answer::Behind);
        assert_eq!(judge(&secret(5), None, 5), Answer::Current);
        assert_eq!(judge(&secret(6), None, 5), Answer::Current);
        assert_eq!(judge(&secret(1), None, 0), Answer::Current);
    }

    #[test]
    fn not_found_for_a_version_seen_is_behind_and_otherwise_taken() {
        let missing = Err(StoreError::VersionNotFound(5));
        assert_eq!(judge(&missing, Some(5), 5), Answer::Behind);
        assert_eq!(judge(&missing, Some(5), 4), Answer::Current);
        assert_eq!(
            judge(&Err(StoreError::NotFound), Some(3), 5),
            Answer::Behind
        );
        assert_eq!(judge(&Err(StoreError::NotFound), None, 2), Answer::Behind);
        assert_eq!(judge(&Err(StoreError::NotFound), None, 0), Answer::Current);
        // Deleted is an answer, not a lag; so is unavailable (retried
        // elsewhere, with the stale cache as the fallback).
        assert_eq!(
            judge(&Err(StoreError::VersionDeleted(5)), Some(5), 5),
            Answer::Current
        );
        let down = Err(StoreError::Unavailable("x".into()));
        assert_eq!(judge(&down, Some(5), 5), Answer::Current);
        assert!(known_to_exist(Some(5), 5));
        assert!(!known_to_exist(Some(6), 5));
        assert!(known_to_exist(None, 1));
        assert!(!known_to_exist(None, 0));
    }
}
