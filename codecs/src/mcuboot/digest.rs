//! The image hash, computed in pieces.
//!
//! MCUboot hashes the header, the body and the protected TLV area, i.e.
//! bytes `0..signed_end` (`bootutil_img_hash` in
//! `boot/bootutil/src/image_validate.c`), with SHA-256, SHA-384 or SHA-512
//! as its hash TLV says (`IMAGE_TLV_SHA256/384/512`). A caller feeds the
//! bytes as it reads them, so a file is never held whole.

use sha2::{Digest as _, Sha256, Sha384, Sha512};

use super::tlv::kind;

/// Which hash an image's hash TLV holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashKind {
    /// `IMAGE_TLV_SHA256`.
    Sha256,
    /// `IMAGE_TLV_SHA384`.
    Sha384,
    /// `IMAGE_TLV_SHA512`.
    Sha512,
}

impl HashKind {
    /// The kind a TLV type names, if it is a hash TLV.
    pub fn from_tlv(t: u16) -> Option<HashKind> {
        match t {
            kind::SHA256 => Some(HashKind::Sha256),
            kind::SHA384 => Some(HashKind::Sha384),
            kind::SHA512 => Some(HashKind::Sha512),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashKind::Sha256 => 32,
            HashKind::Sha384 => 48,
            HashKind::Sha512 => 64,
        }
    }

    /// `SHA-256` and so on.
    pub fn name(self) -> &'static str {
        match self {
            HashKind::Sha256 => "SHA-256",
            HashKind::Sha384 => "SHA-384",
            HashKind::Sha512 => "SHA-512",
        }
    }
}

/// An image hash being computed.
#[derive(Debug, Clone)]
pub enum ImageDigest {
    /// SHA-256.
    Sha256(Sha256),
    /// SHA-384.
    Sha384(Sha384),
    /// SHA-512.
    Sha512(Sha512),
}

impl ImageDigest {
    /// A fresh hash of `kind`.
    pub fn new(kind: HashKind) -> Self {
        match kind {
            HashKind::Sha256 => ImageDigest::Sha256(Sha256::new()),
            HashKind::Sha384 => ImageDigest::Sha384(Sha384::new()),
            HashKind::Sha512 => ImageDigest::Sha512(Sha512::new()),
        }
    }

    /// Hashes the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            ImageDigest::Sha256(h) => h.update(bytes),
            ImageDigest::Sha384(h) => h.update(bytes),
            ImageDigest::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest (32, 48 or 64 bytes).
    pub fn finish(self) -> Vec<u8> {
        match self {
            ImageDigest::Sha256(h) => h.finalize().to_vec(),
            ImageDigest::Sha384(h) => h.finalize().to_vec(),
            ImageDigest::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// The digest of `bytes` in one go.
pub fn digest(kind: HashKind, bytes: &[u8]) -> Vec<u8> {
    let mut d = ImageDigest::new(kind);
    d.update(bytes);
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_hash_like_the_whole() {
        for k in [HashKind::Sha256, HashKind::Sha384, HashKind::Sha512] {
            let whole = digest(k, b"abcdefgh");
            let mut d = ImageDigest::new(k);
            d.update(b"abc");
            d.update(b"");
            d.update(b"defgh");
            assert_eq!(d.finish(), whole);
            assert_eq!(whole.len(), k.digest_len());
        }
        assert_eq!(
            digest(HashKind::Sha256, b"abc"),
            crate::hex::parse("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
                .unwrap()
        );
    }
}
