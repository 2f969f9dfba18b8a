//! Public keys that sign MCUboot images, read from PEM files.
//!
//! A key file holds a `PUBLIC KEY` (SubjectPublicKeyInfo) section, as
//! `imgtool getpub -e pem` and `openssl pkey -pubout` write it, or an
//! `RSA PUBLIC KEY` (PKCS#1) section. What MCUboot hashes into the image's
//! key hash TLV is imgtool's `get_public_bytes()` (mcu-tools/mcuboot
//! `scripts/imgtool/keys/{ecdsa,ed25519,rsa}.py`): the SubjectPublicKeyInfo
//! DER for ECDSA and Ed25519, the PKCS#1 `RSAPublicKey` DER for RSA.

use std::fmt;
use std::path::{Path, PathBuf};

use otabridge_codecs::mcuboot::digest::{digest, HashKind};
use otabridge_codecs::mcuboot::SigKind;
use rustls_pki_types::pem::{self, PemObject, SectionKind};

/// The algorithms a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// ECDSA over NIST P-256.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
    /// RSA with a modulus of this many bits (2048 or 3072), PSS.
    Rsa(usize),
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::EcdsaP256 => f.write_str("ecdsa-p256"),
            KeyKind::Ed25519 => f.write_str("ed25519"),
            KeyKind::Rsa(bits) => write!(f, "rsa-{bits}"),
        }
    }
}

impl KeyKind {
    /// Whether a signature TLV of `sig` is made with a key of this kind.
    pub fn signs(self, sig: SigKind) -> bool {
        matches!(
            (self, sig),
            (KeyKind::EcdsaP256, SigKind::Ecdsa)
                | (KeyKind::Ed25519, SigKind::Ed25519)
                | (KeyKind::Rsa(2048), SigKind::Rsa2048Pss)
                | (KeyKind::Rsa(3072), SigKind::Rsa3072Pss)
        )
    }
}

/// A public key, ready to check image signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Where it came from, for messages.
    pub source: PathBuf,
    /// Its algorithm.
    pub kind: KeyKind,
    /// What imgtool hashes into `IMAGE_TLV_KEYHASH` and writes into
    /// `IMAGE_TLV_PUBKEY`.
    pub image_bytes: Vec<u8>,
    /// The key as the verifier takes it: the SEC1 point (P-256), the 32
    /// raw bytes (Ed25519), the PKCS#1 DER (RSA).
    pub raw: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} from {})", self.kind, self.source.display())
    }
}

impl PublicKey {
    /// The key hash an image signed with this key carries, for the image's
    /// hash algorithm.
    pub fn key_hash(&self, hash: HashKind) -> Vec<u8> {
        digest(hash, &self.image_bytes)
    }

    /// A short name: kind and file.
    pub fn name(&self) -> String {
        format!("{} key {}", self.kind, self.source.display())
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No usable PEM section.
    #[error("{path}: no PUBLIC KEY or RSA PUBLIC KEY PEM section ({why})")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// The key is of an algorithm MCUboot images are not signed with here.
    #[error("{path}: {why}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Which algorithm, and why not.
        why: String,
    },
}

/// OIDs in DER (contents only).
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Reads one DER element: `(tag, contents, rest)`.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The modulus size in bits of a PKCS#1 `RSAPublicKey`.
fn rsa_bits(pkcs1: &[u8]) -> Option<usize> {
    let (0x30, seq, _) = der(pkcs1)? else {
        return None;
    };
    let (0x02, n, _) = der(seq)? else {
        return None;
    };
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => &n[i..],
        None => return None,
    };
    Some((n.len() - 1) * 8 + (8 - n[0].leading_zeros() as usize))
}

fn rsa_key(path: &Path, pkcs1: &[u8]) -> Result<PublicKey, KeyError> {
    let bits = rsa_bits(pkcs1).ok_or_else(|| KeyError::Unsupported {
        path: path.to_owned(),
        why: "RSA key: the RSAPublicKey DER does not parse".into(),
    })?;
    if bits != 2048 && bits != 3072 {
        return Err(KeyError::Unsupported {
            path: path.to_owned(),
            why: format!("RSA-{bits}: MCUboot signs with RSA-2048 or RSA-3072"),
        });
    }
    Ok(PublicKey {
        source: path.to_owned(),
        kind: KeyKind::Rsa(bits),
        image_bytes: pkcs1.to_vec(),
        raw: pkcs1.to_vec(),
    })
}

/// Reads a SubjectPublicKeyInfo.
pub fn from_spki(path: &Path, spki: &[u8]) -> Result<PublicKey, KeyError> {
    let bad = |why: &str| KeyError::Unsupported {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let Some((0x30, seq, _)) = der(spki) else {
        return Err(bad("SubjectPublicKeyInfo: not a DER sequence"));
    };
    let Some((0x30, alg, rest)) = der(seq) else {
        return Err(bad("SubjectPublicKeyInfo: no algorithm"));
    };
    let Some((0x03, bits, _)) = der(rest) else {
        return Err(bad("SubjectPublicKeyInfo: no key bit string"));
    };
    // The first byte of a BIT STRING counts unused bits: 0 for keys.
    let Some((0, key)) = bits.split_first() else {
        return Err(bad(
            "SubjectPublicKeyInfo: the key bit string is not whole bytes",
        ));
    };
    let Some((0x06, oid, params)) = der(alg) else {
        return Err(bad("SubjectPublicKeyInfo: no algorithm identifier"));
    };
    match oid {
        OID_RSA => rsa_key(path, key),
        OID_ED25519 if key.len() == 32 => Ok(PublicKey {
            source: path.to_owned(),
            kind: KeyKind::Ed25519,
            image_bytes: spki.to_vec(),
            raw: key.to_vec(),
        }),
        OID_EC => match der(params) {
            Some((0x06, OID_P256, _)) if key.len() == 65 && key[0] == 4 => Ok(PublicKey {
                source: path.to_owned(),
                kind: KeyKind::EcdsaP256,
                image_bytes: spki.to_vec(),
                raw: key.to_vec(),
            }),
            Some((0x06, OID_P256, _)) => Err(bad("P-256 key: not an uncompressed point")),
            _ => Err(bad(
                "ECDSA key on a curve other than P-256 (P-384 is not supported here)",
            )),
        },
        _ => Err(bad(
            "not an ECDSA P-256, Ed25519 or RSA key (the key types MCUboot signs with)",
        )),
    }
}

/// Reads a key from PEM text.
pub fn from_pem(path: &Path, text: &[u8]) -> Result<PublicKey, KeyError> {
    let mut seen = Vec::new();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(text) {
        match item {
            Ok((SectionKind::PublicKey, der)) => return from_spki(path, &der),
            Ok((other, _)) => seen.push(format!("{other:?}")),
            Err(e) => {
                return Err(KeyError::NoKey {
                    path: path.to_owned(),
                    why: pem_error(&e),
                })
            }
        }
    }
    // `RSA PUBLIC KEY` is not a section rustls knows: read it by hand.
    if let Some(der) = rsa_public_section(text) {
        return rsa_key(path, &der);
    }
    let why = if seen.is_empty() {
        "no PEM section".to_owned()
    } else {
        format!("found {}; configure the public key", seen.join(", "))
    };
    Err(KeyError::NoKey {
        path: path.to_owned(),
        why,
    })
}

fn pem_error(e: &pem::Error) -> String {
    e.to_string()
}

fn rsa_public_section(text: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let text = std::str::from_utf8(text).ok()?;
    let begin = "-----BEGIN RSA PUBLIC KEY-----";
    let start = text.find(begin)? + begin.len();
    let end = text[start..].find("-----END RSA PUBLIC KEY-----")? + start;
    let b64: String = text[start..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Reads a key file.
pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
    let text = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_pem(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_reader_refuses_lies() {
        assert_eq!(
            der(&[0x30, 0x02, 1, 2, 9]),
            Some((0x30, &[1u8, 2][..], &[9u8][..]))
        );
        assert_eq!(der(&[0x30, 0x03, 1, 2]), None);
        assert_eq!(der(&[0x30, 0x82, 0xff]), None);
        assert_eq!(der(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(der(&[0x30]), None);
    }

    #[test]
    fn rsa_modulus_bits() {
        // SEQUENCE { INTEGER 00 80 00 (16 bits), INTEGER 3 }
        assert_eq!(
            rsa_bits(&[0x30, 0x08, 0x02, 0x03, 0, 0x80, 0, 0x02, 0x01, 3]),
            Some(16)
        );
        assert_eq!(rsa_bits(&[0x30, 0x03, 0x02, 0x01, 0]), None);
    }

    #[test]
    fn an_ed25519_spki_is_read_and_other_sections_are_named() {
        // RFC 8410 §10.1's example public key.
        let pem = b"-----BEGIN PUBLIC KEY-----\n\
            MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
            -----END PUBLIC KEY-----\n";
        let k = from_pem(Path::new("k.pem"), pem).unwrap();
        assert_eq!(k.kind, KeyKind::Ed25519);
        assert_eq!(k.raw.len(), 32);
        assert_eq!(k.image_bytes.len(), 44);
        let private = b"-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
            -----END PRIVATE KEY-----\n";
        let e = from_pem(Path::new("p.pem"), private)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PrivateKey") && e.contains("configure the public key"),
            "{e}"
        );
    }
}
