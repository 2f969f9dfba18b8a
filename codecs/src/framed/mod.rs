//! Manufacturers' own serial protocols, described by a TOML profile.
//!
//! Most child sensors behind a gateway speak their maker's binary protocol over
//! RS-485 or UART: a sync word, a command byte, a length, a payload and a CRC.
//! An integrator describes such a protocol in a profile (the format reference
//! is `codecs/profiles/README.md`) and this module delivers firmware over it:
//! begin, ask the child where it is, resume from there, send chunks with
//! retries, verify, activate and read the version back.
//!
//! # Layout
//! - [`profile`]: the profile format, parsed and validated; errors name the
//!   file, the line and the mistake. [`profile::builtin`] holds the profiles
//!   shipped in `codecs/profiles/`.
//! - [`codec`]: frame encoding, a streaming decoder that resynchronises on the
//!   sync word after garbage, and the payload field codec.
//! - [`engine`]: the gateway side, a sans-IO upgrade engine for any valid
//!   profile ([`engine::Engine`]).
//! - [`sim`]: the child side, a sans-IO device that plays any profile, a
//!   lossy link that injects drops, corruption and noise at the byte seam,
//!   and [`sim::FaultyChild`], the two together for a pty driver.
//!
//! # For a serial driver
//! Load the profile ([`profile::builtin`] or [`Profile::parse`] on a user
//! file's text), compute the package's [`ImageDigest`] piece by piece, make an
//! [`Engine`] and drive it as its documentation says; report
//! [`Outcome::result_code`] and the failure's `description` to IoTDA, and
//! journal [`Engine::acknowledged`] as the child's offset.
//!
//! Nothing here reads a file, a clock or a global random source: profile text
//! comes in with its file name, time comes in as [`crate::time::Instant`] and
//! randomness from a seed.

pub mod codec;
pub mod engine;
pub mod profile;
pub mod sim;

pub use codec::{Decoder, Frame, Values};
pub use engine::{Engine, Event, ImageInfo, Outcome, Upgrade};
pub use profile::{MessageKind, Profile, ProfileError, ProfileErrorKind};

/// IoTDA `result_code` values as profiles write them (one byte), taken from
/// [`crate::iotda::result`] (docs/protocols/iotda.md §4.6), and their descriptions.
pub mod result_code {
    use crate::iotda::result as iotda;

    /// Success.
    pub const SUCCESS: u8 = iotda::SUCCESS as u8;
    /// Device in use.
    pub const BUSY: u8 = iotda::BUSY as u8;
    /// Poor signal.
    pub const SIGNAL_BAD: u8 = iotda::SIGNAL_BAD as u8;
    /// Already the latest version.
    pub const NO_NEED: u8 = iotda::NO_NEED as u8;
    /// Low battery.
    pub const LOW_POWER: u8 = iotda::LOW_POWER as u8;
    /// Insufficient storage space.
    pub const LOW_SPACE: u8 = iotda::LOW_SPACE as u8;
    /// Download timeout.
    pub const DOWNLOAD_TIMEOUT: u8 = iotda::DOWNLOAD_TIMEOUT as u8;
    /// Package verification failure.
    pub const CHECK_FAIL: u8 = iotda::CHECK_FAIL as u8;
    /// Unsupported package type.
    pub const UNKNOWN_TYPE: u8 = iotda::UNKNOWN_TYPE as u8;
    /// Insufficient memory.
    pub const LOW_MEMORY: u8 = iotda::LOW_MEMORY as u8;
    /// Package installation failure.
    pub const INSTALL_FAIL: u8 = iotda::INSTALL_FAIL as u8;
    /// Internal exception.
    pub const INNER_ERROR: u8 = iotda::INNER_ERROR as u8;

    /// Whether IoTDA accepts `code` (0 to 10 and 255; the C SDK rejects any
    /// other value, `iota_payload.c:416`, see `docs/protocols/iotda.md` §4.6).
    pub fn is_valid(code: u8) -> bool {
        iotda::is_valid(u16::from(code))
    }

    /// The failure description an operator sees for `code`: the platform's
    /// own wording from `docs/protocols/iotda.md` §9 where it has one, else the
    /// meaning from the §4.6 table.
    pub fn description(code: u8) -> &'static str {
        match code {
            SUCCESS => "upgrade success",
            BUSY => "device in use",
            SIGNAL_BAD => "poor signal",
            NO_NEED => "already the latest version",
            LOW_POWER => "low battery",
            LOW_SPACE => iotda::DESC_NO_STORAGE,
            DOWNLOAD_TIMEOUT => iotda::DESC_CONNECTION_LOST,
            CHECK_FAIL => iotda::DESC_INTEGRITY,
            UNKNOWN_TYPE => iotda::DESC_UNSUPPORTED_TYPE,
            LOW_MEMORY => iotda::DESC_NO_MEMORY,
            INSTALL_FAIL => iotda::DESC_UPDATE_FAILED,
            _ => "internal exception",
        }
    }
}

/// CRC-32 (ISO-HDLC, the zlib/PNG one) and SHA-256 of an image, computed in
/// pieces so a driver never holds the whole package in memory.
#[derive(Clone)]
pub struct ImageDigest {
    size: u64,
    crc32: crc::Digest<'static, u32>,
    sha256: sha2::Sha256,
}

/// CRC-32/ISO-HDLC from the reveng catalogue (`crc::CRC_32_ISO_HDLC`).
static CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

impl std::fmt::Debug for ImageDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageDigest")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Default for ImageDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageDigest {
    /// An empty digest.
    pub fn new() -> Self {
        use sha2::Digest as _;
        ImageDigest {
            size: 0,
            crc32: CRC32.digest(),
            sha256: sha2::Sha256::new(),
        }
    }

    /// Adds the next piece of the image.
    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        self.size += bytes.len() as u64;
        self.crc32.update(bytes);
        self.sha256.update(bytes);
    }

    /// Total size, CRC-32 and SHA-256 of everything added.
    pub fn finish(self) -> (u64, u32, [u8; 32]) {
        use sha2::Digest as _;
        (
            self.size,
            self.crc32.finalize(),
            self.sha256.finalize().into(),
        )
    }

    /// Size, CRC-32 and SHA-256 of `bytes` in one call.
    pub fn of(bytes: &[u8]) -> (u64, u32, [u8; 32]) {
        let mut d = Self::new();
        d.update(bytes);
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_digest_matches_reference_values() {
        // CRC-32/ISO-HDLC check value 0xCBF43926 (reveng catalogue) and the
        // FIPS 180-2 SHA-256 of "abc" split across two updates.
        assert_eq!(ImageDigest::of(b"123456789").1, 0xCBF4_3926);
        let mut d = ImageDigest::new();
        d.update(b"a");
        d.update(b"bc");
        let (size, _, sha) = d.finish();
        assert_eq!(size, 3);
        assert_eq!(
            crate::hex::spaced(&sha[..4]),
            "ba 78 16 bf",
            "SHA-256(\"abc\") starts ba7816bf"
        );
    }

    #[test]
    fn result_codes_follow_iotda() {
        assert!(result_code::is_valid(0) && result_code::is_valid(10));
        assert!(result_code::is_valid(255) && !result_code::is_valid(11));
        assert_eq!(
            result_code::description(7),
            "Integrity check failure for new downloaded package"
        );
    }
}
