//! The LwM2M resources a gateway uses to update a child's firmware: the
//! Firmware Update object /5 and the Device object's firmware version
//! /3/0/3, with plain-text values.
//!
//! Sources: OMA LwM2M registry `5.xml` (urn:oma:lwm2m:oma:5:1.1) and
//! `3.xml`, summarised in docs/protocols/children.md §3; value mapping to IoTDA from
//! docs/protocols/iotda.md §9.
//!
//! The gateway as the LwM2M server its children register with: [`link`]
//! (the CoRE Link Format of Register payloads, RFC 6690) and [`registry`]
//! (the Registration interface, OMA TS Core 1.1 §6.2, sans-IO).

pub mod content;
pub mod link;
pub mod registry;

pub use content::ContentFormat;

use std::fmt;

use crate::iotda::ResultCode;

/// An LwM2M resource path `/object/instance/resource` (OMA TS Core §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Path {
    /// Object id.
    pub object: u16,
    /// Instance id (0: /5 and /3 are single-instance).
    pub instance: u16,
    /// Resource id.
    pub resource: u16,
}

impl Path {
    /// /5/0/0 Package (W, opaque): push the image, block-wise (5.xml).
    pub const PACKAGE: Path = Path::fw(0);
    /// /5/0/1 Package URI (RW, string 0..255): the child pulls from it.
    pub const PACKAGE_URI: Path = Path::fw(1);
    /// /5/0/2 Update (E): executable only in State 2 (5.xml).
    pub const UPDATE: Path = Path::fw(2);
    /// /5/0/3 State (R, integer 0..3).
    pub const STATE: Path = Path::fw(3);
    /// /5/0/4 is not defined in LwM2M 1.1 (it was Update Supported
    /// Objects in 1.0), kept for completeness of /5/0/0..9.
    pub const UPDATE_SUPPORTED_OBJECTS: Path = Path::fw(4);
    /// /5/0/5 Update Result (R, integer 0..11).
    pub const UPDATE_RESULT: Path = Path::fw(5);
    /// /5/0/6 PkgName (R, string).
    pub const PKG_NAME: Path = Path::fw(6);
    /// /5/0/7 PkgVersion (R, string).
    pub const PKG_VERSION: Path = Path::fw(7);
    /// /5/0/8 Firmware Update Protocol Support (R, multiple, 0..5).
    pub const PROTOCOL_SUPPORT: Path = Path::fw(8);
    /// /5/0/9 Firmware Update Delivery Method (R, 0 pull, 1 push, 2 both).
    pub const DELIVERY_METHOD: Path = Path::fw(9);
    /// /3/0/3 Firmware Version of the Device object (R, string, 3.xml).
    pub const FIRMWARE_VERSION: Path = Path {
        object: 3,
        instance: 0,
        resource: 3,
    };

    const fn fw(resource: u16) -> Path {
        Path {
            object: 5,
            instance: 0,
            resource,
        }
    }

    /// The Uri-Path segments of this path, `["5", "0", "3"]`.
    pub fn segments(self) -> [String; 3] {
        [
            self.object.to_string(),
            self.instance.to_string(),
            self.resource.to_string(),
        ]
    }

    /// Parses `/5/0/3` (the leading slash is optional).
    pub fn parse(s: &str) -> Result<Path, ValueError> {
        let bad = || ValueError::Path(s.to_string());
        let mut it = s.strip_prefix('/').unwrap_or(s).split('/');
        let mut next = || {
            it.next()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(bad)
        };
        let p = Path {
            object: next()?,
            instance: next()?,
            resource: next()?,
        };
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(p)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/{}/{}", self.object, self.instance, self.resource)
    }
}

/// A value that is not what the resource holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The payload is not UTF-8 (plain text is UTF-8, RFC 7252 §12.3).
    #[error("value is not UTF-8")]
    NotUtf8,
    /// The text is not a decimal integer (OMA TS Core §7.3.1 Plain Text).
    #[error("'{0}' is not an integer")]
    NotInteger(String),
    /// An integer outside the resource's range.
    #[error("{resource} value {value} out of range")]
    OutOfRange {
        /// Which resource.
        resource: Path,
        /// The value read.
        value: i64,
    },
    /// Not a `/object/instance/resource` path.
    #[error("'{0}' is not an LwM2M resource path")]
    Path(String),
    /// An answer in a content format that does not decode, or holds no
    /// usable value for the resource ([`content`]).
    #[error(transparent)]
    Content(#[from] content::ContentError),
}

/// The value of single resource `path` in a read answer of `format` (the
/// answer's Content-Format; none means text/plain, which is what LwM2M
/// clients that omit it send, RFC 7252 §5.10.3).
fn read_item(
    format: Option<ContentFormat>,
    path: Path,
    payload: &[u8],
) -> Result<content::Item, ValueError> {
    let format = format.unwrap_or(ContentFormat::TEXT_PLAIN);
    let items = content::decode(format, path, payload)?;
    Ok(content::single(&items, path)?.clone())
}

/// An Integer resource read in any format [`content`] decodes.
pub fn read_integer(
    format: Option<ContentFormat>,
    path: Path,
    payload: &[u8],
) -> Result<i64, ValueError> {
    Ok(read_item(format, path, payload)?.integer()?)
}

/// A String resource read in any format [`content`] decodes, trimmed of
/// surrounding whitespace (devices send "1.0\n").
pub fn read_string(
    format: Option<ContentFormat>,
    path: Path,
    payload: &[u8],
) -> Result<String, ValueError> {
    Ok(read_item(format, path, payload)?
        .string()?
        .trim()
        .to_owned())
}

/// The values of multiple-instance Integer resource `path` (`/5/0/8`), in
/// instance order; a single value (plain text, a client that answers
/// with the resource alone) counts as one instance.
pub fn read_integers(
    format: Option<ContentFormat>,
    path: Path,
    payload: &[u8],
) -> Result<Vec<i64>, ValueError> {
    let format = format.unwrap_or(ContentFormat::TEXT_PLAIN);
    let mut items: Vec<_> = content::decode(format, path, payload)?
        .into_iter()
        .filter(|i| i.path.resource == path)
        .collect();
    items.sort_by_key(|i| i.path.instance);
    if items.is_empty() {
        return Err(content::ContentError::Missing(path).into());
    }
    items.iter().map(|i| Ok(i.integer()?)).collect()
}

/// A plain-text string value (OMA TS Core §7.3.1: UTF-8, no quoting).
pub fn parse_text(payload: &[u8]) -> Result<&str, ValueError> {
    std::str::from_utf8(payload).map_err(|_| ValueError::NotUtf8)
}

/// A plain-text integer value: ASCII decimal, optional sign (OMA TS Core
/// §7.3.1). Surrounding whitespace is tolerated, as devices send "2\n".
pub fn parse_integer(payload: &[u8]) -> Result<i64, ValueError> {
    let text = parse_text(payload)?.trim();
    text.parse::<i64>()
        .map_err(|_| ValueError::NotInteger(text.to_string()))
}

/// Firmware Update State, /5/0/3 (5.xml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// 0 Idle: before downloading or after a successful update.
    Idle = 0,
    /// 1 Downloading: the data sequence is on the way.
    Downloading = 1,
    /// 2 Downloaded: the package is complete; Update may be executed.
    Downloaded = 2,
    /// 3 Updating: the update is being installed.
    Updating = 3,
}

impl State {
    /// The state for an integer value 0..=3.
    pub fn from_value(v: i64) -> Result<State, ValueError> {
        Ok(match v {
            0 => State::Idle,
            1 => State::Downloading,
            2 => State::Downloaded,
            3 => State::Updating,
            value => {
                return Err(ValueError::OutOfRange {
                    resource: Path::STATE,
                    value,
                })
            }
        })
    }

    /// Parses a plain-text read of /5/0/3.
    pub fn from_plain_text(payload: &[u8]) -> Result<State, ValueError> {
        State::from_value(parse_integer(payload)?)
    }

    /// Parses a read of /5/0/3 in `format` ([`read_integer`]).
    pub fn read(format: Option<ContentFormat>, payload: &[u8]) -> Result<State, ValueError> {
        State::from_value(read_integer(format, Path::STATE, payload)?)
    }
}

/// Firmware Update Result, /5/0/5 (5.xml; 10 and 11 are new in 1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateResult {
    /// 0 Initial value, reset when a download or an update starts.
    Initial = 0,
    /// 1 Firmware updated successfully.
    Success = 1,
    /// 2 Not enough flash memory for the new package.
    NotEnoughStorage = 2,
    /// 3 Out of RAM during the download.
    OutOfMemory = 3,
    /// 4 Connection lost during the download.
    ConnectionLost = 4,
    /// 5 Integrity check failure of the downloaded package.
    IntegrityFailure = 5,
    /// 6 Unsupported package type.
    UnsupportedPackage = 6,
    /// 7 Invalid URI.
    InvalidUri = 7,
    /// 8 Firmware update failed.
    UpdateFailed = 8,
    /// 9 Unsupported protocol (the URI scheme, see /5/0/8).
    UnsupportedProtocol = 9,
    /// 10 Firmware update cancelled (Cancel /5/0/10, LwM2M 1.1).
    Cancelled = 10,
    /// 11 Firmware update deferred (LwM2M 1.1).
    Deferred = 11,
}

impl UpdateResult {
    /// The result for an integer value 0..=11.
    pub fn from_value(v: i64) -> Result<UpdateResult, ValueError> {
        use UpdateResult::*;
        Ok(match v {
            0 => Initial,
            1 => Success,
            2 => NotEnoughStorage,
            3 => OutOfMemory,
            4 => ConnectionLost,
            5 => IntegrityFailure,
            6 => UnsupportedPackage,
            7 => InvalidUri,
            8 => UpdateFailed,
            9 => UnsupportedProtocol,
            10 => Cancelled,
            11 => Deferred,
            value => {
                return Err(ValueError::OutOfRange {
                    resource: Path::UPDATE_RESULT,
                    value,
                })
            }
        })
    }

    /// Parses a plain-text read of /5/0/5.
    pub fn from_plain_text(payload: &[u8]) -> Result<UpdateResult, ValueError> {
        UpdateResult::from_value(parse_integer(payload)?)
    }

    /// Parses a read of /5/0/5 in `format` ([`read_integer`]).
    pub fn read(format: Option<ContentFormat>, payload: &[u8]) -> Result<UpdateResult, ValueError> {
        UpdateResult::from_value(read_integer(format, Path::UPDATE_RESULT, payload)?)
    }

    /// A failure the child reports (2..=11); 0 and 1 are not failures.
    pub fn is_failure(self) -> bool {
        !matches!(self, UpdateResult::Initial | UpdateResult::Success)
    }

    /// The IoTDA `upgrade_progress_report` `result_code` and `description`
    /// (docs/protocols/iotda.md §4.6 codes, §9 wording).
    ///
    /// - 2..=8 follow docs/protocols/iotda.md §9 exactly (4 → 6 and 7 → 255 are marked
    ///   INFERRED there).
    /// - 9 Unsupported protocol → 255 "internal exception" class
    ///   (inferred): the gateway chose a URI scheme the child does not list
    ///   in /5/0/8, a gateway-side fault like 7 Invalid URI, and IoTDA has no
    ///   closer code.
    /// - 10 Cancelled → 255 (inferred): cancelled on the child's side, no
    ///   IoTDA code says so.
    /// - 11 Deferred → 1 "device in use" (inferred): the child postponed the
    ///   update, which is the platform's notion of a busy device.
    /// - 1 Success → 0; 0 Initial → 255, since a finished procedure that
    ///   still reads 0 never reported a result. The gateway reports success
    ///   only after reading the new version back (docs/design.md principles).
    pub fn to_iotda(self) -> (ResultCode, &'static str) {
        use crate::iotda::result::*;
        use ResultCode as C;
        use UpdateResult::*;
        match self {
            Initial => (C::INNER_ERROR, "No firmware update result reported"),
            Success => (C::SUCCESS, "Firmware updated successfully"),
            NotEnoughStorage => (C::LOW_SPACE, DESC_NO_STORAGE),
            OutOfMemory => (C::LOW_MEMORY, DESC_NO_MEMORY),
            ConnectionLost => (C::DOWNLOAD_TIMEOUT, DESC_CONNECTION_LOST),
            IntegrityFailure => (C::CHECK_FAIL, DESC_INTEGRITY),
            UnsupportedPackage => (C::UNKNOWN_TYPE, DESC_UNSUPPORTED_TYPE),
            InvalidUri => (C::INNER_ERROR, DESC_INVALID_URI),
            UpdateFailed => (C::INSTALL_FAIL, DESC_UPDATE_FAILED),
            UnsupportedProtocol => (C::INNER_ERROR, "Unsupported protocol"),
            Cancelled => (C::INNER_ERROR, "Firmware update cancelled"),
            Deferred => (C::BUSY, "Firmware update deferred"),
        }
    }
}

/// Firmware Update Delivery Method, /5/0/9 (5.xml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryMethod {
    /// 0 Pull only: the child downloads from /5/0/1.
    Pull = 0,
    /// 1 Push only: the server writes /5/0/0.
    Push = 1,
    /// 2 Both.
    Both = 2,
}

impl DeliveryMethod {
    /// Parses a plain-text read of /5/0/9.
    pub fn from_plain_text(payload: &[u8]) -> Result<DeliveryMethod, ValueError> {
        Self::from_value(parse_integer(payload)?)
    }

    /// Parses a read of /5/0/9 in `format` ([`read_integer`]).
    pub fn read(
        format: Option<ContentFormat>,
        payload: &[u8],
    ) -> Result<DeliveryMethod, ValueError> {
        Self::from_value(read_integer(format, Path::DELIVERY_METHOD, payload)?)
    }

    /// The method for an integer value 0..=2.
    pub fn from_value(v: i64) -> Result<DeliveryMethod, ValueError> {
        match v {
            0 => Ok(DeliveryMethod::Pull),
            1 => Ok(DeliveryMethod::Push),
            2 => Ok(DeliveryMethod::Both),
            value => Err(ValueError::OutOfRange {
                resource: Path::DELIVERY_METHOD,
                value,
            }),
        }
    }
}

/// The Package URI the gateway writes to /5/0/1 for pull delivery:
/// `coap://<gw>/fw/<sha256>` (docs/protocols/children.md §3, step 2). `gw` is `host:port`
/// (an IPv6 literal in brackets, RFC 3986 §3.2.2).
pub fn package_uri(gw: &str, sha256_hex: &str) -> String {
    format!("coap://{gw}/fw/{sha256_hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(Path::STATE.to_string(), "/5/0/3");
        assert_eq!(Path::FIRMWARE_VERSION.segments(), ["3", "0", "3"]);
        assert_eq!(Path::parse("/5/0/1").unwrap(), Path::PACKAGE_URI);
        assert_eq!(Path::parse("5/0/9").unwrap(), Path::DELIVERY_METHOD);
        assert!(Path::parse("/5/0").is_err());
        assert!(Path::parse("/5/0/1/2").is_err());
        assert!(Path::parse("/5/x/1").is_err());
    }

    #[test]
    fn plain_text_values() {
        assert_eq!(State::from_plain_text(b"2").unwrap(), State::Downloaded);
        assert_eq!(State::from_plain_text(b" 0\n").unwrap(), State::Idle);
        assert_eq!(
            State::from_plain_text(b"4"),
            Err(ValueError::OutOfRange {
                resource: Path::STATE,
                value: 4
            })
        );
        assert_eq!(
            State::from_plain_text(b"two"),
            Err(ValueError::NotInteger("two".into()))
        );
        assert_eq!(State::from_plain_text(&[0xff]), Err(ValueError::NotUtf8));
        assert_eq!(
            UpdateResult::from_plain_text(b"11").unwrap(),
            UpdateResult::Deferred
        );
        assert!(UpdateResult::from_plain_text(b"12").is_err());
        assert_eq!(
            DeliveryMethod::from_plain_text(b"2").unwrap(),
            DeliveryMethod::Both
        );
        assert_eq!(parse_text(b"v1.2.3").unwrap(), "v1.2.3");
    }

    #[test]
    fn results_map_to_iotda_as_iotda_md_section_9_says() {
        let table = [
            (2, 5, "Not enough storage for the new firmware package"),
            (3, 9, "Out of memory during downloading process"),
            (4, 6, "Connection lost during downloading process"),
            (5, 7, "Integrity check failure for new downloaded package"),
            (6, 8, "Unsupported package type"),
            (7, 255, "Invalid URI"),
            (8, 10, "Firmware update failed"),
        ];
        for (lwm2m, code, text) in table {
            let r = UpdateResult::from_value(lwm2m).unwrap();
            assert!(r.is_failure());
            let (c, t) = r.to_iotda();
            assert_eq!((c.get(), t), (code, text), "result {lwm2m}");
        }
        assert_eq!(UpdateResult::UnsupportedProtocol.to_iotda().0.get(), 255);
        assert_eq!(UpdateResult::Deferred.to_iotda().0.get(), 1);
        assert_eq!(UpdateResult::Success.to_iotda().0.get(), 0);
        assert!(!UpdateResult::Success.is_failure());
        // Every value maps to a code the C SDK accepts (docs/protocols/iotda.md §4.6):
        // `ResultCode` cannot hold any other.
    }

    #[test]
    fn package_uri_shape() {
        assert_eq!(
            package_uri("192.168.10.1:5683", "ab12"),
            "coap://192.168.10.1:5683/fw/ab12"
        );
    }
}
