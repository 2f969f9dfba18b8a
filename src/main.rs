//! The `otabridge` command line: `main` parses the arguments (`cli.rs`) and
//! hands each subcommand to one function here; the simulator subcommands
//! are in `cli_sim.rs`. The work is in the library.

use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

mod cli;
mod cli_jobs;
#[cfg(feature = "sim")]
mod cli_sim;
mod man;

use cli::{
    Cli, Command, CredentialsArgs, DownloadArgs, ImageCommand, InspectArgs, LogFormat, ManArgs,
    RunArgs, StatusArgs,
};
use otabridge::config::Config;
use otabridge_codecs::iotda::{Credentials, EventTime, SignatureType};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = cli.log_format;
    match cli.command {
        Command::Run(args) => run(logs, args),
        Command::Status(args) => status(args),
        Command::Jobs(args) => cli_jobs::jobs(args),
        Command::Download(args) => download(logs, args),
        Command::Image { which } => image(which),
        Command::Man(args) => man_pages(args),
        Command::Credentials(args) => credentials(args),
        #[cfg(feature = "sim")]
        Command::Demo(args) => cli_sim::demo(logs, args),
        #[cfg(feature = "sim")]
        Command::Sim { which } => cli_sim::sim(logs, which),
        #[cfg(not(feature = "sim"))]
        Command::Demo(_) => without_simulators("demo"),
        #[cfg(not(feature = "sim"))]
        Command::Sim { .. } => without_simulators("sim"),
    }
}

/// `otabridge demo` and `otabridge sim` in a build without the `sim`
/// feature (the Debian package): exit status 2 and why.
#[cfg(not(feature = "sim"))]
fn without_simulators(what: &str) -> ExitCode {
    eprintln!(
        "otabridge {what}: this build is without the simulators (cargo feature `sim`, off in \
         the Debian package); run `otabridge {what}` from a development build \
         (`cargo build --release`, see docs/integrating.md)"
    );
    ExitCode::from(2)
}

/// Logs to stderr, filtered by `RUST_LOG` (or `default`): comma-separated
/// `target=level` directives and a bare default level, for example
/// `info,otabridge::child=debug` (tracing-subscriber's `Targets`; the span
/// and field filters of its regex-based `EnvFilter` are left out of the
/// binary to keep it small, BENCHMARKS.md "Footprint").
pub(crate) fn init_logs(format: LogFormat, default: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .or_else(|| default.parse().ok())
        .unwrap_or_default();
    // Colours only on a terminal: not in journald, files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Human => registry.with(layer.with_filter(filter)).init(),
        LogFormat::Json => registry.with(layer.json().with_filter(filter)).init(),
    }
}

/// The tokio runtime, or exit status 1 with the reason on stderr.
///
/// One async thread (tokio's current-thread scheduler) for every command:
/// the daemon's tasks wait on sockets, serial lines and timers, and what
/// costs CPU or blocks runs on tokio's blocking pool, started on demand
/// (journal writes, the download's hashing writer, the package and image
/// checks, the framed driver's image digest; docs/design.md "Which thread
/// runs what?"). The multi-thread scheduler would add two idle workers and
/// link libm for its poll-time average (BENCHMARKS.md, "Footprint").
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("otabridge: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

pub(crate) fn load(config: &Path) -> Result<Config, ExitCode> {
    Config::load(config).map_err(|e| {
        eprintln!("otabridge: {e}");
        ExitCode::from(2)
    })
}

/// `otabridge run`: the daemon, until SIGINT or SIGTERM.
fn run(logs: LogFormat, args: RunArgs) -> ExitCode {
    // Taken before anything runs: an upgrade of otabridge's own package
    // replaces the file, and the restart executes the new one.
    let exe = std::env::current_exe();
    init_logs(logs, "info,rumqttc=warn");
    let (cfg, rt) = match (load(&args.config), runtime()) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    match rt.block_on(otabridge::daemon::run(cfg)) {
        Ok(otabridge::daemon::Stopped::Shutdown) => ExitCode::SUCCESS,
        Ok(otabridge::daemon::Stopped::Restart) => {
            drop(rt);
            restart_in_place(exe)
        }
        Err(
            e @ (otabridge::daemon::StartError::Child(_)
            | otabridge::daemon::StartError::Control(otabridge::control::ListenError::NoGroup(
                _,
            ))),
        ) => {
            eprintln!("otabridge: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("otabridge: {e}");
            ExitCode::from(1)
        }
    }
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

/// `otabridge status`: each child's state from the journal.
fn status(args: StatusArgs) -> ExitCode {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match otabridge::ota::status::print(&cfg, args.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otabridge: {e}");
            ExitCode::from(1)
        }
    }
}

/// `otabridge download`: one package with the gateway's own downloader.
fn download(logs: LogFormat, args: DownloadArgs) -> ExitCode {
    init_logs(logs, "warn");
    let (cfg, rt) = match (load(&args.config), runtime()) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let args = otabridge::package::cli::DownloadArgs {
        url: args.url,
        token: args.token,
        sha256: args.sha256,
        size: args.size,
        progress_every: std::time::Duration::from_secs(1),
        output: args.output,
    };
    match rt.block_on(otabridge::package::cli::download(&cfg, args)) {
        Ok(s) => {
            let resumed = if s.resumed_from > 0 {
                format!(" (resumed at byte {})", s.resumed_from)
            } else {
                String::new()
            };
            let kept = s
                .output
                .as_ref()
                .map(|p| format!(", kept at {}", p.display()))
                .unwrap_or_default();
            println!(
                "ok: {} bytes, sha256 {}, {:.2} s, {:.1} MiB/s{resumed}{kept}",
                s.size,
                s.sha256,
                s.elapsed.as_secs_f64(),
                s.throughput() / (1024.0 * 1024.0),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            match &e {
                otabridge::package::cli::CliError::Download { error } => {
                    let v = otabridge::ota::verdict::verdict(
                        otabridge::ota::verdict::Failure::Download(error),
                    );
                    eprintln!(
                        "otabridge download: {e} (result_code {}: {})",
                        v.code, v.description
                    );
                }
                _ => eprintln!("otabridge download: {e}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// `otabridge image inspect`: what an image holds and whether the gate
/// would pass it (in every build: it needs no simulator).
fn image(which: ImageCommand) -> ExitCode {
    let ImageCommand::Inspect(args) = which;
    if let Some(spec) = &args.profile {
        return match otabridge::config::load_profile(spec) {
            Ok(p) => inspect_profile(&args, &p, Default::default()),
            Err(e) => {
                eprintln!("otabridge: --profile: {e}");
                ExitCode::from(2)
            }
        };
    }
    let gate = match &args.config {
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
    let Some(id) = args.child.as_deref() else {
        return inspect_mcuboot(&args, &gate, None);
    };
    match (gate.checks_mcuboot(id), gate.profile_check(id)) {
        (false, None) => {
            eprintln!(
                "otabridge: child {id} is not configured with image.check = \"mcuboot\" nor a \
                 framed profile with [image_check]"
            );
            ExitCode::from(2)
        }
        (true, None) => inspect_mcuboot(&args, &gate, None),
        (false, Some((profile, policy))) => inspect_profile(&args, profile, policy),
        (true, Some((profile, policy))) => {
            // Both, as a job runs them: the MCUboot checks, then the profile's.
            match otabridge::image::inspect::inspect_profile(
                &args.file,
                profile,
                args.target.as_deref(),
                policy,
            ) {
                Ok(p) => inspect_mcuboot(&args, &gate, Some(p)),
                Err(e) => {
                    eprintln!("otabridge: {}: {e}", args.file.display());
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `otabridge image inspect --profile` (or `--child` of a framed child):
/// the profile's `[image_check]` over the file.
fn inspect_profile(
    args: &InspectArgs,
    profile: &otabridge_codecs::framed::profile::Profile,
    policy: otabridge_codecs::version::Policy,
) -> ExitCode {
    let file = &args.file;
    match otabridge::image::inspect::inspect_profile(file, profile, args.target.as_deref(), policy)
    {
        Ok(i) => {
            if args.json {
                println!("{}", i.json(file));
            } else {
                print!("{}", i.text(file));
            }
            if i.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e @ otabridge::image::inspect::ProfileInspectError::NoCheck(_)) => {
            eprintln!("otabridge: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("otabridge: {}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}

/// `otabridge image inspect` of an MCUboot image, with a framed profile's
/// check of the same file when the child has both.
fn inspect_mcuboot(
    args: &InspectArgs,
    gate: &otabridge::image::Gate,
    profile: Option<otabridge::image::inspect::ProfileInspection>,
) -> ExitCode {
    let file = &args.file;
    let named = args.child.as_deref().zip(args.target.as_deref());
    let against = otabridge::image::inspect::Against::from_gate(gate, named);
    match otabridge::image::inspect::inspect(file, gate, &against) {
        Ok(i) => {
            let ok = i.ok && profile.as_ref().is_none_or(|p| p.ok());
            if args.json {
                let mut v = i.json(file);
                if let Some(p) = &profile {
                    v["image_check"] = p.json(file);
                    v["ok"] = ok.into();
                }
                println!("{v}");
            } else {
                print!("{}", i.text(file));
                if let Some(p) = &profile {
                    print!("{}", p.text(file));
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            let r = e.rejection();
            if args.json {
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

/// `otabridge man`: the manual pages, from this command line.
fn man_pages(args: ManArgs) -> ExitCode {
    match man::write_pages(Cli::command(), &args.dir) {
        Ok(n) => {
            println!("{n} manual pages written to {}", args.dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("otabridge man: {}: {e}", args.dir.display());
            ExitCode::from(1)
        }
    }
}

/// `otabridge credentials`: what IoTDA expects in MQTT CONNECT.
fn credentials(args: CredentialsArgs) -> ExitCode {
    let sig = if args.verify_timestamp {
        SignatureType::TimestampCheck
    } else {
        SignatureType::NoTimestampCheck
    };
    let now = match &args.timestamp {
        None => EventTime::from_unix(otabridge::clock::now_unix()),
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
    let c = Credentials::with_secret(&args.device_id, &args.secret, sig, now);
    println!("client_id: {}", c.client_id);
    println!("username:  {}", c.username);
    println!("password:  {}", c.password.unwrap_or_default());
    ExitCode::SUCCESS
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
