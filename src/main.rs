//! The `otabridge` command line. Everything here is argument handling; the
//! work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod man;
use otabridge::config::Config;
use otabridge_codecs::iotda::{Credentials, EventTime, SignatureType};

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
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway in the foreground until SIGINT or SIGTERM.
    Run {
        /// The configuration file (see docs/config.md).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a batch upgrade against an embedded, simulated IoTDA.
    Demo {
        /// Simulated in-process children behind the gateway.
        #[arg(long, default_value_t = 4)]
        children: usize,
        /// Simulated MCUmgr/SMP children, each on a pty.
        #[arg(long, default_value_t = 2)]
        smp_children: usize,
        /// Simulated LwM2M children over CoAP, alternately pull and push.
        #[arg(long, default_value_t = 2)]
        coap_children: usize,
        /// Firmware image size in bytes.
        #[arg(long, default_value_t = 256 * 1024)]
        image_size: u64,
        /// Seed for the image and everything random in the scenario.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Do not give the second child a package that fails its sign check.
        #[arg(long)]
        no_bad_sign: bool,
        /// Keep the third child offline (it ends with result 6).
        #[arg(long)]
        offline: bool,
        /// Lossy links, in percent (0-30): CoAP datagrams lost both ways,
        /// SMP answers dropped; retransmissions carry the transfers through.
        #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
        loss: f64,
        /// Every CoAP and SMP child reboots once in the middle of its
        /// transfer; each still ends on the new version.
        #[arg(long)]
        reboots: bool,
    },
    /// Print each child's state from the journal (works while the daemon runs).
    Status {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Download a package with the gateway's own download code (resumable;
    /// checks reachability, TLS settings and speed from this box).
    Download {
        /// The configuration file ([state] dir and [download] settings).
        #[arg(long, short)]
        config: PathBuf,
        /// The package URL.
        url: String,
        /// Bearer token (IoTDA v1 URLs).
        #[arg(long)]
        token: Option<String>,
        /// Expected SHA-256 (64 hex); the download fails if the file differs.
        #[arg(long)]
        sha256: Option<String>,
        /// Expected size in bytes.
        #[arg(long)]
        size: Option<u64>,
    },
    /// Look into firmware images as the gateway checks them.
    Image {
        #[command(subcommand)]
        which: ImageCommand,
    },
    /// Run one simulator on its own.
    Sim {
        #[command(subcommand)]
        which: SimCommand,
    },
    /// Write the manual pages (otabridge.1 and one per subcommand) into a
    /// directory; the packaged copies live in packaging/man.
    #[command(hide = true)]
    Man {
        /// Where to write them.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the MQTT client id, username and password IoTDA expects.
    Credentials {
        /// The device id.
        #[arg(long)]
        device_id: String,
        /// The device secret.
        #[arg(long)]
        secret: String,
        /// UTC hour as yyyyMMddHH; default: now.
        #[arg(long)]
        timestamp: Option<String>,
        /// Signature type 1 (the platform checks the timestamp) instead of 0.
        #[arg(long)]
        verify_timestamp: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Print what an MCUboot image holds (version, sizes, TLVs, key hash)
    /// and check its hash and signature against the configured keys.
    /// Exits 1 when a check fails.
    Inspect {
        /// The image file.
        file: PathBuf,
        /// The configuration whose keys ([image] keys, each child's
        /// image.keys) check the signature.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Judge the image for this child, as a job would (its keys, its
        /// encryption and slot settings); needs --config and --target.
        #[arg(long, requires_all = ["config", "target"])]
        child: Option<String>,
        /// The upgrade's target version, for --child.
        #[arg(long, requires = "child")]
        target: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    /// An LwM2M child over CoAP/UDP (see docs/coap.md): /3/0/3 and /5, push
    /// and pull, with faults at its socket.
    CoapChild {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5683")]
        listen: std::net::SocketAddr,
        /// The running firmware version (/3/0/3).
        #[arg(long, default_value = "1.0")]
        version: String,
        /// The version any whole image carries; without it, only --image
        /// SHAs are accepted and others fail the integrity check (result 5).
        #[arg(long)]
        next_version: Option<String>,
        /// An accepted image and its version, as SHA256=VERSION (repeatable).
        #[arg(long = "image", value_name = "SHA256=VERSION")]
        images: Vec<String>,
        /// Datagrams lost, in percent (both directions).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Datagrams duplicated, in percent.
        #[arg(long, default_value_t = 0.0)]
        duplicate: f64,
        /// Datagrams reordered (held back), in percent.
        #[arg(long, default_value_t = 0.0)]
        reorder: f64,
        /// Delay added to every datagram, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Reboot once after this many image blocks, losing the transfer.
        #[arg(long)]
        reboot_after_blocks: Option<u32>,
        /// Preferred block size in bytes (16..=1024, a power of two).
        #[arg(long, default_value_t = 1024)]
        block_size: u32,
        /// How long a reboot keeps the child silent, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        reboot_ms: u64,
        /// Report this /5/0/5 result instead of State 2 when an image is whole.
        #[arg(long)]
        fail_download: Option<i64>,
        /// Report this /5/0/5 result after Execute and keep the old version.
        #[arg(long)]
        fail_update: Option<i64>,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A child speaking a framed profile on a pty; prints the pty path, runs
    /// until Ctrl-C (see docs/framed.md).
    FramedChild {
        /// A built-in profile name, or a profile file (a path with '/' or
        /// ending in .toml).
        #[arg(long)]
        profile: String,
        /// The version the child runs at start.
        #[arg(long, default_value = "1.0.0")]
        version: String,
        /// Faults, e.g. drop=0.05,crc=0.02,noise=0.1,erase-ms=1500,reboot-at=65536,pace=115200.
        #[arg(long, default_value = "")]
        faults: String,
        /// Seed for every random fault decision.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The child's flash slot in bytes; a larger image is refused.
        #[arg(long, default_value_t = 1 << 20)]
        capacity: u32,
        /// A reboot loses the update session (RAM only) instead of keeping it.
        #[arg(long)]
        lose_session: bool,
        /// After activation, boot the old image again (a failed install).
        #[arg(long)]
        install_fails: bool,
        /// Answer the NTH request of KIND with STATUS, e.g. begin:1:0x10;
        /// repeatable.
        #[arg(long = "inject", value_name = "KIND:NTH:STATUS")]
        injections: Vec<String>,
    },
    /// An MCUmgr/SMP device on a pty; prints the pty path, runs until Ctrl-C.
    SmpChild {
        /// The version the device runs at start (major.minor.revision[.build]).
        #[arg(long, default_value = "1.0.0")]
        version: String,
        /// Faults, e.g. drop=0.05,crc=0.02,noise=0.1,erase-ms=1500,reboot-at=65536,pace=115200
        /// (see docs/serial.md).
        #[arg(long, default_value = "")]
        faults: String,
        /// Seed for every random fault decision.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The device's SMP buffer (CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE).
        #[arg(long, default_value_t = 384)]
        buf_size: u64,
        /// Silence after a reset, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        reboot_ms: u64,
    },
    /// A stand-in for IoTDA on this machine, for testing a gateway build:
    /// MQTT over TLS with IoTDA's credential check, a package server, and
    /// upgrade tasks for the children named by --upgrade (see
    /// docs/integrating.md). Exit status 0 when every upgrade succeeded.
    Iotda {
        /// The gateway's device id, as in its [platform] device_id.
        #[arg(long, default_value = "gw-product_gw01")]
        device_id: String,
        /// The gateway's secret, as in its [platform] secret.
        #[arg(long, default_value = "sim-secret")]
        secret: String,
        /// Where the MQTT (TLS) access point listens.
        #[arg(long, default_value = "127.0.0.1:8883")]
        listen: std::net::SocketAddr,
        /// Where to write iotda-ca.pem, package-ca.pem and platform.toml
        /// (the gateway's [platform] and [download] sections).
        #[arg(long, default_value = "otabridge-sim")]
        out: PathBuf,
        /// An upgrade task for one child: CHILD=FILE@VERSION (repeatable).
        /// CHILD may be the gateway's own device id: its own firmware
        /// upgrade. Without any, reports are printed until Ctrl-C.
        #[arg(long = "upgrade", value_name = "CHILD=FILE@VERSION")]
        upgrades: Vec<otabridge::sim::iotda::PlannedUpgrade>,
        /// A software_upgrade task, ID=FILE@VERSION (repeatable): for the
        /// gateway's own id, its own software (otabridge's package).
        #[arg(long = "software-upgrade", value_name = "ID=FILE@VERSION")]
        software_upgrades: Vec<otabridge::sim::iotda::PlannedUpgrade>,
        /// Longest wait for the gateway and the upgrades, in seconds.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
    },
    /// An IoTDA-like HTTPS package server (v1 URL shape, Bearer token,
    /// Range/ETag, faults) serving one package until Ctrl-C.
    PackageServer {
        /// Serve this file (default: 16 MiB of generated bytes).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Serve this many generated bytes instead of a file.
        #[arg(long, conflicts_with = "file")]
        generate: Option<u64>,
        /// The package id in the URL.
        #[arg(long, default_value = "pkg1")]
        id: String,
        /// A name (DNS or IP) in the server certificate; repeatable.
        #[arg(long = "name", default_value = "127.0.0.1")]
        names: Vec<String>,
        /// Where to write the CA certificate to trust (download.ca_file).
        #[arg(long, default_value = "package-server-ca.pem")]
        ca_out: PathBuf,
        /// Plain http:// instead of https://.
        #[arg(long)]
        plain: bool,
        /// No token needed (a pre-signed v2 URL).
        #[arg(long)]
        open: bool,
        /// Validity of the printed token, in seconds.
        #[arg(long, default_value_t = 86400)]
        token_ttl: u64,
        /// Send at most this many bytes per second.
        #[arg(long)]
        throttle: Option<u64>,
        /// Cut the connection at these package offsets (comma-separated),
        /// each once.
        #[arg(long, value_delimiter = ',')]
        cut_at: Vec<u64>,
        /// Answer range requests with the whole package.
        #[arg(long)]
        ignore_range: bool,
    },
}

fn init_logs(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: not in journald, files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a pty simulator for an integrator: prints the pty path on stdout,
/// waits for Ctrl-C, then prints what the simulator saw on stderr.
async fn until_ctrl_c<S, E: std::fmt::Display>(
    spawn: impl FnOnce() -> Result<S, E>,
    path: impl Fn(&S) -> &std::path::Path,
    summary: impl Fn(&S) -> String,
) -> ExitCode {
    // Spawned here, inside the runtime: the simulator starts tasks.
    let sim = match spawn() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("otabridge: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{}", path(&sim).display());
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("{}", summary(&sim));
    ExitCode::SUCCESS
}

/// The tokio runtime, or exit status 1 with the reason on stderr.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("otabridge: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

fn load(config: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(config).map_err(|e| {
        eprintln!("otabridge: {e}");
        ExitCode::from(2)
    })
}

/// Replaces this process with `exe` and the same arguments (same pid, so a
/// service manager sees no exit): the gateway's own software upgrade
/// installed a new otabridge. Returns only when that fails (exit 1: a
/// service manager restarts on failure).
fn restart_in_place(exe: std::io::Result<std::path::PathBuf>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe = match exe {
        Ok(p) => p,
        Err(e) => {
            eprintln!("otabridge: cannot restart: the running binary's path is unknown: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(exe = %exe.display(), "restarting on the installed otabridge");
    let e = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("otabridge: cannot restart {}: {e}", exe.display());
    ExitCode::from(1)
}

/// `otabridge image inspect`.
fn cmd_image(which: ImageCommand) -> ExitCode {
    let ImageCommand::Inspect {
        file,
        config,
        child,
        target,
        json,
    } = which;
    let gate = match &config {
        Some(path) => {
            let cfg = match load(path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match otabridge::image::Gate::from_config(&cfg) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("otabridge: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => otabridge::image::Gate::default(),
    };
    if let Some(id) = &child {
        if !gate.checks(id) {
            eprintln!("otabridge: child {id} is not configured with image.check = \"mcuboot\"");
            return ExitCode::from(2);
        }
    }
    let named = child.as_deref().zip(target.as_deref());
    let against = otabridge::image::inspect::Against::from_gate(&gate, named);
    match otabridge::image::inspect::inspect(&file, &gate, &against) {
        Ok(i) => {
            if json {
                println!("{}", i.json(&file));
            } else {
                print!("{}", i.text(&file));
            }
            if i.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            let r = e.rejection();
            if json {
                let v = serde_json::json!({
                    "file": file.display().to_string(),
                    "ok": false,
                    "error": e.to_string(),
                    "result_code": r.code.get(),
                });
                println!("{v}");
            } else {
                eprintln!("otabridge: {}: {e}", file.display());
            }
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Image { which } => cmd_image(which),
        Command::Run { config } => {
            // Taken before anything runs: an upgrade of otabridge's own
            // package replaces the file, and the restart executes the new one.
            let exe = std::env::current_exe();
            init_logs(cli.log_format, "info,rumqttc=warn");
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(otabridge::daemon::run(cfg)) {
                Ok(otabridge::daemon::Stopped::Shutdown) => ExitCode::SUCCESS,
                Ok(otabridge::daemon::Stopped::Restart) => {
                    drop(rt);
                    restart_in_place(exe)
                }
                Err(e @ otabridge::daemon::StartError::Child(_)) => {
                    eprintln!("otabridge: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("otabridge: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo {
            children,
            smp_children,
            coap_children,
            image_size,
            seed,
            no_bad_sign,
            offline,
            loss,
            reboots,
        } => {
            init_logs(cli.log_format, "warn,rumqttd=off,rumqttc=error");
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let opts = otabridge::sim::demo::DemoOptions {
                children,
                smp_children,
                coap_children,
                image_size,
                seed,
                bad_sign: !no_bad_sign,
                offline,
                loss_pct: loss,
                reboots,
                state_dir: None,
            };
            match rt.block_on(otabridge::sim::demo::run(opts)) {
                Ok(rows) if rows.iter().all(|r| r.as_expected()) => ExitCode::SUCCESS,
                Ok(_) => {
                    eprintln!("otabridge demo: some children did not end as expected");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("otabridge demo: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Status { config, json } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match otabridge::ota::status::print(&cfg, json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("otabridge: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Download {
            config,
            url,
            token,
            sha256,
            size,
        } => {
            init_logs(cli.log_format, "warn");
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let args = otabridge::package::cli::DownloadArgs {
                url,
                token,
                sha256,
                size,
                progress_every: std::time::Duration::from_secs(1),
            };
            match rt.block_on(otabridge::package::cli::download(&cfg, args)) {
                Ok(s) => {
                    println!(
                        "ok: {} bytes, sha256 {}, {:.2} s, {:.1} MiB/s{}",
                        s.size,
                        s.sha256,
                        s.elapsed.as_secs_f64(),
                        s.throughput() / (1024.0 * 1024.0),
                        if s.resumed_from > 0 {
                            format!(" (resumed at byte {})", s.resumed_from)
                        } else {
                            String::new()
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("otabridge download: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Sim {
            which:
                SimCommand::SmpChild {
                    version,
                    faults,
                    seed,
                    buf_size,
                    reboot_ms,
                },
        } => {
            use otabridge::sim::smp_child::{parse_version, Faults, SmpChild, SmpChildOptions};
            init_logs(cli.log_format, "info");
            let Some(running) = parse_version(&version) else {
                eprintln!("otabridge: --version: '{version}' is not major.minor.revision[.build]");
                return ExitCode::from(2);
            };
            let faults = match faults.parse::<Faults>() {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("otabridge: --faults: {e}");
                    return ExitCode::from(2);
                }
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let mut opts = SmpChildOptions {
                faults,
                seed,
                ..SmpChildOptions::default()
            };
            opts.device.running = running;
            opts.device.buf_size = buf_size;
            opts.device.reboot_time = std::time::Duration::from_millis(reboot_ms);
            rt.block_on(until_ctrl_c(
                || SmpChild::spawn(opts),
                |sim| sim.path(),
                |sim| format!("{:?}", sim.stats()),
            ))
        }
        Command::Sim {
            which:
                SimCommand::PackageServer {
                    file,
                    generate,
                    id,
                    names,
                    ca_out,
                    plain,
                    open,
                    token_ttl,
                    throttle,
                    cut_at,
                    ignore_range,
                },
        } => {
            init_logs(cli.log_format, "info");
            use otabridge::sim::package_server::{run_standalone, Faults, Standalone};
            let opts = Standalone {
                file,
                generate,
                id,
                names,
                ca_out,
                plain,
                open,
                token_ttl: std::time::Duration::from_secs(token_ttl),
                faults: Faults {
                    throttle,
                    cut_at: cut_at.into_iter().collect(),
                    ignore_range,
                    ..Faults::default()
                },
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            match rt.block_on(run_standalone(opts, shutdown)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("otabridge sim package-server: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Sim {
            which:
                SimCommand::Iotda {
                    device_id,
                    secret,
                    listen,
                    out,
                    mut upgrades,
                    software_upgrades,
                    timeout_secs,
                },
        } => {
            upgrades.extend(software_upgrades.into_iter().map(|u| {
                otabridge::sim::iotda::PlannedUpgrade {
                    kind: otabridge_codecs::iotda::UpgradeKind::Software,
                    ..u
                }
            }));
            init_logs(cli.log_format, "warn,rumqttd=off,rumqttc=error");
            use otabridge::sim::iotda::{all_succeeded, run, IotdaOptions};
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let opts = IotdaOptions {
                device_id,
                secret,
                listen,
                out_dir: out,
                upgrades: upgrades.clone(),
                timeout: std::time::Duration::from_secs(timeout_secs),
            };
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            match rt.block_on(run(opts, shutdown)) {
                Ok(outcomes) if all_succeeded(&outcomes, &upgrades) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("otabridge sim iotda: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Sim {
            which:
                SimCommand::FramedChild {
                    profile,
                    version,
                    faults,
                    seed,
                    capacity,
                    lose_session,
                    install_fails,
                    injections,
                },
        } => {
            use otabridge::sim::framed_child::{
                load_profile, parse_injection, Faults, FramedChildOptions, FramedChildSim,
            };
            init_logs(cli.log_format, "info");
            let profile = match load_profile(&profile) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("otabridge: --profile: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut opts = FramedChildOptions::new(profile, &version);
            opts.faults = match faults.parse::<Faults>() {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("otabridge: --faults: {e}");
                    return ExitCode::from(2);
                }
            };
            for i in &injections {
                match parse_injection(i) {
                    Ok(inj) => opts.device.inject.push(inj),
                    Err(e) => {
                        eprintln!("otabridge: --inject: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            opts.seed = seed;
            opts.device.capacity = capacity;
            opts.device.persist_session = !lose_session;
            opts.device.install_fails = install_fails;
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            rt.block_on(until_ctrl_c(
                || FramedChildSim::spawn(opts),
                |sim| sim.path(),
                |sim| sim.summary(),
            ))
        }
        Command::Man { dir } => match man::write_pages(Cli::command(), &dir) {
            Ok(n) => {
                println!("{n} manual pages written to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("otabridge man: {}: {e}", dir.display());
                ExitCode::from(1)
            }
        },
        Command::Credentials {
            device_id,
            secret,
            timestamp,
            verify_timestamp,
        } => {
            let sig = if verify_timestamp {
                SignatureType::TimestampCheck
            } else {
                SignatureType::NoTimestampCheck
            };
            let now = match timestamp {
                None => EventTime::from_unix(otabridge::platform::now_unix()),
                Some(ts) => match EventTime::parse(&format!(
                    "{}T{}0000Z",
                    ts.get(..8).unwrap_or(""),
                    ts.get(8..).unwrap_or("")
                )) {
                    Ok(t) if ts.len() == 10 => t,
                    _ => {
                        eprintln!("otabridge: --timestamp: '{ts}' is not yyyyMMddHH (UTC)");
                        return ExitCode::from(2);
                    }
                },
            };
            let c = Credentials::with_secret(&device_id, &secret, sig, now);
            println!("client_id: {}", c.client_id);
            println!("username:  {}", c.username);
            println!("password:  {}", c.password.unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Sim {
            which: which @ SimCommand::CoapChild { .. },
        } => {
            init_logs(cli.log_format, "info");
            match sim(which) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("otabridge sim: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `otabridge sim ...`: runs until SIGINT or SIGTERM.
fn sim(which: SimCommand) -> anyhow::Result<ExitCode> {
    use otabridge::sim::coap_child::{CoapChildSim, Faults, SimOptions};
    use otabridge_codecs::lwm2m::UpdateResult;
    match which {
        SimCommand::CoapChild {
            listen,
            version,
            next_version,
            images,
            loss,
            duplicate,
            reorder,
            delay_ms,
            reboot_after_blocks,
            block_size,
            reboot_ms,
            fail_download,
            fail_update,
            seed,
        } => {
            let usage = |m: String| {
                eprintln!("otabridge sim coap-child: {m}");
                Ok(ExitCode::from(2))
            };
            let Some(szx) = otabridge_codecs::coap::block::size_to_szx(block_size) else {
                return usage(format!(
                    "--block-size {block_size}: not 16, 32, ... or 1024"
                ));
            };
            let mut opts = SimOptions::new(&version, "");
            opts.any_image_version = next_version;
            for i in &images {
                let Some((sha, v)) = i.split_once('=') else {
                    return usage(format!("--image {i}: expected SHA256=VERSION"));
                };
                opts.images.insert(sha.to_ascii_lowercase(), v.to_owned());
            }
            for (name, pct) in [
                ("--loss", loss),
                ("--duplicate", duplicate),
                ("--reorder", reorder),
            ] {
                if !(0.0..=100.0).contains(&pct) {
                    return usage(format!("{name} {pct}: not a percentage"));
                }
            }
            let result = |name: &str, v: Option<i64>| -> Result<Option<UpdateResult>, String> {
                v.map(|v| UpdateResult::from_value(v).map_err(|e| format!("{name}: {e}")))
                    .transpose()
            };
            let (fail_download, fail_update) = match (
                result("--fail-download", fail_download),
                result("--fail-update", fail_update),
            ) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(m), _) | (_, Err(m)) => return usage(m),
            };
            opts.listen = listen;
            opts.preferred_szx = szx;
            opts.reboot_time = std::time::Duration::from_millis(reboot_ms);
            opts.seed = seed;
            opts.faults = Faults {
                loss_pct: loss,
                duplicate_pct: duplicate,
                reorder_pct: reorder,
                delay: std::time::Duration::from_millis(delay_ms),
                reboot_after_blocks,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let sim = CoapChildSim::start(opts).await?;
                sim.set_download_failure(fail_download);
                sim.set_update_failure(fail_update);
                println!("coap child listening on {} running {}", sim.addr(), sim.version());
                otabridge::daemon::shutdown_signal().await;
                let st = sim.stats();
                println!(
                    "stopped: version {}, {} images, {} blocks, {} reboots, {} dropped, {} duplicated",
                    sim.version(),
                    st.images,
                    st.blocks,
                    st.reboots,
                    st.dropped,
                    st.duplicated
                );
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        // The other simulators have their own arms in `main`.
        other => anyhow::bail!("not a CoAP simulator: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cmd: &clap::Command, path: &str) {
        assert!(
            cmd.get_about().is_some(),
            "{path}: the command has no description"
        );
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if a.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            assert!(
                a.get_help()
                    .is_some_and(|h| !h.to_string().trim().is_empty()),
                "{path} --{id}: no help text"
            );
        }
        for sub in cmd.get_subcommands() {
            check(sub, &format!("{path} {}", sub.get_name()));
        }
    }

    /// `--help` (and so the manual pages) documents every option.
    #[test]
    fn every_command_and_option_has_help() {
        Cli::command().debug_assert();
        check(&Cli::command(), "otabridge");
    }
}
