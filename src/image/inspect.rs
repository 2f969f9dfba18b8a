//! `otabridge image inspect FILE`: what the gateway sees in an image.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use otabridge_codecs::framed::profile::Profile;
use otabridge_codecs::mcuboot::{flags, kind};
use otabridge_codecs::version::Policy;
use serde_json::{json, Value};

use super::{
    check_profile_image, examine, Examination, ExamineError, Gate, HashCheck, PublicKey, Rejection,
    SigCheck,
};

/// What to check an image against.
#[derive(Debug, Default)]
pub struct Against<'a> {
    /// Keys to check the signature with (every configured key when no
    /// child is named).
    pub keys: Vec<Arc<PublicKey>>,
    /// A child whose rules judge the image, and the target version.
    pub child: Option<(&'a str, &'a str)>,
}

impl<'a> Against<'a> {
    /// From a gate: the named child's keys, or every configured key.
    pub fn from_gate(gate: &Gate, child: Option<(&'a str, &'a str)>) -> Self {
        let keys = match child.and_then(|(id, _)| gate.children.get(id)) {
            Some(r) => r.keys.clone(),
            None => {
                let mut all: Vec<Arc<PublicKey>> = Vec::new();
                for r in gate.children.values() {
                    for k in &r.keys {
                        if !all.contains(k) {
                            all.push(k.clone());
                        }
                    }
                }
                all.sort_by(|a, b| a.source.cmp(&b.source));
                all
            }
        };
        Against { keys, child }
    }
}

/// The report: the examination and, with a child, its verdict.
#[derive(Debug)]
pub struct Inspection {
    /// What the image holds.
    pub examination: Examination,
    /// The child's verdict, when one was named.
    pub verdict: Option<Result<(), Rejection>>,
    /// Whether the image passed every check asked for.
    pub ok: bool,
}

/// Examines `path` and judges it for the child in `against`.
pub fn inspect(
    path: &Path,
    gate: &Gate,
    against: &Against<'_>,
) -> Result<Inspection, ExamineError> {
    let examination = examine(path, &against.keys)?;
    let verdict = against
        .child
        .map(|(id, target)| match gate.children.get(id) {
            Some(rules) => examination.judge(rules, target),
            None => Ok(()),
        });
    let sig_ok = !matches!(
        examination.signature,
        SigCheck::Unsigned | SigCheck::UnknownKey | SigCheck::Failed(_)
    );
    let hash_ok = !matches!(examination.hash, HashCheck::Differs(_) | HashCheck::Missing);
    let ok = sig_ok && hash_ok && verdict.as_ref().is_none_or(|v| v.is_ok());
    Ok(Inspection {
        examination,
        verdict,
        ok,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn tlv_name(t: u16) -> String {
    kind::name(t).map_or_else(|| format!("{t:#06x}"), str::to_owned)
}

fn hash_text(h: HashCheck) -> String {
    match h {
        HashCheck::Matches(k) => format!("{} matches", k.name()),
        HashCheck::Differs(k) => format!("{} DIFFERS from the image", k.name()),
        HashCheck::Missing => "MISSING (no hash TLV)".into(),
        HashCheck::Encrypted => "not checked: the body is encrypted".into(),
        HashCheck::Pure => "none: a pure signature covers the image".into(),
    }
}

fn sig_text(s: &SigCheck) -> String {
    match s {
        SigCheck::NoKeys => "not checked: no key configured".into(),
        SigCheck::Verified { key, kind } => format!("verified: {} with the {key}", kind.name()),
        SigCheck::Unsigned => "FAILED: the image is not signed".into(),
        SigCheck::UnknownKey => "FAILED: signed with a key that is not configured".into(),
        SigCheck::Failed(why) => format!("FAILED: {why}"),
        SigCheck::Skipped(why) => format!("not checked: {why}"),
    }
}

impl Inspection {
    /// The human-readable report.
    pub fn text(&self, path: &Path) -> String {
        let e = &self.examination;
        let h = &e.header;
        let mut o = String::new();
        let _ = writeln!(o, "file:        {} ({} bytes)", path.display(), e.file_len);
        let _ = writeln!(o, "version:     {}", h.version);
        let f = flags::names(h.flags);
        let f = if f.is_empty() {
            "none".to_owned()
        } else {
            f.join("|")
        };
        let _ = writeln!(
            o,
            "header:      {} bytes, load address {:#010x}, flags {f}",
            h.hdr_size, h.load_addr
        );
        let _ = writeln!(o, "body:        {} bytes", h.img_size);
        let _ = writeln!(
            o,
            "TLV areas:   protected {} bytes, unprotected {} bytes, {} bytes after the image",
            h.protect_tlv_size,
            e.image_len - h.signed_end(),
            e.file_len - e.image_len
        );
        for t in &e.tlvs {
            let area = if t.protected {
                "protected"
            } else {
                "unprotected"
            };
            let _ = writeln!(
                o,
                "  {area:<12} {:<18} {:>5} bytes",
                tlv_name(t.kind),
                t.len
            );
        }
        if let Some(c) = e.security_counter {
            let _ = writeln!(o, "security counter: {c}");
        }
        let kh = e.key_hash.as_deref().map_or("none".to_owned(), hex);
        let _ = writeln!(o, "key hash:    {kh}");
        let _ = writeln!(o, "hash:        {}", hash_text(e.hash));
        let _ = writeln!(o, "signature:   {}", sig_text(&e.signature));
        match &self.verdict {
            Some(Ok(())) => {
                let _ = writeln!(o, "verdict:     ok for this child");
            }
            Some(Err(r)) => {
                let _ = writeln!(
                    o,
                    "verdict:     REJECTED, result {}: {}",
                    r.code.get(),
                    r.description
                );
            }
            None => {}
        }
        o
    }

    /// The report as JSON.
    pub fn json(&self, path: &Path) -> Value {
        let e = &self.examination;
        let h = &e.header;
        let tlvs: Vec<Value> = e
            .tlvs
            .iter()
            .map(|t| json!({"type": t.kind, "name": tlv_name(t.kind), "len": t.len, "protected": t.protected}))
            .collect();
        let signature = match &e.signature {
            SigCheck::Verified { key, kind } => {
                json!({"result": "verified", "algorithm": kind.name(), "key": key})
            }
            other => json!({"result": sig_result(other), "detail": sig_text(other)}),
        };
        let verdict = self.verdict.as_ref().map(|v| match v {
            Ok(()) => json!({"ok": true}),
            Err(r) => {
                json!({"ok": false, "result_code": r.code.get(), "description": r.description})
            }
        });
        json!({
            "file": path.display().to_string(),
            "file_size": e.file_len,
            "version": h.version.to_string(),
            "header_size": h.hdr_size,
            "load_address": h.load_addr,
            "flags": flags::names(h.flags),
            "body_size": h.img_size,
            "protected_tlv_size": h.protect_tlv_size,
            "image_size": e.image_len,
            "tlvs": tlvs,
            "security_counter": e.security_counter,
            "key_hash": e.key_hash.as_deref().map(hex),
            "has_public_key": e.has_public_key,
            "encrypted": h.is_encrypted(),
            "hash": hash_text(e.hash),
            "hash_ok": matches!(e.hash, HashCheck::Matches(_)),
            "signature": signature,
            "verdict": verdict,
            "ok": self.ok,
        })
    }
}

fn sig_result(s: &SigCheck) -> &'static str {
    match s {
        SigCheck::NoKeys => "no_keys",
        SigCheck::Verified { .. } => "verified",
        SigCheck::Unsigned => "unsigned",
        SigCheck::UnknownKey => "unknown_key",
        SigCheck::Failed(_) => "failed",
        SigCheck::Skipped(_) => "skipped",
    }
}

/// A framed profile's `[image_check]` run over a file
/// (codecs/profiles/README.md, "Image check"): what `otabridge image
/// inspect --profile` and `--child` of a framed child print.
#[derive(Debug)]
pub struct ProfileInspection {
    /// The file's size.
    pub file_len: u64,
    /// The profile's `[protocol] name`.
    pub profile: String,
    /// Which checks the profile declares: `magic`, `crc`, `version`.
    pub checks: Vec<&'static str>,
    /// The target version compared with, if any.
    pub target: Option<String>,
    /// The version the image says (when the profile declares where), or the
    /// first check that failed (magic, then CRC, then version).
    pub result: Result<Option<String>, Rejection>,
}

/// Why a profile inspection could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProfileInspectError {
    /// The profile declares no `[image_check]`.
    #[error("profile '{0}' declares no [image_check]")]
    NoCheck(String),
    /// The file cannot be read.
    #[error("{0}")]
    Read(#[from] std::io::Error),
}

/// Runs `profile`'s `[image_check]` over `path`, comparing the version with
/// `target` under `policy` when a target is given.
pub fn inspect_profile(
    path: &Path,
    profile: &Profile,
    target: Option<&str>,
    policy: Policy,
) -> Result<ProfileInspection, ProfileInspectError> {
    let Some(check) = &profile.image_check else {
        return Err(ProfileInspectError::NoCheck(profile.name.clone()));
    };
    let file_len = std::fs::metadata(path)?.len();
    let mut checks = Vec::new();
    if check.magic.is_some() {
        checks.push("magic");
    }
    if check.crc.is_some() {
        checks.push("crc");
    }
    if check.version.is_some() {
        checks.push("version");
    }
    Ok(ProfileInspection {
        file_len,
        profile: profile.name.clone(),
        checks,
        target: target.map(str::to_owned),
        result: check_profile_image(check, path, target, policy),
    })
}

impl ProfileInspection {
    /// Whether every declared check passed.
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }

    /// The human-readable report.
    pub fn text(&self, path: &Path) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "file:        {} ({} bytes)",
            path.display(),
            self.file_len
        );
        let _ = writeln!(
            o,
            "profile:     {} ([image_check]: {})",
            self.profile,
            self.checks.join(", ")
        );
        match &self.result {
            Ok(version) => {
                if let Some(v) = version {
                    let against = match &self.target {
                        Some(t) => format!(" (the target {t}: same)"),
                        None => " (not compared: no --target)".to_owned(),
                    };
                    let _ = writeln!(o, "version:     {v}{against}");
                }
                let _ = writeln!(o, "image check: passed");
            }
            Err(r) => {
                let _ = writeln!(
                    o,
                    "image check: REJECTED, result {}: {}",
                    r.code.get(),
                    r.description
                );
            }
        }
        o
    }

    /// The report as JSON.
    pub fn json(&self, path: &Path) -> Value {
        let (version, rejection) = match &self.result {
            Ok(v) => (v.clone(), None),
            Err(r) => (
                None,
                Some(json!({"result_code": r.code.get(), "description": r.description})),
            ),
        };
        json!({
            "file": path.display().to_string(),
            "file_size": self.file_len,
            "profile": self.profile,
            "checks": self.checks,
            "target": self.target,
            "version": version,
            "rejected": rejection,
            "ok": self.ok(),
        })
    }
}
