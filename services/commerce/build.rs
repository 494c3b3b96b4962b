//! Links the `commerce` binary with packed relative relocations (DT_RELR).
//!
//! The binary is position-independent, so every pointer stored in its data
//! (vtables, string tables, the services' static descriptors) needs a
//! relocation applied at start. As classic `RELA` entries these took 2.9 MB
//! of the file, read from the first to the last page by the dynamic loader
//! on every start and kept resident from then on. Packed, the same
//! relocations are a bitmap of a few kilobytes. The image ships the same
//! glibc as the build (2.36; DT_RELR needs 2.36 and binutils 2.38).
//!
//! Only for GNU/Linux: other targets keep their linker's defaults.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
