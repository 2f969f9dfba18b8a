//! A seeded mutation fuzzer on stable Rust (docs/fuzzing.md): corpus
//! entries are mutated by stacked byte-level operations, each input goes
//! to a decoder under `catch_unwind`, and a counting allocator
//! (`stats_alloc`) bounds the memory one input may make the decoder take. Shared by
//! `codecs/tests/fuzz_decoders.rs` and the daemon's `tests/fuzz_config.rs`
//! (included by path).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use otabridge_codecs::hex;
use otabridge_codecs::rng::Rng;
use stats_alloc::{Region, INSTRUMENTED_SYSTEM};

/// The allocator a fuzzing test binary installs (`#[global_allocator]
/// static ALLOC: fuzz::Alloc = &stats_alloc::INSTRUMENTED_SYSTEM;`): the
/// system allocator with counts, so that a run sees what one input made a
/// decoder allocate.
pub(crate) type Alloc = &'static stats_alloc::StatsAlloc<std::alloc::System>;

/// Inputs per decoder in the default test run (a few seconds in all).
pub(crate) const SHORT_INPUTS: u64 = 2_000;

/// Inputs per decoder for the long run: `OTABRIDGE_FUZZ_INPUTS`, default
/// 10^6.
pub(crate) fn long_inputs() -> u64 {
    std::env::var("OTABRIDGE_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// The seed: `OTABRIDGE_FUZZ_SEED`, default fixed so that every run of the
/// suite checks the same inputs.
pub(crate) fn seed() -> u64 {
    std::env::var("OTABRIDGE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6f74_6162_7269_6467)
}

/// Bytes one input may make a decoder allocate in all (an upper bound of
/// what it holds at once): a fixed allowance for engines' tables plus a
/// multiple of the input. A length field believed from the wire breaks it.
pub(crate) fn alloc_bound(input_len: usize) -> usize {
    (4 << 20) + 64 * input_len
}

/// Serialises the runs in one test binary: the allocator's counts are
/// global, so two decoders fuzzed at once would count each other's bytes.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Bytes that make parsers take other paths.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x06, 0x09, 0x0a, 0x14, 0x7f, 0x80, 0xff, b'"', b'{', b'[',
];

/// Text tokens for the text formats (JSON, TOML).
const TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    "=",
    ",",
    ":",
    "\n",
    "[[",
    "]]",
    "'''",
    "\\u0000",
    "-1",
    "0",
    "1e999",
    "18446744073709551616",
    "-9223372036854775809",
    "null",
    "true",
    "\u{1F600}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{\"a\":{\"a\":{\"a\":{\"a\":{}}}}}",
    "\"\"\"",
    // Link format (RFC 6690).
    "<",
    ">",
    ";",
    "</5/0>",
    ";ver=",
    "\\",
];

/// Mutates `input` with one to four stacked operations, keeping it at most
/// `max_len` bytes.
pub(crate) fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], max_len: usize) {
    let ops = rng.range_inclusive(1, 4);
    for _ in 0..ops {
        let n = input.len();
        let at = |rng: &mut Rng, n: usize| rng.range_inclusive(0, n as u64) as usize;
        match rng.range_inclusive(0, 10) {
            0 if n > 0 => {
                let i = at(rng, n - 1);
                input[i] ^= 1 << rng.range_inclusive(0, 7);
            }
            1 if n > 0 => {
                let i = at(rng, n - 1);
                input[i] = rng.next_u32() as u8;
            }
            2 if n > 0 => {
                let i = at(rng, n - 1);
                input[i] =
                    INTERESTING[rng.range_inclusive(0, INTERESTING.len() as u64 - 1) as usize];
            }
            3 if n > 0 => {
                let a = at(rng, n - 1);
                let len = rng.range_inclusive(1, 16.min((n - a) as u64)) as usize;
                input.drain(a..a + len);
            }
            4 => {
                let a = at(rng, n);
                let mut b = vec![0u8; rng.range_inclusive(1, 16) as usize];
                rng.fill(&mut b);
                input.splice(a..a, b);
            }
            5 if n > 0 => {
                let a = at(rng, n - 1);
                let len = rng.range_inclusive(1, 64.min((n - a) as u64)) as usize;
                let copy = input[a..a + len].to_vec();
                let to = at(rng, n);
                input.splice(to..to, copy);
            }
            6 => input.truncate(at(rng, n)),
            7 if !corpus.is_empty() => {
                // Splice: our prefix, another entry's suffix.
                let other = &corpus[rng.range_inclusive(0, corpus.len() as u64 - 1) as usize];
                let cut = at(rng, n);
                let from = at(rng, other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            8 if n >= 2 => {
                // A 16- or 32-bit field set to a lie, either byte order.
                let v: u32 = match rng.range_inclusive(0, 4) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => u16::MAX as u32,
                    3 => n as u32 + 1,
                    _ => rng.next_u32(),
                };
                let bytes = if rng.range_inclusive(0, 1) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                let w = if rng.range_inclusive(0, 1) == 0 { 2 } else { 4 };
                let i = at(rng, n - 1);
                for (k, b) in bytes[..w].iter().enumerate() {
                    if let Some(x) = input.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
            9 => {
                let t = TOKENS[rng.range_inclusive(0, TOKENS.len() as u64 - 1) as usize];
                let a = at(rng, n);
                input.splice(a..a, t.bytes());
            }
            _ if n >= 2 => {
                let (i, j) = (at(rng, n - 1), at(rng, n - 1));
                input.swap(i, j);
            }
            _ => input.push(rng.next_u32() as u8),
        }
    }
    input.truncate(max_len);
}

/// What a run did.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) inputs: u64,
    /// The most bytes one input made the decoder allocate.
    pub(crate) peak: usize,
    /// The longest input.
    pub(crate) longest: usize,
    /// Inputs the decoder accepted (got past its first parse).
    pub(crate) accepted: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No clock here (codecs/clippy.toml): time the command instead.
        write!(
            f,
            "{} inputs ({} accepted), at most {} KiB allocated for one input (inputs up to {} bytes)",
            self.inputs,
            self.accepted,
            self.peak / 1024,
            self.longest
        )
    }
}

/// Feeds `inputs` inputs to `decode` (which says whether it accepted the
/// input): first every corpus entry as it is,
/// then mutations of random entries. Panics, naming the input (hex) and
/// how to reproduce it, when `decode` panics or holds more memory than
/// [`alloc_bound`].
pub(crate) fn fuzz(
    name: &str,
    corpus: &[Vec<u8>],
    inputs: u64,
    seed: u64,
    decode: impl Fn(&[u8]) -> bool,
) -> Report {
    assert!(!corpus.is_empty(), "{name}: empty corpus");
    let longest_seed = corpus.iter().map(Vec::len).max().unwrap_or(0);
    let max_len = (2 * longest_seed).max(1024);
    let mut rng = Rng::new(seed ^ fnv(name));
    let mut report = Report {
        inputs: 0,
        peak: 0,
        longest: 0,
        accepted: 0,
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for i in 0..inputs.max(corpus.len() as u64) {
        let mut input = corpus[i as usize % corpus.len()].clone();
        if i >= corpus.len() as u64 {
            let pick = rng.range_inclusive(0, corpus.len() as u64 - 1) as usize;
            input = corpus[pick].clone();
            mutate(&mut rng, &mut input, corpus, max_len);
        }
        let region = Region::new(&INSTRUMENTED_SYSTEM);
        let outcome = catch_unwind(AssertUnwindSafe(|| decode(&input)));
        let c = region.change();
        let held = c.bytes_allocated + c.bytes_reallocated.max(0) as usize;
        let what = match outcome {
            Err(e) => Some(format!(
                "panicked: {}",
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
            Ok(_) if held > alloc_bound(input.len()) => Some(format!(
                "allocated {held} bytes for a {}-byte input (bound {})",
                input.len(),
                alloc_bound(input.len())
            )),
            Ok(accepted) => {
                report.accepted += u64::from(accepted);
                None
            }
        };
        if let Some(what) = what {
            panic!(
                "{name}: input {i} (OTABRIDGE_FUZZ_SEED={seed}) {what}\n  input ({} bytes): {}\n  as text: {:?}",
                input.len(),
                hex::spaced(&input),
                String::from_utf8_lossy(&input)
            );
        }
        report.inputs += 1;
        report.peak = report.peak.max(held);
        report.longest = report.longest.max(input.len());
    }
    report
}

/// FNV-1a: each decoder gets its own stream from the one seed.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
