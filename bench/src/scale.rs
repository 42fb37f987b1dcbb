//! Cost as work grows, measured in the bench's own process on the broker's
//! own types (the parts whose cost depends on the size of the work): a
//! policy decision and a policy reload against the number of rules, and a
//! verification-cache hit and the memory of each cached verification
//! against the number of cached identities. Each figure is set beside the
//! same figure at the smallest size of the same run.

use std::{hint::black_box, num::NonZeroUsize, sync::Arc, time::Duration};

use coffer_broker::{
    auth::{
        Authenticator, BearerToken, WorkloadIdentity,
        cache::{CACHE_SHARDS, CachingAuthenticator},
        jwt::{JwtVerifier, KeySet, VerifierConfig},
    },
    path::SecretPath,
    policy::{Capability, Policy},
};

use crate::{
    fixture::AUDIENCE,
    procfs::{rss_bytes, thread_cpu},
    stats::median,
    table::Row,
    tokens::{Alg, Minter, SHIPPED_ISSUER, shipped_jwks},
};

/// How the rules of a large policy are spread.
#[derive(Clone, Copy)]
enum Shape {
    /// Each rule for its own namespace (a team per namespace).
    Namespaces,
    /// Every rule for one namespace, each under its own top folder.
    Folders,
    /// Every rule for any namespace (`*`), each under its own top folder.
    AnyNamespace,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Self::Namespaces => "each rule its own namespace",
            Self::Folders => "one namespace, each rule its own top folder",
            Self::AnyNamespace => "namespace `*`, each rule its own top folder",
        }
    }

    /// A policy of `n` rules; the caller `team/app` reading `team-0/db`
    /// matches exactly one of them (the last, so a scan would see all).
    fn policy(self, n: usize) -> String {
        let mut yaml = String::from("rules:\n");
        for i in (0..n).rev() {
            let (ns, folder) = match self {
                Self::Namespaces => (format!("team-{i}"), "team-0".to_string()),
                Self::Folders => ("team".to_string(), format!("team-{i}")),
                Self::AnyNamespace => ("\"*\"".to_string(), format!("team-{i}")),
            };
            let ns = if matches!(self, Self::Namespaces) && i == 0 {
                "team".to_string()
            } else {
                ns
            };
            yaml.push_str(&format!(
                "  - name: rule-{i}\n    subjects: [{{namespace: {ns}, serviceAccount: app}}]\n    paths: [\"{folder}/*\"]\n    capabilities: [read, watch]\n"
            ));
        }
        yaml
    }
}

fn caller() -> WorkloadIdentity {
    WorkloadIdentity {
        issuer: SHIPPED_ISSUER.into(),
        namespace: "team".into(),
        service_account: "app".into(),
        service_account_uid: None,
        pod_name: Some("app-0".into()),
        pod_uid: None,
    }
}

/// Decision time and reload time for policies of each size in `sizes`
/// (ascending), for each shape.
pub(crate) fn policy_rows(sizes: &[usize], quick: bool) -> anyhow::Result<Vec<Row>> {
    let who = caller();
    let path = SecretPath::parse("team-0/db")?;
    let mut rows = Vec::new();
    for shape in [Shape::Namespaces, Shape::Folders, Shape::AnyNamespace] {
        let mut base: Option<(Duration, Duration)> = None;
        for &n in sizes {
            let yaml = shape.policy(n);
            let mut reloads = Vec::new();
            let mut policy = None;
            for _ in 0..if quick { 1 } else { 3 } {
                let start = thread_cpu();
                policy = Some(Policy::from_yaml(&yaml)?);
                reloads.push(thread_cpu().saturating_sub(start));
            }
            let policy = policy.ok_or_else(|| anyhow::anyhow!("no policy parsed"))?;
            anyhow::ensure!(
                policy.decide(&who, &path, Capability::Read).is_allowed(),
                "the scaling policy must allow its caller"
            );
            let per_batch = if quick { 200 } else { 20_000 };
            let mut decisions = Vec::new();
            for _ in 0..if quick { 3 } else { 9 } {
                let start = thread_cpu();
                for _ in 0..per_batch {
                    black_box(policy.decide(black_box(&who), black_box(&path), Capability::Read));
                }
                decisions.push(thread_cpu().saturating_sub(start) / per_batch);
            }
            let (decision, reload) = (median(decisions), median(reloads));
            let (base_decision, base_reload) = *base.get_or_insert((decision, reload));
            let size = sizes[0];
            rows.push(Row::Scale {
                label: format!("policy decision, {n} rules ({})", shape.name()),
                value: format!("{:.0} ns", decision.as_secs_f64() * 1e9),
                base: format!("{:.0} ns at {size}", base_decision.as_secs_f64() * 1e9),
                ratio: ratio(decision, base_decision),
            });
            rows.push(Row::Scale {
                label: format!(
                    "policy reload (parse and index), {n} rules ({})",
                    shape.name()
                ),
                value: format!("{:.2} ms", reload.as_secs_f64() * 1e3),
                base: format!("{:.2} ms at {size}", base_reload.as_secs_f64() * 1e3),
                ratio: ratio(reload, base_reload),
            });
        }
    }
    Ok(rows)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

/// Memory per cached verification and the cost of a hit, with 1 and with
/// each of `sizes` identities cached (the broker's cache over its JWT
/// verifier, ES256 tokens of the shipped shape, each for its own pod).
pub(crate) async fn identity_rows(sizes: &[usize], minter: &Minter) -> anyhow::Result<Vec<Row>> {
    let largest = sizes.iter().copied().max().unwrap_or(1);
    let tokens: Vec<BearerToken> = minter
        .mint_many(Alg::Es256, "app", largest)?
        .into_iter()
        .map(BearerToken::new)
        .collect();
    let mut rows = Vec::new();
    let mut base_hit = None;
    for &n in std::iter::once(&1).chain(sizes) {
        let keys = KeySet::from_jwks_json(shipped_jwks()?.as_bytes())?;
        let verifier = JwtVerifier::new(VerifierConfig::new(SHIPPED_ISSUER, AUDIENCE), keys);
        // A fifth more than n and 16 a shard of slack: the shards split the
        // bound evenly and the digests fall unevenly, yet every probe below
        // must be a hit (checked). The tables are sized at construction, as
        // the broker's are, before the memory is first read.
        let capacity = n + n / 5 + 16 * CACHE_SHARDS;
        let heap_before = crate::heap_bytes();
        let cache = CachingAuthenticator::new(
            Arc::new(verifier),
            NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
        );
        let before = rss_bytes();
        for token in &tokens[..n] {
            cache.authenticate_shared(token).await?;
        }
        let grown = rss_bytes().saturating_sub(before);
        let heap = crate::heap_bytes().saturating_sub(heap_before);
        anyhow::ensure!(
            cache.len() == n,
            "the cache lost entries: {} of {n}",
            cache.len()
        );
        // Hits spread over every cached identity, in a fixed scattered order.
        let probes = 20_000usize;
        let mut hits = Vec::new();
        for round in 0..5 {
            let start = thread_cpu();
            for i in 0..probes {
                let token = &tokens[(i * 7919 + round * 104_729) % n];
                black_box(cache.authenticate_shared(token).await?);
            }
            hits.push(thread_cpu().saturating_sub(start) / u32::try_from(probes)?);
        }
        let hit = median(hits);
        let base = *base_hit.get_or_insert(hit);
        rows.push(Row::Scale {
            label: format!("verification cache hit, {n} identities cached"),
            value: format!("{:.0} ns", hit.as_secs_f64() * 1e9),
            base: format!("{:.0} ns at 1", base.as_secs_f64() * 1e9),
            ratio: ratio(hit, base),
        });
        if n > 1 {
            rows.push(Row::Scale {
                label: format!(
                    "memory per cached verification, {n} identities (process RSS growth / n)"
                ),
                value: format!("{:.0} B", grown as f64 / n as f64),
                base: String::new(),
                ratio: f64::NAN,
            });
            rows.push(Row::Scale {
                label: format!(
                    "heap per cached verification, {n} identities (counting allocator: the cache built and filled, its tables sized for {capacity}, / n)"
                ),
                value: format!("{:.0} B", heap as f64 / n as f64),
                base: String::new(),
                ratio: f64::NAN,
            });
        }
        drop(cache);
    }
    Ok(rows)
}
