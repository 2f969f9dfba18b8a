//! `otabridge sim smp-child` as another process: it prints a pty path that
//! the driver opens by name, as an integrator's gateway would.

mod serial_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use otabridge::child::Child;

/// Kills the simulator when the test ends, however it ends.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_printed_pty_path_reaches_the_simulated_device() {
    let mut sim = Kill(
        Command::new(env!("CARGO_BIN_EXE_otabridge"))
            .args([
                "sim",
                "smp-child",
                "--version",
                "1.2.3",
                "--faults",
                "noise=0.5",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(sim.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let path = line.trim();
    assert!(path.starts_with("/dev/"), "{line:?}");
    let c = otabridge::child::serial::SerialChild::new(
        "node",
        std::path::Path::new(path),
        115_200,
        serial_support::options(),
    );
    assert_eq!(c.read_version().await.unwrap(), "1.2.3");
}

#[test]
fn bad_faults_are_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args(["sim", "smp-child", "--faults", "drop=2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--faults: drop: '2' is not a probability"),
        "{err}"
    );
}
