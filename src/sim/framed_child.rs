//! A child speaking any framed profile on a pty: codecs'
//! [`FaultyChild`] (the profile's simulated device behind seeded lossy
//! links) driven in real time, with the SMP simulator's fault options.
//!
//! ```text
//!  driver ──/dev/pts/N (slave)──╮ pty ╭─ master ─ rx pacing ─ link faults ─ Device
//!                               ╰─────╯ master ─ tx pacing ─ link faults ─┘
//! ```
//!
//! Faults ([`Faults`] from [`super::smp_child`], the same `--faults`
//! string): `drop=` loses a write, `crc=` flips a bit in one (its CRC
//! fails), `noise=` puts up to 16 random bytes before one, each with that
//! probability per write and in both directions (the links sit on both
//! sides of the device, `codecs::framed::sim::FaultyChild`); `reboot-at=`
//! reboots the device once, unanswered, when it holds that many bytes;
//! `boot-ms=` is its silence after any reboot (activation too);
//! `erase-ms=` holds the answer to each `begin` that long (erasing the
//! slot); `pace=` paces both directions to a baud rate, 8N1.
//!
//! The slave end stays open here, so the master never sees a hangup when a
//! driver closes and reopens the path (a gateway restart); see the SMP
//! simulator's notes on `pair()` and exclusive opens.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otabridge_codecs::framed::profile::{MessageKind, Profile};
use otabridge_codecs::framed::sim::{Device, DeviceConfig, FaultyChild, Injection, LinkFaults};
use otabridge_codecs::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialStream};

use tracing::debug;

use super::smp_child::pace;
use crate::config::ProfileLookupError;
pub use crate::sim::smp_child::Faults;

/// Most noise bytes put before one write.
const MAX_NOISE: usize = 16;

/// Everything the simulator is built from.
#[derive(Debug, Clone)]
pub struct FramedChildOptions {
    /// The protocol it speaks.
    pub profile: Arc<Profile>,
    /// How the device behaves (version, slot size, session kept over a
    /// reboot, injected statuses, failing install).
    pub device: DeviceConfig,
    /// Faults at the seam; `reboot-at` and `boot-ms` set the device's
    /// `reboot_at_offset` and `reboot_time`.
    pub faults: Faults,
    /// Seed of every random fault decision.
    pub seed: u64,
}

impl FramedChildOptions {
    /// A healthy child running `version`, no faults, seed 1.
    pub fn new(profile: Arc<Profile>, version: &str) -> Self {
        FramedChildOptions {
            profile,
            device: DeviceConfig::new(version),
            faults: Faults::default(),
            seed: 1,
        }
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The pty could not be created.
    #[error("cannot create a pty: {0}")]
    Pty(#[from] tokio_serial::Error),
    /// The pty has no slave path.
    #[error("the pty has no slave path")]
    NoPath,
    /// `reboot-at` beyond what a framed protocol can carry.
    #[error("reboot-at={0} is beyond 4 GiB")]
    RebootAt(u64),
}

/// A running simulator; dropping it stops it.
#[derive(Debug)]
pub struct FramedChildSim {
    path: PathBuf,
    child: Arc<Mutex<FaultyChild>>,
    tasks: Vec<JoinHandle<()>>,
    /// Held open so the master never sees a hangup (module doc).
    _slave: SerialStream,
}

impl Drop for FramedChildSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FramedChildSim {
    /// Starts the simulator on a new pty (call inside a tokio runtime).
    pub fn spawn(opts: FramedChildOptions) -> Result<FramedChildSim, SpawnError> {
        let mut device = opts.device;
        if let Some(at) = opts.faults.reboot_at {
            let at = u32::try_from(at).map_err(|_| SpawnError::RebootAt(at))?;
            device.reboot_at_offset = Some(at);
        }
        device.reboot_time = opts.faults.boot_time;
        let links = LinkFaults {
            drop: opts.faults.drop,
            corrupt: opts.faults.corrupt_crc,
            noise: opts.faults.noise,
            max_noise: MAX_NOISE,
        };
        let (master, slave) = SerialStream::pair()?;
        let path = PathBuf::from(slave.name().ok_or(SpawnError::NoPath)?);
        let child = Arc::new(Mutex::new(FaultyChild::new(
            Device::new(opts.profile, device),
            links,
            opts.seed,
        )));
        let rate = opts.faults.pace_baud.map(|b| f64::from(b) / 10.0);
        let (rd, wr) = tokio::io::split(master);
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(64);
        let tasks = vec![
            tokio::spawn(rx_loop(rd, in_tx, rate)),
            tokio::spawn(tx_loop(wr, out_rx, rate)),
            tokio::spawn(device_loop(
                Arc::clone(&child),
                in_rx,
                out_tx,
                opts.faults.erase_delay,
            )),
        ];
        Ok(FramedChildSim {
            path,
            child,
            tasks,
            _slave: slave,
        })
    }

    /// The pty path a driver opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks at the child (its device and link counters); do not hold it
    /// across an `await`.
    pub fn inspect<R>(&self, f: impl FnOnce(&FaultyChild) -> R) -> R {
        f(&self.child.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// One line for people: version, session, reboots, link counters.
    pub fn summary(&self) -> String {
        self.inspect(|c| {
            let d = c.device();
            let (i, o) = c.link_stats();
            format!(
                "version {}, session {} bytes, {} reboots, chunks {}; to child: {} writes, {} dropped, {} corrupted, {} noisy; from child: {} writes, {} dropped, {} corrupted, {} noisy",
                d.version(),
                d.received().map_or(0, <[u8]>::len),
                d.reboots(),
                d.requests(MessageKind::Chunk),
                i.writes, i.dropped, i.corrupted, i.noisy,
                o.writes, o.dropped, o.corrupted, o.noisy,
            )
        })
    }
}

/// The profile `--profile` names ([`crate::config::load_profile`]).
pub fn load_profile(spec: &str) -> Result<Arc<Profile>, ProfileLookupError> {
    crate::config::load_profile(spec)
}

/// An `--inject` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not KIND:NTH:STATUS (e.g. begin:1:0x10; kinds: version_query, begin, offset_query, chunk, verify, activate)")]
pub struct InjectionError(String);

/// Parses `KIND:NTH:STATUS`: answer the NTH request of KIND with STATUS
/// (decimal or 0x hex) instead of handling it.
pub fn parse_injection(s: &str) -> Result<Injection, InjectionError> {
    let bad = || InjectionError(s.to_owned());
    let mut parts = s.split(':');
    let (Some(kind), Some(nth), Some(status), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let kind = MessageKind::ALL
        .into_iter()
        .find(|k| k.name() == kind)
        .ok_or_else(bad)?;
    let nth = nth
        .parse::<u32>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(bad)?;
    let status = match status.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => status.parse(),
    }
    .map_err(|_| bad())?;
    Ok(Injection { kind, nth, status })
}

/// Driver → device: each read reaches the device when its last byte would
/// have crossed the wire.
async fn rx_loop(
    mut rd: tokio::io::ReadHalf<SerialStream>,
    to_device: mpsc::Sender<Vec<u8>>,
    rate: Option<f64>,
) {
    let mut buf = vec![0u8; 4096];
    let mut free_at = tokio::time::Instant::now();
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // No reader on the slave side right now (EIO); wait for one.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Ok(n) => n,
        };
        if let Some(rate) = rate {
            let at = tokio::time::Instant::now();
            tokio::time::sleep_until(pace(&mut free_at, at, n, rate)).await;
        }
        if to_device.send(buf[..n].to_vec()).await.is_err() {
            return;
        }
    }
}

/// Device → driver, paced like [`rx_loop`]; each write is stamped with when
/// the device made it, so a late wake-up does not delay the next one.
async fn tx_loop(
    mut wr: tokio::io::WriteHalf<SerialStream>,
    mut from_device: mpsc::Receiver<(tokio::time::Instant, Vec<u8>)>,
    rate: Option<f64>,
) {
    let mut free_at = tokio::time::Instant::now();
    while let Some((at, bytes)) = from_device.recv().await {
        if let Some(rate) = rate {
            tokio::time::sleep_until(pace(&mut free_at, at, bytes.len(), rate)).await;
        }
        // write_all: the pty takes what fits and the rest follows. No
        // flush: tokio-serial's is a blocking tcdrain on the runtime thread.
        if wr.write_all(&bytes).await.is_err() {
            debug!("framed-child: write to the pty failed");
        }
    }
}

async fn device_loop(
    child: Arc<Mutex<FaultyChild>>,
    mut from_line: mpsc::Receiver<Vec<u8>>,
    to_line: mpsc::Sender<(tokio::time::Instant, Vec<u8>)>,
    erase_delay: Duration,
) {
    let origin = tokio::time::Instant::now();
    let now =
        || Instant::from_millis(u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX));
    let lock = || child.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let wake = lock()
            .poll_timeout()
            .map(|t| origin + Duration::from_millis(t.as_millis()));
        let (out, begun) = tokio::select! {
            bytes = from_line.recv() => {
                let Some(bytes) = bytes else { return };
                let mut c = lock();
                let begins = c.device().requests(MessageKind::Begin);
                c.handle_input(&bytes, now());
                let begun = c.device().requests(MessageKind::Begin) > begins;
                (std::iter::from_fn(|| c.poll_transmit()).collect::<Vec<_>>(), begun)
            }
            _ = crate::child::sleep_until_opt(wake) => {
                let mut c = lock();
                c.handle_timeout(now());
                (std::iter::from_fn(|| c.poll_transmit()).collect(), false)
            }
        };
        if begun && !erase_delay.is_zero() && !out.is_empty() {
            // Erasing the slot blocks the device, its answer included.
            tokio::time::sleep(erase_delay).await;
        }
        for bytes in out {
            if to_line
                .send((tokio::time::Instant::now(), bytes))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injections_parse_and_name_their_mistakes() {
        assert_eq!(
            parse_injection("begin:1:0x10"),
            Ok(Injection {
                kind: MessageKind::Begin,
                nth: 1,
                status: 0x10
            })
        );
        assert_eq!(parse_injection("chunk:3:257").unwrap().status, 257);
        for bad in ["begin", "begin:0:1", "start:1:1", "chunk:1:0xzz", "a:1:1:1"] {
            assert!(parse_injection(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profiles_load_by_name_or_file() {
        assert_eq!(load_profile("nordlys-uart").unwrap().name, "nordlys-uart");
        let e = load_profile("nope").unwrap_err().to_string();
        assert!(e.contains("acme-rs485, nordlys-uart"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "[protocol]\nname = \"p\"\n").unwrap();
        let e = load_profile(f.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("p.toml:"), "{e}");
    }
}
