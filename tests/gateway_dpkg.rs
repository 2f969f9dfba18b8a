//! The gateway's own software upgrade through the real dpkg: `otabridge
//! run` as a process under the simulated IoTDA installs a `.deb` with
//! `dpkg --install`, restarts itself in place (the same pid executes the
//! binary again, as after an upgrade of its own package), reads the
//! package's version back with `dpkg-query` and reports.
//!
//! Nothing outside a temporary directory is touched: dpkg works on a
//! temporary root (`--root`, which also holds its database), and the test
//! package has no maintainer scripts. Needs root (dpkg refuses otherwise);
//! skipped with a message without dpkg-deb or root, a failure under
//! OTABRIDGE_REQUIRE_INTEROP=1.

mod gateway_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gateway_support::{distinct, run, seq, skip_unless, Daemon, Platform, SimBox};
use otabridge_codecs::iotda::{ResultCode, UpgradeKind};

const STEP: Duration = Duration::from_secs(90);
const PACKAGE: &str = "otabridge-gwtest";

/// A `.deb` of `PACKAGE` at `version`, with `depends` when given.
fn deb(dir: &Path, version: &str, depends: Option<&str>) -> PathBuf {
    let tree = dir.join(format!("deb-{version}"));
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(tree.join("opt/otabridge-gwtest")).unwrap();
    std::fs::write(
        tree.join("opt/otabridge-gwtest/VERSION"),
        format!("{version}\n"),
    )
    .unwrap();
    let mut control = format!(
        "Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\n\
         Maintainer: otabridge tests <tests@example.invalid>\n\
         Description: otabridge gateway upgrade test package\n"
    );
    if let Some(d) = depends {
        control.push_str(&format!("Depends: {d}\n"));
    }
    std::fs::write(tree.join("DEBIAN/control"), control).unwrap();
    let out = dir.join(format!("{PACKAGE}_{version}_all.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&tree)
        .arg(&out)
        .stdout(std::process::Stdio::null()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpkg_installs_the_package_and_otabridge_restarts_itself_before_reporting() {
    if skip_unless("dpkg", &["dpkg", "dpkg-deb", "dpkg-query"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start(dir.path()).await;
    let sim = SimBox::new(&dir.path().join("box"));
    // A root of its own for dpkg: its database and the installed files.
    let root = sim.dir.join("root");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), b"").unwrap();
    let root_arg = format!("--root={}", root.display());
    run(Command::new("dpkg")
        .arg(&root_arg)
        .arg("--install")
        .arg(deb(&sim.dir, "1.0.0", None)));
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        p.config_text(&format!(
            "[gateway]\n{}\n[gateway.software]\ninstaller = \"dpkg\"\n\
             args = [{root_arg:?}]\npackage = \"{PACKAGE}\"\n",
            sim.gateway_keys()
        )),
    )
    .unwrap();
    let log = dir.path().join("otabridge.log");
    let daemon = Daemon::start(&cfg, &log, &[]);
    let pid = daemon.pid();
    let v = p.gateway_versions(STEP).await;
    assert_eq!(
        v.sw_version.as_deref(),
        Some("1.0.0"),
        "{}",
        daemon.log_text()
    );

    // 1. Installed; otabridge restarts itself in place and reports.
    let up = p.serve(&deb(&sim.dir, "2.0.0", None), "2.0.0");
    p.upgrade_gateway(UpgradeKind::Software, &up).await;
    let reports = distinct(&p.gateway_reports(STEP).await);
    let s = seq(&reports);
    assert_eq!(
        s.last(),
        Some(&(0, 100)),
        "{reports:#?}\n{}",
        daemon.log_text()
    );
    // dpkg's stages (unpack 40 %, set up 80 %) and the restart (95 %).
    assert!(
        s.contains(&(0, 60)) && s.contains(&(0, 80)) && s.contains(&(0, 95)),
        "{s:?}"
    );
    assert_eq!(reports.last().unwrap().version, "2.0.0");
    let text = daemon.log_text();
    assert!(
        text.contains("restarting on the installed otabridge"),
        "{text}"
    );
    assert_eq!(
        text.matches("otabridge starting").count(),
        2,
        "one start, one restart in place: {text}"
    );
    assert_eq!(daemon.pid(), pid);
    assert_eq!(
        std::fs::read_to_string(root.join("opt/otabridge-gwtest/VERSION")).unwrap(),
        "2.0.0\n"
    );
    let v = p.gateway_versions(STEP).await;
    assert_eq!(v.sw_version.as_deref(), Some("2.0.0"));

    // 2. Not a Debian archive (its sign matches what is served): result 7.
    let junk = sim.dir.join("junk.deb");
    std::fs::write(&junk, vec![0x5au8; 4096]).unwrap();
    let up = p.serve(&junk, "3.0.0");
    p.upgrade_gateway(UpgradeKind::Software, &up).await;
    let last = p.gateway_reports(STEP).await.pop().unwrap();
    assert_eq!(last.result_code, ResultCode::CHECK_FAIL, "{last:#?}");
    let d = last.description.unwrap();
    assert!(
        d.starts_with(
            "Integrity check failure for new downloaded package: dpkg exited with status "
        ) && d.contains("not a Debian format archive"),
        "{d}"
    );
    assert_eq!(last.version, "2.0.0");

    // 3. dpkg cannot configure it (a dependency is missing): result 10
    // with dpkg's words; otabridge does not restart.
    let up = p.serve(
        &deb(&sim.dir, "3.0.0", Some("otabridge-gwtest-missing")),
        "3.0.0",
    );
    p.upgrade_gateway(UpgradeKind::Software, &up).await;
    let last = p.gateway_reports(STEP).await.pop().unwrap();
    assert_eq!(last.result_code, ResultCode::INSTALL_FAIL, "{last:#?}");
    let d = last.description.unwrap();
    assert!(
        d.starts_with("Firmware update failed: dpkg exited with status 1: ")
            && d.ends_with("dependency problems - leaving unconfigured"),
        "{d}"
    );
    assert_eq!(last.version, "2.0.0");
    let text = daemon.log_text();
    assert_eq!(text.matches("otabridge starting").count(), 2, "{text}");
    daemon.stop().await;
}
