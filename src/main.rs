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
    /// Run one simulator on its own.
    Sim {
        #[command(subcommand)]
        which: SimCommand,
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
enum SimCommand {
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
                Err(e) => {
                    eprintln!("otabridge: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(async move {
                let sim = match FramedChildSim::spawn(opts) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("otabridge: {e}");
                        return ExitCode::from(1);
                    }
                };
                println!("{}", sim.path().display());
                let _ = tokio::signal::ctrl_c().await;
                eprintln!("{}", sim.summary());
                ExitCode::SUCCESS
            })
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
    }
}
