//! Checking a package before it travels to a child (issue 14).
//!
//! An MCUboot image carries everything its bootloader will check: the
//! version, a hash over header, body and protected TLVs, the hash of the
//! signing key and the signature (docs/protocols/children.md §4; mcu-tools/mcuboot
//! `docs/design.md`). [`examine`] reads an image file once, in pieces, into
//! the hash (never whole; the TLV areas after the body are at most 128 KiB),
//! and checks the signature against the configured keys; [`Examination::judge`]
//! then decides, for one child and one upgrade event, whether a byte may go:
//!
//! | check | failure | IoTDA result |
//! |---|---|---|
//! | structure (magic) | not an MCUboot image | 8 |
//! | structure (sizes, TLV areas) | truncated or lying lengths | 7 |
//! | image hash TLV | missing or different | 7 |
//! | key hash / signature (keys configured) | unknown key, missing or bad signature | 7 |
//! | encryption flag | the child does not decrypt | 8 |
//! | header version vs the event's target | different under the version policy | 7 |
//! | size vs the child's slot | does not fit | 5 |
//!
//! A framed child's profile may declare its own check (`[image_check]`:
//! magic bytes, a version field, a CRC over a range;
//! codecs/profiles/README.md): [`check_profile_image`] runs it the same
//! way, the file read once in pieces.
//!
//! [`Gate`] holds each child's rules (from `[[child]]` and `[image]`, and
//! framed profiles) and is what the OTA engine calls between the download
//! and the delivery.

pub mod inspect;
pub mod keys;
pub mod verify;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use otabridge_codecs::iotda::result::ResultCode;
use otabridge_codecs::mcuboot::{
    flags, kind, HashKind, Header, ImageDigest, ParseError, SigKind, Trailer, HEADER_SIZE,
};
use otabridge_codecs::version::Policy;

use otabridge_codecs::framed::profile::image_check::{
    ImageCheck as ProfileImageCheck, ImageCheckError, ImageChecker,
};
use otabridge_codecs::framed::profile::Profile;

use crate::config::{Config, ImageCheck, SerialProtocol, Transport};

pub use keys::{KeyKind, PublicKey};

/// How much of the file is read at a time while hashing.
const CHUNK: usize = 64 * 1024;

/// What the image hash TLV says about the signed region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashCheck {
    /// It matches.
    Matches(HashKind),
    /// It does not.
    Differs(HashKind),
    /// The image has no hash TLV (and is not a pure-signature image).
    Missing,
    /// The body is encrypted, and imgtool hashed the plain text: only the
    /// child can check it.
    Encrypted,
    /// A pure signature image has no hash; the signature covers the bytes.
    Pure,
}

/// The signature check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigCheck {
    /// No key is configured: not checked.
    NoKeys,
    /// A configured key verified a signature.
    Verified {
        /// Which key.
        key: String,
        /// Which signature TLV.
        kind: SigKind,
    },
    /// Keys are configured, the image carries no signature.
    Unsigned,
    /// The image's key hash (or public key TLV) matches no configured key.
    UnknownKey,
    /// No signature verified: why, per key tried.
    Failed(String),
    /// Not checkable (an encrypted body, or the hash already differs).
    Skipped(&'static str),
}

/// One TLV entry, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlvEntry {
    /// In the protected area.
    pub protected: bool,
    /// `it_type`.
    pub kind: u16,
    /// `it_len`.
    pub len: usize,
}

/// What the gateway sees in an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Examination {
    /// The file's size.
    pub file_len: u64,
    /// The header.
    pub header: Header,
    /// Header, body, both TLV areas.
    pub image_len: u64,
    /// Every TLV entry.
    pub tlvs: Vec<TlvEntry>,
    /// The image hash check.
    pub hash: HashCheck,
    /// `IMAGE_TLV_KEYHASH`, when present.
    pub key_hash: Option<Vec<u8>>,
    /// Whether the image carries its public key (`IMAGE_TLV_PUBKEY`).
    pub has_public_key: bool,
    /// The signature check.
    pub signature: SigCheck,
    /// `IMAGE_TLV_ENC_*`, when present.
    pub encryption_tlv: Option<u16>,
    /// `IMAGE_TLV_SEC_CNT`, when present.
    pub security_counter: Option<u32>,
}

/// Why a file could not be examined at all.
#[derive(Debug, thiserror::Error)]
pub enum ExamineError {
    /// Reading the file failed.
    #[error("reading the image: {0}")]
    Io(#[from] std::io::Error),
    /// Not a well-formed MCUboot image.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// A check that failed: the IoTDA result code and a description that
/// names the check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description} (result code {code})")]
pub struct Rejection {
    /// IoTDA `result_code`.
    pub code: ResultCode,
    /// What failed, for the platform and the log.
    pub description: String,
}

impl Rejection {
    fn new(code: ResultCode, check: &str, detail: impl std::fmt::Display) -> Self {
        Rejection {
            code,
            description: format!("image check failed: {check}: {detail}"),
        }
    }
}

impl ExamineError {
    /// The rejection this gives: not an image at all is a package the
    /// child cannot take (8, as a Zephyr device answers
    /// INVALID_IMAGE_HEADER_MAGIC); a broken image is an integrity failure (7).
    pub fn rejection(&self) -> Rejection {
        match self {
            ExamineError::Io(e) => {
                Rejection::new(ResultCode::INNER_ERROR, "reading the package", e)
            }
            ExamineError::Parse(
                e @ (ParseError::Magic(_) | ParseError::OldMagic | ParseError::HeaderSize(_)),
            ) => Rejection::new(ResultCode::UNKNOWN_TYPE, "MCUboot header", e),
            ExamineError::Parse(e) => Rejection::new(ResultCode::CHECK_FAIL, "image structure", e),
        }
    }
}

fn read_at(file: &mut File, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(at))?;
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Feeds bytes `0..end` of `file` to `digest`, `CHUNK` at a time.
fn hash_region(file: &mut File, end: u64, digest: &mut ImageDigest) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = end;
    while left > 0 {
        let want = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        file.read_exact(&mut buf[..want])?;
        digest.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(())
}

/// Examines the image file at `path`, checking its signature against
/// `keys`. The file is read in pieces; only a pure Ed25519 signature
/// (`IMAGE_TLV_SIG_PURE`, which signs the bytes, not a hash) makes it read
/// the signed region whole.
pub fn examine(path: &Path, keys: &[Arc<PublicKey>]) -> Result<Examination, ExamineError> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let head = read_at(&mut file, 0, HEADER_SIZE)?;
    let header = Header::parse(&head)?;
    let (at, len) = header.trailer_window(file_len)?;
    let tail = read_at(&mut file, at, len)?;
    let trailer = Trailer::parse(&header, &tail)?;
    let facts = trailer.facts();
    let tlvs = trailer
        .entries()
        .map(|(protected, t)| TlvEntry {
            protected,
            kind: t.kind,
            len: t.value.len(),
        })
        .collect();
    let encrypted = header.is_encrypted();
    let (hash, digest) = match facts.hash {
        _ if encrypted => (HashCheck::Encrypted, None),
        None if facts.pure => (HashCheck::Pure, None),
        None => (HashCheck::Missing, None),
        Some((k, expected)) => {
            let mut d = ImageDigest::new(k);
            hash_region(&mut file, header.signed_end(), &mut d)?;
            let got = d.finish();
            if got == expected {
                (HashCheck::Matches(k), Some(got))
            } else {
                (HashCheck::Differs(k), None)
            }
        }
    };
    let signature = if keys.is_empty() {
        SigCheck::NoKeys
    } else if encrypted {
        SigCheck::Skipped("the body is encrypted")
    } else if facts.signatures.is_empty() {
        SigCheck::Unsigned
    } else if facts.pure {
        let signed = read_at(&mut file, 0, header.signed_end() as usize)?;
        check_signatures(&facts, keys, &[], Some(&signed))
    } else if let Some(d) = &digest {
        check_signatures(&facts, keys, d, None)
    } else {
        SigCheck::Skipped("the image hash does not match")
    };
    Ok(Examination {
        file_len,
        header,
        image_len: header.body_end() + trailer.len() as u64,
        tlvs,
        hash,
        key_hash: facts.key_hash.map(<[u8]>::to_vec),
        has_public_key: facts.public_key.is_some(),
        signature,
        encryption_tlv: facts.encryption,
        security_counter: facts.security_counter,
    })
}

/// Tries each signature TLV with each configured key the image names (by
/// key hash or public key TLV; every key when it names none), as MCUboot
/// does (`bootutil_img_validate`: the key is found by its hash, then each
/// signature TLV of the expected type is tried).
fn check_signatures(
    facts: &otabridge_codecs::mcuboot::Facts<'_>,
    keys: &[Arc<PublicKey>],
    digest: &[u8],
    pure: Option<&[u8]>,
) -> SigCheck {
    let hash_kind = facts.hash.map_or(HashKind::Sha256, |(k, _)| k);
    let named: Vec<&Arc<PublicKey>> = keys
        .iter()
        .filter(|k| match (facts.key_hash, facts.public_key) {
            (Some(h), _) => k.key_hash(hash_kind) == h,
            (None, Some(p)) => k.image_bytes == p,
            (None, None) => true,
        })
        .collect();
    if named.is_empty() {
        return SigCheck::UnknownKey;
    }
    let mut why = String::new();
    for key in named {
        for (kind, sig) in &facts.signatures {
            if !key.kind.signs(*kind) {
                continue;
            }
            match verify::check(key, *kind, sig, digest, pure) {
                Ok(()) => {
                    return SigCheck::Verified {
                        key: key.name(),
                        kind: *kind,
                    }
                }
                Err(e) => {
                    let _ = write!(why, "{}{e} with the {}", sep(&why), key.name());
                }
            }
        }
    }
    if why.is_empty() {
        let kinds: Vec<&str> = facts.signatures.iter().map(|(k, _)| k.name()).collect();
        why = format!(
            "no configured key is of the image's signature type ({})",
            kinds.join(", ")
        );
    }
    SigCheck::Failed(why)
}

fn sep(s: &str) -> &'static str {
    if s.is_empty() {
        ""
    } else {
        "; "
    }
}

/// What one child accepts.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Keys an image for this child must be signed with (the child's and
    /// `[image] keys`); none: hash and version checks only.
    pub keys: Vec<Arc<PublicKey>>,
    /// Whether the child's bootloader decrypts encrypted images.
    pub decrypts: bool,
    /// How the header version is compared with the event's target.
    pub version_match: Policy,
    /// The most bytes the child can store, when known.
    pub slot_size: Option<u64>,
}

impl Examination {
    /// Whether this image may go to a child with `rules`, for an upgrade
    /// towards `target`. The first failed check is returned.
    pub fn judge(&self, rules: &Rules, target: &str) -> Result<(), Rejection> {
        let h = &self.header;
        match self.hash {
            HashCheck::Matches(_) | HashCheck::Encrypted | HashCheck::Pure => {}
            HashCheck::Differs(k) => {
                return Err(Rejection::new(
                    ResultCode::CHECK_FAIL,
                    "image hash",
                    format!("the {} TLV does not match the image", k.name()),
                ))
            }
            HashCheck::Missing => {
                return Err(Rejection::new(
                    ResultCode::CHECK_FAIL,
                    "image hash",
                    "no hash TLV",
                ))
            }
        }
        if h.is_encrypted() && !rules.decrypts {
            let f = flags::names(h.flags & flags::ENCRYPTED).join("|");
            return Err(Rejection::new(
                ResultCode::UNKNOWN_TYPE,
                "encryption",
                format!("the image is encrypted ({f}), the child is configured without encryption (image_encrypted)"),
            ));
        }
        match &self.signature {
            SigCheck::NoKeys | SigCheck::Verified { .. } | SigCheck::Skipped(_) => {}
            SigCheck::Unsigned => {
                return Err(Rejection::new(
                    ResultCode::CHECK_FAIL,
                    "signature",
                    "the image is not signed",
                ))
            }
            SigCheck::UnknownKey => {
                return Err(Rejection::new(
                    ResultCode::CHECK_FAIL,
                    "key hash",
                    "the image was signed with a key not configured for this child",
                ))
            }
            SigCheck::Failed(why) => {
                return Err(Rejection::new(ResultCode::CHECK_FAIL, "signature", why))
            }
        }
        let v = h.version.to_string();
        if !rules.version_match.same(target, &v) {
            return Err(Rejection::new(
                ResultCode::CHECK_FAIL,
                "version",
                format!("the image header says {v}, the upgrade is for {target}"),
            ));
        }
        if let Some(slot) = rules.slot_size {
            if self.file_len > slot {
                return Err(Rejection::new(
                    ResultCode::LOW_SPACE,
                    "size",
                    format!(
                        "the image is {} bytes, the child's slot holds {slot}",
                        self.file_len
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether any TLV is of `t`.
    pub fn has(&self, t: u16) -> bool {
        self.tlvs.iter().any(|e| e.kind == t)
    }

    /// Whether the image is signed at all.
    pub fn is_signed(&self) -> bool {
        self.tlvs
            .iter()
            .any(|e| SigKind::from_tlv(e.kind).is_some())
            || self.has(kind::SIG_PURE)
    }
}

/// Each child's rules, consulted by the OTA engine after the download and
/// before a byte goes to the child.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    children: HashMap<String, Rules>,
    /// Framed children whose profile declares `[image_check]`, with their
    /// version policy.
    framed: HashMap<String, (Arc<Profile>, Policy)>,
}

/// Runs a framed profile's `[image_check]` over the file at `path`, read in
/// [`CHUNK`] pieces (codecs/profiles/README.md, "Image check"); gives the
/// version the image says, when the profile declares where. Without a
/// `target` the version is only read, not compared.
pub fn check_profile_image(
    check: &ProfileImageCheck,
    path: &Path,
    target: Option<&str>,
    policy: Policy,
) -> Result<Option<String>, Rejection> {
    let io = |e: std::io::Error| Rejection::new(ResultCode::INNER_ERROR, "reading the package", e);
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let fail = |e: ImageCheckError| Rejection {
        code: e.code(),
        description: format!("image check failed: {e}"),
    };
    let mut checker = ImageChecker::new(check, size).map_err(fail)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        checker.feed(&buf[..n]);
    }
    match target {
        Some(t) => checker.finish(t, policy),
        None => checker.finish_unchecked(),
    }
    .map_err(fail)
}

/// A configured key file that cannot be used, with the key naming it.
#[derive(Debug, thiserror::Error)]
#[error("config {key}: {source}")]
pub struct GateError {
    /// `image.keys` or `child[i].image.keys`.
    pub key: String,
    /// Why.
    #[source]
    pub source: keys::KeyError,
}

impl Gate {
    /// A gate that checks the children in `rules` (by device id); others
    /// pass untouched.
    pub fn new(rules: HashMap<String, Rules>) -> Self {
        Gate {
            children: rules,
            framed: HashMap::new(),
        }
    }

    /// The rules of every child whose `image.check` is `mcuboot`: its own
    /// keys and `[image] keys` (each file read once).
    pub fn from_config(c: &Config) -> Result<Gate, GateError> {
        let mut cache: HashMap<PathBuf, Arc<PublicKey>> = HashMap::new();
        let mut load = |paths: &[PathBuf], key: &str| -> Result<Vec<Arc<PublicKey>>, GateError> {
            let mut out = Vec::with_capacity(paths.len());
            for p in paths {
                let k = match cache.get(p) {
                    Some(k) => k.clone(),
                    None => {
                        let k = Arc::new(keys::load(p).map_err(|source| GateError {
                            key: key.to_owned(),
                            source,
                        })?);
                        cache.insert(p.clone(), k.clone());
                        k
                    }
                };
                if !out.contains(&k) {
                    out.push(k);
                }
            }
            Ok(out)
        };
        let global = load(&c.image.keys, "image.keys")?;
        let mut children = HashMap::new();
        let mut framed = HashMap::new();
        for (i, child) in c.children.iter().enumerate() {
            if let Transport::Serial {
                protocol: SerialProtocol::Framed(p),
                ..
            } = &child.transport
            {
                if p.profile.image_check.is_some() {
                    framed.insert(
                        child.device_id.clone(),
                        (p.profile.clone(), child.version_match),
                    );
                }
            }
            if child.image.check == ImageCheck::None {
                continue;
            }
            let mut keys = load(&child.image.keys, &format!("child[{i}].image.keys"))?;
            for k in &global {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
            let rules = Rules {
                keys,
                decrypts: child.image.encrypted,
                version_match: child.version_match,
                slot_size: child.image.slot_size,
            };
            children.insert(child.device_id.clone(), rules);
        }
        Ok(Gate { children, framed })
    }

    /// Checks a package off the async runtime (the file is read and hashed).
    pub async fn check_package(
        self: &Arc<Self>,
        device_id: &str,
        path: &Path,
        target: &str,
    ) -> Result<(), Rejection> {
        if !self.checks(device_id) {
            return Ok(());
        }
        let (gate, id, path, target) = (
            Arc::clone(self),
            device_id.to_owned(),
            path.to_owned(),
            target.to_owned(),
        );
        tokio::task::spawn_blocking(move || gate.check(&id, &path, &target))
            .await
            .unwrap_or_else(|e| {
                Err(Rejection::new(
                    ResultCode::INNER_ERROR,
                    "image check task",
                    e,
                ))
            })
    }

    /// Whether `device_id`'s packages are checked as MCUboot images.
    pub fn checks_mcuboot(&self, device_id: &str) -> bool {
        self.children.contains_key(device_id)
    }

    /// The framed profile whose `[image_check]` `device_id`'s packages go
    /// through, with the child's version policy.
    pub fn profile_check(&self, device_id: &str) -> Option<(&Arc<Profile>, Policy)> {
        self.framed.get(device_id).map(|(p, policy)| (p, *policy))
    }

    /// Whether `device_id`'s packages are checked.
    pub fn checks(&self, device_id: &str) -> bool {
        self.children.contains_key(device_id) || self.framed.contains_key(device_id)
    }

    /// Checks the package at `path` for `device_id` and the upgrade towards
    /// `target`. Reads the file: call it off the async runtime.
    pub fn check(&self, device_id: &str, path: &Path, target: &str) -> Result<(), Rejection> {
        if let Some(rules) = self.children.get(device_id) {
            let ex = examine(path, &rules.keys).map_err(|e| e.rejection())?;
            ex.judge(rules, target)?;
        }
        if let Some((profile, policy)) = self.framed.get(device_id) {
            if let Some(check) = &profile.image_check {
                check_profile_image(check, path, Some(target), *policy)?;
            }
        }
        Ok(())
    }
}
