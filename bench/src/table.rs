//! The bench's result: one markdown table, the broker against the bare
//! server, row by row.

use std::time::Duration;

use crate::stats::{Figures, WatchFigures};

/// One result of the bench: a line group of the table.
pub(crate) enum Row {
    Get {
        label: String,
        coffer: Figures,
        bare: Figures,
    },
    Cold {
        /// Which broker and tokens.
        label: String,
        coffer: Figures,
        bare: Figures,
        /// The broker under the same load with one (cached) token.
        cached: Figures,
        /// The bare server likewise.
        bare_cached: Figures,
        /// ring on one thread: verifications per wall second and per CPU
        /// second.
        ring: (f64, f64),
        /// ring on `threads` threads at once, likewise (all threads).
        ring_busy: (f64, f64),
        threads: usize,
        /// The broker's own verifier and ring's raw verify on the same
        /// fresh tokens, interleaved on one thread: per CPU second.
        verifier: (f64, f64),
        /// The same four loads at 4 x 64 (a restart storm: the server
        /// busy): bare, bare with one token, broker with one token, broker.
        storm: Box<[Figures; 4]>,
    },
    Watch {
        label: String,
        coffer: WatchFigures,
        bare: WatchFigures,
        /// Both sides' streams were open at once, their rotations
        /// alternating.
        together: bool,
    },
    Skipped(String),
    /// A figure against the same figure at the smallest size of the run.
    Scale {
        label: String,
        value: String,
        base: String,
        /// NaN: no ratio (the figure has no smaller size).
        ratio: f64,
    },
    /// A line of its own (what the rows below measure).
    Note(String),
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// Prints the table of `rows`.
pub(crate) fn print_table(rows: &[Row]) {
    println!("| workload | coffer | bare tonic | ratio |");
    println!("|---|---|---|---|");
    for row in rows {
        match row {
            Row::Get {
                label,
                coffer,
                bare,
            } => {
                println!(
                    "| GetSecret {label}: req/s | {:.0} | {:.0} | {} |",
                    coffer.rate,
                    bare.rate,
                    ratio(coffer.rate, bare.rate)
                );
                for (name, c, b) in [
                    ("p50", coffer.p50, bare.p50),
                    ("p99", coffer.p99, bare.p99),
                    ("p999", coffer.p999, bare.p999),
                ] {
                    println!(
                        "| GetSecret {label}: {name} | {} | {} | {} |",
                        ms(c),
                        ms(b),
                        ratio(c.as_secs_f64(), b.as_secs_f64())
                    );
                }
                println!(
                    "| GetSecret {label}: server CPU/req | {} | {} | {} |",
                    us(coffer.cpu_per_req),
                    us(bare.cpu_per_req),
                    ratio(
                        coffer.cpu_per_req.as_secs_f64(),
                        bare.cpu_per_req.as_secs_f64()
                    )
                );
            }
            Row::Cold {
                label,
                coffer,
                bare,
                cached,
                bare_cached,
                ring,
                ring_busy,
                threads,
                verifier,
                storm,
            } => {
                println!("| cold tokens: {label} | | | |");
                println!(
                    "| cold token 1 x 16: req/s | {:.0} | {:.0} | {} |",
                    coffer.rate,
                    bare.rate,
                    ratio(coffer.rate, bare.rate)
                );
                println!(
                    "| cold token: server CPU/req | {} | {} | {} |",
                    us(coffer.cpu_per_req),
                    us(bare.cpu_per_req),
                    ratio(
                        coffer.cpu_per_req.as_secs_f64(),
                        bare.cpu_per_req.as_secs_f64()
                    )
                );
                let (ring_wall, ring_cpu) = *ring;
                println!(
                    "| cold token req/s vs ring RS256 verify/s (one thread, wall) | {:.0} | ring {:.0} | {} |",
                    coffer.rate,
                    ring_wall,
                    ratio(coffer.rate, ring_wall)
                );
                // Per CPU second: requests per second of the server's CPU
                // against ring's verifications per second of its own CPU.
                let cold_cpu = 1.0 / coffer.cpu_per_req.as_secs_f64().max(1e-9);
                let verify_cpu = 1.0
                    / coffer
                        .cpu_per_req
                        .saturating_sub(bare.cpu_per_req)
                        .as_secs_f64()
                        .max(1e-9);
                println!(
                    "| cold token req per server CPU-s vs ring RS256 verify per CPU-s | {cold_cpu:.0} | ring {ring_cpu:.0} | {} |",
                    ratio(cold_cpu, ring_cpu)
                );
                println!(
                    "| cold token: verification alone (CPU/req above bare) per CPU-s | {verify_cpu:.0} | ring {ring_cpu:.0} | {} |",
                    ratio(verify_cpu, ring_cpu)
                );
                // What a fresh token adds to a request on the broker, less
                // what it adds on the bare server (a new header to decode):
                // the verification as a request pays it (signature, claims,
                // cache insertion), without the rest of the request.
                let added = |cold: &Figures, cached: &Figures| {
                    cold.cpu_per_req.saturating_sub(cached.cpu_per_req)
                };
                let verification = added(coffer, cached).saturating_sub(added(bare, bare_cached));
                let in_request = 1.0 / verification.as_secs_f64().max(1e-9);
                // Against ring's rate on the same tokens, interleaved with
                // the broker's verifier (below): the steadiest ring figure
                // of the run, and the higher.
                let (authn, ring_same) = *verifier;
                println!(
                    "| cold token: verification in the request (CPU/req a fresh token adds on the broker, {} over {}, less what it adds on bare, {} over {}) per CPU-s, vs ring on the same tokens | {in_request:.0} | ring {ring_same:.0} | {} |",
                    us(coffer.cpu_per_req),
                    us(cached.cpu_per_req),
                    us(bare.cpu_per_req),
                    us(bare_cached.cpu_per_req),
                    ratio(in_request, ring_same)
                );
                let [storm_bare, storm_bare_cached, storm_cached, storm_coffer] = &**storm;
                let storm_verification = added(storm_coffer, storm_cached)
                    .saturating_sub(added(storm_bare, storm_bare_cached));
                let storm_in_request = 1.0 / storm_verification.as_secs_f64().max(1e-9);
                println!(
                    "| cold token 4 x 64 (a restart storm, the server busy): req/s | {:.0} | {:.0} | {} |",
                    storm_coffer.rate,
                    storm_bare.rate,
                    ratio(storm_coffer.rate, storm_bare.rate)
                );
                println!(
                    "| cold token 4 x 64: verification in the request (CPU/req a fresh token adds on the broker, {} over {}, less what it adds on bare, {} over {}) per CPU-s, vs ring on the same tokens | {storm_in_request:.0} | ring {ring_same:.0} | {} |",
                    us(storm_coffer.cpu_per_req),
                    us(storm_cached.cpu_per_req),
                    us(storm_bare.cpu_per_req),
                    us(storm_bare_cached.cpu_per_req),
                    ratio(storm_in_request, ring_same)
                );
                // The broker's authenticator alone, in this process: what a
                // cold request verifies, without the gRPC work around it.
                println!(
                    "| broker token verifier vs ring RS256 verify, same fresh tokens, interleaved (per CPU-s) | {authn:.0} | ring {ring_same:.0} | {} |",
                    ratio(authn, ring_same)
                );
                // The server's threads all run at once under this load; on
                // vCPUs that share a core each runs slower than one alone.
                let (busy_wall, busy_cpu) = *ring_busy;
                println!(
                    "| ring RS256 verify per CPU-s: {threads} threads at once vs one alone | {busy_cpu:.0} | {ring_cpu:.0} | {} |",
                    ratio(busy_cpu, ring_cpu)
                );
                println!(
                    "| cold token req/s vs ring RS256 verify/s ({threads} threads, wall) | {:.0} | ring {busy_wall:.0} | {} |",
                    coffer.rate,
                    ratio(coffer.rate, busy_wall)
                );
                println!(
                    "| cold token: verification alone per CPU-s vs ring with {threads} threads busy | {verify_cpu:.0} | ring {busy_cpu:.0} | {} |",
                    ratio(verify_cpu, busy_cpu)
                );
            }
            Row::Watch {
                label,
                coffer,
                bare,
                together,
            } => {
                if !together {
                    println!(
                        "| rotation to {label}: too few descriptors for both sides at once: the sides took turns (broker, bare, bare, broker) | | | |"
                    );
                }
                for (name, c, b) in [
                    ("first", coffer.first, bare.first),
                    ("median", coffer.median, bare.median),
                    ("p99", coffer.p99, bare.p99),
                    ("last", coffer.last, bare.last),
                ] {
                    println!(
                        "| rotation to {label}: {name} receiver | {} | {} | {} |",
                        ms(c),
                        ms(b),
                        ratio(c.as_secs_f64(), b.as_secs_f64())
                    );
                }
                println!(
                    "| rotation to {label}: server CPU per update | {} | {} | {} |",
                    us(coffer.cpu_per_update),
                    us(bare.cpu_per_update),
                    ratio(
                        coffer.cpu_per_update.as_secs_f64(),
                        bare.cpu_per_update.as_secs_f64()
                    )
                );
                println!(
                    "| rotation to {label}: server RSS per stream (a fresh server process per side) | {:.1} KiB | {:.1} KiB | {} |",
                    coffer.rss_per_stream / 1024.0,
                    bare.rss_per_stream / 1024.0,
                    ratio(coffer.rss_per_stream, bare.rss_per_stream)
                );
            }
            Row::Skipped(why) => println!("| skipped: {why} | | | |"),
            Row::Note(what) => println!("| {what} | | | |"),
            Row::Scale {
                label,
                value,
                base,
                ratio,
            } => {
                let ratio = if ratio.is_nan() {
                    String::new()
                } else {
                    format!("{ratio:.2}x")
                };
                println!("| {label} | {value} | {base} | {ratio} |");
            }
        }
    }
}
