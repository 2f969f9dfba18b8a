//! The real `otabridge run` as a child process against a [`Testbed`]'s
//! simulated IoTDA, for end-to-end tests of the shipped binary.

use std::path::Path;
use std::process::{Child as Proc, Command, Stdio};
use std::time::{Duration, Instant};

use otabridge::sim::testbed::{config_text, Testbed};

/// Stops the daemon however the test ends.
pub(crate) struct Daemon(Proc);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `dir/gw.toml` (the testbed's platform plus `extra`), starts
/// `otabridge run` on it with its log in `dir/gw.log`, and returns the
/// daemon and the log's path once it has connected (within 60 s; the
/// assertion shows the log otherwise).
pub(crate) async fn run(tb: &Testbed, dir: &Path, extra: &str) -> (Daemon, String) {
    let config = dir.join("gw.toml");
    std::fs::write(
        &config,
        config_text(tb.edge.addr().port(), &tb.ca_file, &tb.state_dir, extra),
    )
    .unwrap();
    let log = dir.join("gw.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_otabridge"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,rumqttc=warn")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap(),
    );
    let log = log.display().to_string();
    let until = Instant::now() + Duration::from_secs(60);
    while tb.edge.connects() == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tb.edge.connects() > 0,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (daemon, log)
}
