//! `[[child]]`: a closed set of shapes, one per transport and, on a serial
//! line, one per protocol. Each shape is a struct with exactly its own keys
//! (`deny_unknown_fields`), so a key of another transport or protocol is an
//! unknown key by construction, not an entry in a forbid list; a new
//! transport is a new variant and a new struct, nothing else changes.
//!
//! The tag is read by [`ChildSpec::from_table`] rather than by
//! `#[serde(tag = "transport")]`: serde's internally tagged enums buffer the
//! whole table before they look at the tag, and an error found in the
//! buffered value then names neither its key nor its line, only the table
//! (`child[1]: invalid type: string "fast", expected u32`). Reading the tag
//! first and deserializing the chosen shape with path tracking keeps
//! `child[1].baud` and its line and column in every message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use otabridge_codecs::version::Policy;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::health::{HealthDefaults, HealthKeys};
use super::serial::{
    Framing, SerialOptions, DEFAULT_REOPEN_TIMEOUT, MAX_BUF_SIZE, MAX_REOPEN_TIMEOUT_MS,
    MAX_WINDOW, MIN_BUF_SIZE,
};
use super::FramedProfile;

/// One `[[child]]` table as written: each key's value with its place in the
/// file (toml keeps the span of a value only at this level).
pub(super) type ChildTable = BTreeMap<String, toml::Spanned<toml::Value>>;

/// A `[[child]]` whose key or value is wrong, relative to the child: `key`
/// is `baud`, not `child[1].baud` (the caller knows the index).
#[derive(Debug)]
pub(super) struct BadKey {
    /// The key (empty when the error is about the table as a whole).
    pub(super) key: String,
    /// What is wrong.
    pub(super) message: String,
}

impl BadKey {
    fn new(key: &str, message: impl Into<String>) -> Self {
        BadKey {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// CoAP delivery direction (`delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// The child fetches the package from our Block2 server (the default).
    #[default]
    Pull,
    /// We write the package to /5/0/0 with Block1.
    Push,
    /// Chosen from the child's `/5/0/9` Delivery Method and `/5/0/8`
    /// Protocol Support before each delivery (issue 13 item 6); the
    /// default for children that register.
    Auto,
}

/// Serial child protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialProtocol {
    /// MCUmgr SMP over the console framing.
    Smp,
    /// A manufacturer's protocol described by a profile.
    Framed(FramedProfile),
}

/// How a CoAP child is found (docs/coap.md, "Two kinds of CoAP child").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoapAddress {
    /// `address = "ip:port"`: a fixed address, polled with requests.
    Static(SocketAddr),
    /// `endpoint = "name"`: an LwM2M client that registers with the
    /// gateway on `[coap] listen` under this Endpoint Client Name; requests
    /// go to the address it last registered or updated from.
    Endpoint(String),
}

impl From<SocketAddr> for CoapAddress {
    fn from(a: SocketAddr) -> Self {
        CoapAddress::Static(a)
    }
}

impl std::fmt::Display for CoapAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoapAddress::Static(a) => write!(f, "{a}"),
            CoapAddress::Endpoint(e) => write!(f, "endpoint '{e}'"),
        }
    }
}

/// How a child is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// LwM2M over CoAP/UDP.
    Coap {
        /// The child's fixed address or its registration name.
        address: CoapAddress,
        /// Pull or push.
        delivery: Delivery,
        /// `accept`: the content format its reads ask for (the Accept
        /// option); `None`: chosen from its registration, else text/plain.
        accept: Option<otabridge_codecs::lwm2m::ContentFormat>,
    },
    /// A serial line.
    Serial {
        /// The device node, e.g. `/dev/ttyUSB0`.
        port: PathBuf,
        /// Line rate.
        baud: u32,
        /// The protocol on the line.
        protocol: SerialProtocol,
        /// Line framing, timeouts and SMP tuning.
        options: SerialOptions,
    },
    /// An in-process simulated child, for bench tests of the platform link
    /// without hardware (the `sim` feature).
    #[cfg(feature = "sim")]
    Simulated {
        /// The version it reports.
        version: String,
        /// Whether its health check passes.
        online: bool,
    },
}

/// One `[[child]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildConfig {
    /// Its IoTDA device id (`object_device_id`).
    pub device_id: String,
    /// How its versions are compared with a target: its own `version_match`,
    /// else `[ota] version_match` (any transport).
    pub version_match: Policy,
    /// When it may be activated: its own `activation_window`, else
    /// `[ota] activation_window`; `None`: at any time.
    pub activation_window: Option<super::window::Window>,
    /// How it is reached.
    pub transport: Transport,
    /// What is checked in its packages before delivery (`image = {...}`).
    pub image: ChildImage,
}

/// Which check a child's packages get before delivery (docs/config.md,
/// `image.check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageCheck {
    /// Not checked.
    None,
    /// An MCUboot image: structure, hash, signature, version, flags.
    Mcuboot,
}

/// A child's `image = { ... }` table: how its packages are checked at the
/// gateway before a byte is sent (issue 14, src/image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildImage {
    /// The check; default `mcuboot` for SMP children, `none` for the rest.
    pub check: ImageCheck,
    /// PEM public keys the image must be signed with, besides `[image] keys`.
    pub keys: Vec<PathBuf>,
    /// Whether the child's bootloader decrypts encrypted images.
    pub encrypted: bool,
    /// The child's image slot in bytes, when it cannot say (SMP slot info).
    pub slot_size: Option<u64>,
    /// LwM2M pre-flight: the least battery level (/3/0/9, percent) a
    /// delivery starts at; below it, result 4 once the deadline comes.
    pub min_battery: Option<u8>,
    /// LwM2M pre-flight: the weakest radio signal (/4/0/2, dBm) a delivery
    /// starts at; below it, result 2 once the deadline comes.
    pub min_signal_dbm: Option<i32>,
    /// LwM2M pre-flight: whether the child's free memory (/3/0/10, KiB)
    /// must hold the image; if not, result 5 once the deadline comes.
    pub check_memory_free: bool,
}

impl ChildImage {
    /// The defaults for a child, by whether its packages are MCUboot images.
    pub fn default_for(mcuboot: bool) -> Self {
        ChildImage {
            check: if mcuboot {
                ImageCheck::Mcuboot
            } else {
                ImageCheck::None
            },
            keys: Vec::new(),
            encrypted: false,
            slot_size: None,
            min_battery: None,
            min_signal_dbm: None,
            check_memory_free: false,
        }
    }

    /// Whether any LwM2M pre-flight reading is configured.
    pub fn has_preflight(&self) -> bool {
        self.min_battery.is_some() || self.min_signal_dbm.is_some() || self.check_memory_free
    }
}

/// `image = { ... }` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageSpec {
    check: Option<ImageCheck>,
    #[serde(default)]
    keys: Vec<PathBuf>,
    #[serde(default)]
    encrypted: bool,
    slot_size: Option<u64>,
    min_battery: Option<u8>,
    min_signal_dbm: Option<i32>,
    #[serde(default)]
    check_memory_free: bool,
}

impl ImageSpec {
    /// `lwm2m`: the child is a LwM2M child (the pre-flight keys are its
    /// alone).
    fn resolve(
        value: Option<toml::Value>,
        mcuboot: bool,
        lwm2m: bool,
    ) -> Result<ChildImage, BadKey> {
        let s: ImageSpec = match value {
            None => ImageSpec::default(),
            Some(v) => serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().message().trim_end().to_owned();
                let key = if path == "." {
                    "image".to_owned()
                } else {
                    format!("image.{path}")
                };
                BadKey { key, message }
            })?,
        };
        let d = ChildImage::default_for(mcuboot);
        if s.slot_size == Some(0) {
            return Err(BadKey::new("image", "slot_size must be at least 1"));
        }
        let check = s.check.unwrap_or(d.check);
        if check == ImageCheck::None && (!s.keys.is_empty() || s.encrypted) {
            return Err(BadKey::new(
                "image",
                "keys and encrypted need check = \"mcuboot\"",
            ));
        }
        if s.min_battery.is_some_and(|b| b > 100) {
            return Err(BadKey::new("image.min_battery", "a percentage, 0 to 100"));
        }
        let image = ChildImage {
            check,
            keys: s.keys,
            encrypted: s.encrypted,
            slot_size: s.slot_size,
            min_battery: s.min_battery,
            min_signal_dbm: s.min_signal_dbm,
            check_memory_free: s.check_memory_free,
        };
        if image.has_preflight() && !lwm2m {
            return Err(BadKey::new(
                "image",
                "min_battery, min_signal_dbm and check_memory_free need transport = \"coap\"",
            ));
        }
        Ok(image)
    }
}

/// A `[[child]]` by `transport`.
#[derive(Debug)]
enum ChildSpec {
    Coap(CoapSpec),
    Serial(SerialSpec),
    #[cfg(feature = "sim")]
    Sim(SimSpec),
}

/// `transport = "coap"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoapSpec {
    device_id: String,
    /// A fixed `ip:port`, or ...
    address: Option<String>,
    /// ... the Endpoint Client Name it registers with (issue 13): exactly
    /// one of the two.
    endpoint: Option<String>,
    /// `None`: `auto` for a child that registers, else `pull`.
    delivery: Option<Delivery>,
    /// The content format of its reads (`text`, `tlv`, `senml-json`,
    /// `senml-cbor`, `lwm2m-cbor`, `opaque`).
    accept: Option<String>,
    image: Option<toml::Value>,
}

/// `transport = "serial"`, by `protocol`.
#[derive(Debug)]
enum SerialSpec {
    Smp(SmpSpec),
    Framed { profile: String, spec: FramedSpec },
}

/// `transport = "serial"` with `protocol = "smp"` (the default): the line
/// and the SMP tuning (docs/serial.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmpSpec {
    device_id: String,
    port: PathBuf,
    baud: Option<u32>,
    framing: Option<String>,
    /// `"smp"` when written; [`ChildSpec::from_table`] dispatched on it.
    #[serde(rename = "protocol")]
    _protocol: Option<String>,
    buf_size: Option<u32>,
    timeout_ms: Option<u64>,
    first_timeout_ms: Option<u64>,
    retries: Option<u32>,
    window: Option<u32>,
    reboot_wait_ms: Option<u64>,
    reboot_timeout_ms: Option<u64>,
    image: Option<toml::Value>,
    reopen_timeout_ms: Option<u64>,
    health_check_secs: Option<u64>,
    health_probe_interval_secs: Option<u64>,
    health_probe_timeout_secs: Option<u64>,
    health_command: Option<toml::Value>,
}

/// `transport = "serial"` with `protocol = "framed:<profile>"`: the line
/// only, because the profile sets every timeout and retry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FramedSpec {
    device_id: String,
    port: PathBuf,
    baud: Option<u32>,
    framing: Option<String>,
    /// `"framed:<profile>"`; [`ChildSpec::from_table`] took the name.
    #[serde(rename = "protocol")]
    _protocol: String,
    image: Option<toml::Value>,
    reopen_timeout_ms: Option<u64>,
}

/// `transport = "sim"`: an in-process child for bench tests.
#[cfg(feature = "sim")]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimSpec {
    device_id: String,
    version: String,
    #[serde(default = "yes")]
    online: bool,
    image: Option<toml::Value>,
}

#[cfg(feature = "sim")]
fn yes() -> bool {
    true
}

/// The transports this build knows, for messages.
#[cfg(feature = "sim")]
const TRANSPORTS: &str = "coap, serial or sim";
#[cfg(not(feature = "sim"))]
const TRANSPORTS: &str = "coap or serial";

impl ChildSpec {
    /// Reads `transport` (and a serial child's `protocol`), then the shape
    /// they select.
    fn from_table(table: &ChildTable) -> Result<(ChildSpec, Option<Policy>, ChildWindow), BadKey> {
        let mut values: toml::Table = table
            .iter()
            .map(|(k, v)| (k.clone(), v.get_ref().clone()))
            .collect();
        let version_match = version_match(&mut values)?;
        let window = activation_window(&mut values)?;
        let transport = match values.remove("transport") {
            Some(toml::Value::String(t)) => t,
            Some(v) => {
                return Err(BadKey::new(
                    "transport",
                    format!("expected a string ({TRANSPORTS}), found {}", v.type_str()),
                ))
            }
            None => return Err(BadKey::new("transport", "is required")),
        };
        let what = format!("transport = \"{transport}\"");
        let spec = match transport.as_str() {
            "coap" => shape(values, &what).map(ChildSpec::Coap),
            "serial" => SerialSpec::from_values(values).map(ChildSpec::Serial),
            #[cfg(feature = "sim")]
            "sim" => shape(values, &what).map(ChildSpec::Sim),
            #[cfg(not(feature = "sim"))]
            "sim" => Err(BadKey::new(
                "transport",
                "'sim' (the in-process simulated child) needs a build with the `sim` \
                 feature; this one is without the simulators (the Debian package)",
            )),
            other => Err(BadKey::new(
                "transport",
                format!("'{other}' is not {TRANSPORTS}"),
            )),
        }?;
        Ok((spec, version_match, window))
    }

    /// The child's `image` table, resolved with its transport's defaults
    /// (SMP children carry MCUboot images).
    fn take_image(&mut self) -> Result<ChildImage, BadKey> {
        let (spec, mcuboot, lwm2m) = match self {
            ChildSpec::Coap(c) => (c.image.take(), false, true),
            ChildSpec::Serial(SerialSpec::Smp(s)) => (s.image.take(), true, false),
            ChildSpec::Serial(SerialSpec::Framed { spec, .. }) => (spec.image.take(), false, false),
            #[cfg(feature = "sim")]
            ChildSpec::Sim(s) => (s.image.take(), false, false),
        };
        ImageSpec::resolve(spec, mcuboot, lwm2m)
    }

    fn device_id(&self) -> &str {
        match self {
            ChildSpec::Coap(c) => &c.device_id,
            ChildSpec::Serial(SerialSpec::Smp(s)) => &s.device_id,
            ChildSpec::Serial(SerialSpec::Framed { spec, .. }) => &spec.device_id,
            #[cfg(feature = "sim")]
            ChildSpec::Sim(s) => &s.device_id,
        }
    }
}

/// A child's own `activation_window`: `None` when it sets none (it follows
/// `[ota] activation_window`), `Some(None)` for `"always"`.
pub(super) type ChildWindow = Option<Option<super::window::Window>>;

/// Takes `activation_window`, which every transport has, out of a child's
/// keys.
fn activation_window(values: &mut toml::Table) -> Result<ChildWindow, BadKey> {
    match values.remove("activation_window") {
        None => Ok(None),
        Some(toml::Value::String(s)) => super::window::Window::parse(&s)
            .map(Some)
            .map_err(|m| BadKey::new("activation_window", m)),
        Some(v) => Err(BadKey::new(
            "activation_window",
            format!(
                "expected a string (\"HH:MM-HH:MM\" or \"always\"), found {}",
                v.type_str()
            ),
        )),
    }
}

/// Takes `version_match`, which every transport has, out of a child's
/// keys; the serial `version_compare` it replaced is an error that names
/// the new key.
fn version_match(values: &mut toml::Table) -> Result<Option<Policy>, BadKey> {
    if values.contains_key("version_compare") {
        return Err(BadKey::new(
            "version_compare",
            "was replaced by `version_match` (\"normalised\" or \"exact\"), which any [[child]] \
             may set; without it the child follows [ota] version_match",
        ));
    }
    match values.remove("version_match") {
        None => Ok(None),
        Some(toml::Value::String(s)) => Policy::parse(&s).map(Some).ok_or_else(|| {
            BadKey::new(
                "version_match",
                format!("'{s}' is not {}", Policy::NAMES.join(" or ")),
            )
        }),
        Some(v) => Err(BadKey::new(
            "version_match",
            format!(
                "expected a string ({}), found {}",
                Policy::NAMES.join(" or "),
                v.type_str()
            ),
        )),
    }
}

impl SerialSpec {
    fn from_values(values: toml::Table) -> Result<SerialSpec, BadKey> {
        let protocol = match values.get("protocol") {
            None => "smp".to_owned(),
            Some(toml::Value::String(p)) => p.clone(),
            Some(v) => {
                return Err(BadKey::new(
                    "protocol",
                    format!(
                        "expected a string (smp or framed:<profile>), found {}",
                        v.type_str()
                    ),
                ))
            }
        };
        let what = format!("protocol = \"{protocol}\"");
        if protocol == "smp" {
            return shape(values, &what).map(SerialSpec::Smp);
        }
        match protocol.strip_prefix("framed:") {
            Some(name) if !name.is_empty() => Ok(SerialSpec::Framed {
                profile: name.to_owned(),
                spec: shape(values, &what)?,
            }),
            _ => Err(BadKey::new(
                "protocol",
                format!("'{protocol}' is not smp or framed:<profile>"),
            )),
        }
    }
}

/// Deserializes one shape from a child's keys; `what` (`transport =
/// "coap"`) says whose keys they are in messages about a key that does not
/// belong or is missing.
fn shape<T: DeserializeOwned>(values: toml::Table, what: &str) -> Result<T, BadKey> {
    serde_path_to_error::deserialize(toml::Value::Table(values)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().message().trim_end().to_owned();
        // serde words these two (serde::de::Error::unknown_field and
        // missing_field); a missing key is not in the path, so it is taken
        // from the message.
        let quoted = |prefix: &str| {
            let rest = message.strip_prefix(prefix)?;
            let (k, tail) = rest.split_once('`')?;
            Some((k.to_owned(), tail.trim_start_matches(',').trim().to_owned()))
        };
        if let Some((k, expected)) = quoted("unknown field `") {
            return BadKey::new(&k, format!("is not a key of {what} ({expected})"));
        }
        if let Some((k, _)) = quoted("missing field `") {
            return BadKey::new(&k, format!("is required for {what}"));
        }
        let key = if path == "." { String::new() } else { path };
        BadKey { key, message }
    })
}

/// What a serial child needs from the file system: its profile, by name.
#[derive(Debug)]
pub(super) struct PendingProfile {
    /// The profile name after `framed:`.
    pub(super) name: String,
    /// The line, ready.
    pub(super) port: PathBuf,
    pub(super) baud: u32,
    pub(super) options: SerialOptions,
}

/// A child checked from the text alone: ready, or waiting for its framed
/// profile to be read.
#[derive(Debug)]
pub(super) enum Draft {
    Ready(Transport),
    Framed(PendingProfile),
}

impl Draft {
    /// The child with its profile, once it has been found.
    pub(super) fn with_profile(p: PendingProfile, profile: FramedProfile) -> Transport {
        Transport::Serial {
            port: p.port,
            baud: p.baud,
            protocol: SerialProtocol::Framed(profile),
            options: p.options,
        }
    }
}

/// The rules that span children: unique ids, and one line setting per port
/// (children sharing a port, an RS-485 bus, share its baud and framing).
#[derive(Debug, Default)]
pub(super) struct Siblings {
    ids: HashSet<String>,
    ports: HashMap<PathBuf, (usize, u32, Framing)>,
    /// LwM2M endpoint names, to the child that uses each.
    endpoints: HashMap<String, usize>,
}

impl Siblings {
    /// Checks child `index` from its table; `gateway` is the gateway's own
    /// device id, which no child may use.
    pub(super) fn check(
        &mut self,
        index: usize,
        table: &ChildTable,
        gateway: &str,
        health: &HealthDefaults,
    ) -> Result<(String, Option<Policy>, ChildWindow, Draft, ChildImage), BadKey> {
        let (mut spec, version_match, window) = ChildSpec::from_table(table)?;
        let image = spec.take_image()?;
        let id = spec.device_id().to_owned();
        if id.trim().is_empty() {
            return Err(BadKey::new("device_id", "is empty"));
        }
        if id == gateway {
            return Err(BadKey::new("device_id", "is the gateway's own device id"));
        }
        if !self.ids.insert(id.clone()) {
            return Err(BadKey::new(
                "device_id",
                format!("'{id}' is configured twice"),
            ));
        }
        let draft = match spec {
            ChildSpec::Coap(c) => {
                let t = coap(c)?;
                if let Transport::Coap {
                    address: CoapAddress::Endpoint(e),
                    ..
                } = &t
                {
                    if let Some(j) = self.endpoints.insert(e.clone(), index) {
                        return Err(BadKey::new(
                            "endpoint",
                            format!("'{e}' is child[{j}]'s endpoint too"),
                        ));
                    }
                }
                Draft::Ready(t)
            }
            ChildSpec::Serial(SerialSpec::Smp(s)) => {
                let (port, baud, framing) = line(s.port.clone(), s.baud, s.framing.as_deref())?;
                self.share(index, &port, baud, framing)?;
                Draft::Ready(Transport::Serial {
                    port,
                    baud,
                    protocol: SerialProtocol::Smp,
                    options: smp_options(&s, framing, health)?,
                })
            }
            ChildSpec::Serial(SerialSpec::Framed { profile, spec }) => {
                let (port, baud, framing) = line(spec.port, spec.baud, spec.framing.as_deref())?;
                self.share(index, &port, baud, framing)?;
                Draft::Framed(PendingProfile {
                    name: profile,
                    port,
                    baud,
                    options: SerialOptions {
                        framing,
                        reopen_timeout: reopen_timeout(spec.reopen_timeout_ms)?,
                        ..SerialOptions::default()
                    },
                })
            }
            #[cfg(feature = "sim")]
            ChildSpec::Sim(s) => Draft::Ready(Transport::Simulated {
                version: s.version,
                online: s.online,
            }),
        };
        Ok((id, version_match, window, draft, image))
    }

    fn share(&mut self, index: usize, port: &PathBuf, baud: u32, f: Framing) -> Result<(), BadKey> {
        match self.ports.get(port) {
            Some(&(j, b, g)) if (b, g) != (baud, f) => Err(BadKey::new(
                "baud",
                format!(
                    "{} is shared with child[{j}], whose baud or framing differs",
                    port.display()
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.ports.insert(port.clone(), (index, baud, f));
                Ok(())
            }
        }
    }
}

/// The most bytes of an `endpoint` name (the registry's limit).
const MAX_ENDPOINT: usize = otabridge_codecs::lwm2m::registry::MAX_ENDPOINT;

fn coap(c: CoapSpec) -> Result<Transport, BadKey> {
    let address = match (c.address, c.endpoint) {
        (Some(a), None) => CoapAddress::Static(a.parse::<SocketAddr>().map_err(|_| {
            BadKey::new("address", format!("'{a}' is not an ip:port address"))
        })?),
        (None, Some(e)) => {
            if e.is_empty() || e.len() > MAX_ENDPOINT || e.chars().any(char::is_control) {
                return Err(BadKey::new(
                    "endpoint",
                    format!(
                        "'{}' is not an LwM2M endpoint name (1 to {MAX_ENDPOINT} bytes, no control characters)",
                        e.escape_debug()
                    ),
                ));
            }
            CoapAddress::Endpoint(e)
        }
        (Some(_), Some(_)) => {
            return Err(BadKey::new(
                "endpoint",
                "set either address (a fixed ip:port) or endpoint (a registering LwM2M client), not both",
            ))
        }
        (None, None) => {
            return Err(BadKey::new(
                "address",
                "is required for transport = \"coap\", unless endpoint names an LwM2M client that registers",
            ))
        }
    };
    let accept = match c.accept.as_deref() {
        None => None,
        Some(name) => Some(
            otabridge_codecs::lwm2m::ContentFormat::from_name(name).ok_or_else(|| {
                let names: Vec<_> = otabridge_codecs::lwm2m::ContentFormat::NAMES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect();
                BadKey::new(
                    "accept",
                    format!(
                        "'{}' is not a content format ({})",
                        name.escape_debug(),
                        names.join(", ")
                    ),
                )
            })?,
        ),
    };
    let delivery = c.delivery.unwrap_or(match address {
        CoapAddress::Endpoint(_) => Delivery::Auto,
        CoapAddress::Static(_) => Delivery::Pull,
    });
    Ok(Transport::Coap {
        address,
        delivery,
        accept,
    })
}

/// The line keys every serial child has.
fn line(
    port: PathBuf,
    baud: Option<u32>,
    framing: Option<&str>,
) -> Result<(PathBuf, u32, Framing), BadKey> {
    let baud = baud.unwrap_or(115_200);
    if baud == 0 {
        return Err(BadKey::new("baud", "must be positive"));
    }
    let framing = match framing {
        None => Framing::EIGHT_N_ONE,
        Some(f) => Framing::parse(f).ok_or_else(|| {
            BadKey::new(
                "framing",
                format!("'{f}' is not like 8N1 (data bits 5-8, N/E/O, stop 1-2)"),
            )
        })?,
    };
    Ok((port, baud, framing))
}

/// Validates the SMP tuning keys of one child.
impl SmpSpec {
    fn health_keys(&self) -> HealthKeys {
        HealthKeys {
            check_secs: self.health_check_secs,
            interval_secs: self.health_probe_interval_secs,
            probe_timeout_secs: self.health_probe_timeout_secs,
            command: self.health_command.clone(),
        }
    }
}

fn smp_options(
    s: &SmpSpec,
    framing: Framing,
    health: &HealthDefaults,
) -> Result<SerialOptions, BadKey> {
    let health = health
        .for_child(&s.health_keys())
        .map_err(|(k, m)| BadKey::new(k, m))?
        .map(Box::new);
    let d = SerialOptions::default();
    let buf_size = match s.buf_size {
        None => None,
        Some(b) if (MIN_BUF_SIZE..=MAX_BUF_SIZE).contains(&b) => Some(b as usize),
        Some(b) => {
            return Err(BadKey::new(
                "buf_size",
                format!("{b} is outside {MIN_BUF_SIZE}..={MAX_BUF_SIZE}"),
            ))
        }
    };
    // Every wait must be positive and bounded (an hour is beyond any erase
    // or MCUboot swap), so a typo cannot hang a job.
    let ms = |v: Option<u64>, name: &str, default| match v {
        None => Ok(default),
        Some(ms) if (1..=3_600_000).contains(&ms) => Ok(std::time::Duration::from_millis(ms)),
        Some(ms) => Err(BadKey::new(name, format!("{ms} is outside 1..=3600000 ms"))),
    };
    let retries = match s.retries {
        None => d.retries,
        Some(r) if r <= 100 => r,
        Some(r) => return Err(BadKey::new("retries", format!("{r} is above 100"))),
    };
    let window = match s.window {
        None => d.window,
        Some(w) if (1..=MAX_WINDOW).contains(&w) => w as usize,
        Some(w) => {
            return Err(BadKey::new(
                "window",
                format!("{w} is outside 1..={MAX_WINDOW}"),
            ))
        }
    };
    Ok(SerialOptions {
        framing,
        buf_size,
        health,
        timeout: ms(s.timeout_ms, "timeout_ms", d.timeout)?,
        first_timeout: ms(s.first_timeout_ms, "first_timeout_ms", d.first_timeout)?,
        retries,
        window,
        reboot_wait: ms(s.reboot_wait_ms, "reboot_wait_ms", d.reboot_wait)?,
        reboot_timeout: ms(s.reboot_timeout_ms, "reboot_timeout_ms", d.reboot_timeout)?,
        reopen_timeout: reopen_timeout(s.reopen_timeout_ms)?,
    })
}

/// `reopen_timeout_ms` (any serial child): 0 fails at once when the port
/// goes away; at most an hour, as every other wait.
fn reopen_timeout(v: Option<u64>) -> Result<std::time::Duration, BadKey> {
    match v {
        None => Ok(DEFAULT_REOPEN_TIMEOUT),
        Some(ms) if ms <= MAX_REOPEN_TIMEOUT_MS => Ok(std::time::Duration::from_millis(ms)),
        Some(ms) => Err(BadKey::new(
            "reopen_timeout_ms",
            format!("{ms} is outside 0..={MAX_REOPEN_TIMEOUT_MS} ms"),
        )),
    }
}
