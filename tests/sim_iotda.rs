//! `otabridge sim iotda` tests a gateway build as an integrator would: two
//! processes, the simulated platform and `otabridge run` with the
//! configuration fragment the simulator wrote.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn otabridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_otabridge"))
}

#[test]
fn a_gateway_build_upgrades_its_children_against_the_simulated_platform() {
    let dir = tempfile::tempdir().unwrap();
    let fw = dir.path().join("fw-2.0.0.bin");
    let image: Vec<u8> = (0..150_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&fw, &image).unwrap();
    let out = dir.path().join("sim");
    let mut sim = Killed(
        otabridge()
            .args([
                "sim",
                "iotda",
                "--listen",
                "127.0.0.1:0",
                "--timeout-secs",
                "120",
            ])
            .arg("--out")
            .arg(&out)
            .arg("--upgrade")
            .arg(format!("node-1={}@2.0.0", fw.display()))
            .arg("--upgrade")
            .arg(format!("node-2={}@2.0.0", fw.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let fragment = out.join("platform.toml");
    for _ in 0..400 {
        if std::fs::read_to_string(&fragment).is_ok_and(|t| t.contains("[download]")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&fragment).expect("the simulator writes platform.toml");
    assert!(text.contains("url = \"mqtts://localhost:"), "{text}");
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[state]\ndir = {:?}\n\n[[child]]\ndevice_id = \"node-1\"\ntransport = \"sim\"\nversion = \"1.0.0\"\n\n\
             [[child]]\ndevice_id = \"node-2\"\ntransport = \"sim\"\nversion = \"1.5.0\"\n",
            dir.path().join("state").display().to_string()
        ),
    )
    .unwrap();
    let _gateway = Killed(
        otabridge()
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The simulator ends by itself when every upgrade ended.
    let mut status = None;
    for _ in 0..1200 {
        if let Some(s) = sim.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    if status.is_some() {
        sim.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        sim.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
    }
    let status = status.unwrap_or_else(|| panic!("sim iotda did not finish"));
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 of 2 upgrade(s) succeeded"), "{stdout}");
    let row = |id: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(id) && l.contains(" -> "))
            .unwrap_or_else(|| panic!("no row for {id}: {stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        row("node-1").starts_with("node-1 1.0.0 -> 2.0.0 0"),
        "{stdout}"
    );
    assert!(
        row("node-2").starts_with("node-2 1.5.0 -> 2.0.0 0"),
        "{stdout}"
    );
    // One shared package download for both children (same SHA-256).
    assert!(stdout.contains("answered 1 request(s)"), "{stdout}");
}

#[test]
fn a_bad_upgrade_argument_is_a_usage_error() {
    let out = otabridge()
        .args(["sim", "iotda", "--upgrade", "node-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not CHILD=FILE@VERSION"), "{err}");
}

/// The gateway's own firmware through `otabridge sim iotda`: the gateway's
/// id in `--upgrade`, a command installer on the gateway side (it writes
/// the version file, no reboot needed), the table's row for the gateway.
#[test]
fn sim_iotda_shows_the_gateways_own_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let fw = dir.path().join("box-2.1.0.img");
    std::fs::write(&fw, b"2.1.0\nbox image").unwrap();
    let version_file = dir.path().join("box-version");
    std::fs::write(&version_file, "2.0.0\n").unwrap();
    let installer = dir.path().join("install-box-image");
    std::fs::write(
        &installer,
        format!(
            "#!/bin/sh\necho 'progress: 50'\nhead -n 1 \"$1\" > '{}'\necho 'progress: 100'\n",
            version_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&installer, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.path().join("sim");
    let mut sim = Killed(
        otabridge()
            .args([
                "sim",
                "iotda",
                "--listen",
                "127.0.0.1:0",
                "--timeout-secs",
                "120",
            ])
            .args(["--device-id", "gw-box_01"])
            .arg("--out")
            .arg(&out)
            .arg("--upgrade")
            .arg(format!("gw-box_01={}@2.1.0", fw.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let fragment = out.join("platform.toml");
    for _ in 0..400 {
        if std::fs::read_to_string(&fragment).is_ok_and(|t| t.contains("[download]")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&fragment).expect("the simulator writes platform.toml");
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[state]\ndir = {:?}\n\n[gateway.firmware]\ninstaller = \"command\"\n\
             command = [{:?}, \"{{file}}\"]\nversion_file = {:?}\nafter = \"none\"\n",
            dir.path().join("state").display().to_string(),
            installer.display().to_string(),
            version_file.display().to_string()
        ),
    )
    .unwrap();
    let _gateway = Killed(
        otabridge()
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut status = None;
    for _ in 0..1200 {
        if let Some(s) = sim.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = status.unwrap_or_else(|| panic!("sim iotda did not finish"));
    let mut stdout = String::new();
    sim.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("1 of 1 upgrade(s) succeeded"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("gw-box_01") && l.contains(" -> "))
        .unwrap_or_else(|| panic!("no row for the gateway: {stdout}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(row.starts_with("gw-box_01 2.0.0 -> 2.1.0 0"), "{stdout}");
    // The installer's own progress was reported on the way.
    assert!(
        stdout.contains("upgrade_progress_report result 0 progress 65%"),
        "{stdout}"
    );
}
