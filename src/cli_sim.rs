//! `otabridge demo` and `otabridge sim ...`: the simulators, one function
//! per subcommand. Built with the `sim` feature only; `main` answers these
//! subcommands with an error in a build without it.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{
    CoapChildArgs, DemoArgs, FramedChildArgs, IotdaArgs, LogFormat, PackageServerArgs, SimCommand,
    SmpChildArgs,
};
use crate::{init_logs, runtime};

/// `otabridge demo`: the whole story in one process.
pub(crate) fn demo(logs: LogFormat, a: DemoArgs) -> ExitCode {
    init_logs(logs, "warn,rumqttd=off,rumqttc=error");
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let opts = otabridge::sim::demo::DemoOptions {
        children: a.children,
        smp_children: a.smp_children,
        coap_children: a.coap_children,
        image_size: a.image_size,
        seed: a.seed,
        bad_sign: !a.no_bad_sign,
        offline: a.offline,
        loss_pct: a.loss,
        reboots: a.reboots,
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

/// `otabridge sim ...`: one simulator until Ctrl-C (or, for `iotda` with
/// upgrades, until they ended).
pub(crate) fn sim(logs: LogFormat, which: SimCommand) -> ExitCode {
    match which {
        SimCommand::CoapChild(a) => {
            init_logs(logs, "info");
            coap_child(*a)
        }
        SimCommand::FramedChild(a) => {
            init_logs(logs, "info");
            framed_child(a)
        }
        SimCommand::SmpChild(a) => {
            init_logs(logs, "info");
            smp_child(a)
        }
        SimCommand::Iotda(a) => {
            init_logs(logs, "warn,rumqttd=off,rumqttc=error");
            iotda(a)
        }
        SimCommand::PackageServer(a) => {
            init_logs(logs, "info");
            package_server(a)
        }
    }
}

/// A usage error of `otabridge sim NAME`: exit status 2.
fn usage(name: &str, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("otabridge sim {name}: {message}");
    ExitCode::from(2)
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
    // The handler is installed before the path is printed: whoever reads
    // the path and sends SIGINT at once gets the summary, not a kill.
    let mut sigint = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("otabridge: cannot handle SIGINT: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{}", path(&sim).display());
    let _ = sigint.recv().await;
    eprintln!("{}", summary(&sim));
    ExitCode::SUCCESS
}

fn smp_child(a: SmpChildArgs) -> ExitCode {
    use otabridge::sim::smp_child::{parse_version, Faults, SmpChild, SmpChildOptions};
    let Some(running) = parse_version(&a.version) else {
        let v = &a.version;
        return usage(
            "smp-child",
            format!("--version: '{v}' is not major.minor.revision[.build]"),
        );
    };
    let faults = match a.faults.parse::<Faults>() {
        Ok(f) => f,
        Err(e) => return usage("smp-child", format!("--faults: {e}")),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut opts = SmpChildOptions {
        faults,
        seed: a.seed,
        ..SmpChildOptions::default()
    };
    opts.device.running = running;
    opts.device.buf_size = a.buf_size;
    opts.device.reboot_time = Duration::from_millis(a.reboot_ms);
    opts.device.slot_size = a.slot_size;
    opts.device.slot_info = a.slot_info;
    opts.device.max_image_size = a.max_image_size;
    opts.device.image_check = !a.no_image_check;
    rt.block_on(until_ctrl_c(
        || SmpChild::spawn(opts),
        |sim| sim.path(),
        |sim| format!("{:?}", sim.stats()),
    ))
}

fn framed_child(a: FramedChildArgs) -> ExitCode {
    use otabridge::sim::framed_child::{
        load_profile, parse_injection, Faults, FramedChildOptions, FramedChildSim,
    };
    let profile = match load_profile(&a.profile) {
        Ok(p) => p,
        Err(e) => return usage("framed-child", format!("--profile: {e}")),
    };
    let mut opts = FramedChildOptions::new(profile, &a.version);
    opts.faults = match a.faults.parse::<Faults>() {
        Ok(f) => f,
        Err(e) => return usage("framed-child", format!("--faults: {e}")),
    };
    for i in &a.injections {
        match parse_injection(i) {
            Ok(inj) => opts.device.inject.push(inj),
            Err(e) => return usage("framed-child", format!("--inject: {e}")),
        }
    }
    opts.seed = a.seed;
    opts.device.capacity = a.capacity;
    opts.device.persist_session = !a.lose_session;
    opts.device.install_fails = a.install_fails;
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

fn iotda(a: IotdaArgs) -> ExitCode {
    use otabridge::sim::iotda::{all_succeeded, run, IotdaOptions, PlannedUpgrade};
    use otabridge_codecs::iotda::UpgradeKind;
    let planned = a
        .upgrades
        .iter()
        .map(|u| ("--upgrade", UpgradeKind::Firmware, u))
        .chain(
            a.software_upgrades
                .iter()
                .map(|u| ("--software-upgrade", UpgradeKind::Software, u)),
        );
    let mut upgrades = Vec::new();
    for (flag, kind, u) in planned {
        match u.parse::<PlannedUpgrade>() {
            Ok(p) => upgrades.push(PlannedUpgrade { kind, ..p }),
            Err(e) => return usage("iotda", format!("{flag}: {e}")),
        }
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let opts = IotdaOptions {
        device_id: a.device_id,
        secret: a.secret,
        listen: a.listen,
        out_dir: a.out,
        upgrades: upgrades.clone(),
        timeout: Duration::from_secs(a.timeout_secs),
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

fn package_server(a: PackageServerArgs) -> ExitCode {
    use otabridge::sim::package_server::{run_standalone, Faults, Standalone};
    let opts = Standalone {
        file: a.file,
        generate: a.generate,
        id: a.id,
        names: a.names,
        ca_out: a.ca_out,
        plain: a.plain,
        open: a.open,
        token_ttl: Duration::from_secs(a.token_ttl),
        faults: Faults {
            throttle: a.throttle,
            cut_at: a.cut_at.into_iter().collect(),
            ignore_range: a.ignore_range,
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

/// `otabridge sim coap-child`: checks the options, then serves until
/// SIGINT or SIGTERM and prints what the child saw.
// Long on purpose: each flag checked in turn with its own message, then the run; splitting scatters the flag checks from the flags.
fn coap_child(a: CoapChildArgs) -> ExitCode {
    use otabridge::sim::coap_child::{Faults, ObserveMode, SimOptions};
    use otabridge_codecs::lwm2m::UpdateResult;
    let Some(szx) = otabridge_codecs::coap::block::size_to_szx(a.block_size) else {
        let b = a.block_size;
        return usage(
            "coap-child",
            format!("--block-size {b}: not 16, 32, ... or 1024"),
        );
    };
    let mut opts = SimOptions::new(&a.version, "");
    opts.any_image_version = a.next_version;
    for i in &a.images {
        let Some((sha, v)) = i.split_once('=') else {
            return usage(
                "coap-child",
                format!("--image {i}: expected SHA256=VERSION"),
            );
        };
        opts.images.insert(sha.to_ascii_lowercase(), v.to_owned());
    }
    for (name, pct) in [
        ("--loss", a.loss),
        ("--duplicate", a.duplicate),
        ("--reorder", a.reorder),
    ] {
        if !(0.0..=100.0).contains(&pct) {
            return usage("coap-child", format!("{name} {pct}: not a percentage"));
        }
    }
    let result = |name: &str, v: Option<i64>| -> Result<Option<UpdateResult>, String> {
        v.map(|v| UpdateResult::from_value(v).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let (fail_download, fail_update) = match (
        result("--fail-download", a.fail_download),
        result("--fail-update", a.fail_update),
    ) {
        (Ok(d), Ok(u)) => (d, u),
        (Err(m), _) | (_, Err(m)) => return usage("coap-child", m),
    };
    if !a.formats.is_empty() {
        let mut formats = Vec::new();
        for name in &a.formats {
            match otabridge_codecs::lwm2m::ContentFormat::from_name(name) {
                Some(f) => formats.push(f),
                None => {
                    return usage(
                        "coap-child",
                        format!("--formats: '{name}' is not a content format"),
                    )
                }
            }
        }
        opts.formats = formats;
    }
    opts.observe = match a.observe.as_str() {
        "con" => ObserveMode::Con,
        "non" => ObserveMode::Non,
        "refuse" => ObserveMode::Refuse,
        other => {
            return usage(
                "coap-child",
                format!("--observe: '{other}' is not con, non or refuse"),
            )
        }
    };
    match otabridge_codecs::lwm2m::DeliveryMethod::from_value(a.delivery_method) {
        Ok(m) => opts.delivery_method = m,
        Err(e) => return usage("coap-child", format!("--delivery-method: {e}")),
    }
    opts.listen = a.listen;
    opts.preferred_szx = szx;
    opts.reboot_time = Duration::from_millis(a.reboot_ms);
    opts.seed = a.seed;
    opts.faults = Faults {
        loss_pct: a.loss,
        duplicate_pct: a.duplicate,
        reorder_pct: a.reorder,
        delay: Duration::from_millis(a.delay_ms),
        reboot_after_blocks: a.reboot_after_blocks,
        ..Faults::default()
    };
    if let Some(server) = a.register {
        if a.lwm2m != "1.0" && a.lwm2m != "1.1" {
            return usage("coap-child", format!("--lwm2m {}: 1.0 or 1.1", a.lwm2m));
        }
        if a.lifetime == 0 {
            return usage("coap-child", "--lifetime 0: at least 1 s");
        }
        opts.register = Some(otabridge::sim::coap_child::Registering {
            server,
            endpoint: a.endpoint,
            lifetime_s: a.lifetime,
            lwm2m: a.lwm2m,
            queue: a.queue,
            awake: Duration::from_millis(a.awake_ms),
            auto_update: true,
        });
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(serve_coap_child(opts, fail_download, fail_update)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otabridge sim coap-child: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Serves a CoAP child until SIGINT or SIGTERM, then prints what it saw.
async fn serve_coap_child(
    opts: otabridge::sim::coap_child::SimOptions,
    fail_download: Option<otabridge_codecs::lwm2m::UpdateResult>,
    fail_update: Option<otabridge_codecs::lwm2m::UpdateResult>,
) -> anyhow::Result<()> {
    let sim = otabridge::sim::coap_child::CoapChildSim::start(opts).await?;
    sim.set_download_failure(fail_download);
    sim.set_update_failure(fail_update);
    println!(
        "coap child listening on {} running {}",
        sim.addr(),
        sim.version()
    );
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
    Ok(())
}
