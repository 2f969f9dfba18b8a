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

use otabridge_codecs::version::Policy;
use serde::Deserialize;

mod child;
mod gateway;
pub mod health;
mod profile;
mod serial;
mod window;

pub use child::{
    ChildConfig, ChildImage, CoapAddress, Delivery, ImageCheck, SerialProtocol, Transport,
};
pub use gateway::{
    After, GatewayConfig, InstallConfig, Installer, VersionSource, FILE_PLACEHOLDER,
};
pub use profile::{find_profile, load_profile, FramedProfile, ProfileLookupError};
pub use serial::{
    Framing, Parity, SerialOptions, DEFAULT_REOPEN_TIMEOUT, DEFAULT_WINDOW, MAX_BUF_SIZE,
    MAX_REOPEN_TIMEOUT_MS, MAX_WINDOW, MIN_BUF_SIZE,
};
pub use window::{Window, Zone, ZONEINFO};

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
    control: ControlConfig,
    #[serde(default)]
    lwm2m: Lwm2mConfig,
    #[serde(default)]
    gateway: gateway::RawGateway,
    #[serde(default)]
    image: ImageConfig,
    #[serde(default, rename = "child")]
    children: Vec<child::ChildTable>,
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
    /// How long a queue-mode LwM2M client (`b=UQ`, `Q`) listens after it
    /// last sent something (default 93 s, CoAP MAX_TRANSMIT_WAIT as OMA
    /// TS Core 1.1 §6.5 says); requests for it wait for its next
    /// Register or Update otherwise.
    pub queue_window_secs: u64,
    /// Observe /5/0/3 and /5/0/5 (RFC 7641) while a child downloads,
    /// instead of polling them (default true); a child that refuses is
    /// polled.
    pub observe: bool,
    /// While observed, /5/0/3 is still read this often in case
    /// notifications stop (default 60 s).
    pub observe_check_secs: u64,
}

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5683)),
            advertise: None,
            max_concurrent_transfers: 8,
            queue_window_secs: 93,
            observe: true,
            observe_check_secs: 60,
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
    /// `version_match`: how a child's version is compared with the target,
    /// `"normalised"` (the default: "V1.2" equals "1.2.0") or `"exact"`;
    /// a `[[child]]` may set its own.
    pub version_match: Policy,
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
    /// Halt on failures (issue 15): this many children of a task failing
    /// with the same result code among its first `halt_first` hold the
    /// task's children that did not start (default 3; 0: off).
    pub halt_failures: u32,
    /// The first this many children of a task that end are the ones
    /// `halt_failures` counts (default 10); until then, at most
    /// `halt_failures` of them are in flight at once.
    pub halt_first: u32,
    /// `activation_window`: when children may be activated, local time
    /// `HH:MM-HH:MM` (issue 15 item 1); a `[[child]]` may set its own.
    /// `None` (`"always"`, the default): at any time.
    #[serde(deserialize_with = "window::de_window")]
    pub activation_window: Option<Window>,
    /// `timezone`: the zone windows are in, an IANA name read from
    /// [`ZONEINFO`] or an absolute path to a TZif file; unset: the box's
    /// `/etc/localtime` (UTC without one).
    pub timezone: Option<String>,
    /// `timezone` read (resolved with the files).
    #[serde(skip)]
    pub zone: Zone,
    /// Health-gated confirm of MCUboot (SMP) children: how long a child
    /// must pass its probes after the test boot before it is confirmed;
    /// 0 (the default) confirms at once (docs/operations.md).
    pub health_check_secs: u64,
    /// Time between two health probes (default 10 s).
    pub health_probe_interval_secs: u64,
    /// A health probe without every answer by then fails (default 10 s).
    pub health_probe_timeout_secs: u64,
    /// The SMP command each probe sends after its image state read:
    /// `"echo"` or `{ group, command, op, body }` (default none).
    pub health_command: Option<toml::Value>,
}

impl OtaConfig {
    /// The health keys as the defaults of every SMP child.
    fn health_keys(&self) -> health::HealthKeys {
        health::HealthKeys {
            check_secs: Some(self.health_check_secs),
            interval_secs: Some(self.health_probe_interval_secs),
            probe_timeout_secs: Some(self.health_probe_timeout_secs),
            command: self.health_command.clone(),
        }
    }
}

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig {
            max_concurrent_jobs: 16,
            max_retries: 5,
            version_match: Policy::Normalised,
            version_read_timeout_secs: 30,
            first_chunk_timeout_secs: 120,
            chunk_timeout_secs: 60,
            activation_timeout_secs: 600,
            retry_min_ms: 2000,
            retry_max_ms: 60_000,
            halt_failures: 3,
            halt_first: 10,
            activation_window: None,
            timezone: None,
            zone: Zone::default(),
            health_check_secs: 0,
            health_probe_interval_secs: health::DEFAULT_INTERVAL_SECS,
            health_probe_timeout_secs: health::DEFAULT_PROBE_TIMEOUT_SECS,
            health_command: None,
        }
    }
}

/// `[image]`: checks of MCUboot images before delivery that apply to every
/// child whose `image.check` is `mcuboot` (docs/config.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// PEM public keys any child's image may be signed with.
    pub keys: Vec<PathBuf>,
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

/// `[control]`: the local control API on a Unix socket (docs/operations.md,
/// "Controlling jobs").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Serve the control API (default true).
    pub enabled: bool,
    /// The socket's path (default `control.sock` in `state.dir`).
    pub socket: Option<PathBuf>,
    /// The group that owns the socket (mode 0660), so that its members may
    /// use `otabridge jobs` (default: the daemon's own group).
    pub group: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: true,
            socket: None,
            group: None,
        }
    }
}

/// `[lwm2m]`: onboarding of LwM2M clients no `[[child]]` names (issue 13
/// item 3, docs/coap.md "Onboarding").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lwm2mConfig {
    /// The IoTDA product an unknown endpoint that registers is added under
    /// as a sub-device (`add_sub_device_request`, node id = its endpoint
    /// name); `None` (the default): unknown endpoints get 4.03.
    pub onboard_product_id: Option<String>,
}

/// `[lwm2m]`: a product id IoTDA could take.
fn check_lwm2m(c: &Lwm2mConfig) -> Result<(), Bad> {
    if let Some(p) = &c.onboard_product_id {
        if p.is_empty() || p.len() > 128 {
            return Err((
                "lwm2m.onboard_product_id",
                format!("is {} bytes long; expected 1 to 128", p.len()),
            ));
        }
        if p.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err((
                "lwm2m.onboard_product_id",
                format!("{p:?} holds spaces or control characters"),
            ));
        }
    }
    Ok(())
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes
/// on Linux, with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

impl Config {
    /// Where the control API's socket is (`control.socket`, or
    /// `control.sock` in `state.dir`).
    pub fn control_socket(&self) -> PathBuf {
        self.control
            .socket
            .clone()
            .unwrap_or_else(|| self.state.dir.join("control.sock"))
    }
}

/// `[control]`: a socket path the kernel can bind, a group name.
fn check_control(c: &ControlConfig, state: &StateConfig) -> Result<(), Bad> {
    let (key, path) = match &c.socket {
        Some(p) => ("control.socket", p.clone()),
        None => ("state.dir", state.dir.join("control.sock")),
    };
    let len = path.as_os_str().len();
    if c.enabled && len > MAX_SOCKET_PATH {
        return Err((
            key,
            format!(
                "the control socket {} is {len} bytes long; a Unix socket path holds at most                  {MAX_SOCKET_PATH}: set control.socket to a shorter path",
                path.display()
            ),
        ));
    }
    if let Some(g) = &c.group {
        if g.is_empty() || g.contains([':', '/', '\n']) {
            return Err(("control.group", format!("'{g}' is not a group name")));
        }
    }
    Ok(())
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
    /// `[control]`.
    pub control: ControlConfig,
    /// `[lwm2m]`: onboarding (default: off).
    pub lwm2m: Lwm2mConfig,
    /// `[gateway]`: the gateway's own upgrade (default: none, refused).
    pub gateway: GatewayConfig,
    /// `[image]`.
    pub image: ImageConfig,
    /// `[[child]]`, in file order.
    pub children: Vec<ChildConfig>,
}

/// ` (line L, column C)` for a byte offset of `text`.
fn at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" (line {line}, column {col})")
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
    /// Reads and validates a configuration file, and the files it names.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(&text, file)
    }

    /// Validates configuration text, then reads the files it names
    /// (`platform.secret_file`, framed profiles). `file` names the text in
    /// errors; the paths in it are used as written, relative to the working
    /// directory.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Draft::parse(text, file)?.resolve()
    }
}

/// A configuration checked from its text alone: no file has been read yet.
/// [`Draft::resolve`] does the reading (the secret file, the profiles), so
/// the rules here are pure and the I/O sits in one place.
#[derive(Debug)]
struct Draft {
    file: PathBuf,
    platform: PlatformDraft,
    state: StateConfig,
    download: DownloadConfig,
    coap: CoapConfig,
    ota: OtaConfig,
    profiles: ProfilesConfig,
    metrics: MetricsConfig,
    control: ControlConfig,
    lwm2m: Lwm2mConfig,
    gateway: GatewayConfig,
    image: ImageConfig,
    children: Vec<DraftChild>,
}

#[derive(Debug)]
struct DraftChild {
    device_id: String,
    /// Its own `version_match`, if it sets one.
    version_match: Option<Policy>,
    /// Its own `activation_window`, if it sets one.
    window: child::ChildWindow,
    draft: child::Draft,
    image: ChildImage,
    /// `child[i].protocol` and where it is written, for a profile that
    /// cannot be read.
    protocol_key: String,
    protocol_at: String,
}

/// `[platform]` checked, its secret file not read yet.
#[derive(Debug)]
struct PlatformDraft {
    raw: RawPlatform,
    tls: bool,
    host: String,
    port: u16,
    auth: AuthSpec,
}

/// How the gateway authenticates, before `secret_file` is read.
#[derive(Debug)]
enum AuthSpec {
    Ready(Auth),
    SecretFile(PathBuf),
}

/// A key that is not acceptable: `(key, message)`, the key in full.
type Bad = (&'static str, String);

impl Draft {
    fn parse(text: &str, file: &Path) -> Result<Draft, ConfigError> {
        let invalid = |(key, message): Bad| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        retired(text, file)?;
        let raw = deserialize(text, file)?;
        let platform = platform(raw.platform).map_err(invalid)?;
        check_limits(&raw.download, &raw.coap, &raw.ota).map_err(invalid)?;
        check_control(&raw.control, &raw.state).map_err(invalid)?;
        check_lwm2m(&raw.lwm2m).map_err(invalid)?;
        let health = health::HealthDefaults::from_ota(raw.ota.health_keys())
            .map_err(|(key, m)| invalid((ota_key(key), m)))?;
        let gateway =
            raw.gateway
                .clone()
                .validate()
                .map_err(|(key, message)| ConfigError::Invalid {
                    file: file.to_owned(),
                    key,
                    message,
                })?;
        let mut siblings = child::Siblings::default();
        let mut children = Vec::with_capacity(raw.children.len());
        for (i, table) in raw.children.iter().enumerate() {
            let located = |key: &str| {
                let at = table
                    .get(key)
                    .map(|v| at(text, v.span().start))
                    .unwrap_or_default();
                let key = match key {
                    "" => format!("child[{i}]"),
                    k => format!("child[{i}].{k}"),
                };
                (key, at)
            };
            let (device_id, version_match, window, draft, image) = siblings
                .check(i, table, &platform.raw.device_id, &health)
                .map_err(|e| {
                    let (key, at) = located(&e.key);
                    ConfigError::Invalid {
                        file: file.to_owned(),
                        key,
                        message: format!("{}{at}", e.message),
                    }
                })?;
            let (protocol_key, protocol_at) = located("protocol");
            children.push(DraftChild {
                device_id,
                version_match,
                window,
                draft,
                image,
                protocol_key,
                protocol_at,
            });
        }
        Ok(Draft {
            file: file.to_owned(),
            platform,
            state: raw.state,
            download: raw.download,
            coap: raw.coap,
            ota: raw.ota,
            profiles: raw.profiles,
            metrics: raw.metrics,
            control: raw.control,
            lwm2m: raw.lwm2m,
            gateway,
            image: raw.image,
            children,
        })
    }

    /// Reads what the configuration names: the secret file, the profiles
    /// directory and each framed profile (once, however many children on
    /// however many ports use it).
    fn resolve(mut self) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: self.file.clone(),
            key: key.to_owned(),
            message,
        };
        // The zone is read only when a window needs it.
        let windows = self.ota.activation_window.is_some()
            || self
                .children
                .iter()
                .any(|c| matches!(c.window, Some(Some(_))));
        self.ota.zone = match &self.ota.timezone {
            Some(name) => Zone::load(name).map_err(|m| invalid("ota.timezone", m))?,
            None if windows => Zone::system()
                .map_err(|m| invalid("ota.timezone", format!("{m}; set ota.timezone")))?,
            None => Zone::default(),
        };
        let auth = match self.platform.auth {
            AuthSpec::Ready(a) => a,
            AuthSpec::SecretFile(f) => {
                Auth::Secret(read_secret(&f).map_err(|m| invalid("platform.secret_file", m))?)
            }
        };
        if let Some(d) = &self.profiles.dir {
            if !d.is_dir() {
                return Err(invalid(
                    "profiles.dir",
                    format!("{} is not a directory", d.display()),
                ));
            }
        }
        let mut profiles: HashMap<String, FramedProfile> = HashMap::new();
        let mut children = Vec::with_capacity(self.children.len());
        for c in self.children {
            let transport = match c.draft {
                child::Draft::Ready(t) => t,
                child::Draft::Framed(p) => {
                    let found =
                        match profiles.get(&p.name) {
                            Some(f) => f.clone(),
                            None => find_profile(&p.name, self.profiles.dir.as_deref()).map_err(
                                |e| invalid(&c.protocol_key, format!("{e}{}", c.protocol_at)),
                            )?,
                        };
                    profiles.insert(p.name.clone(), found.clone());
                    child::Draft::with_profile(p, found)
                }
            };
            children.push(ChildConfig {
                device_id: c.device_id,
                version_match: c.version_match.unwrap_or(self.ota.version_match),
                activation_window: c.window.unwrap_or(self.ota.activation_window),
                transport,
                image: c.image,
            });
        }
        let p = self.platform.raw;
        Ok(Config {
            file: self.file,
            platform: PlatformConfig {
                tls: self.platform.tls,
                host: self.platform.host,
                port: self.platform.port,
                device_id: p.device_id,
                auth,
                ca_file: p.ca_file,
                verify_timestamp: p.verify_timestamp,
                keepalive_secs: p.keepalive_secs,
                max_messages_per_sec: p.max_messages_per_sec,
                fw_version: p.fw_version,
            },
            state: self.state,
            download: self.download,
            coap: self.coap,
            ota: self.ota,
            profiles: self.profiles,
            metrics: self.metrics,
            control: self.control,
            lwm2m: self.lwm2m,
            gateway: self.gateway,
            image: self.image,
            children,
        })
    }
}

/// `[ota]` keys that were replaced, to be named with their replacement
/// rather than as unknown keys (a `[[child]]`'s are in `child.rs`).
#[derive(Deserialize)]
struct Retired {
    #[serde(default)]
    ota: RetiredOta,
}

#[derive(Default, Deserialize)]
struct RetiredOta {
    exact_versions: Option<toml::Spanned<toml::Value>>,
}

/// Fails on a replaced key. Text that is not valid TOML passes here and is
/// reported by [`deserialize`].
fn retired(text: &str, file: &Path) -> Result<(), ConfigError> {
    let Ok(r) = toml::from_str::<Retired>(text) else {
        return Ok(());
    };
    if let Some(v) = r.ota.exact_versions {
        let now = match v.get_ref().as_bool() {
            Some(true) => "exact",
            _ => "normalised",
        };
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            key: "ota.exact_versions".into(),
            message: format!(
                "was replaced by `version_match` (\"normalised\" or \"exact\"): write \
                 version_match = \"{now}\" in [ota]{}",
                at(text, v.span().start)
            ),
        });
    }
    Ok(())
}

/// The TOML into its sections; an unknown key or a wrong type names the
/// key path, the line and the column.
fn deserialize(text: &str, file: &Path) -> Result<RawConfig, ConfigError> {
    // Text that is not TOML fails here, before any key is known.
    let syntax = |inner: toml::de::Error| ConfigError::Syntax {
        file: file.to_owned(),
        key: "(top level)".into(),
        message: format!(
            "{}{}",
            inner.message().trim_end(),
            inner.span().map(|s| at(text, s.start)).unwrap_or_default()
        ),
    };
    let de = toml::Deserializer::parse(text).map_err(syntax)?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = key_path(e.path());
        let inner = e.into_inner();
        let at = inner.span().map(|s| at(text, s.start)).unwrap_or_default();
        ConfigError::Syntax {
            file: file.to_owned(),
            key,
            message: format!("{}{at}", inner.message().trim_end()),
        }
    })
}

/// `[platform]`: the broker URL, the device id, the limits, and how the
/// gateway authenticates.
fn platform(p: RawPlatform) -> Result<PlatformDraft, Bad> {
    let (tls, host, port) = broker(&p.url).map_err(|m| ("platform.url", m))?;
    if p.device_id.trim().is_empty() || p.device_id.contains(['/', '+', '#']) {
        return Err((
            "platform.device_id",
            "must be a non-empty IoTDA device id without '/', '+' or '#'".into(),
        ));
    }
    let auth = auth(&p, tls)?;
    if !(1..=65535).contains(&p.keepalive_secs) {
        return Err(("platform.keepalive_secs", "must be 1..=65535".into()));
    }
    if p.max_messages_per_sec == 0 {
        return Err(("platform.max_messages_per_sec", "must be at least 1".into()));
    }
    Ok(PlatformDraft {
        raw: p,
        tls,
        host,
        port,
        auth,
    })
}

/// `mqtt[s]://host[:port]` into (tls, host, port).
fn broker(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!("'{url}' must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = split_host_port(rest, if tls { 8883 } else { 1883 })
        .map_err(|m| format!("'{url}': {m}"))?;
    Ok((tls, host, port))
}

/// Exactly one of `secret`, `secret_file`, or `cert_file` + `key_file`.
fn auth(p: &RawPlatform, tls: bool) -> Result<AuthSpec, Bad> {
    match (&p.secret, &p.secret_file, &p.cert_file, &p.key_file) {
        (Some(s), None, None, None) if s.expose().is_empty() => {
            Err(("platform.secret", "is empty".into()))
        }
        (Some(s), None, None, None) => Ok(AuthSpec::Ready(Auth::Secret(s.clone()))),
        (None, Some(f), None, None) => Ok(AuthSpec::SecretFile(f.clone())),
        (None, None, Some(_), Some(_)) if !tls => Err((
            "platform.cert_file",
            "certificate authentication needs an mqtts:// url".into(),
        )),
        (None, None, Some(c), Some(k)) => Ok(AuthSpec::Ready(Auth::Certificate {
            cert_file: c.clone(),
            key_file: k.clone(),
        })),
        (None, None, Some(_), None) => {
            Err(("platform.key_file", "cert_file needs key_file".into()))
        }
        (None, None, None, Some(_)) => {
            Err(("platform.cert_file", "key_file needs cert_file".into()))
        }
        (None, None, None, None) => Err((
            "platform.secret",
            "one of secret, secret_file, or cert_file + key_file is required".into(),
        )),
        _ => Err((
            "platform.secret",
            "give only one of secret, secret_file, or cert_file + key_file".into(),
        )),
    }
}

/// `platform.secret_file`: the secret without its trailing line end.
fn read_secret(f: &Path) -> Result<Secret, String> {
    let s = std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
    let s = s.trim_end_matches(['\r', '\n']);
    if s.is_empty() {
        return Err(format!("{} is empty", f.display()));
    }
    Ok(Secret::new(s))
}

/// `[ota]`'s name of a health key.
fn ota_key(key: &str) -> &'static str {
    match key {
        "health_check_secs" => "ota.health_check_secs",
        "health_probe_interval_secs" => "ota.health_probe_interval_secs",
        "health_probe_timeout_secs" => "ota.health_probe_timeout_secs",
        _ => "ota.health_command",
    }
}

/// The numbers in `[download]`, `[coap]` and `[ota]` that must be positive
/// or ordered.
fn check_limits(d: &DownloadConfig, c: &CoapConfig, o: &OtaConfig) -> Result<(), Bad> {
    for (key, v) in [
        ("download.max_package_bytes", d.max_package_bytes),
        (
            "coap.max_concurrent_transfers",
            c.max_concurrent_transfers as u64,
        ),
        ("coap.queue_window_secs", c.queue_window_secs),
        ("coap.observe_check_secs", c.observe_check_secs),
        ("ota.max_concurrent_jobs", o.max_concurrent_jobs as u64),
        ("ota.version_read_timeout_secs", o.version_read_timeout_secs),
        ("ota.first_chunk_timeout_secs", o.first_chunk_timeout_secs),
        ("ota.chunk_timeout_secs", o.chunk_timeout_secs),
        ("ota.activation_timeout_secs", o.activation_timeout_secs),
        ("ota.retry_min_ms", o.retry_min_ms),
    ] {
        if v == 0 {
            return Err((key, "must be at least 1".into()));
        }
    }
    if o.retry_max_ms < o.retry_min_ms {
        return Err((
            "ota.retry_max_ms",
            "must not be below ota.retry_min_ms".into(),
        ));
    }
    if o.halt_failures > 0 && o.halt_first < o.halt_failures {
        return Err((
            "ota.halt_first",
            format!(
                "must be at least ota.halt_failures ({}): K failures among fewer than K \
                 children cannot happen",
                o.halt_failures
            ),
        ));
    }
    Ok(())
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
    use otabridge_codecs::framed::profile;
    use std::time::Duration;

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
                address: CoapAddress::Static("192.168.10.21:5683".parse().unwrap()),
                delivery: Delivery::Pull,
                accept: None,
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
        assert_eq!(c.ota.version_match, Policy::Normalised);
        assert!(c
            .children
            .iter()
            .all(|c| c.version_match == Policy::Normalised));
    }

    /// Activation windows (issue 15 item 1): `[ota]` for every child, a
    /// `[[child]]` its own or `"always"`; the zone read from tzdata; bad
    /// values name their key.
    #[test]
    fn activation_windows_and_the_timezone() {
        let ota = |keys: &str| GOOD.replace("[state]", &format!("[ota]\n{keys}\n\n[state]"));
        let c = parse(GOOD).unwrap();
        assert_eq!(c.ota.activation_window, None);
        assert_eq!(c.ota.zone.name, "UTC", "no window, no zone read");
        let c = parse(&ota(
            "activation_window = \"22:00-05:00\"\ntimezone = \"Europe/Berlin\"",
        ))
        .unwrap();
        let w = Window::parse("22:00-05:00").unwrap();
        assert!(c.children.iter().all(|c| c.activation_window == w));
        assert_eq!(c.ota.zone.name, "Europe/Berlin");
        // 2026-07-01 12:00 UTC: CEST.
        assert_eq!(c.ota.zone.offset(1_782_907_200), 7200);
        let c = parse(
            &ota("activation_window = \"22:00-05:00\"\ntimezone = \"UTC\"").replace(
                "address = \"192.168.10.21:5683\"",
                "address = \"192.168.10.21:5683\"\nactivation_window = \"always\"",
            ),
        )
        .unwrap();
        assert_eq!(c.children[0].activation_window, None);
        assert_eq!(c.children[1].activation_window, w);

        let e = err(&ota("activation_window = \"25:00-01:00\""));
        assert!(
            e.starts_with(
                "config /etc/otabridge.toml: ota.activation_window: '25:00-01:00' is not a window"
            ),
            "{e}"
        );
        let e = err(&ota(
            "activation_window = \"22:00-05:00\"\ntimezone = \"Mars/Olympus\"",
        ));
        assert!(
            e.starts_with("config /etc/otabridge.toml: ota.timezone: cannot read the zone file /usr/share/zoneinfo/Mars/Olympus"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "address = \"192.168.10.21:5683\"",
            "address = \"192.168.10.21:5683\"\nactivation_window = \"at night\"",
        ));
        assert!(
            e.starts_with("config /etc/otabridge.toml: child[0].activation_window: 'at night' is not a window"),
            "{e}"
        );
    }

    /// One key for every transport: `[ota] version_match` for all children,
    /// `version_match` on a `[[child]]` for that one.
    #[test]
    fn version_match_has_a_default_and_a_per_child_override() {
        let c =
            parse(&GOOD.replace("[state]", "[ota]\nversion_match = \"exact\"\n\n[state]")).unwrap();
        assert_eq!(c.ota.version_match, Policy::Exact);
        assert!(c.children.iter().all(|c| c.version_match == Policy::Exact));
        let c = parse(&GOOD.replace(
            "address = \"192.168.10.21:5683\"",
            "address = \"192.168.10.21:5683\"\nversion_match = \"exact\"",
        ))
        .unwrap();
        let m: Vec<Policy> = c.children.iter().map(|c| c.version_match).collect();
        assert_eq!(m, [Policy::Exact, Policy::Normalised]);
        let e = err(&GOOD.replace("[state]", "[ota]\nversion_match = \"loose\"\n\n[state]"));
        assert!(
            e.contains(
                ": ota.version_match: unknown variant `loose`, expected `exact` or `normalised`"
            ),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "address = \"192.168.10.21:5683\"",
            "address = \"192.168.10.21:5683\"\nversion_match = true",
        ));
        assert!(
            e.contains(": child[0].version_match: expected a string (normalised or exact), found boolean (line 14"),
            "{e}"
        );
    }

    /// The keys `version_match` replaced name their replacement.
    #[test]
    fn replaced_version_keys_name_the_new_key() {
        let e = err(&GOOD.replace(
            "[state]",
            "[ota]\nmax_retries = 3\nexact_versions = true\n\n[state]",
        ));
        assert_eq!(
            e,
            "config /etc/otabridge.toml: ota.exact_versions: was replaced by `version_match` \
             (\"normalised\" or \"exact\"): write version_match = \"exact\" in [ota] (line 9, column 18)"
        );
        let e = err(&GOOD.replace("[state]", "[ota]\nexact_versions = false\n\n[state]"));
        assert!(
            e.contains("write version_match = \"normalised\" in [ota]"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "protocol = \"framed:acme-rs485\"",
            "protocol = \"smp\"\nversion_compare = \"exact\"",
        ));
        assert!(
            e.starts_with(
                "config /etc/otabridge.toml: child[1].version_compare: was replaced by `version_match`"
            ),
            "{e}"
        );
        assert!(e.contains("(line 21, column 19)"), "{e}");
    }

    #[test]
    fn serial_keys_parse() {
        let text = GOOD.replace(
            "protocol = \"framed:acme-rs485\"",
            "protocol = \"smp\"\nframing = \"7e2\"\nversion_match = \"exact\"\n\
             buf_size = 2048\ntimeout_ms = 300\nfirst_timeout_ms = 9000\nretries = 2\nwindow = 3\n\
             reboot_wait_ms = 100\nreboot_timeout_ms = 20000\nreopen_timeout_ms = 1500",
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
                buf_size: Some(2048),
                timeout: Duration::from_millis(300),
                first_timeout: Duration::from_secs(9),
                retries: 2,
                window: 3,
                reboot_wait: Duration::from_millis(100),
                reboot_timeout: Duration::from_secs(20),
                reopen_timeout: Duration::from_millis(1500),
                health: None,
            }
        );
        assert_eq!(c.children[1].version_match, Policy::Exact);
        assert_eq!(options.framing.bits_per_char(), 11);
        // A framed child takes the port key too; 0 means "do not wait".
        let text = GOOD.replace(
            "protocol = \"framed:acme-rs485\"",
            "protocol = \"framed:acme-rs485\"\nreopen_timeout_ms = 0",
        );
        let c = parse(&text).unwrap();
        let Transport::Serial { options, .. } = &c.children[1].transport else {
            panic!("not serial");
        };
        assert_eq!(options.reopen_timeout, Duration::ZERO);
        assert_eq!(Framing::EIGHT_N_ONE.bits_per_char(), 10);
    }

    #[test]
    fn coap_children_by_address_or_endpoint() {
        let c = parse(&GOOD.replace(
            "address = \"192.168.10.21:5683\"",
            "endpoint = \"urn:imei:35000000001\"",
        ))
        .unwrap();
        assert_eq!(
            c.children[0].transport,
            Transport::Coap {
                address: CoapAddress::Endpoint("urn:imei:35000000001".into()),
                delivery: Delivery::Auto,
                accept: None,
            }
        );
        let both = err(&GOOD.replace(
            "address = \"192.168.10.21:5683\"",
            "address = \"192.168.10.21:5683\"\nendpoint = \"n1\"",
        ));
        assert!(
            both.contains(": child[0].endpoint: set either address"),
            "{both}"
        );
        assert!(both.contains("(line 14, column 12)"), "{both}");
        let neither = err(&GOOD.replace("address = \"192.168.10.21:5683\"", ""));
        assert!(
            neither.contains(
                ": child[0].address: is required for transport = \"coap\", unless endpoint"
            ),
            "{neither}"
        );
        let empty = err(&GOOD.replace("address = \"192.168.10.21:5683\"", "endpoint = \"\""));
        assert!(
            empty.contains(": child[0].endpoint: '' is not an LwM2M endpoint name"),
            "{empty}"
        );
        let twice = err(&format!(
            "{}\n[[child]]\ndevice_id = \"n2\"\ntransport = \"coap\"\nendpoint = \"n1\"\n",
            GOOD.replace("address = \"192.168.10.21:5683\"", "endpoint = \"n1\"")
        ));
        assert!(
            twice.contains(": child[2].endpoint: 'n1' is child[0]'s endpoint too"),
            "{twice}"
        );
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
            ("version_match = \"fuzzy\"", "child[1].version_match"),
            ("buf_size = 64", "child[1].buf_size"),
            ("buf_size = 5000", "child[1].buf_size"),
            ("timeout_ms = 0", "child[1].timeout_ms"),
            ("first_timeout_ms = 3600001", "child[1].first_timeout_ms"),
            ("retries = 101", "child[1].retries"),
            ("window = 0", "child[1].window"),
            ("window = 9", "child[1].window"),
            ("reboot_wait_ms = 0", "child[1].reboot_wait_ms"),
            ("reboot_timeout_ms = 0", "child[1].reboot_timeout_ms"),
            ("reopen_timeout_ms = 3600001", "child[1].reopen_timeout_ms"),
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
        assert!(
            e.contains(": child[0].buf_size: is not a key of transport = \"coap\""),
            "{e}"
        );
        assert!(e.contains("(line 14, column 12)"), "{e}");
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
    fn image_checks_default_by_protocol_and_errors_name_the_key() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.children[0].image, ChildImage::default_for(false));
        assert!(c.image.keys.is_empty());
        let smp = GOOD.replace("protocol = \"framed:acme-rs485\"", "protocol = \"smp\"");
        let c = parse(&smp).unwrap();
        assert_eq!(c.children[1].image.check, ImageCheck::Mcuboot);
        let text = format!(
            "{}\nimage = {{ check = \"mcuboot\", keys = [\"/k.pem\"], encrypted = true, slot_size = 4096 }}",
            GOOD.replace("[[child]]\ndevice_id = \"prod_node02\"", "[image]\nkeys = [\"/all.pem\"]\n\n[[child]]\ndevice_id = \"prod_node02\"")
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.image.keys, [PathBuf::from("/all.pem")]);
        assert_eq!(
            c.children[1].image,
            ChildImage {
                check: ImageCheck::Mcuboot,
                keys: vec!["/k.pem".into()],
                encrypted: true,
                slot_size: Some(4096),
                ..ChildImage::default_for(true)
            }
        );
        // The LwM2M pre-flight keys: on a coap child only.
        let e = err(&format!("{GOOD}image = {{ min_battery = 20 }}\n"));
        assert!(
            e.contains("child[1].image") && e.contains("transport = \"coap\""),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "transport = \"coap\"",
            "transport = \"coap\"\nimage = { min_battery = 101 }",
        ));
        assert!(e.contains("child[0].image.min_battery"), "{e}");
        let c = parse(&GOOD.replace(
            "transport = \"coap\"",
            "transport = \"coap\"\nimage = { min_battery = 20, min_signal_dbm = -110, check_memory_free = true }",
        ))
        .unwrap();
        let i = &c.children[0].image;
        assert_eq!(
            (i.min_battery, i.min_signal_dbm, i.check_memory_free),
            (Some(20), Some(-110), true)
        );
        let e = err(&format!("{GOOD}image = {{ sign = 1 }}\n"));
        assert!(
            e.contains("child[1].image.sign: unknown field `sign`"),
            "{e}"
        );
        let e = err(&format!("{GOOD}image = {{ keys = [\"/k.pem\"] }}\n"));
        assert!(
            e.contains("child[1].image") && e.contains("check = \"mcuboot\""),
            "{e}"
        );
        let e = err(&format!("{GOOD}image = {{ check = \"x509\" }}\n"));
        assert!(e.contains("child[1].image"), "{e}");
    }

    /// Issue 15 item 2: `[ota]` health defaults, per-child overrides, and
    /// errors naming the key.
    #[test]
    fn health_keys_default_override_and_name_their_errors() {
        let smp = |ota: &str, child: &str| {
            let text = GOOD.replace(
                "protocol = \"framed:acme-rs485\"",
                &format!("protocol = \"smp\"\n{child}"),
            );
            text.replace("[state]", &format!("[ota]\n{ota}\n\n[state]"))
        };
        let health = |c: &Config| match &c.children[1].transport {
            Transport::Serial { options, .. } => options.health.clone().map(|h| *h),
            _ => panic!("not serial"),
        };
        assert_eq!(
            health(&parse(&smp("", "")).unwrap()),
            None,
            "off by default"
        );
        let c = parse(&smp(
            "health_check_secs = 300\nhealth_command = \"echo\"",
            "",
        ))
        .unwrap();
        let h = health(&c).unwrap();
        assert_eq!(
            (h.period, h.interval, h.probe_timeout),
            (
                Duration::from_secs(300),
                Duration::from_secs(10),
                Duration::from_secs(10)
            )
        );
        assert_eq!(h.command.unwrap().name(), "echo");
        let c = parse(&smp(
            "health_check_secs = 300",
            "health_check_secs = 20\nhealth_probe_interval_secs = 2\n\
             health_command = { group = 64, command = 1 }",
        ))
        .unwrap();
        let h = health(&c).unwrap();
        assert_eq!(
            (h.period, h.interval),
            (Duration::from_secs(20), Duration::from_secs(2))
        );
        assert_eq!(h.command.unwrap().name(), "group 64 command 1");
        let c = parse(&smp("health_check_secs = 300", "health_check_secs = 0")).unwrap();
        assert_eq!(health(&c), None, "a child may turn it off");
        for (text, key) in [
            (
                smp("health_probe_interval_secs = 0", ""),
                "ota.health_probe_interval_secs",
            ),
            (smp("health_command = \"ping\"", ""), "ota.health_command"),
            (
                smp("", "health_command = { group = 1 }"),
                "child[1].health_command",
            ),
            (
                smp("", "health_probe_timeout_secs = 0"),
                "child[1].health_probe_timeout_secs",
            ),
            (
                GOOD.replace(
                    "address = \"192.168.10.21:5683\"",
                    "address = \"192.168.10.21:5683\"\nhealth_check_secs = 5",
                ),
                "child[0].health_check_secs",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(&format!(": {key}: ")), "{key}: {e}");
        }
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
        assert!(
            e.contains(
                ": child[1].baud: invalid type: string \"fast\", expected u32 (line 19, column 8)"
            ),
            "{e}"
        );
        // The tag first: a missing or unknown transport, a protocol that is not one.
        let e = err(&GOOD.replace("transport = \"coap\"\n", ""));
        assert!(e.contains(": child[0].transport: is required"), "{e}");
        let e = err(&GOOD.replace("transport = \"coap\"", "transport = 7"));
        assert!(e.contains(": child[0].transport: expected a string"), "{e}");
        assert!(e.contains("(line 12, column 13)"), "{e}");
        let e = err(&GOOD.replace("address = \"192.168.10.21:5683\"\n", ""));
        assert!(
            e.contains(": child[0].address: is required for transport = \"coap\""),
            "{e}"
        );
        let e = err(&GOOD.replace("\"framed:acme-rs485\"", "\"framed:\""));
        assert!(
            e.contains(": child[1].protocol: 'framed:' is not smp or framed:<profile>"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "address = \"192.168.10.21:5683\"",
            "address = \"192.168.10.21:5683\"\ndelivery = \"pul\"",
        ));
        assert!(
            e.contains(": child[0].delivery: unknown variant `pul`, expected one of `pull`, `push`, `auto`"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "address = \"192.168.10.21:5683\"",
            "address = \"192.168.10.21:5683\"\naccept = \"cbor\"",
        ));
        assert!(
            e.contains(": child[0].accept: 'cbor' is not a content format (text, opaque, tlv, senml-json, senml-cbor, lwm2m-cbor)"),
            "{e}"
        );
        let c = parse(&GOOD.replace(
            "address = \"192.168.10.21:5683\"",
            "address = \"192.168.10.21:5683\"\naccept = \"senml-cbor\"",
        ))
        .unwrap();
        assert!(matches!(
            c.children[0].transport,
            Transport::Coap {
                accept: Some(otabridge_codecs::lwm2m::ContentFormat::SENML_CBOR),
                ..
            }
        ));
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
            e.contains(": child[1].timeout_ms: is not a key of protocol = \"framed:acme-rs485\""),
            "{e}"
        );
        assert!(parse(&GOOD.replace("baud = 115200", "baud = 9600\nframing = \"8E1\"")).is_ok());
    }

    /// Parsing reads no file: the secret file and the profiles are read by
    /// `resolve`, and their errors still name the key.
    #[test]
    fn parsing_reads_no_file() {
        let text = GOOD
            .replace(
                "secret = \"hunter2\"",
                "secret_file = \"/nonexistent/secret\"",
            )
            .replace("framed:acme-rs485", "framed:th40");
        let file = Path::new("/etc/otabridge.toml");
        let draft = Draft::parse(&text, file).unwrap();
        let e = draft.resolve().unwrap_err().to_string();
        assert!(
            e.contains(": platform.secret_file: cannot read /nonexistent/secret"),
            "{e}"
        );
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), "s3cret\n").unwrap();
        let text = text.replace("/nonexistent/secret", &secret.path().display().to_string());
        let e = Draft::parse(&text, file)
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains(": child[1].protocol: no profile 'th40'"), "{e}");
        assert!(e.contains("(line 20, column 12)"), "{e}");
        let c = parse(&text.replace("framed:th40", "smp")).unwrap();
        assert_eq!(c.platform.auth, Auth::Secret(Secret::new("s3cret")));
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
