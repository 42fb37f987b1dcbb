//! Load with distinct pod identities, for the reliability scenarios
//! (tests/e2e/reliability) and `scripts/chaos`: a [`Fleet`] of simulated
//! pods, each with its own projected service-account token (namespace,
//! service account, pod name and uid, as the API server issues them),
//! grouped in deployments that each read their own secret; their watches
//! multiplexed over a bounded number of connections ([`watchers`]); a
//! steady writer and Get load ([`traffic`]); the [`ledger`] that checks
//! every receiver against every acknowledged write; a sampler of a
//! process's memory and descriptors ([`sampler`]); and two broker replicas
//! on one Vault ([`pair`]).
//!
//! Nothing here asserts a time: the scenarios print their figures and
//! assert what is correct.

pub mod ledger;
pub mod pair;
pub mod sampler;
pub mod traffic;
pub mod watchers;

use std::time::Duration;

use coffer_broker::auth::jwt::ProjectedClaims;
use jsonwebtoken::{Algorithm, EncodingKey};

pub use ledger::{Ledger, ReceiverLog, Verdict};
pub use pair::BrokerPair;
pub use sampler::{Sampler, slope_per_minute};
pub use traffic::{GetLoad, Writer, seed};
pub use watchers::{Mode, WatchLoad};

use crate::{
    policy::{policy_with, rule},
    process::fixture,
    tokens::{AUDIENCE, ISSUER},
};

/// The namespace every simulated pod runs in.
pub const NAMESPACE: &str = "shop";
/// The secret every pod may read and watch beside its own (the scenarios
/// rotate it).
pub const SHARED: &str = "shop/shared";

/// The service account every pod of [`Fleet::one_account`] shares.
pub const SHARED_ACCOUNT: &str = "app";

/// One simulated pod: deployment `app-NNNN`'s pod, bound to its own token.
#[derive(Clone)]
pub struct Pod {
    /// `app-NNNN`: the deployment and its service account.
    pub service_account: String,
    /// `app-NNNN-<replicaset hash>-<suffix>`, as a Deployment names it.
    pub name: String,
    /// The deployment's own secret, `shop/app-NNNN`.
    pub secret: String,
    /// Its projected token (audience `coffer`, bound to the pod).
    pub token: String,
}

/// Pods in deployments: deployment `k` is service account `app-k` in
/// [`NAMESPACE`] and reads secret `shop/app-k`.
pub struct Fleet {
    pub pods: Vec<Pod>,
    pub deployments: usize,
}

impl Fleet {
    /// `deployments` deployments of `replicas` pods each, every pod with its
    /// own token (ES256 from the test issuer's EC key, valid for `ttl`).
    pub fn deployments(deployments: usize, replicas: usize, ttl: Duration) -> Self {
        let pem = std::fs::read(fixture("ec-a.pem")).unwrap();
        let key = EncodingKey::from_ec_pem(&pem).unwrap();
        let mut pods = Vec::with_capacity(deployments * replicas);
        for d in 0..deployments {
            let service_account = format!("app-{d:04}");
            // A ReplicaSet's pod-template hash, then a 5-character suffix.
            let hash = format!("{:x}", 0x5d9c_7b8f_u32.wrapping_mul(d as u32 + 1));
            for r in 0..replicas {
                let name = format!("{service_account}-{hash}-{}", suffix(r));
                let claims = ProjectedClaims::projected(
                    ISSUER,
                    AUDIENCE,
                    NAMESPACE,
                    &service_account,
                    Some(&name),
                    ttl,
                );
                let token = claims.sign(Algorithm::ES256, "ec-a", &key).unwrap();
                pods.push(Pod {
                    service_account: service_account.clone(),
                    name,
                    secret: format!("{NAMESPACE}/{service_account}"),
                    token,
                });
            }
        }
        Self { pods, deployments }
    }

    /// `secrets * replicas` pods of ONE service account, `shop/app` (many
    /// deployments sharing an account, as `default` often is): pod `i`
    /// reads secret `shop/app-<i / replicas>`, so each secret has
    /// `replicas` readers and the one identity reads them all.
    pub fn one_account(secrets: usize, replicas: usize, ttl: Duration) -> Self {
        let mut fleet = Self::deployments(secrets, replicas, ttl);
        let pem = std::fs::read(fixture("ec-a.pem")).unwrap();
        let key = EncodingKey::from_ec_pem(&pem).unwrap();
        for pod in &mut fleet.pods {
            let claims = ProjectedClaims::projected(
                ISSUER,
                AUDIENCE,
                NAMESPACE,
                SHARED_ACCOUNT,
                Some(&pod.name),
                ttl,
            );
            pod.token = claims.sign(Algorithm::ES256, "ec-a", &key).unwrap();
            pod.service_account = SHARED_ACCOUNT.to_string();
        }
        fleet
    }

    /// The deployments' secrets, `shop/app-0000` onwards.
    pub fn secrets(&self) -> Vec<String> {
        (0..self.deployments)
            .map(|d| format!("{NAMESPACE}/app-{d:04}"))
            .collect()
    }

    /// The shared test policy plus: every `app-*` account of [`NAMESPACE`]
    /// reads and watches its own secret and [`SHARED`], nothing else; the
    /// account [`SHARED_ACCOUNT`] reads every `app-*` secret.
    pub fn policy() -> String {
        policy_with(&[
            rule(
                "pods-read-their-own",
                &format!("{NAMESPACE}/app-*"),
                &["{namespace}/{serviceaccount}", SHARED],
                &["read", "watch"],
            ),
            rule(
                "the-shared-account-reads-every-app",
                &format!("{NAMESPACE}/{SHARED_ACCOUNT}"),
                &["shop/app-*", SHARED],
                &["read", "watch"],
            ),
        ])
    }
}

/// Whether a scenario runs its full form (`COFFER_CHAOS_FULL=1`, which
/// `scripts/chaos` sets) rather than the short one CI runs.
pub fn full_form() -> bool {
    std::env::var_os("COFFER_CHAOS_FULL").is_some_and(|v| v == "1")
}

/// Prints a scenario's figures as one line, `reliability: <scenario>:
/// key=value ...`, the line `scripts/chaos` collects.
pub fn report(scenario: &str, figures: &[(&str, String)]) {
    let fields: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("reliability: {scenario}: {}", fields.join(" "));
}

/// Vault requests in `audit` (file audit device lines, e.g. an OpenBao
/// node's output) with `operation` on a path starting with `prefix` (e.g.
/// `read`, `secret/data/shop/app-`).
pub fn audited(audit: &str, operation: &str, prefix: &str) -> usize {
    let op = format!("\"operation\":\"{operation}\"");
    let path = format!("\"path\":\"{prefix}");
    audit
        .lines()
        .filter(|l| l.starts_with("{\"") && l.contains("\"type\":\"request\""))
        .filter(|l| l.contains(&op) && l.contains(&path))
        .count()
}

/// The lines of `output` (a process's log, colours stripped) logged at
/// WARN or ERROR.
pub fn warnings_and_errors(output: &str) -> Vec<String> {
    crate::process::strip_ansi(output)
        .lines()
        .filter(|l| {
            l.contains(" WARN ")
                || l.contains(" ERROR ")
                || l.contains("\"level\":\"WARN")
                || l.contains("\"level\":\"ERROR")
        })
        .map(str::to_string)
        .collect()
}

/// `lines` (log lines) grouped by message, without their timestamps,
/// most frequent first, with their counts.
pub fn by_message(lines: &[String]) -> Vec<(String, usize)> {
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in lines {
        // `2026-01-01T00:00:00.000000Z  WARN target: message fields`
        let message = line
            .split_once(' ')
            .map_or(line.as_str(), |(_, rest)| rest.trim_start());
        let message: String = message.chars().take(300).collect();
        *counts.entry(message).or_default() += 1;
    }
    let mut sorted: Vec<(String, usize)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted
}

/// A pod-name suffix of 5 characters from the API server's alphabet
/// (consonants and digits, no vowels), distinct for each `n`.
fn suffix(mut n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = [b'b'; 5];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[n % ALPHABET.len()];
        n /= ALPHABET.len();
    }
    String::from_utf8(out.to_vec()).unwrap()
}

/// The least-squares slope of `(x, y)` points, `None` under two points.
pub fn least_squares(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pod_has_its_own_name_and_token() {
        let fleet = Fleet::deployments(3, 30, Duration::from_secs(60));
        let names: std::collections::HashSet<_> = fleet.pods.iter().map(|p| &p.name).collect();
        let tokens: std::collections::HashSet<_> = fleet.pods.iter().map(|p| &p.token).collect();
        assert_eq!((names.len(), tokens.len()), (90, 90));
        assert_eq!(fleet.pods[31].secret, "shop/app-0001");
        assert_eq!(fleet.secrets().len(), 3);
    }

    #[test]
    fn the_slope_of_a_line_is_its_gradient() {
        let points: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
        assert!((least_squares(&points).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(least_squares(&points[..1]), None);
    }
}
