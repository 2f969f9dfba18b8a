//! Seeded mutation fuzzing of the configuration parser (docs/fuzzing.md):
//! `Config::parse` on mutations of `examples/*.toml` and of the TOML
//! examples in `docs/config.md`. No input may panic or make the parser hold
//! more than `fuzz::alloc_bound` bytes.
//!
//! - `cargo test --test fuzz_config`: 2 000 inputs (seconds).
//! - `cargo test --release --test fuzz_config -- --ignored --nocapture`:
//!   `OTABRIDGE_FUZZ_INPUTS` (default 10^6) inputs.

#[path = "../codecs/tests/fuzz/mod.rs"]
mod fuzz;

use std::path::Path;

use otabridge::config::Config;

#[global_allocator]
static ALLOC: fuzz::Alloc = &stats_alloc::INSTRUMENTED_SYSTEM;

fn corpus() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Vec::new();
    let mut examples: Vec<_> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    for p in examples {
        c.push(std::fs::read(p).unwrap());
    }
    // Every ```toml block of the configuration reference.
    let doc = std::fs::read_to_string(root.join("docs/config.md")).unwrap();
    let mut block: Option<String> = None;
    for line in doc.lines() {
        match (&mut block, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => block = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                c.push(std::mem::take(b).into_bytes());
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    c
}

/// Whether the text passed (the examples name files that do not exist
/// here, so most stop at reading them, after every rule on the text).
fn parse(b: &[u8]) -> bool {
    Config::parse(&String::from_utf8_lossy(b), Path::new("fuzz.toml")).is_ok()
}

#[test]
fn config() {
    let c = corpus();
    assert!(c.len() >= 3, "{} seeds", c.len());
    let r = fuzz::fuzz("config", &c, fuzz::SHORT_INPUTS, fuzz::seed(), parse);
    eprintln!("config: {r}");
}

#[test]
#[ignore = "long: run with --ignored (docs/fuzzing.md)"]
fn long() {
    let r = fuzz::fuzz(
        "config",
        &corpus(),
        fuzz::long_inputs(),
        fuzz::seed(),
        parse,
    );
    println!("config: {r}");
}
