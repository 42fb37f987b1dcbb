//! The rows of the shipped broker: for each configuration, a fresh
//! `coffer-broker serve` and a fresh bare server process (TLS when the
//! broker has it), the Get loads with a token of real size, and for the
//! plain RS256 configuration the cold tokens too.

use std::path::Path;

use anyhow::Context;
use coffer_proto::v1::{self, secret_broker_client::SecretBrokerClient};

use super::{cold, get};
use crate::{
    bare_process::BareProcess,
    fixture::PATH,
    grpc::{authed, connect_target},
    shipped::{Flags, Shipped},
    table::Row,
    target::Target,
    tokens::{Alg, Minter},
};

/// One shipped configuration: the broker's flags and the token's signature.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) name: &'static str,
    pub(crate) flags: Flags,
    pub(crate) alg: Alg,
}

/// The configurations `--shipped` names.
pub(crate) const CONFIGS: [Config; 4] = [
    Config {
        name: "rs256",
        flags: Flags {
            tls: false,
            audit: false,
        },
        alg: Alg::Rs256,
    },
    Config {
        name: "es256",
        flags: Flags {
            tls: false,
            audit: false,
        },
        alg: Alg::Es256,
    },
    Config {
        name: "tls",
        flags: Flags {
            tls: true,
            audit: false,
        },
        alg: Alg::Rs256,
    },
    Config {
        name: "audit",
        flags: Flags {
            tls: false,
            audit: true,
        },
        alg: Alg::Rs256,
    },
];

/// What the rows of one configuration need from the command line.
pub(crate) struct Plan<'a> {
    pub(crate) binary: &'a Path,
    pub(crate) log_level: &'a str,
    pub(crate) gets: &'a [(usize, usize)],
    pub(crate) run_for: std::time::Duration,
    /// Fresh tokens for the cold rows (0: none), run with `rs256`.
    pub(crate) cold_tokens: usize,
    /// Run the peers' rows with `rs256`; with the `bao` binary if found.
    pub(crate) peers: Option<Option<std::path::PathBuf>>,
}

/// The rows of `config`.
pub(crate) async fn rows(
    plan: &Plan<'_>,
    config: Config,
    minter: &Minter,
) -> anyhow::Result<Vec<Row>> {
    let broker = Shipped::start(plan.binary, config.flags, plan.log_level, minter).await?;
    let token = minter.mint(config.alg, "app", "app-7d9f8b6c5d-x2x4q")?;
    // The bare server answers with exactly the broker's message.
    let reply = SecretBrokerClient::new(connect_target(&broker).await?)
        .get_secret(authed(
            v1::GetSecretRequest {
                path: PATH.into(),
                version: None,
            },
            &token,
        ))
        .await
        .context("the shipped broker refused the bench's token")?
        .into_inner();
    let bare = BareProcess::start(&reply, config.flags.tls)?;
    let what = format!(
        "shipped {}, {} {}-byte token, {}{}",
        config.name,
        config.alg.name(),
        token.len(),
        if config.flags.tls { "TLS" } else { "plaintext" },
        if config.flags.audit { ", audit on" } else { "" },
    );
    let mut rows = vec![Row::Note(format!(
        "{what}: GetSecretResponse of {} bytes from both servers; server CPU is each process's whole",
        prost::Message::encoded_len(&reply)
    ))];
    let sides = get::Sides {
        broker: &broker,
        bare: &bare,
        token: &token,
        what: &what,
    };
    for &(conns, in_flight) in plan.gets {
        rows.push(get::compare(&sides, conns, in_flight, plan.run_for).await?);
    }
    if plan.cold_tokens > 0 && config.name == "rs256" {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        rows.push(
            cold::compare(
                &broker as &dyn Target,
                &bare,
                minter,
                plan.cold_tokens,
                plan.run_for,
                threads,
            )
            .await?,
        );
    }
    if config.name == "rs256"
        && let Some(bao) = &plan.peers
    {
        match bao {
            Some(bao) => rows.extend(super::peers::rows(bao, &broker, &token, plan.run_for).await?),
            None => rows.push(Row::Skipped(
                "peers: no bao binary (scripts/install-test-deps puts it in .venv/bin, or give --bao-bin)".into(),
            )),
        }
    }
    Ok(rows)
}
