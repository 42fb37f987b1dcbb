//! A client for the broker named by the connection flags: the one way every
//! command that talks to the broker connects.

use std::time::Duration;

use anyhow::Context;
use coffer::{Client, TokenSource};

use crate::{args::BrokerArgs, exit::UsageError};

/// How long one call to the broker may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects with `args` (already merged with the flags given before the
/// subcommand). Missing flags are a usage error (exit 2).
pub(crate) async fn connect(args: &BrokerArgs) -> anyhow::Result<Client> {
    let (Some(endpoint), Some(token_file)) = (&args.broker, &args.token_file) else {
        return Err(UsageError(
            "--broker and --token-file (or COFFER_BROKER and COFFER_TOKEN_FILE) are required"
                .into(),
        )
        .into());
    };
    let mut builder = Client::builder(endpoint.clone())
        .token(TokenSource::file(token_file))
        .timeout(CALL_TIMEOUT);
    if let Some(ca) = &args.ca_file {
        builder =
            builder.ca_pem(std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?);
    }
    Ok(builder.connect().await?)
}
