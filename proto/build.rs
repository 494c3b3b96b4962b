//! Compiles every `.proto` under `commerce/` into Rust with protox (a pure-Rust
//! protobuf compiler, so no system `protoc` is needed) and tonic-prost-build,
//! and writes the encoded `FileDescriptorSet` next to the generated code for
//! gRPC reflection.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// Name of the encoded descriptor set in `OUT_DIR`; `src/lib.rs` includes it.
const DESCRIPTOR_SET_FILE: &str = "commerce_descriptor_set.bin";

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let proto_root = manifest_dir.join("commerce");

    // Cargo scans a directory given to rerun-if-changed recursively, so adding,
    // removing or editing any proto rebuilds.
    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut protos = Vec::new();
    collect_protos(&proto_root, &mut protos)?;
    // Sorted so the generated code and descriptor set do not depend on the
    // file system's directory order.
    protos.sort();

    // Includes are relative to the crate root, so file names in the descriptor
    // set read `commerce/order/v1/order.proto`, matching the import paths.
    let mut compiler = protox::Compiler::new([&manifest_dir])?;
    // Source info carries the proto comments into the generated docs and into
    // reflection; imports put the well-known types in the set, so reflection
    // clients can resolve `google/protobuf/timestamp.proto` without a copy.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(&protos)?;

    fs::write(out_dir.join(DESCRIPTOR_SET_FILE), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// Appends every `.proto` file below `dir` to `protos`.
fn collect_protos(dir: &Path, protos: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, protos)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            protos.push(path);
        }
    }
    Ok(())
}
