//! The command line's definition: subcommands and their options. `main`
//! dispatches each subcommand to one function; `--help` and the manual pages
//! (`man.rs`) are generated from these types. The simulator subcommands are
//! named in every build, so that a build without the `sim` feature can
//! answer them with an error that says why; their options are defined only
//! with the simulators.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Upgrades the firmware of child devices behind a Huawei Cloud IoTDA gateway.
#[derive(Debug, Parser)]
#[command(
    name = "otabridge",
    version,
    about,
    long_about = "Upgrades the firmware of child devices behind a Huawei Cloud IoTDA gateway.\n\n\
        otabridge connects to IoTDA over MQTT as the gateway, turns the platform's OTA upgrade \
        events into LwM2M Firmware Update transfers over CoAP, MCUmgr/SMP over a serial line, or \
        a manufacturer's framed serial protocol, downloads each package over HTTPS with resume, \
        delivers it to each child from the offset the child acknowledged, and reports per-child \
        progress and results. Every step is journaled in SQLite: after a power cut it picks up \
        where it was, and success is reported only after the child's new version was read back.\n\n\
        Start with `otabridge demo` (everything simulated, in-process), then write \
        /etc/otabridge/otabridge.toml and run `otabridge run --config ...` (or the systemd unit)."
)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Human)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway in the foreground until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Run a batch upgrade against an embedded, simulated IoTDA (a build
    /// with the `sim` feature, the default; the Debian package has none).
    #[cfg(feature = "sim")]
    Demo(DemoArgs),
    /// Run a batch upgrade against an embedded, simulated IoTDA (a build
    /// with the `sim` feature, the default; the Debian package has none).
    #[cfg(not(feature = "sim"))]
    Demo(Unavailable),
    /// Print each child's state from the journal (works while the daemon runs).
    Status(StatusArgs),
    /// List, show, pause, resume, cancel or retry upgrade jobs through the
    /// running daemon's control API (its Unix socket; see
    /// docs/operations.md).
    Jobs(JobsArgs),
    /// Download a package with the gateway's own download code (resumable;
    /// checks reachability, TLS settings and speed from this box).
    Download(DownloadArgs),
    /// Look into firmware images as the gateway checks them.
    Image {
        #[command(subcommand)]
        which: ImageCommand,
    },
    /// Run one simulator on its own (a build with the `sim` feature, the
    /// default; the Debian package has none).
    #[cfg(feature = "sim")]
    Sim {
        #[command(subcommand)]
        which: SimCommand,
    },
    /// Run one simulator on its own (a build with the `sim` feature, the
    /// default; the Debian package has none).
    #[cfg(not(feature = "sim"))]
    Sim(Unavailable),
    /// Write the manual pages (otabridge.1 and one per subcommand) into a
    /// directory; the packaged copies live in packaging/man.
    #[command(hide = true)]
    Man(ManArgs),
    /// Print the MQTT client id, username and password IoTDA expects.
    Credentials(CredentialsArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Print what an MCUboot image holds (version, sizes, TLVs, key hash)
    /// and check its hash and signature against the configured keys; or
    /// run a framed profile's [image_check] over a file (--profile, or
    /// --child naming a framed child). Exits 1 when a check fails.
    Inspect(InspectArgs),
}

/// The arguments of `demo` and `sim` in a build without the simulators,
/// taken as they come and answered with an error that says why (`main`).
/// Their full definitions are left out with the simulators: clap builds
/// every subcommand's definition at each start, and those were the largest
/// (BENCHMARKS.md, "Footprint").
#[cfg(not(feature = "sim"))]
#[derive(Debug, Args)]
pub(crate) struct Unavailable {
    /// Anything: this build has no simulators.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    _args: Vec<std::ffi::OsString>,
}

#[cfg(feature = "sim")]
#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// An LwM2M child over CoAP/UDP (see docs/coap.md): /3/0/3 and /5, push
    /// and pull, with faults at its socket.
    CoapChild(Box<CoapChildArgs>),
    /// A child speaking a framed profile on a pty; prints the pty path, runs
    /// until Ctrl-C (see docs/framed.md).
    FramedChild(FramedChildArgs),
    /// An MCUmgr/SMP device on a pty; prints the pty path, runs until Ctrl-C.
    SmpChild(SmpChildArgs),
    /// A stand-in for IoTDA on this machine, for testing a gateway build:
    /// MQTT over TLS with IoTDA's credential check, a package server, and
    /// upgrade tasks for the children named by --upgrade (see
    /// docs/integrating.md). Exit status 0 when every upgrade succeeded.
    Iotda(IotdaArgs),
    /// An IoTDA-like HTTPS package server (v1 URL shape, Bearer token,
    /// Range/ETag, faults) serving one package until Ctrl-C.
    PackageServer(PackageServerArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The configuration file (see docs/config.md).
    #[arg(long, short)]
    pub(crate) config: PathBuf,
}

#[cfg(feature = "sim")]
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Simulated in-process children behind the gateway.
    #[arg(long, default_value_t = 4)]
    pub(crate) children: usize,
    /// Simulated MCUmgr/SMP children, each on a pty.
    #[arg(long, default_value_t = 2)]
    pub(crate) smp_children: usize,
    /// Simulated LwM2M children over CoAP, alternately pull and push; with
    /// at least one, also one that registers with the gateway (queue mode).
    #[arg(long, default_value_t = 2)]
    pub(crate) coap_children: usize,
    /// Firmware image size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    pub(crate) image_size: u64,
    /// Seed for the image and everything random in the scenario.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Do not give the second child a package that fails its sign check.
    #[arg(long)]
    pub(crate) no_bad_sign: bool,
    /// Keep the third child offline (it ends with result 6).
    #[arg(long)]
    pub(crate) offline: bool,
    /// Lossy links, in percent (0-30): CoAP datagrams lost both ways,
    /// SMP answers dropped; retransmissions carry the transfers through.
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    pub(crate) loss: f64,
    /// Every CoAP and SMP child reboots once in the middle of its
    /// transfer; each still ends on the new version.
    #[arg(long)]
    pub(crate) reboots: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The configuration file.
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JobsArgs {
    /// The daemon's configuration file (it names the control socket).
    #[arg(long, short, global = true)]
    pub(crate) config: Option<PathBuf>,
    /// The control socket itself, instead of --config.
    #[arg(long, global = true, conflicts_with = "config")]
    pub(crate) socket: Option<PathBuf>,
    /// Print the control API's JSON answer.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) what: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// Every job not ended yet and each child's latest job.
    List,
    /// One job in full.
    Show(JobTarget),
    /// End a job at its next safe point (never once its activation was
    /// sent), with a failure report; the child keeps the version it runs.
    Cancel(JobTarget),
    /// Stop a job at its next safe point, keeping its delivery offset.
    Pause(JobTarget),
    /// Continue a paused job from its offset.
    Resume(JobTarget),
    /// Start a failed job again (before its deadline).
    Retry(JobTarget),
    /// Let the children of a task held by the failure policy
    /// ([ota] halt_failures) go on.
    Release(TaskTarget),
}

#[derive(Debug, Args)]
pub(crate) struct TaskTarget {
    /// The platform's task id (`task_id` in `otabridge jobs list`).
    pub(crate) task: String,
}

#[derive(Debug, Args)]
pub(crate) struct JobTarget {
    /// A job id (a number), or a child's device id for its latest job.
    pub(crate) target: String,
}

#[derive(Debug, Args)]
pub(crate) struct DownloadArgs {
    /// The configuration file ([state] dir and [download] settings).
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    /// The package URL.
    pub(crate) url: String,
    /// Bearer token (IoTDA v1 URLs).
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// Expected SHA-256 (64 hex); the download fails if the file differs.
    #[arg(long)]
    pub(crate) sha256: Option<String>,
    /// Expected size in bytes.
    #[arg(long)]
    pub(crate) size: Option<u64>,
    /// Keep the verified package at this path, like `curl -o` (moved out of
    /// the state directory). Without it the package is removed once
    /// verified: the command checks, it does not stock packages.
    #[arg(long, short)]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("judged").args(["child", "profile"])))]
pub(crate) struct InspectArgs {
    /// The image file.
    pub(crate) file: PathBuf,
    /// The configuration whose keys ([image] keys, each child's
    /// image.keys) check the signature.
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// Judge the image for this child, as a job would (its keys, its
    /// encryption and slot settings); needs --config and --target.
    #[arg(long, requires_all = ["config", "target"])]
    pub(crate) child: Option<String>,
    /// Run this framed profile's [image_check] (magic, version field, CRC)
    /// over the file instead of reading it as an MCUboot image: a profile
    /// file (a path with a `/` or ending in .toml) or a built-in profile's
    /// name. With --target the version field is compared with it.
    #[arg(long, conflicts_with_all = ["config", "child"])]
    pub(crate) profile: Option<String>,
    /// The upgrade's target version, for --child or --profile.
    #[arg(long, requires = "judged")]
    pub(crate) target: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Where to write them.
    #[arg(long)]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CredentialsArgs {
    /// The device id.
    #[arg(long)]
    pub(crate) device_id: String,
    /// The device secret.
    #[arg(long)]
    pub(crate) secret: String,
    /// UTC hour as yyyyMMddHH; default: now.
    #[arg(long)]
    pub(crate) timestamp: Option<String>,
    /// Signature type 1 (the platform checks the timestamp) instead of 0.
    #[arg(long)]
    pub(crate) verify_timestamp: bool,
}

#[cfg(feature = "sim")]
#[derive(Debug, Args)]
pub(crate) struct CoapChildArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5683")]
    pub(crate) listen: std::net::SocketAddr,
    /// The running firmware version (/3/0/3).
    #[arg(long, default_value = "1.0")]
    pub(crate) version: String,
    /// The version any whole image carries; without it, only --image
    /// SHAs are accepted and others fail the integrity check (result 5).
    #[arg(long)]
    pub(crate) next_version: Option<String>,
    /// An accepted image and its version, as SHA256=VERSION (repeatable).
    #[arg(long = "image", value_name = "SHA256=VERSION")]
    pub(crate) images: Vec<String>,
    /// Datagrams lost, in percent (both directions).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) loss: f64,
    /// Datagrams duplicated, in percent.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) duplicate: f64,
    /// Datagrams reordered (held back), in percent.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) reorder: f64,
    /// Delay added to every datagram, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub(crate) delay_ms: u64,
    /// Reboot once after this many image blocks, losing the transfer.
    #[arg(long)]
    pub(crate) reboot_after_blocks: Option<u32>,
    /// Preferred block size in bytes (16..=1024, a power of two).
    #[arg(long, default_value_t = 1024)]
    pub(crate) block_size: u32,
    /// How long a reboot keeps the child silent, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub(crate) reboot_ms: u64,
    /// Report this /5/0/5 result instead of State 2 when an image is whole.
    #[arg(long)]
    pub(crate) fail_download: Option<i64>,
    /// Report this /5/0/5 result after Execute and keep the old version.
    #[arg(long)]
    pub(crate) fail_update: Option<i64>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Register with this LwM2M server (the gateway's coap.listen) instead
    /// of waiting to be polled; Updates every half lifetime.
    #[arg(long, value_name = "ADDR")]
    pub(crate) register: Option<std::net::SocketAddr>,
    /// With --register: the endpoint client name (ep).
    #[arg(long, default_value = "otabridge-sim")]
    pub(crate) endpoint: String,
    /// With --register: the lifetime (lt), seconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) lifetime: u32,
    /// With --register: the LwM2M version it speaks (1.0 or 1.1).
    #[arg(long, default_value = "1.1")]
    pub(crate) lwm2m: String,
    /// With --register: queue mode (b=UQ in 1.0, Q in 1.1).
    #[arg(long)]
    pub(crate) queue: bool,
    /// With --queue: how long it listens after it sent something, ms.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) awake_ms: u64,
    /// The content formats it answers reads in, comma-separated, the
    /// first for reads without Accept (text, opaque, tlv, senml-json,
    /// senml-cbor, lwm2m-cbor); default all, text first.
    #[arg(long, value_delimiter = ',')]
    pub(crate) formats: Vec<String>,
    /// Its /5/0/9 Delivery Method: 0 pull only (refuses pushes), 1 push
    /// only (refuses Package URIs), 2 both.
    #[arg(long, default_value_t = 2)]
    pub(crate) delivery_method: i64,
    /// Observe (RFC 7641) on /5/0/3 and /5/0/5: con (notifications are
    /// confirmable), non, or refuse (answers without Observe, so the
    /// gateway polls).
    #[arg(long, default_value = "con")]
    pub(crate) observe: String,
}

#[cfg(feature = "sim")]
#[derive(Debug, Args)]
pub(crate) struct FramedChildArgs {
    /// A built-in profile name, or a profile file (a path with '/' or
    /// ending in .toml).
    #[arg(long)]
    pub(crate) profile: String,
    /// The version the child runs at start.
    #[arg(long, default_value = "1.0.0")]
    pub(crate) version: String,
    /// Faults, e.g. drop=0.05,crc=0.02,noise=0.1,erase-ms=1500,reboot-at=65536,pace=115200.
    #[arg(long, default_value = "")]
    pub(crate) faults: String,
    /// Seed for every random fault decision.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// The child's flash slot in bytes; a larger image is refused.
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) capacity: u32,
    /// A reboot loses the update session (RAM only) instead of keeping it.
    #[arg(long)]
    pub(crate) lose_session: bool,
    /// After activation, boot the old image again (a failed install).
    #[arg(long)]
    pub(crate) install_fails: bool,
    /// Answer the NTH request of KIND with STATUS, e.g. begin:1:0x10;
    /// repeatable.
    #[arg(long = "inject", value_name = "KIND:NTH:STATUS")]
    pub(crate) injections: Vec<String>,
}

#[cfg(feature = "sim")]
#[derive(Debug, Args)]
pub(crate) struct SmpChildArgs {
    /// The version the device runs at start (major.minor.revision[.build]).
    #[arg(long, default_value = "1.0.0")]
    pub(crate) version: String,
    /// Faults, e.g. drop=0.05,crc=0.02,noise=0.1,erase-ms=1500,reboot-at=65536,pace=115200
    /// (see docs/serial.md).
    #[arg(long, default_value = "")]
    pub(crate) faults: String,
    /// Seed for every random fault decision.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// The device's SMP buffer (CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE).
    #[arg(long, default_value_t = 384)]
    pub(crate) buf_size: u64,
    /// Silence after a reset, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub(crate) reboot_ms: u64,
    /// The size of each image slot in bytes; a larger upload is refused
    /// (MGMT_ERR_EINVAL, IMG_MGMT_ERR_INVALID_IMAGE_TOO_LARGE).
    #[arg(long, default_value_t = 256 * 1024)]
    pub(crate) slot_size: u64,
    /// Answer "slot info" (group 1, command 6;
    /// CONFIG_MCUMGR_GRP_IMG_SLOT_INFO) with the slot size, so that the
    /// gateway's pre-flight refuses an image that does not fit before
    /// sending it. Without it the device answers ENOTSUP, as Zephyr does
    /// by default.
    #[arg(long)]
    pub(crate) slot_info: bool,
    /// `max_image_size` in the slot info answer: the most an upload may
    /// carry when less than the slot (needs --slot-info).
    #[arg(long, requires = "slot_info")]
    pub(crate) max_image_size: Option<u64>,
    /// Without CONFIG_IMG_ENABLE_IMAGE_CHECK: the last upload answer has no
    /// `match`, and an upload of the image the slot already holds starts
    /// over instead of jumping to the end.
    #[arg(long)]
    pub(crate) no_image_check: bool,
}

#[cfg(feature = "sim")]
#[derive(Debug, Args)]
pub(crate) struct IotdaArgs {
    /// The gateway's device id, as in its [platform] device_id.
    #[arg(long, default_value = "gw-product_gw01")]
    pub(crate) device_id: String,
    /// The gateway's secret, as in its [platform] secret.
    #[arg(long, default_value = "sim-secret")]
    pub(crate) secret: String,
    /// Where the MQTT (TLS) access point listens.
    #[arg(long, default_value = "127.0.0.1:8883")]
    pub(crate) listen: std::net::SocketAddr,
    /// Where to write iotda-ca.pem, package-ca.pem and platform.toml
    /// (the gateway's [platform] and [download] sections).
    #[arg(long, default_value = "otabridge-sim")]
    pub(crate) out: PathBuf,
    /// An upgrade task for one child: CHILD=FILE@VERSION (repeatable).
    /// CHILD may be the gateway's own device id: its own firmware
    /// upgrade. Without any, reports are printed until Ctrl-C.
    #[arg(long = "upgrade", value_name = "CHILD=FILE@VERSION")]
    pub(crate) upgrades: Vec<String>,
    /// A software_upgrade task, ID=FILE@VERSION (repeatable): for the
    /// gateway's own id, its own software (otabridge's package).
    #[arg(long = "software-upgrade", value_name = "ID=FILE@VERSION")]
    pub(crate) software_upgrades: Vec<String>,
    /// Longest wait for the gateway and the upgrades, in seconds.
    #[arg(long, default_value_t = 1800)]
    pub(crate) timeout_secs: u64,
}

#[cfg(feature = "sim")]
#[derive(Debug, Args)]
pub(crate) struct PackageServerArgs {
    /// Serve this file (default: 16 MiB of generated bytes).
    #[arg(long)]
    pub(crate) file: Option<PathBuf>,
    /// Serve this many generated bytes instead of a file.
    #[arg(long, conflicts_with = "file")]
    pub(crate) generate: Option<u64>,
    /// The package id in the URL.
    #[arg(long, default_value = "pkg1")]
    pub(crate) id: String,
    /// A name (DNS or IP) in the server certificate; repeatable.
    #[arg(long = "name", default_value = "127.0.0.1")]
    pub(crate) names: Vec<String>,
    /// Where to write the CA certificate to trust (download.ca_file).
    #[arg(long, default_value = "package-server-ca.pem")]
    pub(crate) ca_out: PathBuf,
    /// Plain http:// instead of https://.
    #[arg(long)]
    pub(crate) plain: bool,
    /// No token needed (a pre-signed v2 URL).
    #[arg(long)]
    pub(crate) open: bool,
    /// Validity of the printed token, in seconds.
    #[arg(long, default_value_t = 86400)]
    pub(crate) token_ttl: u64,
    /// Send at most this many bytes per second.
    #[arg(long)]
    pub(crate) throttle: Option<u64>,
    /// Cut the connection at these package offsets (comma-separated),
    /// each once.
    #[arg(long, value_delimiter = ',')]
    pub(crate) cut_at: Vec<u64>,
    /// Answer range requests with the whole package.
    #[arg(long)]
    pub(crate) ignore_range: bool,
}
