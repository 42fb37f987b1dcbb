//! Operator calls with typed requests and results: write, rotate, list the
//! versions, roll back, and see which pods applied what.
//!
//! ```sh
//! COFFER_BROKER=... COFFER_TOKEN_FILE=/path/to/operator-token \
//! cargo run -p coffer --example operator -- shop/db
//! ```

use coffer::{
    Client, SecretData,
    operator::{Encoding, Put, Rotate, VersionState},
};

#[tokio::main]
async fn main() -> Result<(), coffer::Error> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "shop/db".into());
    let client = Client::from_env().await?;

    let first = client
        .put(
            Put::new(&path, SecretData::Bytes(b"initial".to_vec().into()))
                .content_type("text/plain")
                .label("owner", "payments"),
        )
        .await?;
    let rotated = client
        .rotate(Rotate::new(&path).length(32).encoding(Encoding::Hex))
        .await?;
    println!("{path}: wrote v{first}, rotated to v{rotated}");

    let versions = client.versions(&path).await?;
    for v in &versions.versions {
        let state = match v.state {
            VersionState::Live => "live",
            VersionState::Deleted => "deleted",
            _ => "destroyed",
        };
        println!("  v{} {state}", v.version);
    }

    let back = client.rollback(&path, first).await?;
    println!("v{first} is current again as v{back}");

    let status = client.status(&path).await?;
    println!(
        "v{}: {}/{} applied, {} failed, {} pending",
        status.current_version, status.applied, status.expected, status.failed, status.pending
    );
    for w in &status.workloads {
        println!(
            "  {}/{} pod={} v{} {}",
            w.namespace,
            w.service_account,
            w.pod,
            w.version,
            w.state.as_str()
        );
    }
    Ok(())
}
