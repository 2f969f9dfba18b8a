//! The configuration file (TOML), validated with errors that name the key.
//!
//! The file format is a contract (`docs/design.md`, "Configuration"); the
//! reference with every key, its default and its meaning is
//! `docs/config.md`. Unknown keys are errors. Secrets are kept in [`Secret`],
//! whose `Debug` prints `<redacted>`, so no log line can carry them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use otabridge_codecs::framed::profile::{self, Profile};
use serde::Deserialize;

mod gateway;
pub use self::gateway::{
    After, GatewayConfig, InstallConfig, Installer, VersionSource, FILE_PLACEHOLDER,
};

/// A configuration that cannot be used: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type.
    #[error("config {file}: {key}: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The dotted key path (`platform.url`, `child[2].baud`), or the line.
        key: String,
        /// What is wrong, with the line and column.
        message: String,
    },
    /// A key's value is not acceptable.
    #[error("config {file}: {key}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A secret value: printed as `<redacted>` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    platform: RawPlatform,
    state: StateConfig,
    #[serde(default)]
    download: DownloadConfig,
    #[serde(default)]
    coap: CoapConfig,
    #[serde(default)]
    ota: OtaConfig,
    #[serde(default)]
    profiles: ProfilesConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    gateway: gateway::RawGateway,
    #[serde(default, rename = "child")]
    children: Vec<RawChild>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlatform {
    url: String,
    device_id: String,
    secret: Option<Secret>,
    secret_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    verify_timestamp: bool,
    #[serde(default = "default_keepalive")]
    keepalive_secs: u64,
    #[serde(default = "default_rate")]
    max_messages_per_sec: u32,
    fw_version: Option<String>,
}

fn default_keepalive() -> u64 {
    120
}
fn default_rate() -> u32 {
    50
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Holds `journal.sqlite` and `packages/`.
    pub dir: PathBuf,
}

/// `[download]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// Extra trust roots (PEM) for package URLs, added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Largest package accepted, in bytes (default 256 MiB).
    pub max_package_bytes: u64,
    /// Accept `http://` package URLs (default false).
    pub allow_http: bool,
    /// Check the server name in the certificate (default true). IoTDA's v1
    /// URLs name a bare IP address; `false` still verifies the chain.
    pub verify_hostname: bool,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            ca_file: None,
            max_package_bytes: 256 * 1024 * 1024,
            allow_http: false,
            verify_hostname: true,
        }
    }
}

/// `[coap]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapConfig {
    /// Our CoAP endpoint: requests to children and the Block2 package server.
    pub listen: SocketAddr,
    /// Address written into /5/0/1; default: the local address the child is
    /// reached from.
    pub advertise: Option<SocketAddr>,
    /// Concurrent transfers on the CoAP network (default 8).
    pub max_concurrent_transfers: usize,
}

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5683)),
            advertise: None,
            max_concurrent_transfers: 8,
        }
    }
}

/// `[ota]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtaConfig {
    /// Upgrade jobs running at once across all transports (default 16).
    pub max_concurrent_jobs: usize,
    /// Transient failures (child silent, timeouts) tolerated per phase
    /// before a job fails (default 5).
    pub max_retries: u32,
    /// Compare versions byte for byte instead of normalised ("V1.2" equals
    /// "1.2.0" when normalised; default false).
    pub exact_versions: bool,
    /// Reading a child's version (default 30 s).
    pub version_read_timeout_secs: u64,
    /// Until the first delivery progress of an attempt: flash erase happens
    /// here (default 120 s).
    pub first_chunk_timeout_secs: u64,
    /// Between two delivery progress updates (default 60 s).
    pub chunk_timeout_secs: u64,
    /// Activation including the child's reboot (default 600 s).
    pub activation_timeout_secs: u64,
    /// First retry backoff step in milliseconds (default 2000).
    pub retry_min_ms: u64,
    /// Retry backoff cap in milliseconds (default 60000).
    pub retry_max_ms: u64,
}

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig {
            max_concurrent_jobs: 16,
            max_retries: 5,
            exact_versions: false,
            version_read_timeout_secs: 30,
            first_chunk_timeout_secs: 120,
            chunk_timeout_secs: 60,
            activation_timeout_secs: 600,
            retry_min_ms: 2000,
            retry_max_ms: 60_000,
        }
    }
}

/// `[profiles]`: where user profiles for `protocol = "framed:<name>"` live
/// (docs/framed.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    /// A directory of `<name>.toml` profile files (default: none, only the
    /// built-in profiles). A file here shadows a built-in profile of the same
    /// name, so an integrator can adjust one without a new release.
    pub dir: Option<PathBuf>,
}

/// `[metrics]`: the Prometheus text endpoint (docs/operations.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics`, for example `"127.0.0.1:9464"`
    /// (default: none, no endpoint). It has no authentication: bind it to
    /// loopback or a management network.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChild {
    device_id: String,
    transport: String,
    address: Option<String>,
    delivery: Option<String>,
    port: Option<PathBuf>,
    baud: Option<u32>,
    protocol: Option<String>,
    version: Option<String>,
    online: Option<bool>,
    // Serial line and SMP tuning (docs/serial.md).
    framing: Option<String>,
    version_compare: Option<String>,
    buf_size: Option<u32>,
    timeout_ms: Option<u64>,
    first_timeout_ms: Option<u64>,
    retries: Option<u32>,
    window: Option<u32>,
    reboot_wait_ms: Option<u64>,
    reboot_timeout_ms: Option<u64>,
}

/// How the gateway authenticates to the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// HMAC password from the device secret.
    Secret(Secret),
    /// X.509 client certificate (PEM files).
    Certificate {
        /// Certificate chain.
        cert_file: PathBuf,
        /// Private key.
        key_file: PathBuf,
    },
}

/// `[platform]`, validated.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// `mqtts://` (true) or `mqtt://` (false).
    pub tls: bool,
    /// Broker host name or address.
    pub host: String,
    /// Broker port (default 8883 for mqtts, 1883 for mqtt).
    pub port: u16,
    /// The gateway's IoTDA device id.
    pub device_id: String,
    /// Secret or certificate.
    pub auth: Auth,
    /// Trust roots for the broker (PEM); default: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client id signature type 1 (timestamp checked) instead of 0.
    pub verify_timestamp: bool,
    /// MQTT keepalive (default 120 s, as every IoTDA SDK uses).
    pub keepalive_secs: u64,
    /// Upstream messages per second (IoTDA allows 50 per connection).
    pub max_messages_per_sec: u32,
    /// The gateway's own firmware version, for `version_query` on itself.
    pub fw_version: Option<String>,
}

/// CoAP delivery direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The child fetches the package from our Block2 server.
    Pull,
    /// We write the package to /5/0/0 with Block1.
    Push,
}

/// Serial child protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialProtocol {
    /// MCUmgr SMP over the console framing.
    Smp,
    /// A manufacturer's protocol described by a profile.
    Framed(FramedProfile),
}

/// The profile of a `protocol = "framed:<name>"` child, loaded and validated
/// when the configuration is, so a broken profile stops `otabridge run` at
/// start instead of failing the first upgrade.
#[derive(Clone, PartialEq, Eq)]
pub struct FramedProfile {
    /// The name after `framed:`.
    pub name: String,
    /// The user profile file it came from; `None` for a built-in profile.
    pub file: Option<PathBuf>,
    /// The validated profile.
    pub profile: Arc<Profile>,
}

/// Name and origin only: the whole profile would bury a logged config.
impl fmt::Debug for FramedProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramedProfile")
            .field("name", &self.name)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Why `framed:<name>` names no usable profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileLookupError {
    /// Not a profile name at all (so it cannot be a file name either).
    #[error("'{0}' is not a profile name (1 to 64 of a-z, 0-9 and '-')")]
    BadName(String),
    /// Neither a user file nor a built-in profile has this name.
    #[error("no profile '{name}': built-in profiles are {builtin}; {where_}")]
    Unknown {
        /// The name.
        name: String,
        /// The built-in names, comma separated.
        builtin: String,
        /// Where user profiles were looked for.
        where_: String,
    },
    /// The user profile file could not be read.
    #[error("cannot read profile {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The profile is invalid; the message is `file:line: what is wrong`.
    #[error("invalid profile {0}")]
    Invalid(#[from] profile::ProfileError),
    /// The file's `[protocol] name` is not its file name, so logs and
    /// `otabridge status` would name another protocol than the config.
    #[error("{file}:{line}: [protocol] name is '{found}', but the file is named for '{name}'")]
    NameMismatch {
        /// The file.
        file: String,
        /// The line of `name =` (1 if not found).
        line: usize,
        /// The name in the file.
        found: String,
        /// The name the child asked for.
        name: String,
    },
}

/// Finds the profile `name`: `<dir>/<name>.toml` if `dir` is given and has
/// that file, else the built-in profile of that name. Used by the
/// configuration and by `otabridge sim framed-child`.
pub fn find_profile(name: &str, dir: Option<&Path>) -> Result<FramedProfile, ProfileLookupError> {
    if !otabridge_codecs::framed::profile::is_valid_name(name) {
        return Err(ProfileLookupError::BadName(name.to_owned()));
    }
    if let Some(dir) = dir {
        let file = dir.join(format!("{name}.toml"));
        if file.exists() {
            let text =
                std::fs::read_to_string(&file).map_err(|source| ProfileLookupError::Read {
                    file: file.clone(),
                    source,
                })?;
            let shown = file.display().to_string();
            let p = Profile::parse(&text, &shown)?;
            if p.name != name {
                let line = text
                    .lines()
                    .position(|l| l.trim_start().starts_with("name") && l.contains(&p.name))
                    .map_or(1, |i| i + 1);
                return Err(ProfileLookupError::NameMismatch {
                    file: shown,
                    line,
                    found: p.name,
                    name: name.to_owned(),
                });
            }
            return Ok(FramedProfile {
                name: name.to_owned(),
                file: Some(file),
                profile: Arc::new(p),
            });
        }
    }
    match profile::builtin(name) {
        Some(p) => Ok(FramedProfile {
            name: name.to_owned(),
            file: None,
            profile: Arc::new(p?),
        }),
        None => Err(ProfileLookupError::Unknown {
            name: name.to_owned(),
            builtin: profile::BUILTIN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            where_: match dir {
                Some(d) => format!("{} has no {name}.toml", d.display()),
                None => "no [profiles] dir is configured for user profiles".to_owned(),
            },
        }),
    }
}

/// Parity bit of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit (`N`).
    None,
    /// Even parity (`E`).
    Even,
    /// Odd parity (`O`).
    Odd,
}

/// Character framing of a serial line, written `8N1` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Data bits, 5 to 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

impl Framing {
    /// 8 data bits, no parity, 1 stop bit: what Zephyr's console UART uses.
    pub const EIGHT_N_ONE: Framing = Framing {
        data_bits: 8,
        parity: Parity::None,
        stop_bits: 1,
    };

    /// Parses `8N1`, `7E1`, `8O2`, ...
    pub fn parse(s: &str) -> Option<Framing> {
        let b = s.as_bytes();
        if b.len() != 3 {
            return None;
        }
        let data_bits = match b[0] {
            d @ b'5'..=b'8' => d - b'0',
            _ => return None,
        };
        let parity = match b[1].to_ascii_uppercase() {
            b'N' => Parity::None,
            b'E' => Parity::Even,
            b'O' => Parity::Odd,
            _ => return None,
        };
        let stop_bits = match b[2] {
            s @ (b'1' | b'2') => s - b'0',
            _ => return None,
        };
        Some(Framing {
            data_bits,
            parity,
            stop_bits,
        })
    }

    /// Bits on the wire per character: start bit, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }
}

/// Serial line and SMP settings of one child; [`Default`] gives the values
/// documented per field (docs/serial.md lists the keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialOptions {
    /// `framing`: character framing (default 8N1).
    pub framing: Framing,
    /// `version_compare`: how the version read back after activation is
    /// compared with the target (default normalised).
    pub version_compare: otabridge_codecs::version::Mode,
    /// `buf_size`: the device's SMP buffer; when set, MCUmgr params is not
    /// asked (for devices built without it). Default: ask the device.
    pub buf_size: Option<usize>,
    /// `timeout_ms`: wait for an answer (default 2500).
    pub timeout: Duration,
    /// `first_timeout_ms`: wait for the answer to the first chunk, which
    /// may erase the slot (default 40000).
    pub first_timeout: Duration,
    /// `retries`: extra attempts per request (default 4).
    pub retries: u32,
    /// `window`: most upload requests on the line at once (default
    /// [`DEFAULT_WINDOW`]; 1 is lock-step). The upload starts with one,
    /// grows by one per in-order answer, and falls back to one for the rest
    /// of the upload after any loss (docs/serial.md, "Pipelining").
    pub window: usize,
    /// `reboot_wait_ms`: silence after the reset before asking (default 5000).
    pub reboot_wait: Duration,
    /// `reboot_timeout_ms`: how long to keep asking after the reset for the
    /// device to come back (default 60000).
    pub reboot_timeout: Duration,
}

impl Default for SerialOptions {
    fn default() -> Self {
        SerialOptions {
            framing: Framing::EIGHT_N_ONE,
            version_compare: otabridge_codecs::version::Mode::Normalised,
            buf_size: None,
            timeout: Duration::from_millis(2500),
            first_timeout: Duration::from_secs(40),
            retries: 4,
            window: DEFAULT_WINDOW,
            reboot_wait: Duration::from_secs(5),
            reboot_timeout: Duration::from_secs(60),
        }
    }
}

/// Default `window`: two requests on the line. Zephyr's UART transport has
/// two receive line buffers by default (`CONFIG_UART_MCUMGR_RX_BUF_COUNT`)
/// and answers each request before reading the next, so a second request
/// waits in them while the first is written to flash; two is also enough to
/// keep a 115200-baud line busy (the next request is already on the wire
/// when an answer comes). Devices that cannot keep up (MCUboot's serial
/// recovery, slow flash) lose a request once; the upload then goes on one
/// request at a time.
pub const DEFAULT_WINDOW: usize = 2;
/// Largest `window` accepted (Go newtmgr's default `-w` is 5).
pub const MAX_WINDOW: u32 = 8;

/// Smallest `buf_size` accepted: the first chunk (about 90 bytes of header
/// and CBOR) must still carry the 32-byte MCUboot header.
pub const MIN_BUF_SIZE: u32 = 128;
/// Largest `buf_size` accepted: the upload engine's `max_buf_size`.
pub const MAX_BUF_SIZE: u32 = 4096;

/// How a child is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// LwM2M over CoAP/UDP.
    Coap {
        /// The child's CoAP endpoint.
        address: SocketAddr,
        /// Pull or push.
        delivery: Delivery,
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
    /// without hardware.
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
    /// How it is reached.
    pub transport: Transport,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// `[platform]`.
    pub platform: PlatformConfig,
    /// `[state]`.
    pub state: StateConfig,
    /// `[download]`.
    pub download: DownloadConfig,
    /// `[coap]`.
    pub coap: CoapConfig,
    /// `[ota]`.
    pub ota: OtaConfig,
    /// `[profiles]`.
    pub profiles: ProfilesConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[gateway]`: the gateway's own upgrade (default: none, refused).
    pub gateway: GatewayConfig,
    /// `[[child]]`, in file order.
    pub children: Vec<ChildConfig>,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Renders serde_path_to_error's path as `child[1].baud`.
fn key_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
            }
            serde_path_to_error::Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Enum { variant } => {
                out.push_str(&format!("::{variant}"));
            }
            serde_path_to_error::Segment::Unknown => out.push_str(".?"),
        }
    }
    if out.is_empty() {
        "(top level)".into()
    } else {
        out
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(&text, file)
    }

    /// Validates configuration text; `file` names it in errors and anchors
    /// relative paths (`secret_file`, ...) is not done: paths are used as
    /// written, relative to the working directory.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = key_path(e.path());
            let inner = e.into_inner();
            let at = inner
                .span()
                .map(|s| {
                    let (l, c) = line_col(text, s.start);
                    format!(" (line {l}, column {c})")
                })
                .unwrap_or_default();
            ConfigError::Syntax {
                file: file.to_owned(),
                key,
                message: format!("{}{at}", inner.message().trim_end()),
            }
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };

        let p = raw.platform;
        let (tls, rest) = if let Some(r) = p.url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = p.url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(invalid(
                "platform.url",
                format!("'{}' must start with mqtt:// or mqtts://", p.url),
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = split_host_port(rest, if tls { 8883 } else { 1883 })
            .map_err(|m| invalid("platform.url", format!("'{}': {m}", p.url)))?;
        if p.device_id.trim().is_empty() || p.device_id.contains(['/', '+', '#']) {
            return Err(invalid(
                "platform.device_id",
                "must be a non-empty IoTDA device id without '/', '+' or '#'".into(),
            ));
        }
        let auth = match (&p.secret, &p.secret_file, &p.cert_file, &p.key_file) {
            (Some(s), None, None, None) => {
                if s.expose().is_empty() {
                    return Err(invalid("platform.secret", "is empty".into()));
                }
                Auth::Secret(s.clone())
            }
            (None, Some(f), None, None) => {
                let s = std::fs::read_to_string(f).map_err(|e| {
                    invalid(
                        "platform.secret_file",
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?;
                let s = s.trim_end_matches(['\r', '\n']).to_owned();
                if s.is_empty() {
                    return Err(invalid(
                        "platform.secret_file",
                        format!("{} is empty", f.display()),
                    ));
                }
                Auth::Secret(Secret(s))
            }
            (None, None, Some(c), Some(k)) => {
                if !tls {
                    return Err(invalid(
                        "platform.cert_file",
                        "certificate authentication needs an mqtts:// url".into(),
                    ));
                }
                Auth::Certificate {
                    cert_file: c.clone(),
                    key_file: k.clone(),
                }
            }
            (None, None, Some(_), None) => {
                return Err(invalid(
                    "platform.key_file",
                    "cert_file needs key_file".into(),
                ))
            }
            (None, None, None, Some(_)) => {
                return Err(invalid(
                    "platform.cert_file",
                    "key_file needs cert_file".into(),
                ))
            }
            (None, None, None, None) => {
                return Err(invalid(
                    "platform.secret",
                    "one of secret, secret_file, or cert_file + key_file is required".into(),
                ))
            }
            _ => {
                return Err(invalid(
                    "platform.secret",
                    "give only one of secret, secret_file, or cert_file + key_file".into(),
                ))
            }
        };
        if !(1..=65535).contains(&p.keepalive_secs) {
            return Err(invalid(
                "platform.keepalive_secs",
                "must be 1..=65535".into(),
            ));
        }
        if p.max_messages_per_sec == 0 {
            return Err(invalid(
                "platform.max_messages_per_sec",
                "must be at least 1".into(),
            ));
        }
        let platform = PlatformConfig {
            tls,
            host,
            port,
            device_id: p.device_id,
            auth,
            ca_file: p.ca_file,
            verify_timestamp: p.verify_timestamp,
            keepalive_secs: p.keepalive_secs,
            max_messages_per_sec: p.max_messages_per_sec,
            fw_version: p.fw_version,
        };

        if raw.download.max_package_bytes == 0 {
            return Err(invalid(
                "download.max_package_bytes",
                "must be at least 1".into(),
            ));
        }
        if raw.coap.max_concurrent_transfers == 0 {
            return Err(invalid(
                "coap.max_concurrent_transfers",
                "must be at least 1".into(),
            ));
        }
        let o = &raw.ota;
        for (key, v) in [
            ("ota.max_concurrent_jobs", o.max_concurrent_jobs as u64),
            ("ota.version_read_timeout_secs", o.version_read_timeout_secs),
            ("ota.first_chunk_timeout_secs", o.first_chunk_timeout_secs),
            ("ota.chunk_timeout_secs", o.chunk_timeout_secs),
            ("ota.activation_timeout_secs", o.activation_timeout_secs),
            ("ota.retry_min_ms", o.retry_min_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if o.retry_max_ms < o.retry_min_ms {
            return Err(invalid(
                "ota.retry_max_ms",
                "must not be below ota.retry_min_ms".into(),
            ));
        }

        let gateway = raw
            .gateway
            .validate()
            .map_err(|(key, message)| invalid(&key, message))?;

        if let Some(d) = &raw.profiles.dir {
            if !d.is_dir() {
                return Err(invalid(
                    "profiles.dir",
                    format!("{} is not a directory", d.display()),
                ));
            }
        }
        // Each profile is read and validated once, however many children
        // on however many ports use it.
        let mut profiles: HashMap<String, FramedProfile> = HashMap::new();

        let mut children = Vec::with_capacity(raw.children.len());
        let mut seen = std::collections::HashSet::new();
        // Children sharing a port (an RS-485 bus) share its line settings.
        let mut serial_ports = std::collections::HashMap::new();
        for (i, c) in raw.children.into_iter().enumerate() {
            let k = |name: &str| format!("child[{i}].{name}");
            if c.device_id.trim().is_empty() {
                return Err(invalid(&k("device_id"), "is empty".into()));
            }
            if c.device_id == platform.device_id {
                return Err(invalid(
                    &k("device_id"),
                    "is the gateway's own device id".into(),
                ));
            }
            if !seen.insert(c.device_id.clone()) {
                return Err(invalid(
                    &k("device_id"),
                    format!("'{}' is configured twice", c.device_id),
                ));
            }
            let forbid = |present: bool, name: &str| -> Result<(), ConfigError> {
                if present {
                    Err(invalid(
                        &k(name),
                        format!("does not apply to transport = \"{}\"", c.transport),
                    ))
                } else {
                    Ok(())
                }
            };
            let require = |name: &str| {
                invalid(
                    &k(name),
                    format!("is required for transport = \"{}\"", c.transport),
                )
            };
            let transport = match c.transport.as_str() {
                "coap" => {
                    forbid(c.port.is_some(), "port")?;
                    forbid(c.baud.is_some(), "baud")?;
                    forbid(c.protocol.is_some(), "protocol")?;
                    forbid(c.version.is_some(), "version")?;
                    forbid(c.online.is_some(), "online")?;
                    forbid_serial_keys(&c, &forbid)?;
                    let a = c.address.as_deref().ok_or_else(|| require("address"))?;
                    let address = a.parse::<SocketAddr>().map_err(|_| {
                        invalid(&k("address"), format!("'{a}' is not an ip:port address"))
                    })?;
                    let delivery = match c.delivery.as_deref().unwrap_or("pull") {
                        "pull" => Delivery::Pull,
                        "push" => Delivery::Push,
                        other => {
                            return Err(invalid(
                                &k("delivery"),
                                format!("'{other}' is not pull or push"),
                            ))
                        }
                    };
                    Transport::Coap { address, delivery }
                }
                "serial" => {
                    forbid(c.address.is_some(), "address")?;
                    forbid(c.delivery.is_some(), "delivery")?;
                    forbid(c.version.is_some(), "version")?;
                    forbid(c.online.is_some(), "online")?;
                    let port = c.port.clone().ok_or_else(|| require("port"))?;
                    let baud = c.baud.unwrap_or(115_200);
                    if baud == 0 {
                        return Err(invalid(&k("baud"), "must be positive".into()));
                    }
                    let protocol = match c.protocol.as_deref().unwrap_or("smp") {
                        "smp" => SerialProtocol::Smp,
                        other => match other.strip_prefix("framed:") {
                            Some(name) if !name.is_empty() => {
                                let found = match profiles.get(name) {
                                    Some(p) => p.clone(),
                                    None => find_profile(name, raw.profiles.dir.as_deref())
                                        .map_err(|e| invalid(&k("protocol"), e.to_string()))?,
                                };
                                profiles.insert(name.to_owned(), found.clone());
                                forbid_smp_keys(&c, other, &invalid, &k)?;
                                SerialProtocol::Framed(found)
                            }
                            _ => {
                                return Err(invalid(
                                    &k("protocol"),
                                    format!("'{other}' is not smp or framed:<profile>"),
                                ))
                            }
                        },
                    };
                    let options = serial_options(&c, &invalid, &k)?;
                    if let Some((j, other)) = serial_ports.get(&port) {
                        if *other != (baud, options.framing) {
                            return Err(invalid(
                                &k("baud"),
                                format!(
                                    "{} is shared with child[{j}], whose baud or framing differs",
                                    port.display()
                                ),
                            ));
                        }
                    }
                    serial_ports.insert(port.clone(), (i, (baud, options.framing)));
                    Transport::Serial {
                        port,
                        baud,
                        protocol,
                        options,
                    }
                }
                "sim" => {
                    forbid(c.address.is_some(), "address")?;
                    forbid(c.delivery.is_some(), "delivery")?;
                    forbid(c.port.is_some(), "port")?;
                    forbid(c.baud.is_some(), "baud")?;
                    forbid(c.protocol.is_some(), "protocol")?;
                    forbid_serial_keys(&c, &forbid)?;
                    Transport::Simulated {
                        version: c.version.clone().ok_or_else(|| require("version"))?,
                        online: c.online.unwrap_or(true),
                    }
                }
                other => {
                    return Err(invalid(
                        &k("transport"),
                        format!("'{other}' is not coap, serial or sim"),
                    ))
                }
            };
            children.push(ChildConfig {
                device_id: c.device_id,
                transport,
            });
        }

        Ok(Config {
            file: file.to_owned(),
            platform,
            state: raw.state,
            download: raw.download,
            coap: raw.coap,
            ota: raw.ota,
            profiles: raw.profiles,
            metrics: raw.metrics,
            gateway,
            children,
        })
    }
}

/// Keys that only apply to `transport = "serial"`.
fn forbid_serial_keys(
    c: &RawChild,
    forbid: &dyn Fn(bool, &str) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    forbid(c.framing.is_some(), "framing")?;
    forbid(c.version_compare.is_some(), "version_compare")?;
    forbid(c.buf_size.is_some(), "buf_size")?;
    forbid(c.timeout_ms.is_some(), "timeout_ms")?;
    forbid(c.first_timeout_ms.is_some(), "first_timeout_ms")?;
    forbid(c.retries.is_some(), "retries")?;
    forbid(c.window.is_some(), "window")?;
    forbid(c.reboot_wait_ms.is_some(), "reboot_wait_ms")?;
    forbid(c.reboot_timeout_ms.is_some(), "reboot_timeout_ms")
}

/// SMP tuning keys that a framed child must not have: its profile sets every
/// timeout and retry, so a key here would be silently ignored.
fn forbid_smp_keys(
    c: &RawChild,
    protocol: &str,
    invalid: &dyn Fn(&str, String) -> ConfigError,
    k: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let keys = [
        (c.version_compare.is_some(), "version_compare"),
        (c.buf_size.is_some(), "buf_size"),
        (c.timeout_ms.is_some(), "timeout_ms"),
        (c.first_timeout_ms.is_some(), "first_timeout_ms"),
        (c.retries.is_some(), "retries"),
        (c.window.is_some(), "window"),
        (c.reboot_wait_ms.is_some(), "reboot_wait_ms"),
        (c.reboot_timeout_ms.is_some(), "reboot_timeout_ms"),
    ];
    match keys.iter().find(|(present, _)| *present) {
        Some((_, key)) => Err(invalid(
            &k(key),
            format!(
                "does not apply to protocol = \"{protocol}\" (the profile sets its timeouts and retries)"
            ),
        )),
        None => Ok(()),
    }
}

/// Validates the serial tuning keys of one child.
fn serial_options(
    c: &RawChild,
    invalid: &dyn Fn(&str, String) -> ConfigError,
    k: &dyn Fn(&str) -> String,
) -> Result<SerialOptions, ConfigError> {
    use otabridge_codecs::version::Mode;
    let d = SerialOptions::default();
    let framing = match c.framing.as_deref() {
        None => d.framing,
        Some(f) => Framing::parse(f).ok_or_else(|| {
            invalid(
                &k("framing"),
                format!("'{f}' is not like 8N1 (data bits 5-8, N/E/O, stop 1-2)"),
            )
        })?,
    };
    let version_compare = match c.version_compare.as_deref() {
        None => d.version_compare,
        Some("normalised") => Mode::Normalised,
        Some("exact") => Mode::Exact,
        Some(o) => {
            return Err(invalid(
                &k("version_compare"),
                format!("'{o}' is not normalised or exact"),
            ))
        }
    };
    let buf_size = match c.buf_size {
        None => None,
        Some(b) if (MIN_BUF_SIZE..=MAX_BUF_SIZE).contains(&b) => Some(b as usize),
        Some(b) => {
            return Err(invalid(
                &k("buf_size"),
                format!("{b} is outside {MIN_BUF_SIZE}..={MAX_BUF_SIZE}"),
            ))
        }
    };
    // Every wait must be positive and bounded (an hour is beyond any erase
    // or MCUboot swap), so a typo cannot hang a job.
    let ms = |v: Option<u64>, name: &str, default: Duration| match v {
        None => Ok(default),
        Some(ms) if (1..=3_600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(ms) => Err(invalid(&k(name), format!("{ms} is outside 1..=3600000 ms"))),
    };
    let timeout = ms(c.timeout_ms, "timeout_ms", d.timeout)?;
    let first_timeout = ms(c.first_timeout_ms, "first_timeout_ms", d.first_timeout)?;
    let reboot_wait = ms(c.reboot_wait_ms, "reboot_wait_ms", d.reboot_wait)?;
    let reboot_timeout = ms(c.reboot_timeout_ms, "reboot_timeout_ms", d.reboot_timeout)?;
    let retries = match c.retries {
        None => d.retries,
        Some(r) if r <= 100 => r,
        Some(r) => return Err(invalid(&k("retries"), format!("{r} is above 100"))),
    };
    let window = match c.window {
        None => d.window,
        Some(w) if (1..=MAX_WINDOW).contains(&w) => w as usize,
        Some(w) => {
            return Err(invalid(
                &k("window"),
                format!("{w} is outside 1..={MAX_WINDOW}"),
            ))
        }
    };
    Ok(SerialOptions {
        framing,
        version_compare,
        buf_size,
        timeout,
        first_timeout,
        retries,
        window,
        reboot_wait,
        reboot_timeout,
    })
}

/// Splits `host[:port]` or `[v6]:port`.
fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), &'static str> {
    if s.is_empty() {
        return Err("no host");
    }
    if s.contains('/') || s.contains('@') {
        return Err("expected scheme://host[:port] with no path or user");
    }
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (h, rest) = v6.split_once(']').ok_or("unclosed '['")?;
        (h.to_owned(), rest.strip_prefix(':'))
    } else if let Some((h, p)) = s.rsplit_once(':') {
        (h.to_owned(), Some(p))
    } else {
        (s.to_owned(), None)
    };
    if host.is_empty() {
        return Err("no host");
    }
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or("bad port")?,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[platform]
url = "mqtts://iot-mqtts.example.com"
device_id = "gw-product_gw01"
secret = "hunter2"

[state]
dir = "/var/lib/otabridge"

[[child]]
device_id = "prod_node01"
transport = "coap"
address = "192.168.10.21:5683"

[[child]]
device_id = "prod_node02"
transport = "serial"
port = "/dev/ttyUSB0"
baud = 115200
protocol = "framed:acme-rs485"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/otabridge.toml"))
    }

    #[test]
    fn the_design_example_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert!(c.platform.tls);
        assert_eq!(c.platform.port, 8883);
        assert_eq!(c.platform.keepalive_secs, 120);
        assert_eq!(c.platform.max_messages_per_sec, 50);
        assert_eq!(c.download.max_package_bytes, 268_435_456);
        assert!(c.download.verify_hostname);
        assert_eq!(
            c.children[0].transport,
            Transport::Coap {
                address: "192.168.10.21:5683".parse().unwrap(),
                delivery: Delivery::Pull
            }
        );
        assert_eq!(
            c.children[1].transport,
            Transport::Serial {
                port: "/dev/ttyUSB0".into(),
                baud: 115_200,
                protocol: SerialProtocol::Framed(find_profile("acme-rs485", None).unwrap()),
                options: SerialOptions::default(),
            }
        );
    }

    #[test]
    fn serial_keys_parse() {
        let text = GOOD.replace(
            "protocol = \"framed:acme-rs485\"",
            "protocol = \"smp\"\nframing = \"7e2\"\nversion_compare = \"exact\"\n\
             buf_size = 2048\ntimeout_ms = 300\nfirst_timeout_ms = 9000\nretries = 2\nwindow = 3\n\
             reboot_wait_ms = 100\nreboot_timeout_ms = 20000",
        );
        let c = parse(&text).unwrap();
        let Transport::Serial {
            protocol, options, ..
        } = &c.children[1].transport
        else {
            panic!("not serial");
        };
        assert_eq!(*protocol, SerialProtocol::Smp);
        assert_eq!(
            *options,
            SerialOptions {
                framing: Framing {
                    data_bits: 7,
                    parity: Parity::Even,
                    stop_bits: 2
                },
                version_compare: otabridge_codecs::version::Mode::Exact,
                buf_size: Some(2048),
                timeout: Duration::from_millis(300),
                first_timeout: Duration::from_secs(9),
                retries: 2,
                window: 3,
                reboot_wait: Duration::from_millis(100),
                reboot_timeout: Duration::from_secs(20),
            }
        );
        assert_eq!(options.framing.bits_per_char(), 11);
        assert_eq!(Framing::EIGHT_N_ONE.bits_per_char(), 10);
    }

    #[test]
    fn serial_key_errors_name_the_key() {
        let serial = |extra: &str| {
            GOOD.replace(
                "protocol = \"framed:acme-rs485\"",
                &format!("protocol = \"smp\"\n{extra}"),
            )
        };
        let cases = [
            ("framing = \"9N1\"", "child[1].framing"),
            ("framing = \"8X1\"", "child[1].framing"),
            ("framing = \"8N3\"", "child[1].framing"),
            ("version_compare = \"fuzzy\"", "child[1].version_compare"),
            ("buf_size = 64", "child[1].buf_size"),
            ("buf_size = 5000", "child[1].buf_size"),
            ("timeout_ms = 0", "child[1].timeout_ms"),
            ("first_timeout_ms = 3600001", "child[1].first_timeout_ms"),
            ("retries = 101", "child[1].retries"),
            ("window = 0", "child[1].window"),
            ("window = 9", "child[1].window"),
            ("reboot_wait_ms = 0", "child[1].reboot_wait_ms"),
            ("reboot_timeout_ms = 0", "child[1].reboot_timeout_ms"),
        ];
        for (line, key) in cases {
            let e = err(&serial(line));
            assert!(e.contains(&format!(": {key}: ")), "{key}: {e}");
        }
        // Serial keys on another transport.
        let e = err(&GOOD.replace(
            "address = \"192.168.10.21:5683\"",
            "address = \"192.168.10.21:5683\"\nbuf_size = 512",
        ));
        assert!(e.contains(": child[0].buf_size: does not apply"), "{e}");
        // Two children on one port must agree on the line settings.
        let bus = format!(
            "{}\n[[child]]\ndevice_id = \"prod_node03\"\ntransport = \"serial\"\n\
             port = \"/dev/ttyUSB0\"\nbaud = 9600\n",
            serial("")
        );
        let e = err(&bus);
        assert!(
            e.contains(": child[2].baud: /dev/ttyUSB0 is shared with child[1]"),
            "{e}"
        );
        assert!(parse(&bus.replace("baud = 9600", "baud = 115200")).is_ok());
    }

    #[test]
    fn secrets_never_print() {
        let c = parse(GOOD).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_name_the_key_and_file() {
        let e = err(&GOOD.replace("secret = \"hunter2\"", "secret = \"x\"\nsecrte = 1"));
        assert!(e.starts_with("config /etc/otabridge.toml: platform"), "{e}");
        assert!(e.contains("unknown field `secrte`"), "{e}");
        assert!(e.contains("line 6"), "{e}");
        let e = err(&GOOD.replace("baud = 115200", "baud = \"fast\""));
        assert!(e.contains("child[1].baud"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            ("mqtts://iot-mqtts.example.com", "http://x", "platform.url"),
            ("secret = \"hunter2\"", "", "platform.secret"),
            (
                "secret = \"hunter2\"",
                "secret = \"a\"\ncert_file = \"c\"",
                "platform.secret",
            ),
            (
                "secret = \"hunter2\"",
                "cert_file = \"c\"",
                "platform.key_file",
            ),
            ("192.168.10.21:5683", "not-an-address", "child[0].address"),
            (
                "transport = \"coap\"",
                "transport = \"zigbee\"",
                "child[0].transport",
            ),
            (
                "protocol = \"framed:acme-rs485\"",
                "protocol = \"modbus\"",
                "child[1].protocol",
            ),
            ("port = \"/dev/ttyUSB0\"", "", "child[1].port"),
            ("prod_node02", "prod_node01", "child[1].device_id"),
            ("prod_node02", "gw-product_gw01", "child[1].device_id"),
        ];
        for (from, to, key) in cases {
            let e = err(&GOOD.replace(from, to));
            assert!(e.contains(&format!(": {key}: ")), "{key}: {e}");
        }
    }

    #[test]
    fn framed_profiles_resolve_and_errors_name_key_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let with_dir = |protocol: &str| {
            GOOD.replace("framed:acme-rs485", protocol)
                .replace("[state]", &format!("[profiles]\ndir = \"{d}\"\n\n[state]"))
        };
        // Built-in by name, with or without a directory.
        let c = parse(GOOD).unwrap();
        let Transport::Serial {
            protocol: SerialProtocol::Framed(f),
            ..
        } = &c.children[1].transport
        else {
            panic!("not framed");
        };
        assert_eq!((f.name.as_str(), f.file.as_deref()), ("acme-rs485", None));
        assert_eq!(f.profile.name, "acme-rs485");
        // A user file shadows the built-in of its name.
        let acme = profile::builtin_text("acme-rs485").unwrap();
        std::fs::write(dir.path().join("acme-rs485.toml"), acme).unwrap();
        let c = parse(&with_dir("framed:acme-rs485")).unwrap();
        let Transport::Serial {
            protocol: SerialProtocol::Framed(f),
            ..
        } = &c.children[1].transport
        else {
            panic!("not framed");
        };
        assert_eq!(f.file, Some(dir.path().join("acme-rs485.toml")));

        // Unknown names list what exists and where it looked.
        let e = err(&GOOD.replace("framed:acme-rs485", "framed:acme"));
        assert!(e.contains(": child[1].protocol: no profile 'acme'"), "{e}");
        assert!(e.contains("acme-rs485, nordlys-uart"), "{e}");
        assert!(e.contains("no [profiles] dir"), "{e}");
        let e = err(&with_dir("framed:th40"));
        assert!(e.contains(&format!("{d} has no th40.toml")), "{e}");
        let e = err(&GOOD.replace("framed:acme-rs485", "framed:../etc/x"));
        assert!(
            e.contains(": child[1].protocol: '../etc/x' is not a profile name"),
            "{e}"
        );

        // An invalid user profile: the key, the file and the line.
        let bad = acme.replace("crc16-modbus", "crc-16");
        let line = bad.lines().position(|l| l.contains("crc-16")).unwrap() + 1;
        std::fs::write(
            dir.path().join("th40.toml"),
            bad.replace("\"acme-rs485\"", "\"th40\""),
        )
        .unwrap();
        let e = err(&with_dir("framed:th40"));
        let file = dir.path().join("th40.toml").display().to_string();
        assert!(e.contains(": child[1].protocol: invalid profile "), "{e}");
        assert!(
            e.contains(&format!("{file}:{line}: unknown CRC algorithm")),
            "{e}"
        );

        // A file named for one protocol that calls itself another.
        std::fs::write(dir.path().join("th41.toml"), acme).unwrap();
        let e = err(&with_dir("framed:th41"));
        assert!(e.contains(": child[1].protocol: "), "{e}");
        assert!(
            e.contains("th41.toml:10: [protocol] name is 'acme-rs485'"),
            "{e}"
        );

        // The directory itself must exist.
        let e = err(&GOOD.replace("[state]", "[profiles]\ndir = \"/nonexistent/x\"\n[state]"));
        assert!(e.contains(": profiles.dir: /nonexistent/x is not"), "{e}");
        let e = err(&GOOD.replace("[state]", "[profiles]\ndri = \"/\"\n[state]"));
        assert!(
            e.contains("profiles") && e.contains("unknown field `dri`"),
            "{e}"
        );

        // SMP tuning does not apply to a framed child; the line framing does.
        let e = err(&GOOD.replace("baud = 115200", "baud = 115200\ntimeout_ms = 300"));
        assert!(
            e.contains(": child[1].timeout_ms: does not apply to protocol = \"framed:acme-rs485\""),
            "{e}"
        );
        assert!(parse(&GOOD.replace("baud = 115200", "baud = 9600\nframing = \"8E1\"")).is_ok());
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("h:1", 2), Ok(("h".into(), 1)));
        assert_eq!(split_host_port("h", 2), Ok(("h".into(), 2)));
        assert_eq!(split_host_port("[::1]:9", 2), Ok(("::1".into(), 9)));
        assert!(split_host_port("h:0", 2).is_err());
        assert!(split_host_port("h/x", 2).is_err());
    }
}
