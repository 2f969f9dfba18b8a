//! Block2 serving: the gateway answers a child's GETs of `/fw/<name>` for
//! pull delivery, one block per request, with no per-transfer state.
//!
//! Stateless random access is what makes pull resumable (docs/protocols/children.md §2.4):
//! any `Block2: NUM/0/SZX` is answered from the package on disk, so a child
//! that resumes at block N, from a new source port, gets block N (aiocoap
//! answers 4.08 there, docs/protocols/children.md §2.3).
//!
//! # Call order
//! The driver gets `ExchangeEvent::Request` from its [`super::Exchanges`]; if
//! the path starts with the configured prefix it calls [`serve_block2`] and
//! passes the [`Block2Reply::response`] to [`super::Exchanges::respond`]
//! (the message layer adds type, message id and token, and replays the
//! answer to duplicates). [`Block2Reply::served`] tells which bytes went
//! out, for the progress of pull delivery.
//!
//! # Protocol rules
//! - The block size is the smaller of the requested SZX and the configured
//!   maximum (RFC 7959 §2.4: "MUST use the block size indicated or a smaller
//!   size"); a smaller size recomputes NUM from the requested offset.
//! - Every block carries ETag = the first 8 bytes of the package SHA-256, so
//!   it is stable across restarts (RFC 7252 §5.10.6, docs/protocols/children.md §2.4), and
//!   Size2 = the package length, which also answers a request carrying
//!   Size2: 0 (RFC 7959 §4).
//! - 4.04 for unknown resources, 4.05 for methods other than GET, 4.00 for
//!   SZX 7 (RFC 7959 §2.2), 4.02 for a malformed or repeated Block2 or an
//!   unknown critical option (RFC 7252 §5.4.1, §5.4.5), 4.02 for a block
//!   past the end (inferred: RFC 7959 names no code; libcoap answers 4.02).

use coap_lite::{CoapOption, Packet};

use super::block::{szx_to_size, BlockError, BlockOpt, MAX_NUM, MAX_SZX};
use super::msg::{self, Code, OptionError};
use super::source::ReadError;

/// Where packages are served and how big blocks may get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The first Uri-Path segment, `"fw"` for `coap://<gw>/fw/<sha256>`.
    pub prefix: String,
    /// The largest SZX served, 0..=6 (6: 1024-byte blocks).
    pub max_szx: u8,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            prefix: "fw".into(),
            max_szx: MAX_SZX,
        }
    }
}

/// A package the store knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageInfo {
    /// Length in bytes.
    pub len: u32,
    /// SHA-256 of the whole package; its first 8 bytes are the ETag.
    pub sha256: [u8; 32],
}

/// The verified packages, read by offset (the driver's package store).
pub trait PackageStore {
    /// The package called `name` (the Uri-Path segment after the prefix).
    fn lookup(&mut self, name: &str) -> Option<PackageInfo>;
    /// Fills `buf` with the bytes of `name` at `offset`.
    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), ReadError>;
}

/// Which block of which package a reply carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBlock {
    /// The package name.
    pub name: String,
    /// Block number at the served size.
    pub num: u32,
    /// Served size exponent.
    pub szx: u8,
    /// Byte offset of the block.
    pub offset: u32,
    /// Bytes in the block.
    pub len: u32,
    /// This was the last block (M = 0).
    pub last: bool,
    /// Package length.
    pub total: u32,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Block2Reply {
    /// The response: code, options, payload. Type, message id and token
    /// are the exchange engine's to fill.
    pub response: Packet,
    /// The block served, `None` for error responses.
    pub served: Option<ServedBlock>,
}

/// Elective or understood options a GET for a package may carry.
/// RFC 7252 §5.4.1: an unrecognized critical (odd-numbered) option gets 4.02.
fn understood_critical(number: u16) -> bool {
    matches!(
        number,
        3 /* Uri-Host */ | 7 /* Uri-Port */ | 11 /* Uri-Path */ | 15 /* Uri-Query */
            | 17 /* Accept */ | 23 /* Block2 */
    )
}

/// Answers one request for `/<prefix>/<name>`; see the module doc.
pub fn serve_block2<S: PackageStore + ?Sized>(
    config: &ServeConfig,
    request: &Packet,
    store: &mut S,
) -> Block2Reply {
    match serve(config, request, store) {
        Ok(reply) => reply,
        Err(code) => Block2Reply {
            response: msg::response(code),
            served: None,
        },
    }
}

// Long on purpose: one request's Block2 answer, every RFC 7959 §2.4 case in order.
fn serve<S: PackageStore + ?Sized>(
    config: &ServeConfig,
    request: &Packet,
    store: &mut S,
) -> Result<Block2Reply, Code> {
    for (&number, _) in request.options() {
        if number % 2 == 1 && !understood_critical(number) {
            return Err(Code::BAD_OPTION);
        }
    }
    let path = msg::uri_path(request).ok_or(Code::NOT_FOUND)?;
    let name = match path.as_slice() {
        [prefix, name] if *prefix == config.prefix => name.as_str(),
        _ => return Err(Code::NOT_FOUND),
    };
    if msg::code(request) != Code::GET {
        return Err(Code::METHOD_NOT_ALLOWED);
    }
    let info = store.lookup(name).ok_or(Code::NOT_FOUND)?;
    // RFC 7252 §5.10.4: Accept other than what we have gets 4.06.
    match msg::uint(request, CoapOption::Accept).map_err(|_| Code::BAD_OPTION)? {
        None => {}
        Some(cf) if cf == msg::OCTET_STREAM => {}
        Some(_) => return Err(Code::NOT_ACCEPTABLE),
    }
    let asked = match msg::block2(request) {
        Ok(b) => b,
        // RFC 7959 §2.2: SZX 7 in a request MUST lead to 4.00.
        Err(OptionError::Block {
            source: BlockError::ReservedSzx,
            ..
        }) => return Err(Code::BAD_REQUEST),
        Err(_) => return Err(Code::BAD_OPTION),
    };
    let max_szx = config.max_szx.min(MAX_SZX);
    let (offset, szx) = match asked {
        Some(b) => (b.offset(), b.szx.min(max_szx)),
        None => (0, max_szx),
    };
    let size = szx_to_size(szx);
    let total = info.len;
    if offset >= u64::from(total) && !(offset == 0 && total == 0) {
        return Err(Code::BAD_OPTION);
    }
    let offset = offset as u32; // below `total`, a u32
                                // The requested offset is a multiple of the requested size and so of
                                // any smaller power of two: NUM at the served size is exact.
    let num = offset / size;
    if num > MAX_NUM {
        return Err(Code::BAD_OPTION);
    }
    let len = size.min(total - offset);
    let last = offset + len == total;
    let mut payload = vec![0u8; len as usize];
    store
        .read_at(name, u64::from(offset), &mut payload)
        .map_err(|_| Code::INTERNAL_SERVER_ERROR)?;

    let mut response = Packet::new();
    msg::set_code(&mut response, Code::CONTENT);
    response.add_option(CoapOption::ETag, info.sha256[..8].to_vec());
    msg::set_uint(&mut response, CoapOption::ContentFormat, msg::OCTET_STREAM);
    // A package that fits in one block and was asked for without Block2
    // needs no Block2 in the answer (RFC 7959 §2.4).
    if asked.is_some() || !last || offset != 0 {
        msg::set_block2(
            &mut response,
            BlockOpt {
                num,
                more: !last,
                szx,
            },
        );
    }
    msg::set_uint(&mut response, CoapOption::Size2, total);
    response.payload = payload;
    Ok(Block2Reply {
        response,
        served: Some(ServedBlock {
            name: name.to_string(),
            num,
            szx,
            offset,
            len,
            last,
            total,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::msg::{block2, request, set_block2, size2};
    use proptest::prelude::*;

    struct Store {
        name: &'static str,
        data: Vec<u8>,
        reads: usize,
    }

    impl PackageStore for Store {
        fn lookup(&mut self, name: &str) -> Option<PackageInfo> {
            (name == self.name).then_some(PackageInfo {
                len: self.data.len() as u32,
                sha256: [0xab; 32],
            })
        }
        fn read_at(&mut self, _: &str, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            self.reads += 1;
            crate::coap::ReadAt::read_at(&mut self.data, offset, buf)
        }
    }

    fn store(len: usize) -> Store {
        Store {
            name: "abc",
            data: (0..len).map(|i| i as u8).collect(),
            reads: 0,
        }
    }

    fn get(num: u32, szx: u8) -> Packet {
        let mut p = request(Code::GET, &["fw", "abc"]);
        set_block2(
            &mut p,
            BlockOpt {
                num,
                more: false,
                szx,
            },
        );
        p
    }

    #[test]
    fn random_access_block_with_etag_and_size2() {
        let mut s = store(5000);
        let r = serve_block2(&ServeConfig::default(), &get(10, 2), &mut s);
        assert_eq!(msg::code(&r.response), Code::CONTENT);
        assert_eq!(
            block2(&r.response).unwrap(),
            Some(BlockOpt {
                num: 10,
                more: true,
                szx: 2
            })
        );
        assert_eq!(size2(&r.response).unwrap(), Some(5000));
        assert_eq!(
            r.response.get_first_option(CoapOption::ETag).unwrap(),
            &vec![0xab; 8]
        );
        assert_eq!(r.response.payload, s.data[640..704]);
        let served = r.served.unwrap();
        assert_eq!((served.offset, served.len, served.last), (640, 64, false));
    }

    #[test]
    fn last_block_is_short_with_m_clear() {
        let mut s = store(5000);
        let r = serve_block2(&ServeConfig::default(), &get(78, 2), &mut s);
        assert_eq!(
            block2(&r.response).unwrap(),
            Some(BlockOpt {
                num: 78,
                more: false,
                szx: 2
            })
        );
        assert_eq!(r.response.payload.len(), 5000 - 78 * 64);
        assert!(r.served.unwrap().last);
    }

    #[test]
    fn size_is_capped_and_num_recomputed() {
        let mut s = store(5000);
        let cfg = ServeConfig {
            max_szx: 4,
            ..ServeConfig::default()
        };
        // 1024-byte block 2 = offset 2048 = 256-byte block 8.
        let r = serve_block2(&cfg, &get(2, 6), &mut s);
        assert_eq!(
            block2(&r.response).unwrap(),
            Some(BlockOpt {
                num: 8,
                more: true,
                szx: 4
            })
        );
        assert_eq!(r.response.payload, s.data[2048..2304]);
    }

    #[test]
    fn size2_zero_request_and_no_block2_request() {
        let mut s = store(100);
        let mut p = request(Code::GET, &["fw", "abc"]);
        p.add_option(CoapOption::Size2, vec![]);
        let r = serve_block2(&ServeConfig::default(), &p, &mut s);
        assert_eq!(size2(&r.response).unwrap(), Some(100));
        // Fits in one 1024-byte block: no Block2 needed.
        assert_eq!(block2(&r.response).unwrap(), None);
        assert_eq!(r.response.payload.len(), 100);
        let mut big = store(3000);
        let r = serve_block2(&ServeConfig::default(), &p, &mut big);
        assert_eq!(
            block2(&r.response).unwrap(),
            Some(BlockOpt {
                num: 0,
                more: true,
                szx: 6
            })
        );
    }

    #[test]
    fn past_block_4095() {
        let mut s = store(5001 * 16);
        let r = serve_block2(&ServeConfig::default(), &get(5000, 0), &mut s);
        assert_eq!(
            r.response.get_first_option(CoapOption::Block2).unwrap(),
            &vec![0x01, 0x38, 0x80]
        );
        assert_eq!(r.response.payload, s.data[80000..80016]);
    }

    #[test]
    fn error_codes() {
        let cfg = ServeConfig::default();
        let code = |p: &Packet| {
            let mut s = store(100);
            let r = serve_block2(&cfg, p, &mut s);
            assert!(r.served.is_none() || msg::code(&r.response) == Code::CONTENT);
            msg::code(&r.response)
        };
        assert_eq!(code(&request(Code::GET, &["fw", "nope"])), Code::NOT_FOUND);
        assert_eq!(
            code(&request(Code::GET, &["other", "abc"])),
            Code::NOT_FOUND
        );
        assert_eq!(
            code(&request(Code::GET, &["fw", "abc", "x"])),
            Code::NOT_FOUND
        );
        assert_eq!(
            code(&request(Code::PUT, &["fw", "abc"])),
            Code::METHOD_NOT_ALLOWED
        );
        let mut p = request(Code::GET, &["fw", "abc"]);
        p.add_option(CoapOption::Block2, vec![0x07]);
        assert_eq!(code(&p), Code::BAD_REQUEST, "SZX 7");
        let mut p = request(Code::GET, &["fw", "abc"]);
        p.add_option(CoapOption::Block2, vec![1, 2, 3, 4]);
        assert_eq!(code(&p), Code::BAD_OPTION, "4-byte Block2");
        let mut p = get(0, 0);
        p.add_option(CoapOption::Block2, vec![0x10]);
        assert_eq!(code(&p), Code::BAD_OPTION, "repeated Block2");
        assert_eq!(code(&get(7, 4)), Code::BAD_OPTION, "past the end");
        let mut p = get(0, 0);
        p.add_option(CoapOption::Unknown(2049), vec![1]);
        assert_eq!(code(&p), Code::BAD_OPTION, "unknown critical option");
        let mut p = get(0, 0);
        p.add_option(CoapOption::Unknown(2048), vec![1]);
        assert_eq!(
            code(&p),
            Code::CONTENT,
            "unknown elective option is ignored"
        );
        let mut p = get(0, 0);
        msg::set_uint(&mut p, CoapOption::Accept, 0);
        assert_eq!(code(&p), Code::NOT_ACCEPTABLE);
    }

    #[test]
    fn read_failure_is_a_server_error_not_a_panic() {
        // A store that claims 100 bytes but holds 10.
        struct Liar(Store);
        impl PackageStore for Liar {
            fn lookup(&mut self, _: &str) -> Option<PackageInfo> {
                Some(PackageInfo {
                    len: 100,
                    sha256: [0; 32],
                })
            }
            fn read_at(&mut self, n: &str, o: u64, b: &mut [u8]) -> Result<(), ReadError> {
                self.0.read_at(n, o, b)
            }
        }
        let mut liar = Liar(store(10));
        let r = serve_block2(&ServeConfig::default(), &get(1, 0), &mut liar);
        assert_eq!(msg::code(&r.response), Code::INTERNAL_SERVER_ERROR);
        assert_eq!(r.served, None);
        assert_eq!(liar.0.reads, 1);
    }

    proptest! {
        /// A client pulling block after block, at any size, gets exactly the
        /// package (the Zephyr pull loop, docs/protocols/children.md §2.3).
        #[test]
        fn sequential_pull_reassembles_the_package(len in 1usize..6000, szx in 0u8..=6, max in 0u8..=6) {
            let mut s = store(len);
            let cfg = ServeConfig { max_szx: max, ..ServeConfig::default() };
            let mut got = Vec::new();
            let mut size_szx = szx;
            for _ in 0..10_000 {
                let num = (got.len() as u32) / szx_to_size(size_szx);
                let r = serve_block2(&cfg, &get(num, size_szx), &mut s);
                let b = block2(&r.response).unwrap().unwrap();
                prop_assert_eq!(b.offset(), got.len() as u64);
                got.extend_from_slice(&r.response.payload);
                // RFC 7959 §2.4: continue with the size the server chose.
                size_szx = b.szx;
                if !b.more {
                    break;
                }
            }
            prop_assert_eq!(got, s.data);
        }

        #[test]
        fn any_block_request_is_answered_in_bounds(num in 0..=MAX_NUM, szx in 0u8..=6, len in 0usize..5000, max in 0u8..=6) {
            let mut s = store(len);
            let cfg = ServeConfig { max_szx: max, ..ServeConfig::default() };
            let r = serve_block2(&cfg, &get(num, szx), &mut s);
            if let Some(b) = r.served {
                prop_assert!(b.szx <= szx.min(max));
                prop_assert!(b.len <= szx_to_size(b.szx));
                prop_assert_eq!(&r.response.payload[..], &s.data[b.offset as usize..(b.offset + b.len) as usize]);
            } else {
                prop_assert_eq!(msg::code(&r.response), Code::BAD_OPTION);
            }
        }

        #[test]
        fn arbitrary_requests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            if let Ok(p) = msg::decode(&bytes) {
                let mut s = store(300);
                let _ = serve_block2(&ServeConfig::default(), &p, &mut s);
            }
        }
    }
}
