//! Cold tokens: every request carries a fresh valid RS256 token the broker
//! has never seen, beside the same load with one cached token, and ring's
//! raw RS256 verify rate measured in this process with no load running.

use std::{
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use coffer_broker::auth::{
    Authenticator, BearerToken,
    cache::{CachingAuthenticator, DEFAULT_CACHE_ENTRIES},
    jwt::{JwtVerifier, KeySet, VerifierConfig},
    router::IssuerRouter,
};
use coffer_proto::v1::secret_broker_client::SecretBrokerClient;
use tonic::{Status, transport::Channel};

use crate::{
    fixture::AUDIENCE,
    grpc::{connect_target, timed_get},
    procfs::thread_cpu,
    stats::{Figures, figures, median, median_f64},
    table::Row,
    target::Target,
    tokens::{Alg, Minter, RS_KID, SHIPPED_ISSUER, shipped_jwks},
};

/// Both sides under `count` fresh RS256 tokens of the shipped shape, with
/// the ring figures beside them; `threads` is the server runtime's worker
/// count.
pub(crate) async fn compare(
    broker: &dyn Target,
    bare: &dyn Target,
    minter: &Minter,
    count: usize,
    run_for: Duration,
    threads: usize,
) -> anyhow::Result<Row> {
    // Twice the count: the storm loads need tokens of their own, fresh.
    let mut minted = minter.mint_many(Alg::Rs256, "cold", 2 * count + 1)?;
    // One token kept back: every request of the cached run carries it.
    let cached_token = minted.pop().context("no token minted")?;
    let storm_tokens = minted.split_off(count);
    let tokens = Arc::new(minted);
    let token_bytes = tokens[0].len();
    let run_for = run_for.min(Duration::from_secs(2));
    let ring = ring_rs256_rate(&tokens[0], run_for, 1)?;
    // As the server runs under the cold load: every server thread busy
    // at once (on this machine's two vCPUs, which may share a core).
    let ring_busy = ring_rs256_rate(&tokens[0], run_for, threads)?;
    let verifier = verifier_vs_ring(&tokens)?;
    // The same load with one token on each side too: the broker verifies
    // it once. Both servers still decode it from every request's header
    // (h2 never indexes an `authorization` value in its HPACK table), so
    // the difference of the two loads is what a fresh token adds.
    let one = cold_loads(broker, bare, &tokens, &cached_token, ONE_CONNECTION).await?;
    // A restart storm: many pods at once keep the server busy, so its
    // workers do not park between requests as they do at 1 x 16.
    let storm = cold_loads(broker, bare, &storm_tokens, &cached_token, STORM).await?;
    let [bare, bare_cached, cached, coffer] = one;
    Ok(Row::Cold {
        label: format!("shipped, RS256 {token_bytes}-byte tokens"),
        coffer,
        bare,
        cached,
        bare_cached,
        ring,
        ring_busy,
        threads,
        verifier,
        storm: Box::new(storm),
    })
}

/// The shape of a cold load: connections, requests in flight on each, and
/// the requests of one turn.
#[derive(Clone, Copy)]
struct Shape {
    connections: usize,
    in_flight: usize,
    turn: usize,
}

/// One connection, 16 in flight, turns of 500.
const ONE_CONNECTION: Shape = Shape {
    connections: 1,
    in_flight: 16,
    turn: 500,
};

/// Four connections, 64 in flight each, turns of 2,000: the server busy.
const STORM: Shape = Shape {
    connections: 4,
    in_flight: 64,
    turn: 2000,
};

/// ring's own RS256 verification rate on pre-decoded bytes: per second of
/// wall time, and per second of this thread's CPU time (steady under load).
fn ring_rs256_rate(token: &str, run_for: Duration, threads: usize) -> anyhow::Result<(f64, f64)> {
    let key = rsa_fixture_key()?;
    let (message, sig) = token.rsplit_once('.').context("not a JWT")?;
    let sig = URL_SAFE_NO_PAD.decode(sig)?;
    let start = Instant::now();
    let runs = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<(u64, Duration)> {
                    let cpu_before = thread_cpu();
                    let mut n = 0u64;
                    while start.elapsed() < run_for {
                        for _ in 0..16 {
                            key.verify(
                                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                                message.as_bytes(),
                                &sig,
                            )
                            .map_err(|_| anyhow::anyhow!("raw RSA verify failed"))?;
                        }
                        n += 16;
                    }
                    Ok((n, thread_cpu().saturating_sub(cpu_before)))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a ring thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let n: u64 = runs.iter().map(|(n, _)| n).sum();
    let cpu: f64 = runs.iter().map(|(_, c)| c.as_secs_f64()).sum();
    let wall = n as f64 / start.elapsed().as_secs_f64();
    Ok((wall, if cpu > 0.0 { n as f64 / cpu } else { 0.0 }))
}

/// The broker's own authenticator (the verified-token cache over the issuer
/// router and the JWT verifier, as the broker builds it) against ring's raw
/// RS256 verify, on the same fresh tokens, one thread, interleaved in chunks
/// so both see the same machine. The authenticator runs as a cold request runs it: the cache
/// misses, the token is checked whole (signature, then claims) and the cache
/// keeps it; ring gets each token's signature already decoded. Returns
/// (authenticator, ring) verifications per CPU second.
fn verifier_vs_ring(tokens: &[String]) -> anyhow::Result<(f64, f64)> {
    let keys = KeySet::from_jwks_json(shipped_jwks()?.as_bytes())?;
    let verifier = JwtVerifier::new(VerifierConfig::new(SHIPPED_ISSUER, AUDIENCE), keys);
    let mut router = IssuerRouter::new();
    router.add(SHIPPED_ISSUER, Arc::new(verifier));
    let authn = CachingAuthenticator::new(
        Arc::new(router),
        NonZeroUsize::new(DEFAULT_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
    );
    let key = rsa_fixture_key()?;
    let prepared = tokens
        .iter()
        .map(|t| {
            let (message, sig) = t.rsplit_once('.').context("not a JWT")?;
            Ok((BearerToken::new(t), message, URL_SAFE_NO_PAD.decode(sig)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A thread of its own: the caller is a runtime's, and its CPU time is
    // read alone.
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<(f64, f64)> {
                let rt = tokio::runtime::Builder::new_current_thread().build()?;
                let (mut authn_rates, mut ring_rates) = (Vec::new(), Vec::new());
                for chunk in prepared.chunks(200) {
                    let before = thread_cpu();
                    for (_, message, sig) in chunk {
                        key.verify(
                            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                            message.as_bytes(),
                            sig,
                        )
                        .map_err(|_| anyhow::anyhow!("raw RSA verify failed"))?;
                    }
                    let between = thread_cpu();
                    rt.block_on(async {
                        for (token, _, _) in chunk {
                            authn.authenticate(token).await.map_err(|e| {
                                anyhow::anyhow!("the verifier refused a fresh token: {e}")
                            })?;
                        }
                        Ok::<_, anyhow::Error>(())
                    })?;
                    let rate = |cpu: Duration| chunk.len() as f64 / cpu.as_secs_f64().max(1e-9);
                    ring_rates.push(rate(between.saturating_sub(before)));
                    authn_rates.push(rate(thread_cpu().saturating_sub(between)));
                }
                // The median chunk of each: a chunk that a neighbour's burst
                // slowed does not weigh on the figure.
                Ok((median_f64(authn_rates), median_f64(ring_rates)))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the verifier thread panicked"))?
    })
}

/// The RSA fixture key the cold tokens are signed with, for ring.
fn rsa_fixture_key() -> anyhow::Result<ring::signature::RsaPublicKeyComponents<Vec<u8>>> {
    let jwks: serde_json::Value = serde_json::from_str(&shipped_jwks()?)?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kid"] == RS_KID))
        .context("the RSA fixture key is missing")?;
    let b64 = |s: &serde_json::Value| URL_SAFE_NO_PAD.decode(s.as_str().unwrap_or_default());
    Ok(ring::signature::RsaPublicKeyComponents {
        n: b64(&jwk["n"])?,
        e: b64(&jwk["e"])?,
    })
}

/// The cold loads, in turns of `shape.turn` requests so that drift and
/// noise hit each alike: fresh tokens to the bare server, one token to the
/// bare server, one token to the broker, fresh tokens to the broker (the
/// order of the four rotating each turn).
async fn cold_loads(
    broker: &dyn Target,
    bare: &dyn Target,
    tokens: &[String],
    cached_token: &str,
    shape: Shape,
) -> anyhow::Result<[Figures; 4]> {
    // (the broker?, one token?)
    let loads = [(false, false), (false, true), (true, true), (true, false)];
    let targets = [bare, broker];
    let mut channels: [Vec<Channel>; 2] = Default::default();
    for (side, target) in targets.iter().enumerate() {
        for _ in 0..shape.connections {
            channels[side].push(connect_target(*target).await?);
        }
    }
    // Each load's latencies, time, and CPU per request of each turn.
    let mut totals: [(Vec<Duration>, Duration, Vec<Duration>); 4] = Default::default();
    for (turn, chunk) in tokens.chunks(shape.turn).enumerate() {
        let same = vec![cached_token.to_string(); chunk.len()];
        for i in 0..loads.len() {
            let load = (turn + i) % loads.len();
            let (is_broker, one_token) = loads[load];
            let server = targets[usize::from(is_broker)];
            let chunk = Arc::new(if one_token {
                same.clone()
            } else {
                chunk.to_vec()
            });
            let cpu_before = server.cpu()?;
            let start = Instant::now();
            let latencies =
                cold_load(&channels[usize::from(is_broker)], shape.in_flight, chunk).await?;
            let cpu = server.cpu()?.saturating_sub(cpu_before);
            let total = &mut totals[load];
            total.1 += start.elapsed();
            total
                .2
                .push(cpu / u32::try_from(latencies.len().max(1)).unwrap_or(u32::MAX));
            total.0.extend(latencies);
        }
    }
    // Server CPU per request: the median turn's, so that a turn a
    // neighbour's burst slowed does not weigh on the figure.
    Ok(totals.map(|(latencies, elapsed, cpu_per_req)| Figures {
        cpu_per_req: median(cpu_per_req),
        ..figures(latencies, elapsed, Duration::ZERO)
    }))
}

/// `tokens` once each, `in_flight` requests in flight on each of
/// `channels`.
async fn cold_load(
    channels: &[Channel],
    in_flight: usize,
    tokens: Arc<Vec<String>>,
) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for channel in channels.iter().cycle().take(channels.len() * in_flight) {
        let mut client = SecretBrokerClient::new(channel.clone());
        let (tokens, next) = (Arc::clone(&tokens), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(token) = tokens.get(next.fetch_add(1, Ordering::Relaxed)) {
                latencies.push(timed_get(&mut client, token).await?);
            }
            Ok::<_, Status>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(tokens.len());
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}
