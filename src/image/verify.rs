//! Signature checks over an image's hash.
//!
//! imgtool signs the image hash, not the image (mcu-tools/mcuboot
//! `scripts/imgtool/image.py` `create`, `keys/*.py`):
//! - ECDSA P-256: an ASN.1 DER signature over SHA-256 of the signed region,
//!   which is the image hash itself; imgtool may pad the DER with zeros to
//!   72 bytes (MCUboot's parser ignores them);
//! - RSA-2048/3072: RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt
//!   over the same hash;
//! - Ed25519: the 32 (or 64) hash bytes are the signed message; with
//!   `IMAGE_TLV_SIG_PURE` the message is the signed region itself.
//!
//! Ed25519 goes through `ring`. ECDSA and RSA-PSS go through `p256` and
//! `rsa`, because `ring` verifies only a message it hashes itself: it has
//! no API for a signature over a digest computed elsewhere, so it would need
//! the whole image in memory, and the gateway streams the image through the
//! hash instead (issue 14: no copy of the image in memory).

use otabridge_codecs::mcuboot::SigKind;

use super::keys::{KeyKind, PublicKey};

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// The key and the signature TLV are of different algorithms.
    #[error("a {key} key cannot check an {sig} signature")]
    KindMismatch {
        /// The key's kind.
        key: KeyKind,
        /// The TLV's kind.
        sig: &'static str,
    },
    /// The signature bytes are not of the algorithm's form.
    #[error("malformed {0} signature")]
    Malformed(&'static str),
    /// Well formed, but not made with this key over this image.
    #[error("{0} signature does not verify")]
    Invalid(&'static str),
}

/// The DER `SEQUENCE` at the start of `sig`, without imgtool's zero padding.
fn der_prefix(sig: &[u8]) -> Option<&[u8]> {
    if sig.first() != Some(&0x30) {
        return None;
    }
    let len = usize::from(*sig.get(1)?);
    // A P-256 signature is at most 72 bytes: always the short length form.
    if len >= 0x80 {
        return None;
    }
    sig.get(..2 + len)
}

/// Checks `sig`, a signature TLV of kind `kind`, over the image hash
/// `hash` with `key`. `signed` is the signed region itself, needed only for
/// a pure Ed25519 signature (`pure`).
pub fn check(
    key: &PublicKey,
    kind: SigKind,
    sig: &[u8],
    hash: &[u8],
    pure: Option<&[u8]>,
) -> Result<(), SigError> {
    let name = kind.name();
    if !key.kind.signs(kind) {
        return Err(SigError::KindMismatch {
            key: key.kind,
            sig: name,
        });
    }
    match key.kind {
        KeyKind::Ed25519 => {
            let message = pure.unwrap_or(hash);
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.raw)
                .verify(message, sig)
                .map_err(|_| SigError::Invalid(name))
        }
        KeyKind::EcdsaP256 => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key.raw)
                .map_err(|_| SigError::Malformed("ECDSA public key"))?;
            let der = der_prefix(sig).ok_or(SigError::Malformed(name))?;
            let s = p256::ecdsa::Signature::from_der(der).map_err(|_| SigError::Malformed(name))?;
            vk.verify_prehash(hash, &s)
                .map_err(|_| SigError::Invalid(name))
        }
        KeyKind::Rsa(_) => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::traits::PublicKeyParts;
            let pk = rsa::RsaPublicKey::from_pkcs1_der(&key.raw)
                .map_err(|_| SigError::Malformed("RSA public key"))?;
            if sig.len() != pk.size() {
                return Err(SigError::Malformed(name));
            }
            pk.verify(rsa::Pss::new::<sha2::Sha256>(), hash, sig)
                .map_err(|_| SigError::Invalid(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_prefix_drops_padding_and_refuses_garbage() {
        assert_eq!(
            der_prefix(&[0x30, 2, 1, 2, 0, 0]),
            Some(&[0x30, 2, 1, 2][..])
        );
        assert_eq!(der_prefix(&[0x31, 0]), None);
        assert_eq!(der_prefix(&[0x30, 5, 1]), None);
        assert_eq!(der_prefix(&[0x30, 0x81, 1]), None);
        assert_eq!(der_prefix(&[]), None);
    }
}
