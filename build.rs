//! Link options for the `otabridge` binaries (BENCHMARKS.md, "Footprint").
//!
//! `OTABRIDGE_RELR=1` (set by `packaging/test-deb.sh`, which builds the
//! Debian package): link with `-z pack-relative-relocs`, which stores the
//! executable's relative relocations as DT_RELR (a bitmap, about 3 KB)
//! instead of `.rela.dyn` (24 bytes each, about 230 KB), which ld.so reads
//! whole at every start and which then stays resident. ASLR is unchanged.
//! The binary needs glibc 2.36 or later: an older ld.so ignores DT_RELR and
//! the program crashes at start, and LLD (Rust's default linker on
//! x86_64-unknown-linux-gnu) does not record the `GLIBC_ABI_DT_RELR`
//! version that would make it refuse to load instead. So it is off unless
//! asked for, and the Debian package depends on `libc6 (>= 2.36)`
//! (Cargo.toml, `[package.metadata.deb]`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=OTABRIDGE_RELR");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let relr = std::env::var("OTABRIDGE_RELR").is_ok_and(|v| v == "1");
    if relr && os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
