//! Reads one secret with the settings the sidecar uses.
//!
//! ```sh
//! COFFER_BROKER=https://coffer-broker.coffer.svc:8443 \
//! COFFER_CA_FILE=/etc/coffer/ca.pem \
//! cargo run -p coffer --example get -- shop/db#password
//! ```

use coffer::Client;
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() -> Result<(), coffer::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "shop/db#password".into());
    let client = Client::from_env().await?;
    let secret = client.get(&path).await?;
    // Debug prints the path and version, never the value.
    println!("{secret:?}");
    let text = client.get_str(&path).await?;
    println!(
        "{path}: {} characters",
        text.expose_secret().chars().count()
    );
    Ok(())
}
