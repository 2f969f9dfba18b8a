//! The manual pages, generated from the command line definition so that they
//! cannot drift from `--help`: `otabridge.1` with the sections an operator
//! looks for (files, environment, exit status, signals), and one page per
//! subcommand (`otabridge-run.1`, `otabridge-sim-smp-child.1`, ...).
//! `tests/cli.rs` checks the copies in `packaging/man` are current.

use std::path::Path;

use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// Writes every page into `dir`; returns how many.
pub(crate) fn write_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut n = 0;
    write_tree(&cmd, true, dir, &mut n)?;
    Ok(n)
}

fn write_tree(cmd: &clap::Command, root: bool, dir: &Path, n: &mut usize) -> std::io::Result<()> {
    let man = Man::new(cmd.clone())
        .source(concat!("otabridge ", env!("CARGO_PKG_VERSION")))
        .manual("otabridge manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    let mut extra = Roff::default();
    if root {
        root_sections(&mut extra);
    }
    extra.control("SH", ["SEE ALSO"]);
    let see_also = if root {
        "The configuration reference, the wiring guides and troubleshooting \
         by failure description are in /usr/share/doc/otabridge. Each \
         subcommand has its own page, for example otabridge-run(1)."
    } else {
        "otabridge(1)"
    };
    extra.text([roman(see_also)]);
    extra.to_writer(&mut out)?;
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    std::fs::write(dir.join(format!("{name}.1")), out)?;
    *n += 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub, false, dir, n)?;
    }
    Ok(())
}

fn item(r: &mut Roff, term: &str, text: &str) {
    r.control("TP", []);
    r.text([bold(term)]);
    r.text([roman(text)]);
}

fn root_sections(r: &mut Roff) {
    r.control("SH", ["FILES"]);
    item(
        r,
        "/etc/otabridge/otabridge.toml",
        "The configuration (platform, state directory, children). Unknown keys are \
         errors that name the file and the key. Reference: config.md in the \
         documentation directory.",
    );
    item(
        r,
        "/var/lib/otabridge",
        "The state directory (state.dir): journal.sqlite holds the outbox, the \
         children, the jobs and the downloads; packages/ holds the packages by \
         SHA-256. Keep it private: the journal stores the upgrade events with \
         their download tokens so that a restarted gateway can resume.",
    );
    item(
        r,
        "/lib/systemd/system/otabridge.service",
        "The hardened systemd unit. Enable it after writing the configuration.",
    );
    r.control("SH", ["ENVIRONMENT"]);
    item(
        r,
        "RUST_LOG",
        "Log filter, for example info,otabridge::child=debug (default: info for \
         run). Logs go to standard error, as text or with --log-format json as one \
         JSON object per line.",
    );
    r.control("SH", ["EXIT STATUS"]);
    item(
        r,
        "0",
        "Success; for run, a clean stop on SIGINT or SIGTERM.",
    );
    item(
        r,
        "1",
        "A failure at run time (the demo: a child did not end as expected).",
    );
    item(
        r,
        "2",
        "Bad usage or a bad configuration; the message names the key and the file. \
         The systemd unit does not restart on it.",
    );
    r.control("SH", ["SIGNALS"]);
    item(
        r,
        "SIGINT, SIGTERM",
        "Stop. Every running job stops where it is and resumes from the journal on \
         the next start, as after a power cut; queued reports stay in the outbox.",
    );
    r.control("SH", ["METRICS"]);
    r.text([roman(
        "With [metrics] listen set, GET /metrics serves OpenMetrics text: jobs by \
         phase and outcome, bytes downloaded and delivered, retries, resumes, phase \
         durations, outbox depth and the MQTT connection state.",
    )]);
}
