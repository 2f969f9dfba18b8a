//! Shared by the `serial_*` tests: packages on disk and driver options
//! with generous timeouts (ptys run in real time; no assertion is timed).
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use otabridge::child::link::port::{PortSettings, Ports};
use otabridge::child::serial::SerialChild;
use otabridge::child::Package;
use otabridge::config::SerialOptions;
use otabridge::sim::smp_child::{mcuboot_image, parse_version, Faults, SmpChild, SmpChildOptions};
use sha2::{Digest, Sha256};

/// Driver options for tests: answers within 1 s (4 retries), the first
/// chunk within 10 s, the simulator's 300 ms reboot waited out.
pub fn options() -> SerialOptions {
    SerialOptions {
        timeout: Duration::from_millis(1000),
        first_timeout: Duration::from_secs(10),
        retries: 4,
        reboot_wait: Duration::from_millis(500),
        reboot_timeout: Duration::from_secs(10),
        ..SerialOptions::default()
    }
}

/// A simulated device on a pty with `faults` (the `--faults` syntax) and
/// `seed`, otherwise defaults.
pub fn sim(faults: &str, seed: u64) -> SmpChild {
    SmpChild::spawn(SmpChildOptions {
        faults: faults.parse::<Faults>().unwrap(),
        seed,
        ..SmpChildOptions::default()
    })
    .unwrap()
}

/// Writes `bytes` as a package of `version` into `dir`.
pub fn package(dir: &Path, name: &str, bytes: &[u8], version: &str) -> Package {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    Package {
        path,
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        version: version.to_owned(),
    }
}

/// An MCUboot image of `len` bytes carrying `version`.
pub fn image(version: &str, len: usize, seed: u64) -> Vec<u8> {
    mcuboot_image(parse_version(version).unwrap(), len, seed)
}

/// A driver for the simulator's pty, alone on it.
pub fn child(id: &str, sim: &SmpChild) -> SerialChild {
    SerialChild::new(id, sim.path(), 115_200, options())
}

/// A driver for the simulator's pty, sharing it with the other children
/// `ports` gave it to (an RS-485 bus).
pub fn bus_child(ports: &mut Ports, id: &str, sim: &SmpChild) -> SerialChild {
    let o = options();
    let settings = PortSettings {
        baud: 115_200,
        framing: o.framing,
        reopen_timeout: o.reopen_timeout,
    };
    SerialChild::on_port(id, ports.get(sim.path(), settings), o)
}

/// Progress the driver reported, in order.
#[derive(Debug, Default)]
pub struct Seen(pub std::sync::Mutex<Vec<u64>>);

impl Seen {
    pub fn push(&self, n: u64) {
        self.0.lock().unwrap().push(n);
    }
    pub fn all(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}
