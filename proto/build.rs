//! Generates the coffer.v1 code with a vendored `protoc`, so a fresh machine
//! builds without installing anything by hand.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // `set_var` is unsafe in edition 2024: hand protoc over through the config.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("coffer_v1_descriptor.bin"))
        // Secret-bearing messages get a hand-written, redacted Debug (src/lib.rs).
        .skip_debug([
            "coffer.v1.SecretValue",
            "coffer.v1.SecretValue.kind",
            "coffer.v1.SecretMap",
        ])
        .compile_with_config(
            config,
            &[PathBuf::from("proto/coffer/v1/coffer.proto")],
            &[PathBuf::from("proto"), include.clone()],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
