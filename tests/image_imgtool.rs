//! The gateway's image check against images signed by MCUboot's own
//! imgtool, with keys generated here for every key type: good images pass,
//! and each image of a corpus of bad ones is rejected with its IoTDA code
//! and a description naming the failed check.

mod image_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image_support::{app, imgtool_available, keygen, public, sign};
use otabridge::image::{examine, Gate, HashCheck, PublicKey, Rules, SigCheck};
use otabridge_codecs::mcuboot::{kind, ImageView, SigKind};

const TARGET: &str = "1.2.3";

fn gate(keys: Vec<Arc<PublicKey>>, decrypts: bool, slot_size: Option<u64>) -> Gate {
    Gate::new(HashMap::from([(
        "node".to_owned(),
        Rules {
            keys,
            decrypts,
            slot_size,
            ..Rules::default()
        },
    )]))
}

#[test]
fn good_images_pass_for_every_key_type() {
    if !imgtool_available("good_images_pass_for_every_key_type") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = app(d, "app", 20_000, 1);
    let cases: &[(&str, &[&str], SigKind)] = &[
        ("ecdsa-p256", &[], SigKind::Ecdsa),
        (
            "ecdsa-p256",
            &["--public-key-format", "full"],
            SigKind::Ecdsa,
        ),
        ("ed25519", &[], SigKind::Ed25519),
        ("ed25519", &["--sha", "512"], SigKind::Ed25519),
        ("ed25519", &["--pure"], SigKind::Ed25519),
        ("rsa-2048", &[], SigKind::Rsa2048Pss),
        ("rsa-3072", &[], SigKind::Rsa3072Pss),
    ];
    let mut made: HashMap<&str, (PathBuf, PathBuf)> = HashMap::new();
    for (i, (key_type, extra, sig)) in cases.iter().enumerate() {
        let (private, pubkey) = made
            .entry(key_type)
            .or_insert_with(|| keygen(d, key_type, key_type))
            .clone();
        let img = sign(
            d,
            &format!("good{i}"),
            &input,
            Some(&private),
            TARGET,
            extra,
        );
        let key = public(&pubkey);
        let ex = examine(&img, std::slice::from_ref(&key)).unwrap();
        let what = format!("{key_type} {extra:?}");
        match &ex.signature {
            SigCheck::Verified { kind, .. } => assert_eq!(kind, sig, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
        // imgtool 2.x writes the hash TLV for pure images too; without
        // one, a pure image's hash check is its signature.
        assert!(
            matches!(ex.hash, HashCheck::Matches(_))
                || (extra.contains(&"--pure") && ex.hash == HashCheck::Pure),
            "{what}: {:?}",
            ex.hash
        );
        assert_eq!(ex.header.version.to_string(), TARGET);
        assert_eq!(ex.security_counter, Some(5));
        let g = gate(vec![key.clone()], false, Some(0x20000));
        assert_eq!(g.check("node", &img, TARGET), Ok(()), "{what}");
        assert_eq!(
            g.check("node", &img, "V1.2.3+0"),
            Ok(()),
            "{what}: normalised"
        );
        // The parsed form agrees with what imgtool wrote.
        let bytes = std::fs::read(&img).unwrap();
        let view = ImageView::new(&bytes).unwrap();
        assert_eq!(view.body().len(), 20_000, "{what}");
    }
    // A child without keys takes any well-formed image: hash and version only.
    let (other, _) = keygen(d, "stranger", "ecdsa-p256");
    let img = sign(d, "stranger", &input, Some(&other), TARGET, &[]);
    assert_eq!(
        gate(vec![], false, None).check("node", &img, TARGET),
        Ok(())
    );
    // A padded image (slot trailer after the TLVs) passes too.
    let (k, p) = &made["ecdsa-p256"];
    let padded = sign(d, "padded", &input, Some(k), TARGET, &["--pad"]);
    assert_eq!(
        gate(vec![public(p)], false, None).check("node", &padded, TARGET),
        Ok(())
    );
    // Keys of every type configured at once: the image's key hash picks one.
    let all: Vec<_> = made.values().map(|(_, p)| public(p)).collect();
    let img = sign(d, "any", &input, Some(&made["rsa-2048"].0), TARGET, &[]);
    assert_eq!(gate(all, false, None).check("node", &img, TARGET), Ok(()));
}

/// Where a good image's parts are.
struct Layout {
    bytes: Vec<u8>,
    body: (usize, usize),
    /// Value offset and length of each TLV, by type.
    tlv: HashMap<u16, (usize, usize)>,
    /// Start of the unprotected area.
    unprotected: usize,
}

fn layout(path: &Path) -> Layout {
    let bytes = std::fs::read(path).unwrap();
    let v = ImageView::new(&bytes).unwrap();
    let h = *v.header();
    let body = (h.hdr_size as usize, h.body_end() as usize);
    let mut tlv = HashMap::new();
    for (protected, t) in v.trailer().entries() {
        let base = if protected {
            h.body_end()
        } else {
            h.signed_end()
        } as usize;
        tlv.insert(t.kind, (base + t.offset, t.value.len()));
    }
    let unprotected = h.signed_end() as usize;
    Layout {
        bytes,
        body,
        tlv,
        unprotected,
    }
}

#[test]
fn a_corpus_of_bad_images_is_rejected_with_its_code() {
    if !imgtool_available("a_corpus_of_bad_images_is_rejected_with_its_code") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = app(d, "app", 16_000, 7);
    let (key, pubkey) = keygen(d, "vendor", "ecdsa-p256");
    let (other, _) = keygen(d, "other", "ecdsa-p256");
    let (ed, _) = keygen(d, "ed", "ed25519");
    // imgtool encrypts for an ECDSA P-256 signer with ECIES-P256.
    let (_, enc) = keygen(d, "enc", "ecdsa-p256");
    let good = sign(d, "good", &input, Some(&key), TARGET, &[]);
    let l = layout(&good);
    let keys = vec![public(&pubkey)];
    let checked = gate(keys.clone(), false, None);
    assert_eq!(checked.check("node", &good, TARGET), Ok(()));

    // (name, file, expected code, words the description must hold)
    let mut corpus: Vec<(String, PathBuf, u8, &str)> = Vec::new();
    let mut mutate = |name: &str, code: u8, check: &'static str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = l.bytes.clone();
        f(&mut b);
        let p = d.join(format!("bad-{}.bin", corpus.len()));
        std::fs::write(&p, &b).unwrap();
        corpus.push((name.to_owned(), p, code, check));
    };
    let (sha, sha_len) = l.tlv[&kind::SHA256];
    let (sig, sig_len) = l.tlv[&kind::ECDSA_SIG];
    let (keyhash, _) = l.tlv[&kind::KEYHASH];
    let (seccnt, _) = l.tlv[&kind::SEC_CNT];
    let u = l.unprotected;
    let end = l.bytes.len();
    mutate("header magic bit", 8, "MCUboot header", &|b| b[3] ^= 1);
    mutate("header version bit", 7, "image hash", &|b| b[20] ^= 1);
    mutate("header flags bit", 7, "image hash", &|b| b[16] ^= 0x10);
    mutate("header img_size bit", 7, "image structure", &|b| b[12] ^= 1);
    mutate("header hdr_size bit", 7, "image structure", &|b| b[8] ^= 1);
    mutate("body first byte", 7, "image hash", &|b| b[l.body.0] ^= 0x80);
    mutate("body last byte", 7, "image hash", &|b| b[l.body.1 - 1] ^= 1);
    mutate("protected TLV bit", 7, "image hash", &|b| b[seccnt] ^= 1);
    mutate("hash TLV bit", 7, "image hash", &|b| {
        b[sha + sha_len - 1] ^= 1
    });
    mutate("key hash TLV bit", 7, "key hash", &|b| b[keyhash] ^= 1);
    mutate("signature bit", 7, "signature", &|b| b[sig + 40] ^= 1);
    mutate("signature DER tag", 7, "signature", &|b| b[sig] ^= 1);
    mutate("truncated to half", 7, "image structure", &|b| {
        b.truncate(end / 2)
    });
    mutate("truncated by one byte", 7, "image structure", &|b| {
        b.truncate(end - 1)
    });
    mutate("truncated inside the header", 7, "image structure", &|b| {
        b.truncate(16)
    });
    // The signature is the last entry: one more byte runs past the area.
    mutate("TLV length one too long", 7, "image structure", &|b| {
        b[sig - 2] += 1
    });
    mutate("TLV length past the area", 7, "image structure", &|b| {
        b[sha - 2..sha].copy_from_slice(&0x4000u16.to_le_bytes())
    });
    mutate("TLV length 0xffff", 7, "image structure", &|b| {
        b[sig - 2..sig].copy_from_slice(&[0xff, 0xff])
    });
    mutate("TLV total beyond the file", 7, "image structure", &|b| {
        b[u + 2..u + 4].copy_from_slice(&0xfff0u16.to_le_bytes())
    });
    mutate("TLV total below its own info", 7, "image structure", &|b| {
        b[u + 2..u + 4].copy_from_slice(&3u16.to_le_bytes())
    });
    mutate("protected size disagrees", 7, "image structure", &|b| {
        b[10] += 4
    });
    mutate(
        "a TLV count that would loop: 4000 empty entries, no hash",
        7,
        "no hash TLV",
        &|b| {
            b.truncate(u);
            let n = 4000u16;
            b.extend_from_slice(&0x6907u16.to_le_bytes());
            b.extend_from_slice(&(4 + 4 * n).to_le_bytes());
            for _ in 0..n {
                b.extend_from_slice(&[0xa0, 0, 0, 0]);
            }
        },
    );
    mutate("old v1 magic", 8, "MCUboot header", &|b| b[0] = 0x3c);
    // Signature of another image by the same key.
    let twin = sign(
        d,
        "twin",
        &app(d, "twin", 16_000, 8),
        Some(&key),
        TARGET,
        &[],
    );
    let twin = layout(&twin);
    let (tsig, tlen) = twin.tlv[&kind::ECDSA_SIG];
    let stolen = twin.bytes[tsig..tsig + tlen].to_vec();
    if tlen == sig_len {
        mutate("signature of another image", 7, "signature", &|b| {
            b[sig..sig + sig_len].copy_from_slice(&stolen)
        });
    }
    let files = [
        (
            "signed with another key",
            sign(d, "wrongkey", &input, Some(&other), TARGET, &[]),
            7,
            "key hash",
        ),
        (
            "signed with a key of another type",
            sign(d, "wrongtype", &input, Some(&ed), TARGET, &[]),
            7,
            "key hash",
        ),
        (
            "unsigned",
            sign(d, "unsigned", &input, None, TARGET, &[]),
            7,
            "not signed",
        ),
        ("not an MCUboot image", input.clone(), 8, "MCUboot header"),
        (
            "version mismatch",
            sign(d, "v124", &input, Some(&key), "1.2.4", &[]),
            7,
            "version",
        ),
        (
            "encrypted for a child that cannot decrypt",
            sign(
                d,
                "enc",
                &input,
                Some(&key),
                TARGET,
                &["--encrypt", enc.to_str().unwrap()],
            ),
            8,
            "encryption",
        ),
    ];
    for (name, p, code, check) in files {
        corpus.push((name.to_owned(), p, code, check));
    }
    assert!(corpus.len() >= 20, "{} bad images", corpus.len());
    for (name, path, code, check) in &corpus {
        let r = checked.check("node", path, TARGET).expect_err(name);
        assert_eq!(r.code.get(), *code, "{name}: {}", r.description);
        assert!(
            r.description.contains(check) && r.description.starts_with("image check failed: "),
            "{name}: {}",
            r.description
        );
    }
    // Oversize: the good image against a slot one byte too small.
    let small = gate(keys.clone(), false, Some(end as u64 - 1));
    let r = small.check("node", &good, TARGET).unwrap_err();
    assert_eq!(
        (r.code.get(), r.description.contains("size")),
        (5, true),
        "{r:?}"
    );
    // The encrypted image passes for a child that decrypts (its body, hash
    // and signature are the child's to check).
    let enc_img = &corpus
        .iter()
        .find(|c| c.0.starts_with("encrypted"))
        .unwrap()
        .1;
    assert_eq!(
        gate(keys, true, None).check("node", enc_img, TARGET),
        Ok(())
    );
    eprintln!("{} bad images rejected", corpus.len() + 1);
}
