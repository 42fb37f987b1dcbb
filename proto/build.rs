//! Generates the coffer.v1 code with a vendored `protoc`, so a fresh machine
//! builds without installing anything by hand.
//!
//! Two passes: the messages and clients as usual, then the servers alone,
//! with every message taken from the first pass except `WatchSecretsResponse`,
//! which the server side sends as a [`WatchReply`](../src/wire.rs): a message
//! or its wire bytes encoded once and shared by every stream of a fan-out.
//! The bytes on the wire are the same; clients decode the usual message.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // `set_var` is unsafe in edition 2024: hand protoc over through the config.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [PathBuf::from("proto/coffer/v1/coffer.proto")];
    let includes = [PathBuf::from("proto"), include];

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .file_descriptor_set_path(out_dir.join("coffer_v1_descriptor.bin"))
        // Secret-bearing messages get a hand-written, redacted Debug (src/lib.rs).
        .skip_debug([
            "coffer.v1.SecretValue",
            "coffer.v1.SecretValue.kind",
            "coffer.v1.SecretMap",
        ])
        .compile_with_config(config, &protos, &includes)?;

    let servers = out_dir.join("servers");
    std::fs::create_dir_all(&servers)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&servers)
        .extern_path(".coffer.v1", "crate::v1")
        // The more specific path wins over the package's.
        .extern_path(".coffer.v1.WatchSecretsResponse", "crate::wire::WatchReply")
        .compile_with_config(config, &protos, &includes)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
