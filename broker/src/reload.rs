//! Hot reload of the policy file.
//!
//! The file is read every `interval` and its SHA-256 compared with the last
//! one seen (content, not mtime: a same-second edit or a ConfigMap symlink
//! swap is still noticed). A valid new policy replaces the old one through
//! [`Broker::set_policy`], which also re-checks open watches. An invalid or
//! unreadable file is refused with one log line per change, and the policy in
//! force stays.

use std::{path::PathBuf, time::Duration};

use ring::digest::{SHA256, digest};
use tokio::task::JoinHandle;

use crate::{policy::Policy, service::Broker};

/// The hex SHA-256 of a policy file's bytes, as the reload log names it.
pub fn fingerprint(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(digest(&SHA256, bytes).as_ref())
}

/// Watches `path`; `loaded` is the fingerprint of the policy already in
/// force. Ends when the broker shuts down.
pub fn spawn(broker: Broker, path: PathBuf, interval: Duration, loaded: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = broker.shutdown_token();
        let mut last = loaded;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let bytes = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    let seen = format!("unreadable: {}", error.kind());
                    if last != seen {
                        tracing::warn!(
                            path = %path.display(), %error,
                            "policy file unreadable; keeping the policy in force"
                        );
                        last = seen;
                    }
                    continue;
                }
            };
            let hash = fingerprint(&bytes);
            if hash == last {
                continue;
            }
            last.clone_from(&hash);
            let parsed = std::str::from_utf8(&bytes)
                .map_err(|_| "the file is not UTF-8".to_string())
                .and_then(|text| Policy::from_yaml(text).map_err(|e| e.to_string()))
                .and_then(|policy| {
                    policy
                        .check_issuers(&broker.issuers())
                        .map(|()| policy)
                        .map_err(|e| e.to_string())
                });
            match parsed {
                Ok(policy) => {
                    for warning in policy.warnings() {
                        tracing::warn!(%warning, "policy warning");
                    }
                    let rules = policy.rules().len();
                    broker.set_policy(policy);
                    crate::metrics::policy_reload(true);
                    tracing::info!(path = %path.display(), sha256 = %hash, rules, "policy reloaded");
                }
                Err(error) => {
                    crate::metrics::policy_reload(false);
                    tracing::error!(
                        path = %path.display(), sha256 = %hash, %error,
                        "policy reload refused; keeping the policy in force"
                    );
                }
            }
        }
    })
}
