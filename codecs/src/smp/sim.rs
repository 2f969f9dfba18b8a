//! A simulated SMP device: the server side of image upload, image state,
//! reset and params, following Zephyr's rules. Pure, like the engines: a
//! driver in `src/sim` runs it on a pty; tests pair it with the client
//! engines in simulated time.
//!
//! Rules and their sources:
//! - Upload (`zephyr_img_mgmt.c` `img_mgmt_upload_inspect`, `img_mgmt.c`
//!   `img_mgmt_upload`): a request without `off` gets INVALID_OFFSET. At
//!   `off` 0 a non-empty `sha` equal to the session's resumes (nothing is
//!   written; the answer is the session's `off`); otherwise a new session
//!   starts, which needs `len` (INVALID_LENGTH), `len` ≤ slot size
//!   (INVALID_IMAGE_TOO_LARGE), `sha` ≤ 32 bytes (INVALID_HASH), at least
//!   32 bytes of data (INVALID_IMAGE_HEADER) starting with the MCUboot
//!   magic 0x96f3b83d little-endian (INVALID_IMAGE_HEADER_MAGIC). A wrong
//!   `off` is dropped and answered with the expected one; data past `len`
//!   is INVALID_IMAGE_DATA_OVERRUN. The final answer carries `match` when
//!   [`SimConfig::image_check`] is on (`CONFIG_IMG_ENABLE_IMAGE_CHECK`).
//! - Messages longer than `buf_size - 4` are dropped unanswered (the netbuf
//!   cannot hold them; smpclient `transport/serial/encoded.py`).
//! - The version comes from the uploaded image's MCUboot header
//!   (mcuboot `boot/bootutil/include/bootutil/image.h` `struct image_header`:
//!   `ih_ver` at offset 20 = major u8, minor u8, revision u16 LE, build u32
//!   LE), formatted as Zephyr's `img_mgmt_ver_str` does: `major.minor.rev`,
//!   plus `.build` when the build is non-zero.
//! - Image state (`img_mgmt_state.c`): test marks the secondary pending;
//!   confirm with no hash or the active hash confirms the running image.
//!   Reset answers first, then the device is silent for
//!   [`SimConfig::reboot_time`]. At boot (MCUboot `docs/design.md`, swap):
//!   a pending secondary is swapped in unconfirmed; an unconfirmed primary
//!   is reverted.
//! - The `hash` the state list reports is the SHA-256 of the uploaded file,
//!   a stand-in for MCUboot's `IMAGE_TLV_SHA256` (which hashes the header,
//!   body and protected TLVs only).
//! - With SMP v1 requests, image errors go through Zephyr's lossy
//!   `img_mgmt_translate_error_code`; codes outside the cases it lists are
//!   reported as EUNKNOWN (an inference).
//!
//! Memory is constant in the image size: the session keeps the header, a
//! running SHA-256 and the offset, not the image.

use super::header::{build_message, command, group, split_message, Header, Op, SmpVersion};
use super::message::{self, img_err, mgmt_err, ImageSlot, Params, SmpErr, UploadResponse};
use super::serial::PACKET_OVERHEAD;
use crate::time::Instant;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::time::Duration;

/// MCUboot's `IMAGE_MAGIC` (`image.h`), little-endian at header offset 0.
pub const MCUBOOT_MAGIC: u32 = 0x96f3_b83d;
/// `sizeof(struct image_header)`.
pub const MCUBOOT_HEADER_LEN: usize = 32;

/// An MCUboot image version (`struct image_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageVersion {
    /// `iv_major`.
    pub major: u8,
    /// `iv_minor`.
    pub minor: u8,
    /// `iv_revision`.
    pub revision: u16,
    /// `iv_build_num`.
    pub build: u32,
}

impl std::fmt::Display for ImageVersion {
    /// Zephyr `img_mgmt_ver_str`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)?;
        if self.build != 0 {
            write!(f, ".{}", self.build)?;
        }
        Ok(())
    }
}

/// A 32-byte MCUboot header with `hdr_size` 32 and `img_size` `body_len`.
pub fn mcuboot_header(version: ImageVersion, body_len: u32) -> [u8; MCUBOOT_HEADER_LEN] {
    let mut h = [0u8; MCUBOOT_HEADER_LEN];
    h[0..4].copy_from_slice(&MCUBOOT_MAGIC.to_le_bytes());
    h[8..10].copy_from_slice(&(MCUBOOT_HEADER_LEN as u16).to_le_bytes());
    h[12..16].copy_from_slice(&body_len.to_le_bytes());
    h[20] = version.major;
    h[21] = version.minor;
    h[22..24].copy_from_slice(&version.revision.to_le_bytes());
    h[24..28].copy_from_slice(&version.build.to_le_bytes());
    h
}

/// The version in an MCUboot header, if `bytes` starts with one.
pub fn header_version(bytes: &[u8]) -> Option<ImageVersion> {
    let h = bytes.get(..MCUBOOT_HEADER_LEN)?;
    if u32::from_le_bytes([h[0], h[1], h[2], h[3]]) != MCUBOOT_MAGIC {
        return None;
    }
    Some(ImageVersion {
        major: h[20],
        minor: h[21],
        revision: u16::from_le_bytes([h[22], h[23]]),
        build: u32::from_le_bytes([h[24], h[25], h[26], h[27]]),
    })
}

/// Simulated device settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// `CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE`: 384.
    pub buf_size: u64,
    /// `CONFIG_MCUMGR_TRANSPORT_NETBUF_COUNT`: 4.
    pub buf_count: u64,
    /// Whether MCUmgr params is compiled in (`CONFIG_MCUMGR_GRP_OS_MCUMGR_PARAMS`).
    pub params: bool,
    /// Secondary slot size: 256 KiB.
    pub slot_size: u64,
    /// Whether slot info (group 1, command 6) is compiled in
    /// (`CONFIG_MCUMGR_GRP_IMG_SLOT_INFO`): off, the device answers ENOTSUP.
    pub slot_info: bool,
    /// `max_image_size` in the slot info answer (smp_group_1.rst: present
    /// when the application's size is limited below the slot's, e.g. by
    /// swap-using-move's spare sector): none by default.
    pub max_image_size: Option<u64>,
    /// `CONFIG_IMG_ENABLE_IMAGE_CHECK`: final answer carries `match`.
    pub image_check: bool,
    /// Version of the image running at start.
    pub running: ImageVersion,
    /// Silence after a reset: 3 s.
    pub reboot_time: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            buf_size: 384,
            buf_count: 4,
            params: true,
            slot_size: 256 * 1024,
            slot_info: false,
            max_image_size: None,
            image_check: true,
            running: ImageVersion {
                major: 1,
                minor: 0,
                revision: 0,
                build: 0,
            },
            reboot_time: Duration::from_secs(3),
        }
    }
}

/// What the simulated device did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// A request was dropped without an answer (too long or not a request).
    Dropped {
        /// Why.
        reason: &'static str,
    },
    /// An upload session started (a new `sha`, or none).
    UploadStarted {
        /// Image length.
        len: u64,
    },
    /// An off-0 request resumed the session at `off`.
    UploadResumed {
        /// Where the session continues.
        off: u64,
    },
    /// The whole image is written to the secondary slot.
    UploadComplete {
        /// Its version.
        version: String,
    },
    /// The device answered a reset and went silent.
    Resetting,
    /// The device booted.
    Booted {
        /// Version now running.
        version: String,
        /// Whether the boot reverted an unconfirmed test image.
        reverted: bool,
    },
}

#[derive(Debug, Clone)]
struct Slot {
    version: ImageVersion,
    hash: Vec<u8>,
    confirmed: bool,
    pending: bool,
    permanent: bool,
}

#[derive(Debug)]
struct Session {
    len: u64,
    off: u64,
    sha: Vec<u8>,
    header: Vec<u8>,
    hasher: Sha256,
}

/// The simulated device. Call order: [`SimDevice::handle_message`] for each
/// request, then drain [`SimDevice::poll_transmit`] and
/// [`SimDevice::poll_event`]; call [`SimDevice::handle_timeout`] at
/// [`SimDevice::poll_timeout`] (the end of a reboot).
#[derive(Debug)]
pub struct SimDevice {
    config: SimConfig,
    primary: Slot,
    secondary: Option<Slot>,
    session: Option<Session>,
    rebooting_until: Option<Instant>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<SimEvent>,
    /// The application hangs: nothing answers until the next boot.
    hung: bool,
    /// The application's own commands (echo, groups 64 and up) fail until
    /// the next boot.
    app_failing: bool,
}

impl SimDevice {
    /// A device running `config.running`, confirmed, with an empty secondary slot.
    pub fn new(config: SimConfig) -> SimDevice {
        let running = config.running;
        SimDevice {
            config,
            primary: Slot {
                version: running,
                hash: Sha256::digest(running.to_string().as_bytes()).to_vec(),
                confirmed: true,
                pending: false,
                permanent: false,
            },
            secondary: None,
            session: None,
            rebooting_until: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            hung: false,
            app_failing: false,
        }
    }

    /// As if `version` had been uploaded, marked for test and booted: it
    /// runs unconfirmed, the image that ran before is in the secondary slot
    /// (for tests of what follows a test boot).
    pub fn test_boot(&mut self, version: ImageVersion) {
        let new = Slot {
            version,
            hash: Sha256::digest(version.to_string().as_bytes()).to_vec(),
            confirmed: false,
            pending: false,
            permanent: false,
        };
        let old = std::mem::replace(&mut self.primary, new);
        self.secondary = Some(old);
    }

    /// The application hangs (`true`): no request is answered until the
    /// next boot (a watchdog, a power cycle) clears it. Health-gated
    /// confirm faults (issue 15).
    pub fn set_hung(&mut self, hung: bool) {
        self.hung = hung;
    }

    /// The application's own commands fail (`true`): echo and groups 64
    /// and up answer EUNKNOWN until the next boot clears it.
    pub fn set_app_failing(&mut self, failing: bool) {
        self.app_failing = failing;
    }

    /// The version running now, as the state list reports it.
    pub fn running_version(&self) -> String {
        self.primary.version.to_string()
    }

    /// Whether the running image is confirmed.
    pub fn running_confirmed(&self) -> bool {
        self.primary.confirmed
    }

    /// Power-cycles the device now: the upload session (RAM) is lost.
    pub fn power_cycle(&mut self, now: Instant) {
        self.out.clear();
        self.session = None;
        self.rebooting_until = Some(now);
        self.handle_timeout(now);
    }

    /// A request from the client (header + CBOR, unframed).
    pub fn handle_message(&mut self, msg: &[u8], now: Instant) {
        if self.rebooting_until.is_some_and(|t| now < t) || self.hung {
            return; // Not running (or hung): nothing reads the UART.
        }
        if msg.len() as u64 > self.config.buf_size.saturating_sub(PACKET_OVERHEAD as u64) {
            return self.events.push_back(SimEvent::Dropped {
                reason: "longer than buf_size - 4",
            });
        }
        let Ok((h, body)) = split_message(msg) else {
            return self.events.push_back(SimEvent::Dropped {
                reason: "bad header",
            });
        };
        let Some(rsp_op) = h.op.response() else {
            return self.events.push_back(SimEvent::Dropped {
                reason: "not a request",
            });
        };
        let app = (h.group, h.id) == (group::OS, command::OS_ECHO) || h.group >= 64;
        let answer = match (h.group, h.id, h.op) {
            _ if app && self.app_failing => Err(SmpErr::Legacy {
                rc: mgmt_err::EUNKNOWN,
            }),
            (group::OS, command::OS_ECHO, Op::Write) => match message::decode_echo(body) {
                Ok(d) => Ok(message::echo_response_body(&d)),
                Err(_) => Err(SmpErr::Legacy {
                    rc: mgmt_err::EINVAL,
                }),
            },
            (group::OS, command::OS_PARAMS, Op::Read) if self.config.params => {
                Ok(message::encode_params(Params {
                    buf_size: self.config.buf_size,
                    buf_count: self.config.buf_count,
                }))
            }
            (group::OS, command::OS_RESET, Op::Write) => {
                self.rebooting_until = Some(now + self.config.reboot_time);
                self.events.push_back(SimEvent::Resetting);
                Ok(message::empty_body())
            }
            (group::IMAGE, command::IMAGE_UPLOAD, Op::Write) => self.upload(body),
            (group::IMAGE, command::IMAGE_STATE, Op::Read) => Ok(self.state_body()),
            (group::IMAGE, command::IMAGE_STATE, Op::Write) => self.state_write(body),
            (group::IMAGE, command::IMAGE_SLOT_INFO, Op::Read) if self.config.slot_info => {
                Ok(message::encode_slot_info(&[message::SlotInfo {
                    image: 0,
                    slots: vec![
                        (0, self.config.slot_size, None),
                        (1, self.config.slot_size, None),
                    ],
                    max_image_size: self.config.max_image_size,
                }]))
            }
            _ => Err(SmpErr::Legacy {
                rc: mgmt_err::ENOTSUP,
            }),
        };
        let body = match answer {
            Ok(b) => b,
            Err(e) => message::encode_error(self.err_for(h, e)),
        };
        self.out.push_back(build_message(
            rsp_op, h.version, h.group, h.seq, h.id, &body,
        ));
    }

    /// Ends a reboot when its time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(until) = self.rebooting_until else {
            return;
        };
        if now < until {
            return;
        }
        self.rebooting_until = None;
        self.session = None;
        self.hung = false;
        self.app_failing = false;
        let mut reverted = false;
        if !self.primary.confirmed {
            // MCUboot reverts a test image that was not confirmed.
            if let Some(old) = self.secondary.take() {
                let test = std::mem::replace(&mut self.primary, old);
                self.primary.confirmed = true;
                self.secondary = Some(Slot {
                    confirmed: false,
                    pending: false,
                    ..test
                });
                reverted = true;
            }
        } else if let Some(new) = self.secondary.take_if(|s| s.pending) {
            let old = std::mem::replace(&mut self.primary, new);
            self.primary.confirmed = self.primary.permanent;
            self.primary.pending = false;
            self.primary.permanent = false;
            self.secondary = Some(Slot {
                pending: false,
                ..old
            });
        }
        self.events.push_back(SimEvent::Booted {
            version: self.running_version(),
            reverted,
        });
    }

    /// The next answer to write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The end of the current reboot, if rebooting.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rebooting_until
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<SimEvent> {
        self.events.pop_front()
    }

    /// v2 requests get group errors; v1 requests get Zephyr's translation.
    fn err_for(&self, h: Header, e: SmpErr) -> SmpErr {
        match (h.version, e) {
            (SmpVersion::V1, SmpErr::Group { group: 1, rc }) => SmpErr::Legacy {
                rc: legacy_of_image(rc),
            },
            (SmpVersion::V1, SmpErr::Group { .. }) => SmpErr::Legacy {
                rc: mgmt_err::EUNKNOWN,
            },
            _ => e,
        }
    }

    // Long on purpose: the simulated device's image upload handler, modelled step by step on Zephyr's img_mgmt_upload.
    fn upload(&mut self, body: &[u8]) -> Result<Vec<u8>, SmpErr> {
        let img = |rc| SmpErr::Group {
            group: group::IMAGE,
            rc,
        };
        let req = message::decode_upload_request(body).map_err(|_| SmpErr::Legacy {
            rc: mgmt_err::EINVAL,
        })?;
        let off = req.off.ok_or(img(img_err::INVALID_OFFSET))?;
        if off == 0 {
            let sha = req.sha.clone().unwrap_or_default();
            if let Some(s) = self
                .session
                .as_ref()
                .filter(|s| !sha.is_empty() && s.sha == sha)
            {
                let off = s.off;
                self.events.push_back(SimEvent::UploadResumed { off });
                return Ok(message::encode_upload_response(UploadResponse {
                    off,
                    matched: None,
                }));
            }
            let len = req.len.ok_or(img(img_err::INVALID_LENGTH))?;
            if sha.len() > 32 {
                return Err(img(img_err::INVALID_HASH));
            }
            if req.data.len() < MCUBOOT_HEADER_LEN {
                return Err(img(img_err::INVALID_IMAGE_HEADER));
            }
            if header_version(&req.data).is_none() {
                return Err(img(img_err::INVALID_IMAGE_HEADER_MAGIC));
            }
            if len > self.upload_limit() {
                return Err(img(img_err::INVALID_IMAGE_TOO_LARGE));
            }
            let holds_it = self.secondary.as_ref().is_some_and(|s| s.hash == sha);
            if self.config.image_check && sha.len() == 32 && holds_it {
                // The slot already holds this image: jump to the end.
                let r = UploadResponse {
                    off: len,
                    matched: Some(true),
                };
                return Ok(message::encode_upload_response(r));
            }
            self.secondary = None; // erased
            self.session = Some(Session {
                len,
                off: 0,
                sha,
                header: req.data[..MCUBOOT_HEADER_LEN].to_vec(),
                hasher: Sha256::new(),
            });
            self.events.push_back(SimEvent::UploadStarted { len });
        }
        let Some(s) = self.session.as_mut() else {
            // No session: the expected offset is 0.
            return Ok(message::encode_upload_response(UploadResponse {
                off: 0,
                matched: None,
            }));
        };
        if off != s.off {
            let r = UploadResponse {
                off: s.off,
                matched: None,
            };
            return Ok(message::encode_upload_response(r));
        }
        if off + req.data.len() as u64 > s.len {
            self.session = None;
            return Err(img(img_err::INVALID_IMAGE_DATA_OVERRUN));
        }
        s.hasher.update(&req.data);
        s.off += req.data.len() as u64;
        let mut matched = None;
        let off = s.off;
        if s.off == s.len {
            let s = self.session.take().expect("session checked above");
            let hash = s.hasher.finalize().to_vec();
            if self.config.image_check && s.sha.len() == 32 {
                matched = Some(hash == s.sha);
            }
            let version = header_version(&s.header).unwrap_or_default();
            self.events.push_back(SimEvent::UploadComplete {
                version: version.to_string(),
            });
            self.secondary = Some(Slot {
                version,
                hash,
                confirmed: false,
                pending: false,
                permanent: false,
            });
        }
        Ok(message::encode_upload_response(UploadResponse {
            off,
            matched,
        }))
    }

    /// The most bytes an upload may carry: `max_image_size` when set,
    /// else the slot.
    fn upload_limit(&self) -> u64 {
        self.config
            .max_image_size
            .map_or(self.config.slot_size, |m| m.min(self.config.slot_size))
    }

    fn state_body(&self) -> Vec<u8> {
        let mut list = vec![ImageSlot {
            image: 0,
            slot: 0,
            version: self.primary.version.to_string(),
            hash: self.primary.hash.clone(),
            bootable: true,
            pending: false,
            confirmed: self.primary.confirmed,
            active: true,
            permanent: false,
        }];
        if let Some(s) = &self.secondary {
            list.push(ImageSlot {
                image: 0,
                slot: 1,
                version: s.version.to_string(),
                hash: s.hash.clone(),
                bootable: true,
                pending: s.pending,
                confirmed: false,
                active: false,
                permanent: s.permanent,
            });
        }
        message::encode_state_response(&list)
    }

    fn state_write(&mut self, body: &[u8]) -> Result<Vec<u8>, SmpErr> {
        let img = |rc| SmpErr::Group {
            group: group::IMAGE,
            rc,
        };
        let (hash, confirm) = message::decode_state_write(body).map_err(|_| SmpErr::Legacy {
            rc: mgmt_err::EINVAL,
        })?;
        let is_primary = hash.as_ref().is_none_or(|h| *h == self.primary.hash);
        if confirm && is_primary {
            self.primary.confirmed = true;
        } else if let Some(s) = self
            .secondary
            .as_mut()
            .filter(|s| hash.as_ref() == Some(&s.hash))
        {
            s.pending = true;
            s.permanent = confirm;
        } else if is_primary {
            // Zephyr: IMG_MGMT_ERR_IMAGE_SETTING_TEST_TO_ACTIVE_DENIED.
            return Err(img(33));
        } else {
            // img_mgmt_find_by_hash failed.
            return Err(img(8));
        }
        Ok(self.state_body())
    }
}

/// The device's receive side: a few line buffers in front of a device that
/// handles one request at a time.
///
/// Zephyr's UART transport (`drivers/console/uart_mcumgr.c`) receives each
/// line into one of `CONFIG_UART_MCUMGR_RX_BUF_COUNT` buffers (default 2)
/// and hands it to the SMP work queue; while that queue is busy with a
/// request (writing flash, sending the answer byte by byte with
/// `uart_poll_out`), further lines wait in the buffers, and bytes arriving
/// when every buffer is taken are dropped. MCUboot's serial recovery reads
/// one request, handles it, then reads on. A client with several requests
/// on the line therefore loses lines when the device is slower than the
/// line; the packet they belonged to never completes (the next `06 09`
/// starts a new one) and gets no answer.
///
/// Call order: before each [`RxBuffers::arrive`] at `at`, and when
/// [`RxBuffers::poll_timeout`] comes, take lines with
/// [`RxBuffers::next_line`] until it returns `None`, handing each to the
/// decoder and device; after a line that completed a request, call
/// [`RxBuffers::busy`] with the time the device is done with it.
#[derive(Debug)]
pub struct RxBuffers {
    count: usize,
    held: VecDeque<(Instant, Vec<u8>)>,
    busy_until: Instant,
    overruns: u64,
}

impl RxBuffers {
    /// `count` line buffers (at least 1), the device idle.
    pub fn new(count: usize) -> RxBuffers {
        RxBuffers {
            count: count.max(1),
            held: VecDeque::new(),
            busy_until: Instant::ZERO,
            overruns: 0,
        }
    }

    /// A line whose last byte arrived at `at` (lines arrive in time order).
    /// False when every buffer was taken: the line is lost.
    pub fn arrive(&mut self, at: Instant, line: Vec<u8>) -> bool {
        if self.held.len() >= self.count {
            self.overruns += 1;
            return false;
        }
        self.held.push_back((at, line));
        true
    }

    /// The next line the device reads by `now`, with the time it reads it.
    pub fn next_line(&mut self, now: Instant) -> Option<(Instant, Vec<u8>)> {
        if self.busy_until > now {
            return None;
        }
        let (at, line) = self.held.pop_front()?;
        Some((at.max(self.busy_until), line))
    }

    /// The device handles a request until `until`.
    pub fn busy(&mut self, until: Instant) {
        self.busy_until = self.busy_until.max(until);
    }

    /// When the device reads its buffers again, if a line waits.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.held.is_empty()).then_some(self.busy_until)
    }

    /// Lines lost so far because every buffer was taken.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }
}

/// Zephyr `img_mgmt.c` `img_mgmt_translate_error_code`, for SMP v1 clients.
fn legacy_of_image(rc: i64) -> i64 {
    match rc {
        3 | 4 => 5,                         // NO_IMAGE, NO_TLVS → ENOENT
        9 | 27 | 28 => mgmt_err::EBADSTATE, // NO_FREE_SLOT, CURRENT_VERSION_IS_NEWER, IMAGE_ALREADY_PENDING
        15 => mgmt_err::ENOMEM,             // NO_FREE_MEMORY
        14 | 19 | 20 | 21 | 22 | 24 | 25 => mgmt_err::EINVAL,
        _ => mgmt_err::EUNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dev: &mut SimDevice, op: Op, grp: u16, id: u8, body: &[u8]) -> Vec<u8> {
        let msg = build_message(op, SmpVersion::V2, grp, 9, id, body);
        dev.handle_message(&msg, Instant::ZERO);
        let rsp = dev.poll_transmit().expect("an answer");
        let (h, b) = split_message(&rsp).unwrap();
        assert_eq!(
            (h.op, h.seq, h.group, h.id),
            (op.response().unwrap(), 9, grp, id)
        );
        b.to_vec()
    }

    fn upload(
        dev: &mut SimDevice,
        req: message::UploadRequest<'_>,
    ) -> Result<UploadResponse, SmpErr> {
        let b = request(
            dev,
            Op::Write,
            group::IMAGE,
            command::IMAGE_UPLOAD,
            &req.encode(),
        );
        message::upload_response(&b).unwrap()
    }

    fn first<'a>(data: &'a [u8], sha: &'a [u8], len: u64) -> message::UploadRequest<'a> {
        message::UploadRequest {
            image: Some(0),
            len: Some(len),
            off: 0,
            sha: Some(sha),
            data,
            upgrade: None,
        }
    }

    fn at(off: u64, data: &[u8]) -> message::UploadRequest<'_> {
        message::UploadRequest {
            image: None,
            len: None,
            off,
            sha: None,
            data,
            upgrade: None,
        }
    }

    fn ok(off: u64, matched: Option<bool>) -> Result<UploadResponse, SmpErr> {
        Ok(UploadResponse { off, matched })
    }

    #[test]
    fn zephyr_upload_rules() {
        let v = ImageVersion {
            major: 2,
            minor: 1,
            revision: 300,
            build: 7,
        };
        let mut img = mcuboot_header(v, 68).to_vec();
        img.extend([0x55; 68]);
        let sha: Vec<u8> = Sha256::digest(&img).to_vec();
        let mut dev = SimDevice::new(SimConfig::default());
        let img_err = |rc| Err(SmpErr::Group { group: 1, rc });
        // Too short, bad magic, no len, no off, too large.
        assert_eq!(upload(&mut dev, first(&img[..31], &sha, 100)), img_err(22));
        let mut bad = img.clone();
        bad[3] = 0;
        assert_eq!(upload(&mut dev, first(&bad[..40], &sha, 100)), img_err(23));
        let mut no_len = first(&img[..40], &sha, 100);
        no_len.len = None;
        assert_eq!(upload(&mut dev, no_len), img_err(21));
        let body = [0xa1, 0x64, b'd', b'a', b't', b'a', 0x40];
        let b = request(
            &mut dev,
            Op::Write,
            group::IMAGE,
            command::IMAGE_UPLOAD,
            &body,
        );
        assert_eq!(message::upload_response(&b).unwrap(), img_err(20));
        assert_eq!(
            upload(&mut dev, first(&img[..40], &sha, 1 << 30)),
            img_err(30)
        );
        // A good first chunk, a wrong off resynced, resume by sha, an overrun.
        assert_eq!(upload(&mut dev, first(&img[..40], &sha, 100)), ok(40, None));
        assert_eq!(upload(&mut dev, at(50, &img[50..60])), ok(40, None));
        assert_eq!(upload(&mut dev, first(&img[..40], &sha, 100)), ok(40, None));
        let mut long = img.clone();
        long.push(0);
        assert_eq!(upload(&mut dev, at(40, &long[40..])), img_err(31));
        // The overrun ended the session: start again and finish with match.
        assert_eq!(upload(&mut dev, first(&img[..40], &sha, 100)), ok(40, None));
        assert_eq!(upload(&mut dev, at(40, &img[40..])), ok(100, Some(true)));
        let b = request(
            &mut dev,
            Op::Read,
            group::IMAGE,
            command::IMAGE_STATE,
            &[0xa0],
        );
        let list = message::state_response(&b).unwrap().unwrap();
        assert_eq!(list[1].version, "2.1.300.7");
        assert_eq!(list[1].hash, sha);
        // The same image again: the slot already holds it.
        assert_eq!(
            upload(&mut dev, first(&img[..40], &sha, 100)),
            ok(100, Some(true))
        );
    }

    #[test]
    fn rx_buffers_hold_lines_while_busy_and_drop_the_rest() {
        let t = Instant::from_millis;
        let mut rx = RxBuffers::new(2);
        // Idle: a line is read when it arrives.
        assert!(rx.arrive(t(10), b"a".to_vec()));
        assert_eq!(rx.next_line(t(10)), Some((t(10), b"a".to_vec())));
        rx.busy(t(50));
        // Busy until 50: two lines wait, the third is lost.
        assert!(rx.arrive(t(20), b"b".to_vec()));
        assert!(rx.arrive(t(30), b"c".to_vec()));
        assert!(!rx.arrive(t(40), b"d".to_vec()));
        assert_eq!(rx.overruns(), 1);
        assert_eq!(rx.next_line(t(45)), None);
        assert_eq!(rx.poll_timeout(), Some(t(50)));
        assert_eq!(rx.next_line(t(50)), Some((t(50), b"b".to_vec())));
        assert_eq!(rx.next_line(t(50)), Some((t(50), b"c".to_vec())));
        assert_eq!(rx.poll_timeout(), None);
    }

    #[test]
    fn drops_messages_longer_than_buf_size_minus_4() {
        let mut dev = SimDevice::new(SimConfig {
            buf_size: 64,
            ..SimConfig::default()
        });
        let echo = |n| message::echo_request(&"e".repeat(n));
        let fits = build_message(Op::Write, SmpVersion::V2, 0, 0, 0, &echo(47));
        assert_eq!(fits.len(), 60);
        dev.handle_message(&fits, Instant::ZERO);
        assert!(dev.poll_transmit().is_some());
        let long = build_message(Op::Write, SmpVersion::V2, 0, 0, 0, &echo(48));
        dev.handle_message(&long, Instant::ZERO);
        assert!(dev.poll_transmit().is_none());
        assert_eq!(
            dev.poll_event(),
            Some(SimEvent::Dropped {
                reason: "longer than buf_size - 4"
            })
        );
    }

    #[test]
    fn params_unknown_commands_and_v1_errors() {
        let mut dev = SimDevice::new(SimConfig {
            params: false,
            ..SimConfig::default()
        });
        let b = request(&mut dev, Op::Read, group::OS, command::OS_PARAMS, &[0xa0]);
        assert_eq!(
            message::params_response(&b),
            Ok(Err(SmpErr::Legacy { rc: 8 }))
        );
        let msg = build_message(
            Op::Write,
            SmpVersion::V1,
            group::IMAGE,
            1,
            command::IMAGE_UPLOAD,
            &[0xa0],
        );
        dev.handle_message(&msg, Instant::ZERO);
        let rsp = dev.poll_transmit().unwrap();
        let (h, b) = split_message(&rsp).unwrap();
        assert_eq!(h.version, SmpVersion::V1);
        // INVALID_OFFSET reaches a v1 client as EINVAL.
        assert_eq!(
            message::upload_response(b),
            Ok(Err(SmpErr::Legacy { rc: 3 }))
        );
    }
}
