//! Compiles `proto/edupool/v1/*.proto` with protox (pure Rust), so no system
//! `protoc` is needed, and keeps the descriptor set for server reflection.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/edupool/v1/edupool.proto",
        "proto/edupool/v1/cluster.proto",
        "proto/edupool/v1/usage.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("edupool_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
