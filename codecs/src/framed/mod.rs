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
}
