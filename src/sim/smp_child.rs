//! An SMP child on a pty: [`SimDevice`] (codecs' Zephyr-like device) behind
//! a pseudo-terminal, with faults injected at the seam between the device
//! and the line, as smoltcp's fault injectors sit at its device seam.
//!
//! ```text
//!  driver ──/dev/pts/N (slave)──╮ pty ╭─ master ─ rx pacing ─ decoder ─ SimDevice
//!                               ╰─────╯ master ─ tx pacing ─ faults  ─┘
//! ```
//!
//! Faults ([`Faults`], all seeded, so a run replays): dropped answers, a
//! corrupted CRC, console noise lines between packets, an erase delay on the
//! first chunk of each upload session, a power cycle once the device holds a
//! given number of bytes (the session in RAM is lost, the device is silent
//! while it boots and prints a banner), and pacing of both directions to a
//! line rate (115200 baud 8N1 = 11520 B/s). For the health-gated confirm
//! (issue 15 item 2), a device that boots its new test image and then
//! fails: its application hangs until a watchdog reboots it, crashes and
//! reboots by itself, or answers its own commands (echo) with an error
//! (`health=hang|crash|fail`, `sick-after-ms=`, `watchdog-ms=`). Every
//! reboot of an unconfirmed test image is a revert (MCUboot), which heals
//! it.
//!
//! The device reads lines through [`RxBuffers`]: `rx-bufs` line buffers
//! (Zephyr's `CONFIG_UART_MCUMGR_RX_BUF_COUNT`, default 2) in front of a
//! device busy with each request for `work-ms` (flash write), the erase
//! delay, and, on a paced line, the time its answer takes to leave (Zephyr
//! sends it with `uart_poll_out`, blocking). Lines arriving while every
//! buffer is taken are lost, so a client with more requests on the line
//! than the device can hold loses one.
//!
//! The pty's slave end stays open in the simulator so the master never sees
//! a hangup when a driver closes and reopens the path (a gateway restart);
//! the driver opens the path by name. docs/protocols/children.md §6.2 suggests
//! `set_exclusive(false)` on the slave of `SerialStream::pair()`; with
//! serialport 4.10 that is wrong here: `pair()` only *flags* the slave
//! exclusive (no TIOCEXCL, no flock), while `set_exclusive(false)` takes a
//! shared flock, which makes every exclusive open of the path (the
//! driver's) fail with "Unable to acquire exclusive lock". So the slave is
//! left as `pair()` made it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otabridge_codecs::rng::Rng;
use otabridge_codecs::smp::header::{command, group, split_message, Op};
use otabridge_codecs::smp::message;
use otabridge_codecs::smp::serial::{self, DecodeEvent, Decoder};
use otabridge_codecs::smp::sim::{
    mcuboot_header, ImageVersion, RxBuffers, SimConfig, SimDevice, SimEvent,
};
use otabridge_codecs::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialStream};

use tracing::{debug, info};

/// Faults injected between the device and the line; [`Default`] is none.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Probability that an answer is not sent (`drop=`).
    pub drop: f64,
    /// Probability that an answer's CRC is damaged (`crc=`).
    pub corrupt_crc: f64,
    /// Probability of a console log line before an answer (`noise=`).
    pub noise: f64,
    /// Delay before answering the first chunk of an upload session, as a
    /// device erasing its slot first (`erase-ms=`).
    pub erase_delay: Duration,
    /// Delay before answering the image-state write that marks an image
    /// for test, as a device writing its swap trailer (`test-ms=`); the
    /// reset comes after the answer, so this widens the window between
    /// test and reset (crash tests aim a kill there, issue 17).
    pub test_delay: Duration,
    /// Power-cycle once the device holds this many bytes of an upload
    /// (`reboot-at=`); the answer to that chunk is lost.
    pub reboot_at: Option<u64>,
    /// Silence after the power cycle (`boot-ms=`, default 200).
    pub boot_time: Duration,
    /// Pace both directions to this baud rate, 8N1 (`pace=`).
    pub pace_baud: Option<u32>,
    /// Receive line buffers (`rx-bufs=`, default 2 as Zephyr's).
    pub rx_bufs: usize,
    /// Time the device spends on each request before answering
    /// (`work-ms=`, default 0).
    pub work: Duration,
    /// How a new image fails after its test boot (`health=`), if it does.
    pub sick: Option<Sickness>,
    /// How long the new image runs well after its test boot before it
    /// fails (`sick-after-ms=`, default 0).
    pub sick_after: Duration,
    /// A hung application's watchdog: the device reboots this long after
    /// it hung (`watchdog-ms=`, default 3000).
    pub watchdog: Duration,
}

/// How a new image fails after its test boot, while it is not confirmed
/// (issue 15 item 2: a "boots then fails its probes" child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sickness {
    /// The application hangs: nothing answers until its watchdog reboots
    /// it (`hang`).
    Hang,
    /// The application crashes and the device reboots by itself (`crash`).
    Crash,
    /// The application's own commands (echo, groups 64 and up) answer an
    /// error (`fail`).
    Fail,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            drop: 0.0,
            corrupt_crc: 0.0,
            noise: 0.0,
            erase_delay: Duration::ZERO,
            test_delay: Duration::ZERO,
            reboot_at: None,
            boot_time: Duration::from_millis(200),
            pace_baud: None,
            rx_bufs: 2,
            work: Duration::ZERO,
            sick: None,
            sick_after: Duration::ZERO,
            watchdog: Duration::from_secs(3),
        }
    }
}

/// A `--faults` string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultsError {
    /// An item is not `name=value`.
    #[error("'{0}' is not name=value")]
    NotPair(String),
    /// An unknown fault name.
    #[error(
        "unknown fault '{0}' (drop, crc, noise, erase-ms, test-ms, reboot-at, boot-ms, pace, rx-bufs, work-ms, health, sick-after-ms, watchdog-ms)"
    )]
    Unknown(String),
    /// A value that does not fit its fault.
    #[error("{name}: '{value}' {why}")]
    BadValue {
        /// The fault.
        name: String,
        /// The value given.
        value: String,
        /// What it must be.
        why: &'static str,
    },
}

impl FromStr for Faults {
    type Err = FaultsError;

    /// `drop=0.05,crc=0.02,noise=0.1,erase-ms=1500,test-ms=500,reboot-at=65536,boot-ms=200,pace=115200,rx-bufs=2,work-ms=5`.
    fn from_str(s: &str) -> Result<Faults, FaultsError> {
        let mut f = Faults::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| FaultsError::NotPair(item.to_owned()))?;
            let bad = |why| FaultsError::BadValue {
                name: name.to_owned(),
                value: value.to_owned(),
                why,
            };
            let prob = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| bad("is not a probability in 0..=1"))
            };
            let num = || {
                value
                    .parse::<u64>()
                    .map_err(|_| bad("is not a whole number"))
            };
            match name {
                "drop" => f.drop = prob()?,
                "crc" => f.corrupt_crc = prob()?,
                "noise" => f.noise = prob()?,
                "erase-ms" => f.erase_delay = Duration::from_millis(num()?),
                "test-ms" => f.test_delay = Duration::from_millis(num()?),
                "reboot-at" => f.reboot_at = Some(num()?),
                "boot-ms" => f.boot_time = Duration::from_millis(num()?),
                "work-ms" => f.work = Duration::from_millis(num()?),
                "sick-after-ms" => f.sick_after = Duration::from_millis(num()?),
                "watchdog-ms" => f.watchdog = Duration::from_millis(num()?),
                "health" => {
                    f.sick = Some(match value {
                        "hang" => Sickness::Hang,
                        "crash" => Sickness::Crash,
                        "fail" => Sickness::Fail,
                        _ => return Err(bad("is not hang, crash or fail")),
                    })
                }
                "rx-bufs" => {
                    let n = num()?;
                    let n = usize::try_from(n).ok().filter(|n| (1..=64).contains(n));
                    f.rx_bufs = n.ok_or_else(|| bad("is not a buffer count in 1..=64"))?;
                }
                "pace" => {
                    let b = num()?;
                    let b = u32::try_from(b).ok().filter(|&b| b >= 10);
                    f.pace_baud = Some(b.ok_or_else(|| bad("is not a baud rate"))?);
                }
                other => return Err(FaultsError::Unknown(other.to_owned())),
            }
        }
        Ok(f)
    }
}

/// Everything the simulator is built from.
#[derive(Debug, Clone)]
pub struct SmpChildOptions {
    /// The device (buffer size, slot size, running version, reboot time).
    pub device: SimConfig,
    /// Faults at the seam.
    pub faults: Faults,
    /// Seed of every random decision.
    pub seed: u64,
}

impl Default for SmpChildOptions {
    fn default() -> Self {
        SmpChildOptions {
            device: SimConfig {
                reboot_time: Duration::from_millis(300),
                ..SimConfig::default()
            },
            faults: Faults::default(),
            seed: 1,
        }
    }
}

/// What the simulator did, for tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Requests the device received (decoded, CRC good).
    pub requests: u64,
    /// Upload requests at `off` 0.
    pub first_chunks: u64,
    /// Upload sessions started.
    pub sessions: u64,
    /// Offsets at which an off-0 request resumed a session.
    pub resumed_at: Vec<u64>,
    /// Answers dropped.
    pub dropped: u64,
    /// Answers sent with a damaged CRC.
    pub corrupted: u64,
    /// Console lines written.
    pub noise_lines: u64,
    /// Erase delays applied.
    pub erase_delays: u64,
    /// Power cycles.
    pub power_cycles: u64,
    /// Packets the device's decoder dropped.
    pub bad_packets: u64,
    /// Lines lost because every receive buffer was taken.
    pub rx_overruns: u64,
    /// Bytes the driver wrote to the line.
    pub rx_bytes: u64,
    /// Bytes the device wrote to the line.
    pub tx_bytes: u64,
    /// Times a new image fell sick after its test boot (`health=`).
    pub sick: u64,
}

#[derive(Debug, Default)]
struct Shared {
    stats: SimStats,
    /// The secondary slot as the device wrote it (the session's bytes so
    /// far while an upload runs).
    flash: Vec<u8>,
    events: Vec<SimEvent>,
    running: String,
    confirmed: bool,
    /// Image-state writes that marked an image for test (not confirm).
    test_marks: u32,
}

/// A running simulator; dropping it stops it.
#[derive(Debug)]
pub struct SmpChild {
    path: PathBuf,
    shared: Arc<Mutex<Shared>>,
    tasks: Vec<JoinHandle<()>>,
    /// Held open so the master never sees a hangup (module doc).
    _slave: SerialStream,
}

impl Drop for SmpChild {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
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
}

impl SmpChild {
    /// Starts the simulator on a new pty (call inside a tokio runtime).
    pub fn spawn(opts: SmpChildOptions) -> Result<SmpChild, SpawnError> {
        let (master, slave) = SerialStream::pair()?;
        let path = PathBuf::from(slave.name().ok_or(SpawnError::NoPath)?);
        let device = SimDevice::new(opts.device.clone());
        let shared = Arc::new(Mutex::new(Shared {
            running: device.running_version(),
            confirmed: device.running_confirmed(),
            ..Shared::default()
        }));
        let rate = opts.faults.pace_baud.map(|b| f64::from(b) / 10.0);
        let (rd, wr) = tokio::io::split(master);
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(64);
        let tasks = vec![
            tokio::spawn(rx_loop(rd, in_tx, rate, shared.clone())),
            tokio::spawn(tx_loop(wr, out_rx, rate, shared.clone())),
            tokio::spawn(
                Device {
                    dev: device,
                    rx: RxBuffers::new(opts.faults.rx_bufs),
                    decoder: Decoder::default(),
                    rate,
                    faults: opts.faults,
                    rng: Rng::new(opts.seed),
                    shared: shared.clone(),
                    out: out_tx,
                    origin: tokio::time::Instant::now(),
                    silent_until: None,
                    rebooted: false,
                    sick_at: None,
                    watchdog_at: None,
                }
                .run(in_rx),
            ),
        ];
        Ok(SmpChild {
            path,
            shared,
            tasks,
            _slave: slave,
        })
    }

    /// The pty path a driver (or `smpmgr`, `mcumgr`) opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.shared().stats.clone()
    }

    /// The bytes of the secondary slot as the device wrote them.
    pub fn flash(&self) -> Vec<u8> {
        self.shared().flash.clone()
    }

    /// Image-state writes so far that marked an image for test (the step
    /// before the reset).
    pub fn test_marks(&self) -> u32 {
        self.shared().test_marks
    }

    /// The device's events so far.
    pub fn events(&self) -> Vec<SimEvent> {
        self.shared().events.clone()
    }

    /// The running version and whether it is confirmed.
    pub fn running(&self) -> (String, bool) {
        let s = self.shared();
        (s.running.clone(), s.confirmed)
    }
}

/// Parses `1.2.3` or `1.2.3.4` (major.minor.revision.build) for the device.
pub fn parse_version(s: &str) -> Option<ImageVersion> {
    let p: Vec<&str> = s.trim().trim_start_matches(['v', 'V']).split('.').collect();
    if !(3..=4).contains(&p.len()) {
        return None;
    }
    Some(ImageVersion {
        major: p[0].parse().ok()?,
        minor: p[1].parse().ok()?,
        revision: p[2].parse().ok()?,
        build: p.get(3).map_or(Some(0), |b| b.parse().ok())?,
    })
}

/// An MCUboot image of `len` bytes that the device accepts and reports as
/// `version` once activated: header, seeded random body and a SHA-256 TLV,
/// so that the gateway's image check (src/image) passes it too. Below 72
/// bytes there is no room for the TLV area: header and body only.
pub fn mcuboot_image(version: ImageVersion, len: usize, seed: u64) -> Vec<u8> {
    use otabridge_codecs::mcuboot;
    const HASH_AREA: usize = 4 + 4 + 32;
    let header = otabridge_codecs::smp::sim::MCUBOOT_HEADER_LEN;
    let len = len.max(header);
    if len < header + HASH_AREA {
        let body = len - header;
        let mut img = mcuboot_header(version, u32::try_from(body).unwrap_or(u32::MAX)).to_vec();
        let mut rest = vec![0u8; body];
        Rng::new(seed).fill(&mut rest);
        img.extend_from_slice(&rest);
        return img;
    }
    let mut body = vec![0u8; len - header - HASH_AREA];
    Rng::new(seed).fill(&mut body);
    let v = mcuboot::ImageVersion {
        major: version.major,
        minor: version.minor,
        revision: version.revision,
        build: version.build,
    };
    mcuboot::image::assemble(
        v,
        0,
        header as u16,
        &body,
        &[],
        mcuboot::HashKind::Sha256,
        &[],
    )
}

/// When `n` bytes handed to the line at `at` have crossed it: the line is
/// busy until `free_at`, then carries `rate` bytes per second. `at` is taken
/// once per batch of bytes, before any sleeping, so a late timer wake-up
/// does not add to the next bytes' time (they were already waiting). Shared
/// by every pty simulator.
pub(crate) fn pace(
    free_at: &mut tokio::time::Instant,
    at: tokio::time::Instant,
    n: usize,
    rate: f64,
) -> tokio::time::Instant {
    *free_at = (*free_at).max(at) + Duration::from_secs_f64(n as f64 / rate);
    *free_at
}

/// Longest partial line kept while waiting for its newline; beyond it the
/// bytes go to the device as they are (no SMP line is this long).
const MAX_PARTIAL: usize = 4096;

/// Driver → device: each line reaches the device, with the time it arrived,
/// when its last byte would have crossed the wire.
async fn rx_loop(
    mut rd: tokio::io::ReadHalf<SerialStream>,
    to_device: mpsc::Sender<(tokio::time::Instant, Vec<u8>)>,
    rate: Option<f64>,
    shared: Arc<Mutex<Shared>>,
) {
    let mut buf = vec![0u8; 4096];
    let mut partial: Vec<u8> = Vec::new();
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
        shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats
            .rx_bytes += n as u64;
        let at = tokio::time::Instant::now();
        for seg in buf[..n].split_inclusive(|&b| b == b'\n') {
            // Lines, not read() pieces: each takes one receive buffer.
            partial.extend_from_slice(seg);
            if !seg.ends_with(b"\n") && partial.len() < MAX_PARTIAL {
                continue;
            }
            let line = std::mem::take(&mut partial);
            let arrived = match rate {
                Some(rate) => {
                    let t = pace(&mut free_at, at, line.len(), rate);
                    tokio::time::sleep_until(t).await;
                    t
                }
                None => at,
            };
            if to_device.send((arrived, line)).await.is_err() {
                return;
            }
        }
    }
}

/// Device → driver, paced like [`rx_loop`].
async fn tx_loop(
    mut wr: tokio::io::WriteHalf<SerialStream>,
    mut from_device: mpsc::Receiver<(tokio::time::Instant, Vec<u8>)>,
    rate: Option<f64>,
    shared: Arc<Mutex<Shared>>,
) {
    let mut free_at = tokio::time::Instant::now();
    while let Some((at, bytes)) = from_device.recv().await {
        // The device hands an answer over once it is done with the request.
        tokio::time::sleep_until(at).await;
        if let Some(rate) = rate {
            tokio::time::sleep_until(pace(&mut free_at, at, bytes.len(), rate)).await;
        }
        shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats
            .tx_bytes += bytes.len() as u64;
        // write_all: the pty buffer takes what fits and the rest follows.
        // No flush: on tokio-serial it is a blocking tcdrain (see the driver's `Link::send`).
        if wr.write_all(&bytes).await.is_err() {
            debug!("smp-child: write to the pty failed");
        }
    }
}

/// Console lines a Zephyr application prints between SMP packets.
const NOISE: &[&str] = &[
    "[00:00:12.345,000] <inf> app: sensor 21.5 C\r\n",
    "[00:00:12.400,000] <wrn> net: link quality low\r\n",
    "uart:~$ \r\n",
    "[00:00:13.002,000] <dbg> mcumgr: rx 0x06 0x09\r\n",
];

struct Device {
    dev: SimDevice,
    /// The receive line buffers in front of the device.
    rx: RxBuffers,
    decoder: Decoder,
    /// Line rate in bytes per second, when paced.
    rate: Option<f64>,
    faults: Faults,
    rng: Rng,
    shared: Arc<Mutex<Shared>>,
    /// To the line, stamped with when the device wrote it.
    out: mpsc::Sender<(tokio::time::Instant, Vec<u8>)>,
    origin: tokio::time::Instant,
    /// After a power cycle: nothing reads the UART until then.
    silent_until: Option<tokio::time::Instant>,
    rebooted: bool,
    /// When the new test image falls sick (`health=`).
    sick_at: Option<tokio::time::Instant>,
    /// When the watchdog reboots a hung application.
    watchdog_at: Option<tokio::time::Instant>,
}

impl Device {
    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tokio instant as the device's clock.
    fn at(&self, t: tokio::time::Instant) -> Instant {
        let ms = t.saturating_duration_since(self.origin).as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn tokio_at(&self, t: Instant) -> tokio::time::Instant {
        self.origin + Duration::from_millis(t.as_millis())
    }

    async fn run(mut self, mut from_line: mpsc::Receiver<(tokio::time::Instant, Vec<u8>)>) {
        loop {
            let wake = [self.dev.poll_timeout(), self.rx.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .map(|t| self.tokio_at(t));
            let wake = [wake, self.sick_at, self.watchdog_at]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                line = from_line.recv() => {
                    let Some((arrived, line)) = line else { return };
                    let t = self.at(arrived);
                    self.read_buffers(t).await;
                    if !self.rx.arrive(t, line) {
                        self.shared().stats.rx_overruns += 1;
                    }
                    self.read_buffers(t).await;
                }
                _ = crate::child::sleep_until_opt(wake) => {
                    self.health_faults().await;
                    let now = self.now();
                    self.dev.handle_timeout(now);
                    self.collect_events();
                    self.read_buffers(now).await;
                }
            }
        }
    }

    /// The `health=` faults that are due: the new image falls sick, or a
    /// hung one's watchdog fires.
    async fn health_faults(&mut self) {
        let now = tokio::time::Instant::now();
        if self.watchdog_at.is_some_and(|t| t <= now) {
            self.watchdog_at = None;
            info!("smp-child: the watchdog reboots the hung application");
            self.power_cycle().await;
        }
        if self.sick_at.is_none_or(|t| t > now) {
            return;
        }
        self.sick_at = None;
        if self.dev.running_confirmed() {
            return; // confirmed before it fell sick: healthy for good
        }
        self.shared().stats.sick += 1;
        match self.faults.sick {
            Some(Sickness::Hang) => {
                info!("smp-child: the new image hangs");
                self.dev.set_hung(true);
                self.watchdog_at = Some(now + self.faults.watchdog);
            }
            Some(Sickness::Crash) => {
                info!("smp-child: the new image crashes; the device reboots");
                self.power_cycle().await;
            }
            Some(Sickness::Fail) => {
                info!("smp-child: the new image's commands fail");
                self.dev.set_app_failing(true);
            }
            None => {}
        }
    }

    /// Power lost (or a crash, a watchdog): the device reboots at once,
    /// is silent for `boot-ms` and prints a banner.
    async fn power_cycle(&mut self) {
        self.dev.power_cycle(self.now());
        self.collect_events();
        self.silent_until = Some(tokio::time::Instant::now() + self.faults.boot_time);
        self.shared().stats.power_cycles += 1;
        let banner = b"*** Booting Zephyr OS build v3.7.0 ***\r\n".to_vec();
        let out = self.out.clone();
        let boot = self.faults.boot_time;
        tokio::spawn(async move {
            tokio::time::sleep(boot).await;
            let _ = out.send((tokio::time::Instant::now(), banner)).await;
        });
    }

    /// The device reads the lines waiting in its buffers that it gets to
    /// by `t`; each completed request keeps it busy.
    async fn read_buffers(&mut self, t: Instant) {
        while let Some((read_at, line)) = self.rx.next_line(t) {
            let mut rest = &line[..];
            while !rest.is_empty() {
                let used = self.decoder.handle_bytes(rest);
                rest = &rest[used..];
                match self.decoder.poll_event() {
                    Some(DecodeEvent::Message(msg)) => self.on_request(&msg, read_at).await,
                    Some(_) => self.shared().stats.bad_packets += 1,
                    None => {}
                }
            }
        }
    }

    fn collect_events(&mut self) -> (bool, Option<u64>) {
        let mut started = false;
        let mut resumed = None;
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(ev) = self.dev.poll_event() {
            match &ev {
                SimEvent::UploadStarted { len } => {
                    started = true;
                    s.stats.sessions += 1;
                    s.flash = vec![0; usize::try_from(*len).unwrap_or(0)];
                }
                SimEvent::UploadResumed { off } => {
                    resumed = Some(*off);
                    s.stats.resumed_at.push(*off);
                }
                other => debug!("smp-child: {other:?}"),
            }
            if let SimEvent::Booted { reverted, .. } = &ev {
                // A test boot of a new image (not a revert): it falls sick
                // after a while, if it is to; any other boot heals it.
                let test_boot = !reverted && !self.dev.running_confirmed();
                self.sick_at = (test_boot && self.faults.sick.is_some())
                    .then(|| tokio::time::Instant::now() + self.faults.sick_after);
                self.watchdog_at = None;
            }
            if matches!(
                ev,
                SimEvent::Booted { .. } | SimEvent::UploadComplete { .. }
            ) {
                info!("smp-child: {ev:?}");
            }
            s.events.push(ev);
        }
        s.running = self.dev.running_version();
        s.confirmed = self.dev.running_confirmed();
        (started, resumed)
    }

    /// A request the device read at `at`: answered once it is done with it.
    async fn on_request(&mut self, msg: &[u8], at: Instant) {
        if self.silent_until.is_some_and(|t| self.tokio_at(at) < t) {
            return; // Booting: nothing reads the UART.
        }
        self.shared().stats.requests += 1;
        // The upload chunk, to mirror the device's flash byte for byte.
        let chunk = split_message(msg).ok().and_then(|(h, body)| {
            let upload = (h.op, h.group, h.id) == (Op::Write, group::IMAGE, command::IMAGE_UPLOAD);
            upload
                .then(|| message::decode_upload_request(body).ok())
                .flatten()
        });
        if chunk.as_ref().is_some_and(|c| c.off == Some(0)) {
            self.shared().stats.first_chunks += 1;
        }
        let test_mark = split_message(msg).ok().is_some_and(|(h, body)| {
            (h.op, h.group, h.id) == (Op::Write, group::IMAGE, command::IMAGE_STATE)
                && message::decode_state_write(body)
                    .is_ok_and(|(hash, confirm)| hash.is_some() && !confirm)
        });
        self.dev.handle_message(msg, at);
        let (started, _) = self.collect_events();
        let mut done = at + self.faults.work;
        if test_mark {
            self.shared().test_marks += 1;
            done = done + self.faults.test_delay;
        }
        if started && !self.faults.erase_delay.is_zero() {
            // Erasing the slot blocks the device, answers included.
            self.shared().stats.erase_delays += 1;
            done = done + self.faults.erase_delay;
        }
        self.rx.busy(done);
        while let Some(rsp) = self.dev.poll_transmit() {
            let mut held = None;
            if let Some(c) = &chunk {
                held = self.mirror(c, &rsp);
            }
            if let (Some(at), Some(held)) = (self.faults.reboot_at, held) {
                if !self.rebooted && held >= at {
                    // Power lost before the answer left the UART.
                    self.rebooted = true;
                    self.power_cycle().await;
                    return;
                }
            }
            self.send(rsp, done).await;
        }
    }

    /// Writes an accepted chunk into the flash mirror; returns how many
    /// bytes the device now holds, when `rsp` acknowledged `c`.
    fn mirror(&mut self, c: &message::UploadRequestOwned, rsp: &[u8]) -> Option<u64> {
        let (_, body) = split_message(rsp).ok()?;
        let r = message::upload_response(body).ok()?.ok()?;
        let off = c.off?;
        let end = off + c.data.len() as u64;
        if r.off != end {
            return None; // resynced, resumed or refused: nothing written
        }
        let mut s = self.shared();
        let (o, e) = (usize::try_from(off).ok()?, usize::try_from(end).ok()?);
        s.flash.get_mut(o..e)?.copy_from_slice(&c.data);
        Some(end)
    }

    /// Hands an answer to the line at `done`, with the faults; on a paced
    /// line the device stays busy while it leaves (`uart_poll_out`).
    async fn send(&mut self, rsp: Vec<u8>, done: Instant) {
        let leave = self.tokio_at(done);
        let mut framed = serial::encode(&rsp, serial::MAX_LINE);
        if let Some(rate) = self.rate {
            let tx = Duration::from_secs_f64(framed.len() as f64 / rate);
            self.rx.busy(done + tx);
        }
        if self.rng.next_f64() < self.faults.drop {
            self.shared().stats.dropped += 1;
            return;
        }
        if self.rng.next_f64() < self.faults.noise {
            let line = NOISE[(self.rng.next_u32() as usize) % NOISE.len()];
            self.shared().stats.noise_lines += 1;
            let _ = self.out.send((leave, line.as_bytes().to_vec())).await;
        }
        if self.rng.next_f64() < self.faults.corrupt_crc {
            corrupt_crc(&mut framed, rsp.len() + 4);
            self.shared().stats.corrupted += 1;
        }
        let _ = self.out.send((leave, framed)).await;
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Damages the CRC of a framed packet of `packet_len` bytes (length field,
/// message, CRC) by changing one base64 character of its last group that
/// encodes CRC bits only: the last character when the packet fills whole
/// groups (it carries the CRC's low six bits), otherwise the first
/// character of the padded group (`XY==` or `XYZ=`), whose six bits are the
/// top of the CRC's last or first byte.
fn corrupt_crc(framed: &mut [u8], packet_len: usize) {
    // framed ends with "...\n"; the last group is the 4 chars before it.
    let end = framed.len() - 1;
    let i = if packet_len % 3 == 0 {
        end - 1
    } else {
        end - 4
    };
    let pos = B64.iter().position(|&c| c == framed[i]).unwrap_or(0);
    framed[i] = B64[(pos + 1) % 64];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_name_their_mistakes() {
        let f: Faults =
            "drop=0.1, crc=0.05,noise=1,erase-ms=1500,reboot-at=4096,boot-ms=50,pace=115200"
                .parse()
                .unwrap();
        assert_eq!(f.drop, 0.1);
        assert_eq!(f.corrupt_crc, 0.05);
        assert_eq!(f.noise, 1.0);
        assert_eq!(f.erase_delay, Duration::from_millis(1500));
        assert_eq!(f.reboot_at, Some(4096));
        assert_eq!(f.boot_time, Duration::from_millis(50));
        assert_eq!(f.pace_baud, Some(115_200));
        assert_eq!("".parse::<Faults>().unwrap(), Faults::default());
        let h: Faults = "health=crash,sick-after-ms=500,watchdog-ms=900"
            .parse()
            .unwrap();
        assert_eq!(
            (h.sick, h.sick_after, h.watchdog),
            (
                Some(Sickness::Crash),
                Duration::from_millis(500),
                Duration::from_millis(900)
            )
        );
        assert!(matches!(
            "health=sad".parse::<Faults>(),
            Err(FaultsError::BadValue { .. })
        ));
        assert_eq!(
            "drop".parse::<Faults>(),
            Err(FaultsError::NotPair("drop".into()))
        );
        assert_eq!(
            "fire=1".parse::<Faults>(),
            Err(FaultsError::Unknown("fire".into()))
        );
        assert!(matches!(
            "drop=2".parse::<Faults>(),
            Err(FaultsError::BadValue { .. })
        ));
        assert!(matches!(
            "pace=0".parse::<Faults>(),
            Err(FaultsError::BadValue { .. })
        ));
    }

    #[test]
    fn corrupted_crc_is_a_bad_crc_for_every_packet_length() {
        for n in 10..80usize {
            let msg: Vec<u8> = (0..n as u8).collect();
            let mut framed = serial::encode(&msg, serial::MAX_LINE);
            corrupt_crc(&mut framed, n + 4);
            let ev = Decoder::default().decode_all(&framed);
            assert!(
                matches!(ev.as_slice(), [DecodeEvent::BadCrc { .. }]),
                "{n}: {ev:?}"
            );
        }
    }

    #[test]
    fn versions_and_images() {
        let v = parse_version("v2.1.3.7").unwrap();
        assert_eq!(v.to_string(), "2.1.3.7");
        assert_eq!(parse_version("1.0.0").unwrap().to_string(), "1.0.0");
        assert!(parse_version("1.0").is_none());
        let img = mcuboot_image(v, 1000, 3);
        assert_eq!(img.len(), 1000);
        assert_eq!(otabridge_codecs::smp::sim::header_version(&img), Some(v));
        assert_eq!(img, mcuboot_image(v, 1000, 3));
        let view = otabridge_codecs::mcuboot::ImageView::new(&img).unwrap();
        assert_eq!(view.header().version.to_string(), "2.1.3.7");
        assert_eq!(mcuboot_image(v, 40, 3).len(), 40);
    }
}
