//! Policy decisions per second with 10 and 1,000 rules, and their share of a
//! request's cost. Run: `cargo bench -p coffer-broker --bench policy`.
//!
//! Prints figures; asserts nothing about speed (no timed assertions).

use std::{
    error::Error,
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use coffer_broker::{
    audit::AuditLog,
    auth::{
        WorkloadIdentity,
        jwt::{JwtVerifier, KeySet, VerifierConfig},
        signer::DevSigner,
    },
    path::SecretPath,
    policy::{Capability, Policy},
    service::Broker,
    store::{SecretStore, SecretWrite, dev::DevStore},
};
use coffer_proto::{
    SecretBytes, SecretData,
    v1::{self, secret_broker_server::SecretBroker},
};

/// `rules` rules in the shape of a real cluster: one or two per namespace,
/// a few namespace globs, a templated rule and a deny rule for everyone.
fn policy(rules: usize) -> Result<Policy, Box<dyn Error>> {
    let mut yaml = String::from(
        "rules:\n  - name: own-folder\n    subjects: [{namespace: \"*\", serviceAccount: \"*\"}]\n    paths: [\"{namespace}/{serviceaccount}/*\"]\n    capabilities: [read, watch]\n  - name: no-private-keys\n    effect: deny\n    subjects: [{namespace: \"*\", serviceAccount: \"*\"}]\n    paths: [\"**/private-key\"]\n    capabilities: [read, watch]\n",
    );
    for i in 2..rules {
        let namespace = if i % 100 == 0 {
            format!("team-{i}-*")
        } else {
            format!("ns-{i}")
        };
        yaml.push_str(&format!(
            "  - name: rule-{i}\n    subjects: [{{namespace: \"{namespace}\", serviceAccount: \"app-*\"}}, {{namespace: \"{namespace}\", serviceAccount: worker}}]\n    paths: [\"ns-{i}/app/*\", \"shared/{i}/config\", \"ns-{i}/*-prod/settings\"]\n    capabilities: [read, watch]\n"
        ));
    }
    Ok(Policy::from_yaml(&yaml)?)
}

fn who(namespace: &str, service_account: &str) -> WorkloadIdentity {
    WorkloadIdentity {
        issuer: "https://issuer.bench".into(),
        namespace: namespace.into(),
        service_account: service_account.into(),
        service_account_uid: None,
        pod_name: Some(format!("{service_account}-0")),
        pod_uid: None,
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn decisions(rules: usize) -> Result<Duration, Box<dyn Error>> {
    let policy = policy(rules)?;
    let last = rules.saturating_sub(1).max(2);
    let cases = [
        (
            who(&format!("ns-{last}"), "app-web"),
            SecretPath::parse(&format!("ns-{last}/app/db#password"))?,
            true,
        ),
        (
            who("ns-5", "worker"),
            SecretPath::parse("ns-5/eu-prod/settings")?,
            rules > 5,
        ),
        (
            who("shop", "web"),
            SecretPath::parse("shop/web/session")?,
            true,
        ),
        (
            who("ns-5", "app-x"),
            SecretPath::parse("ns-5/app/private-key")?,
            false,
        ),
        (
            who("nowhere", "nobody"),
            SecretPath::parse("ns-7/app/db")?,
            false,
        ),
    ];
    for (w, p, allowed) in &cases {
        if policy.decide(w, p, Capability::Read).is_allowed() != *allowed {
            return Err(format!(
                "bench policy decides {p:?} for {} unexpectedly",
                w.namespace
            )
            .into());
        }
    }
    let rounds: u64 = 100_000;
    let start = Instant::now();
    for i in 0..rounds {
        let (w, p, _) = &cases[(i % cases.len() as u64) as usize];
        black_box(policy.decide(black_box(w), black_box(p), Capability::Read));
    }
    let elapsed = start.elapsed();
    let per = elapsed / rounds as u32;
    println!(
        "policy decide, {rules:>5} rules: {:>12.0} decisions/s ({per:?} each)",
        per_second(rounds, elapsed)
    );
    Ok(per)
}

fn main() -> Result<(), Box<dyn Error>> {
    let small = decisions(10)?;
    let large = decisions(1_000)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = Arc::new(DevStore::in_memory());
        store
            .put(
                &coffer_broker::path::SecretName::valid("ns-999/app/db"),
                SecretWrite::new(SecretData::Bytes(SecretBytes::from(&b"bench-value"[..])), ""),
            )
            .await?;
        let rounds: u64 = 100_000;
        let start = Instant::now();
        for _ in 0..rounds {
            black_box(store.get(black_box(&coffer_broker::path::SecretName::valid("ns-999/app/db")), None).await?);
        }
        let store_get = start.elapsed() / rounds as u32;
        println!("dev store get (in memory):   {store_get:?} each");

        let signer = DevSigner::generate("https://issuer.bench")?;
        let token = signer.mint(
            "coffer",
            "ns-999",
            "app-web",
            Some("app-web-0"),
            Duration::from_secs(3600),
        )?;
        let dir = tempfile::tempdir()?;
        for (label, audit) in [
            ("no audit", None),
            ("audit to a file", Some(AuditLog::file(&dir.path().join("audit.log"), 0)?)),
        ] {
            let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes())?;
            let authn = JwtVerifier::new(VerifierConfig::new("https://issuer.bench", "coffer"), keys);
            let mut broker = Broker::new(Arc::new(authn), policy(1_000)?, store.clone());
            if let Some(audit) = audit {
                broker = broker.with_audit(audit);
            }
            let rounds: u32 = 2_000;
            let start = Instant::now();
            for _ in 0..rounds {
                let mut request = tonic::Request::new(v1::GetSecretRequest {
                    path: "ns-999/app/db".into(),
                    version: None,
                });
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
                black_box(broker.get_secret(request).await?);
            }
            let request = start.elapsed() / rounds;
            println!(
                "GetSecret in process, 1,000 rules, {label}: {request:?} each; the decision is {:.2}% of it",
                100.0 * large.as_secs_f64() / request.as_secs_f64()
            );
        }
        println!(
            "decision vs dev store get: {:.0}% (10 rules), {:.0}% (1,000 rules)",
            100.0 * small.as_secs_f64() / store_get.as_secs_f64(),
            100.0 * large.as_secs_f64() / store_get.as_secs_f64()
        );
        Ok::<_, Box<dyn Error>>(())
    })
}
