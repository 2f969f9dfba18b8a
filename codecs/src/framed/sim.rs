//! The child side: a device that plays any profile, and a lossy link.
//!
//! [`Device`] is sans-IO like the engine: it answers requests the way a
//! sensor with a flash slot would (`codecs/profiles/README.md`, "What a child
//! is expected to do"), reboots, and can be told to misbehave. [`Link`] sits
//! at the byte seam between the two ends (where smoltcp puts its fault
//! injector) and drops, corrupts or prefixes noise to what it carries. A
//! tokio/pty driver for the device lives in the daemon's `sim` module.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::codec::{self, Decoder, Values};
use super::profile::{MessageKind, Profile, StatusAction};
use super::ImageDigest;
use crate::iotda::ResultCode;
use crate::rng::Rng;
use crate::time::Instant;

/// Answer the `nth` request of `kind` with `status` instead of handling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    /// The request kind.
    pub kind: MessageKind,
    /// Which one, counting from 1 over the device's life.
    pub nth: u32,
    /// The status value to answer with.
    pub status: u32,
}

/// How the simulated child behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The version it runs.
    pub version: String,
    /// Its flash slot: a larger image is refused with the profile's status
    /// for IoTDA code 5 (insufficient storage).
    pub capacity: u32,
    /// A reboot keeps the update session and its offset (flash-backed) or
    /// loses them.
    pub persist_session: bool,
    /// Time from a reboot to answering again.
    pub reboot_time: Duration,
    /// Time from answering `activate` to rebooting.
    pub activate_delay: Duration,
    /// Reboot once, without answering, right after writing the chunk that
    /// reaches this offset.
    pub reboot_at_offset: Option<u32>,
    /// Replies to substitute.
    pub inject: Vec<Injection>,
    /// After activation, boot the old image again (a failed install).
    pub install_fails: bool,
}

impl DeviceConfig {
    /// A healthy child running `version` with a 1 MiB slot.
    pub fn new(version: &str) -> Self {
        DeviceConfig {
            version: version.to_string(),
            capacity: 1 << 20,
            persist_session: true,
            reboot_time: Duration::from_millis(500),
            activate_delay: Duration::from_millis(50),
            reboot_at_offset: None,
            inject: Vec::new(),
            install_fails: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Session {
    size: u32,
    crc32: Option<u32>,
    sha256: Option<[u8; 32]>,
    version: Option<String>,
    image: Vec<u8>,
    verified: bool,
}

/// A simulated child speaking a profile's protocol.
///
/// # Driver call order
/// [`handle_input`](Self::handle_input) with bytes from the line, write every
/// [`poll_transmit`](Self::poll_transmit), and call
/// [`handle_timeout`](Self::handle_timeout) at
/// [`poll_timeout`](Self::poll_timeout) (reboots take time).
#[derive(Debug)]
pub struct Device {
    profile: Arc<Profile>,
    config: DeviceConfig,
    decoder: Decoder,
    version: String,
    session: Option<Session>,
    transmit: VecDeque<Vec<u8>>,
    offline_until: Option<Instant>,
    reboot_at: Option<Instant>,
    counts: [u32; 6],
    chunk_offsets: Vec<u32>,
    reboots: u32,
    reboot_fault_done: bool,
    installed: Option<Vec<u8>>,
    /// `activate` was accepted: the next reboot installs the session.
    activating: bool,
}

impl Device {
    /// A device for `profile` behaving as `config` says.
    pub fn new(profile: Arc<Profile>, config: DeviceConfig) -> Self {
        Device {
            decoder: Decoder::new(&profile.framing),
            version: config.version.clone(),
            profile,
            config,
            session: None,
            transmit: VecDeque::new(),
            offline_until: None,
            reboot_at: None,
            counts: [0; 6],
            chunk_offsets: Vec::new(),
            reboots: 0,
            reboot_fault_done: false,
            installed: None,
            activating: false,
        }
    }

    /// The version it runs.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The bytes received in the current update session.
    pub fn received(&self) -> Option<&[u8]> {
        self.session.as_ref().map(|s| &s.image[..])
    }

    /// The image it booted into at its last successful activation.
    pub fn installed(&self) -> Option<&[u8]> {
        self.installed.as_deref()
    }

    /// Requests of `kind` handled so far (while online).
    pub fn requests(&self, kind: MessageKind) -> u32 {
        self.counts[kind as usize]
    }

    /// Offsets of every chunk request, in arrival order.
    pub fn chunk_offsets(&self) -> &[u32] {
        &self.chunk_offsets
    }

    /// Reboots so far.
    pub fn reboots(&self) -> u32 {
        self.reboots
    }

    /// Whether it is rebooting at `now`.
    pub fn is_offline(&self, now: Instant) -> bool {
        self.offline_until.is_some_and(|t| now < t)
    }

    /// The next reply to write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.reboot_at, self.offline_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: finish pending reboots.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.reboot_at.is_some_and(|t| now >= t) {
            self.reboot_at = None;
            self.reboot(now);
        }
        if self.offline_until.is_some_and(|t| now >= t) {
            self.offline_until = None;
        }
    }

    /// Bytes from the line; ignored while rebooting.
    pub fn handle_input(&mut self, mut bytes: &[u8], now: Instant) {
        if self.is_offline(now) {
            return;
        }
        while !bytes.is_empty() {
            let n = self.decoder.push(bytes);
            bytes = &bytes[n..];
            while let Some(r) = self.decoder.next() {
                if let Ok(frame) = r {
                    self.on_request(frame, now);
                    if self.is_offline(now) {
                        return;
                    }
                }
            }
        }
    }

    /// Reboots now: offline for `reboot_time`, the session kept or lost as
    /// configured, a pending activation installed.
    pub fn reboot(&mut self, now: Instant) {
        self.reboots += 1;
        self.decoder.clear();
        self.transmit.clear();
        self.offline_until = Some(now + self.config.reboot_time);
        let activating = std::mem::take(&mut self.activating)
            && self.session.as_ref().is_some_and(|s| s.verified);
        if activating {
            let s = self.session.take().expect("checked");
            if !self.config.install_fails {
                self.version = s.version.unwrap_or_else(|| "installed".into());
                self.installed = Some(s.image);
            }
        } else if !self.config.persist_session {
            self.session = None;
        }
    }

    fn status(&self, action: StatusAction) -> u32 {
        let p = &self.profile;
        let found = match action {
            StatusAction::Fail { result_code } => p.status_failing_with(result_code),
            StatusAction::Retry { .. } => p.status_busy(),
            other => p.status_for(other),
        };
        // A profile without that status: the first failing one, else ok.
        found
            .or_else(|| {
                p.statuses
                    .iter()
                    .find(|s| matches!(s.action, StatusAction::Fail { .. }))
                    .map(|s| s.value)
            })
            .unwrap_or_else(|| p.status_for(StatusAction::Ok).unwrap_or(0))
    }

    fn ok(&self) -> u32 {
        self.status(StatusAction::Ok)
    }

    // Long on purpose: one arm per request kind of the simulated device.
    fn on_request(&mut self, frame: codec::Frame, now: Instant) {
        let profile = Arc::clone(&self.profile);
        let Some(msg) = profile.message_by_request(frame.command) else {
            return;
        };
        let Ok(req) = codec::decode_payload(&msg.request, &frame.payload) else {
            return; // a real child drops what it cannot parse
        };
        let kind = msg.kind;
        self.counts[kind as usize] += 1;
        let nth = self.counts[kind as usize];
        let injected = self
            .config
            .inject
            .iter()
            .find(|i| i.kind == kind && i.nth == nth)
            .map(|i| i.status);

        let mut reply = Values::default();
        let mut reboot_now = false;
        let mut reboot_later = false;
        if let Some(s) = injected {
            reply.status = Some(s);
            reply.offset = Some(self.offset());
            reply.version = Some(self.version.clone());
        } else {
            match kind {
                MessageKind::VersionQuery => {
                    reply.status = Some(self.ok());
                    reply.version = Some(self.version.clone());
                }
                MessageKind::Begin => reply.status = Some(self.begin(&req)),
                MessageKind::OffsetQuery => {
                    reply.status = Some(match &self.session {
                        Some(_) => self.ok(),
                        None => self.status(StatusAction::Restart),
                    });
                    reply.offset = Some(self.offset());
                }
                MessageKind::Chunk => {
                    let off = req.offset.unwrap_or_default();
                    self.chunk_offsets.push(off);
                    reply.status = Some(self.chunk(off, req.data.as_deref().unwrap_or_default()));
                    reply.offset = Some(self.offset());
                    if let Some(at) = self.config.reboot_at_offset {
                        if !self.reboot_fault_done && self.offset() >= at {
                            self.reboot_fault_done = true;
                            reboot_now = true;
                        }
                    }
                }
                MessageKind::Verify => reply.status = Some(self.verify(&req)),
                MessageKind::Activate => {
                    let verified = self.session.as_ref().is_some_and(|s| s.verified);
                    if verified {
                        reply.status = Some(self.ok());
                        self.activating = true;
                        reboot_later = true;
                    } else {
                        reply.status = Some(self.status(StatusAction::Fail {
                            result_code: ResultCode::INSTALL_FAIL,
                        }));
                    }
                }
            }
        }

        if reboot_now {
            self.reboot(now);
            return;
        }
        if let Some(r) = &msg.reply {
            let mut payload = Vec::new();
            let mut out = Vec::new();
            if codec::encode_payload(&r.fields, &reply, &mut payload).is_ok()
                && codec::encode(&profile.framing, r.command, frame.seq, &payload, &mut out).is_ok()
            {
                self.transmit.push_back(out);
            }
        }
        if reboot_later {
            if msg.reply.is_some() {
                self.reboot_at = Some(now + self.config.activate_delay);
            } else {
                self.reboot(now);
            }
        }
    }

    fn offset(&self) -> u32 {
        self.session.as_ref().map_or(0, |s| s.image.len() as u32)
    }

    fn begin(&mut self, req: &Values) -> u32 {
        let size = req.size.unwrap_or_default();
        if size > self.config.capacity {
            return self.status(StatusAction::Fail {
                result_code: ResultCode::LOW_SPACE,
            });
        }
        let same = self.session.as_ref().is_some_and(|s| {
            s.size == size
                && s.crc32 == req.crc32
                && s.sha256 == req.sha256
                && s.version == req.version
        });
        if !same {
            self.session = Some(Session {
                size,
                crc32: req.crc32,
                sha256: req.sha256,
                version: req.version.clone(),
                image: Vec::new(),
                verified: false,
            });
        }
        self.ok()
    }

    fn chunk(&mut self, off: u32, data: &[u8]) -> u32 {
        let resync = self.status(StatusAction::Resync);
        let Some(s) = self.session.as_mut() else {
            return self.status(StatusAction::Restart);
        };
        let have = s.image.len() as u64;
        let (off, end) = (u64::from(off), u64::from(off) + data.len() as u64);
        if end > u64::from(s.size) {
            return self.status(StatusAction::Fail {
                result_code: ResultCode::LOW_SPACE,
            });
        }
        if off == have {
            s.image.extend_from_slice(data);
            s.verified = false;
        } else if end > have {
            // A hole or a partial overlap: tell the gateway where we are.
            return resync;
        }
        // else: a duplicate of bytes already written.
        self.ok()
    }

    fn verify(&mut self, req: &Values) -> u32 {
        let (restart, resync, ok) = (
            self.status(StatusAction::Restart),
            self.status(StatusAction::Resync),
            self.ok(),
        );
        let bad = self.status(StatusAction::Fail {
            result_code: ResultCode::CHECK_FAIL,
        });
        let Some(s) = self.session.as_mut() else {
            return restart;
        };
        if s.image.len() as u32 != s.size {
            return resync;
        }
        let (_, crc32, sha256) = ImageDigest::of(&s.image);
        let expected_crc = req.crc32.or(s.crc32);
        let expected_sha = req.sha256.or(s.sha256);
        if expected_crc.is_some_and(|c| c != crc32) || expected_sha.is_some_and(|h| h != sha256) {
            return bad;
        }
        if req.size.is_some_and(|n| n != s.size) {
            return bad;
        }
        s.verified = true;
        ok
    }
}

/// Faults a [`Link`] injects, as probabilities per write.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkFaults {
    /// Lose the whole write.
    pub drop: f64,
    /// Flip one bit of one byte.
    pub corrupt: f64,
    /// Put up to `max_noise` random bytes before the write.
    pub noise: f64,
    /// Most noise bytes per write.
    pub max_noise: usize,
}

/// What a [`Link`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Writes carried.
    pub writes: u64,
    /// Writes dropped.
    pub dropped: u64,
    /// Writes corrupted.
    pub corrupted: u64,
    /// Writes given noise.
    pub noisy: u64,
}

/// One direction of a serial line with faults, seeded.
#[derive(Debug, Clone)]
pub struct Link {
    faults: LinkFaults,
    rng: Rng,
    stats: LinkStats,
}

impl Link {
    /// A link injecting `faults`, its choices fixed by `seed`.
    pub fn new(faults: LinkFaults, seed: u64) -> Self {
        Link {
            faults,
            rng: Rng::new(seed),
            stats: LinkStats::default(),
        }
    }

    /// A link that carries everything intact.
    pub fn perfect() -> Self {
        Self::new(LinkFaults::default(), 0)
    }

    /// What it did so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// What arrives at the other end of one write (empty if dropped).
    pub fn carry(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.stats.writes += 1;
        if self.rng.next_f64() < self.faults.drop {
            self.stats.dropped += 1;
            return Vec::new();
        }
        let mut out = Vec::with_capacity(bytes.len() + self.faults.max_noise);
        if self.faults.max_noise > 0 && self.rng.next_f64() < self.faults.noise {
            self.stats.noisy += 1;
            let n = self.rng.range_inclusive(1, self.faults.max_noise as u64) as usize;
            let mut noise = vec![0u8; n];
            self.rng.fill(&mut noise);
            out.extend_from_slice(&noise);
        }
        let start = out.len();
        out.extend_from_slice(bytes);
        if !bytes.is_empty() && self.rng.next_f64() < self.faults.corrupt {
            self.stats.corrupted += 1;
            let i = start + self.rng.range_inclusive(0, bytes.len() as u64 - 1) as usize;
            out[i] ^= 1 << self.rng.range_inclusive(0, 7);
        }
        out
    }
}

/// A simulated child behind a faulty line: the one object a pty or socket
/// driver runs. Bytes from the gateway pass the inbound [`Link`] (its faults
/// apply per read the driver passes in), replies pass the outbound one (per
/// frame).
#[derive(Debug)]
pub struct FaultyChild {
    device: Device,
    inbound: Link,
    outbound: Link,
}

impl FaultyChild {
    /// `device` behind links injecting `faults` both ways, seeded by `seed`.
    pub fn new(device: Device, faults: LinkFaults, seed: u64) -> Self {
        FaultyChild {
            device,
            inbound: Link::new(faults, seed),
            outbound: Link::new(faults, seed ^ 0xA5A5_A5A5_A5A5_A5A5),
        }
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What the two links did: (inbound, outbound).
    pub fn link_stats(&self) -> (LinkStats, LinkStats) {
        (self.inbound.stats(), self.outbound.stats())
    }

    /// Bytes the gateway wrote.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        let carried = self.inbound.carry(bytes);
        self.device.handle_input(&carried, now);
    }

    /// The next bytes to write towards the gateway (a dropped reply is
    /// skipped).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        while let Some(frame) = self.device.poll_transmit() {
            let carried = self.outbound.carry(&frame);
            if !carried.is_empty() {
                return Some(carried);
            }
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.device.poll_timeout()
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.device.handle_timeout(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framed::engine::{Engine, Event, ImageInfo, Outcome, Upgrade};
    use crate::framed::profile::builtin;

    #[test]
    fn a_faulty_child_still_gets_the_image_and_the_faults_happen() {
        for name in ["acme-rs485", "nordlys-uart"] {
            let p = Arc::new(builtin(name).unwrap().unwrap());
            let image: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 256) as u8).collect();
            let upgrade = Upgrade {
                image: ImageInfo::of(&image, "3.0"),
                skip_if_current: false,
                version_policy: Default::default(),
                seed: 1,
            };
            let mut e = Engine::new(Arc::clone(&p), upgrade, Instant::ZERO).unwrap();
            let faults = LinkFaults {
                drop: 0.03,
                corrupt: 0.03,
                noise: 0.1,
                max_noise: 8,
            };
            let mut child = FaultyChild::new(
                Device::new(Arc::clone(&p), DeviceConfig::new("2.0")),
                faults,
                9,
            );
            let mut now = Instant::ZERO;
            let outcome = 'run: loop {
                if let Some(r) = e.poll_read() {
                    let end = r.offset as usize + r.len;
                    e.handle_data(r.offset, &image[r.offset as usize..end], now)
                        .unwrap();
                }
                while let Some(b) = e.poll_transmit() {
                    child.handle_input(&b, now);
                }
                while let Some(b) = child.poll_transmit() {
                    e.handle_input(&b, now);
                }
                while let Some(ev) = e.poll_event() {
                    if let Event::Finished(o) = ev {
                        break 'run o;
                    }
                }
                if e.poll_read().is_some() {
                    continue;
                }
                let next = [e.poll_timeout(), child.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap();
                now = now.max(next);
                e.handle_timeout(now);
                child.handle_timeout(now);
                assert!(now.as_millis() < 3_600_000, "{name}: runaway");
            };
            assert_eq!(
                outcome,
                Outcome::Upgraded {
                    version: "3.0".into()
                },
                "{name}"
            );
            assert_eq!(child.device().installed(), Some(&image[..]));
            let (i, o) = child.link_stats();
            assert!(
                i.dropped + o.dropped > 0 && i.corrupted + o.corrupted > 0,
                "{name}"
            );
            assert!(i.noisy + o.noisy > 0, "{name}");
        }
    }
}
