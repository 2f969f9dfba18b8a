//! Property tests of the MCUboot image parser: every generated valid image
//! is accepted with a matching hash (no false reject), and no generated,
//! mutated or arbitrary input makes it panic; reading a file in two steps
//! (header, then the trailer window) agrees with the whole-image view.

use otabridge_codecs::mcuboot::digest::digest;
use otabridge_codecs::mcuboot::image::assemble;
use otabridge_codecs::mcuboot::{
    flags, kind, HashKind, Header, Image, ImageVersion, ImageView, ParseError, Trailer, HEADER_SIZE,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// What a reader that never holds the file does: the header, then only the
/// window after the body.
fn streamed(bytes: &[u8]) -> Result<(Header, usize), ParseError> {
    let header = Header::parse(bytes.get(..HEADER_SIZE).unwrap_or(bytes))?;
    let (at, len) = header.trailer_window(bytes.len() as u64)?;
    let at = at as usize;
    let tail = &bytes[at..at + len];
    let t = Trailer::parse(&header, tail)?;
    Ok((header, t.len()))
}

fn version() -> impl Strategy<Value = ImageVersion> {
    (any::<u8>(), any::<u8>(), any::<u16>(), any::<u32>()).prop_map(|(a, b, c, d)| ImageVersion {
        major: a,
        minor: b,
        revision: c,
        build: d,
    })
}

fn hash_kind() -> impl Strategy<Value = HashKind> {
    prop_oneof![
        Just(HashKind::Sha256),
        Just(HashKind::Sha384),
        Just(HashKind::Sha512)
    ]
}

/// Protected entries as imgtool writes them: security counter, vendor TLVs.
fn protected() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    prop::collection::vec(
        prop_oneof![
            any::<u32>().prop_map(|c| (kind::SEC_CNT, c.to_le_bytes().to_vec())),
            (0xa0u16..0x100, prop::collection::vec(any::<u8>(), 0..40)),
        ],
        0..4,
    )
}

/// Unprotected entries after the hash: key hash, signatures of plausible size.
fn unprotected() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    prop::collection::vec(
        prop_oneof![
            prop::collection::vec(any::<u8>(), 32).prop_map(|v| (kind::KEYHASH, v)),
            prop::collection::vec(any::<u8>(), 64).prop_map(|v| (kind::ED25519, v)),
            prop::collection::vec(any::<u8>(), 70..73).prop_map(|v| (kind::ECDSA_SIG, v)),
            prop::collection::vec(any::<u8>(), 256).prop_map(|v| (kind::RSA2048_PSS, v)),
        ],
        0..3,
    )
}

#[derive(Debug, Clone)]
struct Generated {
    bytes: Vec<u8>,
    body: Vec<u8>,
    version: ImageVersion,
    trailing: usize,
}

fn image() -> impl Strategy<Value = Generated> {
    (
        version(),
        prop_oneof![Just(0u32), Just(flags::RAM_LOAD), Just(flags::NON_BOOTABLE)],
        prop_oneof![Just(32u16), Just(0x200), 32u16..1024],
        prop::collection::vec(any::<u8>(), 0..4096),
        protected(),
        hash_kind(),
        unprotected(),
        prop_oneof![Just(0usize), 1usize..64],
    )
        .prop_map(|(version, fl, hdr, body, prot, hash, unprot, trailing)| {
            let p: Vec<(u16, &[u8])> = prot.iter().map(|(k, v)| (*k, &v[..])).collect();
            let u: Vec<(u16, &[u8])> = unprot.iter().map(|(k, v)| (*k, &v[..])).collect();
            let mut bytes = assemble(version, fl, hdr, &body, &p, hash, &u);
            bytes.resize(bytes.len() + trailing, 0xff);
            Generated {
                bytes,
                body,
                version,
                trailing,
            }
        })
}

/// A change to a valid image.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    /// A 16-bit field set to a lie (a TLV length, total, or size).
    Word(usize, u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (
            any::<usize>(),
            prop_oneof![Just(0u16), Just(3), Just(4), Just(u16::MAX), any::<u16>()]
        )
            .prop_map(|(i, v)| Mutation::Word(i, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match *m {
        Mutation::Flip(i, b) => bytes[i % n] ^= 1 << b,
        Mutation::Set(i, v) => bytes[i % n] = v,
        Mutation::Truncate(i) => bytes.truncate(i % n),
        Mutation::Insert(i, v) => bytes.insert(i % (n + 1), v),
        Mutation::Word(i, v) => {
            let i = i % n;
            for (k, b) in v.to_le_bytes().into_iter().enumerate() {
                if let Some(x) = bytes.get_mut(i + k) {
                    *x = b;
                }
            }
        }
    }
}

/// Touches everything a view exposes.
fn exercise(v: &ImageView<'_>) {
    let f = v.trailer().facts();
    let _ = (v.body().len(), v.signed().len(), v.trailing().len());
    let _ = v.trailer().entries().count();
    if let Some((k, h)) = f.hash {
        let _ = digest(k, v.signed()) == h;
    }
    let _ = v.to_image();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x6d63_7562),
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_images_are_accepted_and_their_hash_matches(g in image()) {
        let v = ImageView::new(&g.bytes).expect("a valid image is accepted");
        prop_assert_eq!(v.body(), &g.body[..]);
        prop_assert_eq!(v.header().version, g.version);
        prop_assert_eq!(v.trailing().len(), g.trailing);
        let f = v.trailer().facts();
        let (k, h) = f.hash.expect("the hash TLV is found");
        prop_assert_eq!(digest(k, v.signed()), h.to_vec());
        let (header, tlv_len) = streamed(&g.bytes).expect("the two-step read accepts it too");
        prop_assert_eq!(&header, v.header());
        prop_assert_eq!(tlv_len, v.trailer().len());
        let parsed = Image::parse(&g.bytes).unwrap();
        prop_assert_eq!(parsed.trailing, g.trailing as u64);
    }

    #[test]
    fn mutated_images_never_panic_and_both_reads_agree(
        g in image(),
        ms in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = g.bytes.clone();
        for m in &ms {
            apply(&mut bytes, m);
        }
        let view = ImageView::new(&bytes);
        if let Ok(v) = &view {
            exercise(v);
        }
        let two_step = streamed(&bytes);
        prop_assert_eq!(view.map(|v| (*v.header(), v.trailer().len())), two_step);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        mut bytes in prop::collection::vec(any::<u8>(), 0..600),
        magic in any::<bool>(),
    ) {
        if magic && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&0x96f3_b83du32.to_le_bytes());
        }
        if let Ok(v) = ImageView::new(&bytes) {
            exercise(&v);
        }
        let _ = streamed(&bytes);
    }
}
