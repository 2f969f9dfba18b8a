//! A noisy serial line between a driver and a simulated child: a pty in
//! front of the child's pty that carries the bytes both ways and damages
//! them on the way, knowing nothing of the protocol (the fault injector at
//! the device seam, as smoltcp's `FaultInjector` wraps a device).
//!
//! ```text
//!  driver ── /dev/pts/M ╮ pty ╭ master ─ noise ─▶ /dev/pts/N ── child simulator
//!                       ╰─────╯ master ◀─ noise ─ (the child's pty, opened by path)
//! ```
//!
//! Faults ([`NoiseSpec`], seeded, each direction on its own generator):
//! - bit errors at a rate per bit (`ber=`, 1e-5 … 1e-3 are the cases of
//!   interest): each bit of the stream is flipped with that probability;
//! - lost and duplicated lines (`drop=`, `dup=`): the stream is cut into
//!   lines (up to a newline, at most [`MAX_LINE`] bytes, or what a read
//!   returned), and a line is lost or delivered twice with that probability;
//! - console lines (`console=`): before a line from the child, with that
//!   probability, one of the log lines a Zephyr application prints.
//!
//! SMP's base64 lines and a framed profile's binary frames (which may hold
//! newline bytes) are cut the same way; to a framed frame a "line" is a
//! burst of bytes lost or repeated.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use otabridge_codecs::rng::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

/// Longest line the noise cuts the stream into (a serial SMP line is 127).
pub const MAX_LINE: usize = 128;

/// Log lines a Zephyr application prints on the console it shares with SMP.
const CONSOLE: &[&str] = &[
    "[00:01:02.345,000] <inf> app: sensor 21.5 C\r\n",
    "[00:01:02.400,000] <wrn> net: link quality low\r\n",
    "uart:~$ \r\n",
    "[00:01:03.002,000] <dbg> mcumgr: rx 0x06 0x09\r\n",
];

/// The damage a line does; [`Default`] is a clean line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NoiseSpec {
    /// Probability that a bit is flipped (`ber=`).
    pub ber: f64,
    /// Probability that a line is lost (`drop=`).
    pub drop: f64,
    /// Probability that a line arrives twice (`dup=`).
    pub dup: f64,
    /// Probability of a console line before a line from the child
    /// (`console=`).
    pub console: f64,
}

/// A `--noise` string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    /// An item is not `name=value`.
    #[error("'{0}' is not name=value")]
    NotPair(String),
    /// An unknown name.
    #[error("unknown noise '{0}' (ber, drop, dup, console)")]
    Unknown(String),
    /// A value that is not a probability.
    #[error("{name}: '{value}' is not a probability in 0..=1")]
    BadValue {
        /// The name.
        name: String,
        /// The value given.
        value: String,
    },
}

impl FromStr for NoiseSpec {
    type Err = NoiseError;

    /// `ber=1e-4,drop=0.01,dup=0.01,console=0.05`.
    fn from_str(s: &str) -> Result<NoiseSpec, NoiseError> {
        let mut n = NoiseSpec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| NoiseError::NotPair(item.to_owned()))?;
            let p = value
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| NoiseError::BadValue {
                    name: name.to_owned(),
                    value: value.to_owned(),
                })?;
            match name {
                "ber" => n.ber = p,
                "drop" => n.drop = p,
                "dup" => n.dup = p,
                "console" => n.console = p,
                other => return Err(NoiseError::Unknown(other.to_owned())),
            }
        }
        Ok(n)
    }
}

/// What the noise did, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoiseStats {
    /// Bytes that came in.
    pub bytes: u64,
    /// Lines the stream was cut into.
    pub lines: u64,
    /// Bits flipped.
    pub flipped_bits: u64,
    /// Lines lost.
    pub dropped: u64,
    /// Lines delivered twice.
    pub duplicated: u64,
    /// Console lines put in.
    pub console_lines: u64,
}

/// One direction of a noisy line, sans-IO: bytes in, damaged bytes out.
#[derive(Debug)]
pub struct Noise {
    spec: NoiseSpec,
    /// Whether console lines go in this direction (the child's side).
    console: bool,
    rng: Rng,
    /// Bits left before the next flip (drawn from the geometric
    /// distribution of the gaps between independent errors).
    to_next_flip: u64,
    stats: NoiseStats,
}

impl Noise {
    /// A direction with `spec`, seeded; `console` when it carries the
    /// child's output.
    pub fn new(spec: NoiseSpec, console: bool, seed: u64) -> Noise {
        let mut n = Noise {
            spec,
            console,
            rng: Rng::new(seed),
            to_next_flip: 0,
            stats: NoiseStats::default(),
        };
        n.to_next_flip = n.gap();
        n
    }

    /// What it did so far.
    pub fn stats(&self) -> NoiseStats {
        self.stats
    }

    /// Bits to the next error: P(gap = k) = (1-p)^k p.
    fn gap(&mut self) -> u64 {
        let p = self.spec.ber;
        if p <= 0.0 {
            return u64::MAX;
        }
        if p >= 1.0 {
            return 0;
        }
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u = 1.0 - self.rng.next_f64();
        (u.ln() / (1.0 - p).ln()).floor().min(u64::MAX as f64) as u64
    }

    /// Damages `input` (what one read returned) into `out`.
    pub fn apply(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.stats.bytes += input.len() as u64;
        let mut rest = input;
        while !rest.is_empty() {
            let end = rest
                .iter()
                .take(MAX_LINE)
                .position(|&b| b == b'\n')
                .map_or(rest.len().min(MAX_LINE), |i| i + 1);
            let (line, tail) = rest.split_at(end);
            rest = tail;
            self.line(line, out);
        }
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        self.stats.lines += 1;
        if self.console && self.rng.next_f64() < self.spec.console {
            let text = CONSOLE[self.rng.next_u32() as usize % CONSOLE.len()];
            out.extend_from_slice(text.as_bytes());
            self.stats.console_lines += 1;
        }
        let mut damaged = line.to_vec();
        self.flip_bits(&mut damaged);
        if self.rng.next_f64() < self.spec.drop {
            self.stats.dropped += 1;
            return;
        }
        out.extend_from_slice(&damaged);
        if self.rng.next_f64() < self.spec.dup {
            self.stats.duplicated += 1;
            out.extend_from_slice(&damaged);
        }
    }

    /// Flips the bits the error process lands on (the line's bits pass
    /// whether or not it is delivered, so errors stay independent).
    fn flip_bits(&mut self, bytes: &mut [u8]) {
        let bits = bytes.len() as u64 * 8;
        let mut at = 0u64;
        while at.saturating_add(self.to_next_flip) < bits {
            at += self.to_next_flip;
            let i = usize::try_from(at / 8).unwrap_or(usize::MAX);
            bytes[i] ^= 1 << (at % 8);
            self.stats.flipped_bits += 1;
            at += 1;
            self.to_next_flip = self.gap();
        }
        self.to_next_flip -= bits - at;
    }
}

/// What a running [`NoisyLine`] did, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineStats {
    /// Driver → child.
    pub to_child: NoiseStats,
    /// Child → driver.
    pub to_driver: NoiseStats,
}

/// Why the line could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The driver's pty could not be made, or the child's not opened.
    #[error("serial noise: {0}")]
    Serial(#[from] tokio_serial::Error),
    /// The pty has no slave path.
    #[error("serial noise: the pty has no slave path")]
    NoPath,
}

/// A running noisy line; dropping it stops it.
#[derive(Debug)]
pub struct NoisyLine {
    path: PathBuf,
    stats: Arc<Mutex<LineStats>>,
    tasks: Vec<JoinHandle<()>>,
    /// Held open so the master never sees a hangup when a driver closes
    /// and reopens the path (see `smp_child`'s notes on `pair()`).
    _slave: SerialStream,
}

impl Drop for NoisyLine {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl NoisyLine {
    /// Puts a noisy line in front of the child simulator on `child`
    /// (its pty path); call inside a tokio runtime.
    pub fn spawn(child: &Path, spec: NoiseSpec, seed: u64) -> Result<NoisyLine, SpawnError> {
        let (master, slave) = SerialStream::pair()?;
        let path = PathBuf::from(slave.name().ok_or(SpawnError::NoPath)?);
        let child = tokio_serial::new(child.to_string_lossy(), 115_200).open_native_async()?;
        let stats = Arc::new(Mutex::new(LineStats::default()));
        let (from_driver, to_driver) = tokio::io::split(master);
        let (from_child, to_child) = tokio::io::split(child);
        let down = Noise::new(spec, false, seed);
        let up = Noise::new(spec, true, seed ^ 0x9e37_79b9_7f4a_7c15);
        let s = Arc::clone(&stats);
        let tasks = vec![
            tokio::spawn(carry(from_driver, to_child, down, s.clone(), |l| {
                &mut l.to_child
            })),
            tokio::spawn(carry(from_child, to_driver, up, s, |l| &mut l.to_driver)),
        ];
        Ok(NoisyLine {
            path,
            stats,
            tasks,
            _slave: slave,
        })
    }

    /// The pty path the driver opens instead of the child's.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the noise did so far.
    pub fn stats(&self) -> LineStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Carries one direction through `noise`.
async fn carry(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut noise: Noise,
    stats: Arc<Mutex<LineStats>>,
    side: fn(&mut LineStats) -> &mut NoiseStats,
) {
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(8192);
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            // No reader on the driver's side right now (EIO on the master
            // until a driver opens the slave); wait for one.
            _ => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        out.clear();
        noise.apply(&buf[..n], &mut out);
        *side(&mut stats.lock().unwrap_or_else(|p| p.into_inner())) = noise.stats();
        // write_all: the pty takes what fits and the rest follows; no flush
        // (a blocking tcdrain on tokio-serial, see the driver's Link::write).
        if to.write_all(&out).await.is_err() {
            tracing::debug!("serial noise: write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_name_their_mistakes() {
        let n: NoiseSpec = "ber=1e-4, drop=0.01,dup=0.02,console=0.5".parse().unwrap();
        assert_eq!(
            n,
            NoiseSpec {
                ber: 1e-4,
                drop: 0.01,
                dup: 0.02,
                console: 0.5
            }
        );
        assert_eq!("".parse::<NoiseSpec>().unwrap(), NoiseSpec::default());
        assert!(matches!(
            "ber".parse::<NoiseSpec>(),
            Err(NoiseError::NotPair(_))
        ));
        assert!(matches!(
            "hum=0.1".parse::<NoiseSpec>(),
            Err(NoiseError::Unknown(_))
        ));
        assert!(matches!(
            "ber=2".parse::<NoiseSpec>(),
            Err(NoiseError::BadValue { .. })
        ));
    }

    #[test]
    fn a_clean_line_carries_every_byte() {
        let mut n = Noise::new(NoiseSpec::default(), true, 1);
        let input: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        n.apply(&input, &mut out);
        assert_eq!(out, input);
        assert_eq!(n.stats().flipped_bits, 0);
    }

    #[test]
    fn bit_errors_come_at_the_rate_asked_and_only_flip_bits() {
        for ber in [1e-5, 1e-4, 1e-3] {
            let spec = NoiseSpec {
                ber,
                ..NoiseSpec::default()
            };
            let mut n = Noise::new(spec, false, 7);
            let input = vec![0u8; 1 << 20];
            let mut out = Vec::new();
            for chunk in input.chunks(333) {
                n.apply(chunk, &mut out);
            }
            assert_eq!(out.len(), input.len());
            let ones: u64 = out.iter().map(|b| u64::from(b.count_ones())).sum();
            assert_eq!(ones, n.stats().flipped_bits);
            // 8 Mibit at the rate: within 20 % (several hundred errors at
            // the lowest rate; a seeded run, so this is a check, not luck).
            let want = ber * (input.len() * 8) as f64;
            let got = ones as f64;
            assert!((got - want).abs() < want * 0.2, "{ber}: {got} of {want}");
        }
    }

    #[test]
    fn lines_are_lost_doubled_and_console_text_goes_in() {
        let spec = NoiseSpec {
            drop: 0.1,
            dup: 0.1,
            console: 0.1,
            ..NoiseSpec::default()
        };
        let mut n = Noise::new(spec, true, 3);
        let lines: Vec<String> = (0..2000).map(|i| format!("line {i}\n")).collect();
        let mut out = Vec::new();
        for l in &lines {
            n.apply(l.as_bytes(), &mut out);
        }
        let s = n.stats();
        assert!(
            s.dropped > 100 && s.duplicated > 100 && s.console_lines > 100,
            "{s:?}"
        );
        let text = String::from_utf8(out).unwrap();
        let got: Vec<&str> = text.split_inclusive('\n').collect();
        let console = got.iter().filter(|l| !l.starts_with("line ")).count() as u64;
        assert_eq!(console, s.console_lines);
        assert_eq!(
            got.len() as u64,
            2000 - s.dropped + s.duplicated + s.console_lines
        );
        // The driver's direction carries no console text.
        let mut down = Noise::new(spec, false, 3);
        let mut out = Vec::new();
        down.apply(b"x\n", &mut out);
        assert_eq!(down.stats().console_lines, 0);
    }

    #[test]
    fn long_and_binary_runs_are_cut_into_lines() {
        let mut n = Noise::new(NoiseSpec::default(), false, 1);
        let mut out = Vec::new();
        n.apply(&[0xaa; 300], &mut out);
        assert_eq!(n.stats().lines, 3, "128 + 128 + 44");
        n.apply(b"ab\ncd", &mut out);
        assert_eq!(n.stats().lines, 5);
    }
}
