//! The `otabridge` command line. Everything here is argument handling; the
//! work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use otabridge::config::Config;
use otabridge_codecs::iotda::{Credentials, EventTime, SignatureType};

/// Upgrades the firmware of child devices behind a Huawei Cloud IoTDA gateway.
#[derive(Debug, Parser)]
#[command(name = "otabridge", version, about, long_about = None)]
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
    /// Run a complete scenario against an embedded simulated platform.
    Demo {
        /// Simulated children behind the gateway.
        #[arg(long, default_value_t = 4)]
        children: usize,
        /// Seed for everything random in the scenario.
        #[arg(long, default_value_t = 1)]
        seed: u64,
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
    /// Run one simulator on its own, for integrators' bench setups.
    Sim {
        #[command(subcommand)]
        which: SimCommand,
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
}

fn init_logs(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn load(config: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(config).map_err(|e| {
        eprintln!("otabridge: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logs(cli.log_format, "info,rumqttc=warn");
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("otabridge: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(otabridge::daemon::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
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
        Command::Demo { children, seed } => {
            init_logs(cli.log_format, "warn,rumqttd=off,rumqttc=error");
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("otabridge: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let opts = otabridge::sim::demo::DemoOptions {
                children,
                seed,
                state_dir: None,
            };
            match rt.block_on(otabridge::sim::demo::run(opts)) {
                Ok(rows) if rows.iter().all(|r| r.version.is_some()) => ExitCode::SUCCESS,
                Ok(_) => {
                    eprintln!("otabridge demo: some children did not report");
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
        Command::Sim { which } => {
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
            let rt = runtime()?;
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
    }
}
