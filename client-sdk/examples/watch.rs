//! Watches secrets and prints each new version as it arrives; the stream
//! reconnects by itself when the broker restarts.
//!
//! ```sh
//! COFFER_BROKER=... cargo run -p coffer --example watch -- shop/db shop/api
//! ```

use coffer::{Client, WatchEventKind};

#[tokio::main]
async fn main() -> Result<(), coffer::Error> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    let client = Client::from_env().await?;
    let mut watch = client.watch(paths).await?;
    while let Some(event) = watch.next().await {
        let event = event?;
        let what = match event.kind {
            WatchEventKind::Snapshot => "now",
            _ => "changed",
        };
        for secret in &event.secrets {
            println!("{what}: {} version {}", secret.path(), secret.version());
        }
    }
    Ok(())
}
