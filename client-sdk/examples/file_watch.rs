//! Follows a file the Coffer sidecar writes: prints its size after each
//! update the sidecar publishes.
//!
//! ```sh
//! cargo run -p coffer --example file_watch -- /var/run/secrets/app password
//! ```

use coffer::FileSecret;

#[tokio::main]
async fn main() -> Result<(), coffer::Error> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "/var/run/secrets/app".into());
    let name = args.next().unwrap_or_else(|| "password".into());
    let file = FileSecret::new(dir, name);
    println!("now: {} bytes", file.read()?.len());
    let mut updates = file.watch()?;
    while let Some(value) = updates.next().await {
        println!("updated: {} bytes", value?.len());
    }
    Ok(())
}
