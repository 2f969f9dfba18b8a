//! The gateway's own firmware upgrade through the real RAUC (Debian's
//! `rauc` 1.8): `otabridge run` as a process under the simulated IoTDA
//! hands a signed bundle to `rauc install`, which talks to a `rauc service`
//! for a two-slot system whose slots are files and whose bootloader is a
//! script keeping its state in files. The reboot is simulated by stopping
//! the daemon and the service and starting the service on the slot the
//! bootloader would boot (`--override-boot-slot`) — or on the old one: a
//! rollback.
//!
//! Nothing outside a temporary directory is touched: the service runs on a
//! private D-Bus session bus (RAUC uses the session bus when
//! `DBUS_STARTER_BUS_TYPE=session`), its system.conf, keyring, slots,
//! status file, mount prefix and bootloader state are temporary files.
//! `rauc install` mounts the (plain) bundle through a loop device, so the
//! test needs root. Skipped (with a message) without rauc, mksquashfs,
//! openssl, dbus-daemon or root; a failure under OTABRIDGE_REQUIRE_INTEROP=1.

mod gateway_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gateway_support::{distinct, run, seq, skip_unless, Daemon, Platform, SimBox};
use otabridge_codecs::iotda::{ResultCode, UpgradeKind};

const STEP: Duration = Duration::from_secs(120);
const COMPATIBLE: &str = "otabridge-test";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A RAUC system in a directory: two file-backed raw slots, A and B.
struct RaucBox {
    dir: PathBuf,
    conf: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    bus: String,
    _dbus: Killed,
    service: Option<Killed>,
}

impl RaucBox {
    async fn new(dir: &Path) -> RaucBox {
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            ])
            .args(["-subj", "/CN=otabridge rauc test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        // The bootloader: `rauc` asks it which slot boots next and marks
        // slots good or bad (RAUC's "custom" bootloader backend interface).
        let boot = dir.join("bootloader");
        std::fs::create_dir_all(&boot).unwrap();
        let backend = dir.join("bootloader.sh");
        std::fs::write(
            &backend,
            format!(
                "#!/bin/sh\nd='{}'\ncase \"$1\" in\n\
                 get-primary) cat \"$d/primary\" 2>/dev/null || echo A ;;\n\
                 set-primary) echo \"$2\" > \"$d/primary\" ;;\n\
                 get-state) cat \"$d/state-$2\" 2>/dev/null || echo good ;;\n\
                 set-state) echo \"$3\" > \"$d/state-$2\" ;;\n\
                 get-current) cat \"$d/primary\" 2>/dev/null || echo A ;;\n\
                 *) exit 1 ;;\nesac\n",
                boot.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&backend, std::fs::Permissions::from_mode(0o755)).unwrap();
        for slot in ["slot-a.img", "slot-b.img"] {
            std::fs::write(dir.join(slot), vec![0u8; 1 << 20]).unwrap();
        }
        // Slot A runs 1.0.0, as RAUC's central status file records it.
        std::fs::write(
            dir.join("status.raucs"),
            format!("[slot.rootfs.0]\nbundle.compatible={COMPATIBLE}\nbundle.version=1.0.0\nstatus=ok\n"),
        )
        .unwrap();
        let conf = dir.join("system.conf");
        std::fs::write(
            &conf,
            format!(
                "[system]\ncompatible={COMPATIBLE}\nbootloader=custom\nmountprefix={mnt}\n\
                 statusfile={dir}/status.raucs\n\n[keyring]\npath={cert}\n\n\
                 [handlers]\nbootloader-custom-backend={backend}\n\n\
                 [slot.rootfs.0]\ndevice={dir}/slot-a.img\ntype=raw\nbootname=A\n\n\
                 [slot.rootfs.1]\ndevice={dir}/slot-b.img\ntype=raw\nbootname=B\n",
                mnt = dir.join("mnt").display(),
                dir = dir.display(),
                cert = cert.display(),
                backend = backend.display()
            ),
        )
        .unwrap();
        let bus_path = dir.join("bus");
        let bus = format!("unix:path={}", bus_path.display());
        let dbus = Killed(
            Command::new("dbus-daemon")
                .args(["--session", "--nofork", "--nopidfile"])
                .arg(format!("--address={bus}"))
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        for _ in 0..200 {
            if bus_path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(bus_path.exists(), "dbus-daemon did not open {bus}");
        let mut b = RaucBox {
            dir: dir.to_owned(),
            conf,
            cert,
            key,
            bus,
            _dbus: dbus,
            service: None,
        };
        b.boot("A").await;
        b
    }

    fn env(&self) -> [(&'static str, &str); 2] {
        [
            ("DBUS_SESSION_BUS_ADDRESS", self.bus.as_str()),
            ("DBUS_STARTER_BUS_TYPE", "session"),
        ]
    }

    fn rauc(&self) -> Command {
        let mut c = Command::new("rauc");
        c.envs(self.env());
        c
    }

    /// (Re)starts the RAUC service as if the box booted `slot`.
    async fn boot(&mut self, slot: &str) {
        self.service = None;
        let log = std::fs::File::create(self.dir.join(format!("service-{slot}.log"))).unwrap();
        self.service = Some(Killed(
            self.rauc()
                .arg(format!("--conf={}", self.conf.display()))
                .arg("service")
                .arg(format!("--override-boot-slot={slot}"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
        // Ready once it answers on the bus.
        for _ in 0..200 {
            let st = self.rauc().arg("status").output().unwrap();
            if st.status.success() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("rauc service did not answer on {}", self.bus);
    }

    /// The slot the bootloader boots next.
    fn primary(&self) -> String {
        std::fs::read_to_string(self.dir.join("bootloader/primary"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "A".into())
    }

    /// A signed plain bundle for `version`.
    fn bundle(&self, version: &str, compatible: &str) -> PathBuf {
        let src = self.dir.join(format!("bundle-{version}-{compatible}"));
        std::fs::create_dir_all(&src).unwrap();
        let image: Vec<u8> = (0..256 * 1024u32)
            .map(|i| (i * 7 + version.len() as u32 + i / 263) as u8)
            .collect();
        std::fs::write(src.join("rootfs.img"), image).unwrap();
        std::fs::write(
            src.join("manifest.raucm"),
            format!(
                "[update]\ncompatible={compatible}\nversion={version}\n\n\
                 [bundle]\nformat=plain\n\n[image.rootfs]\nfilename=rootfs.img\n"
            ),
        )
        .unwrap();
        let out = self
            .dir
            .join(format!("update-{version}-{compatible}.raucb"));
        let _ = std::fs::remove_file(&out);
        run(self
            .rauc()
            .arg("bundle")
            .arg(format!("--cert={}", self.cert.display()))
            .arg(format!("--key={}", self.key.display()))
            .arg(&src)
            .arg(&out));
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rauc_installs_a_bundle_into_the_other_slot_and_the_booted_slot_is_read_after_the_reboot() {
    if skip_unless(
        "rauc",
        &["rauc", "mksquashfs", "openssl", "dbus-daemon"],
        true,
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start(dir.path()).await;
    let mut sim = SimBox::new(&dir.path().join("box"));
    let mut rauc = RaucBox::new(&dir.path().join("rauc")).await;
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        p.config_text(&format!(
            "[gateway]\n{}\n[gateway.firmware]\ninstaller = \"rauc\"\n",
            sim.gateway_keys()
        )),
    )
    .unwrap();
    let log = dir.path().join("otabridge.log");
    let bus = rauc.bus.clone();
    let env = [
        ("DBUS_SESSION_BUS_ADDRESS", bus.as_str()),
        ("DBUS_STARTER_BUS_TYPE", "session"),
    ];
    let mut daemon = Daemon::start(&cfg, &log, &env);
    let v = p.gateway_versions(STEP).await;
    assert_eq!(
        v.fw_version.as_deref(),
        Some("1.0.0"),
        "{}",
        daemon.log_text()
    );

    // 1. Installed into slot B, the box boots B: success on 2.0.0.
    let up = p.serve(&rauc.bundle("2.0.0", COMPATIBLE), "2.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    let mut reports = p.gateway_reports_until(95, STEP).await;
    sim.wait_reboot_request(STEP).await;
    assert_eq!(rauc.primary(), "B");
    daemon.stop().await;
    let next = rauc.primary();
    rauc.boot(&next).await;
    sim.boot();
    daemon = Daemon::start(&cfg, &log, &env);
    reports.extend(p.gateway_reports(STEP).await);
    let reports = distinct(&reports);
    let s = seq(&reports);
    assert_eq!(
        s.last(),
        Some(&(0, 100)),
        "{reports:#?}\n{}",
        daemon.log_text()
    );
    assert_eq!(reports.last().unwrap().version, "2.0.0");
    // RAUC's own percentages, mapped into the install's 40..90.
    let from_rauc: Vec<u8> = s
        .iter()
        .map(|(_, p)| *p)
        .filter(|p| (41..90).contains(p))
        .collect();
    assert!(from_rauc.len() >= 3, "{s:?}");

    // 2. A bundle damaged after signing (the download matches its sign):
    // RAUC's signature check refuses it, result 7.
    let mut bytes = std::fs::read(rauc.bundle("3.0.0", COMPATIBLE)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let corrupt = dir.path().join("corrupt.raucb");
    std::fs::write(&corrupt, bytes).unwrap();
    let up = p.serve(&corrupt, "3.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    let last = p.gateway_reports(STEP).await.pop().unwrap();
    assert_eq!(last.result_code, ResultCode::CHECK_FAIL, "{last:#?}");
    let d = last.description.unwrap();
    assert!(
        d.starts_with("Integrity check failure for new downloaded package: rauc exited with status 1: LastError: "),
        "{d}"
    );
    assert_eq!(last.version, "2.0.0");

    // 3. A bundle for another product: result 8, RAUC's words.
    let up = p.serve(&rauc.bundle("3.0.0", "other-box"), "3.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    let last = p.gateway_reports(STEP).await.pop().unwrap();
    assert_eq!(last.result_code, ResultCode::UNKNOWN_TYPE, "{last:#?}");
    assert!(
        last.description
            .as_deref()
            .unwrap()
            .contains("Compatible mismatch"),
        "{last:#?}"
    );
    assert!(!sim.take_reboot_request());

    // 4. Installed into slot A, but the box boots B again: a rollback.
    let up = p.serve(&rauc.bundle("3.0.0", COMPATIBLE), "3.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    p.gateway_reports_until(95, STEP).await;
    sim.wait_reboot_request(STEP).await;
    assert_eq!(rauc.primary(), "A");
    daemon.stop().await;
    rauc.boot("B").await;
    sim.boot();
    daemon = Daemon::start(&cfg, &log, &env);
    let last = p.gateway_reports(STEP).await.pop().unwrap();
    assert_eq!(last.result_code, ResultCode::INSTALL_FAIL, "{last:#?}");
    assert!(
        last.description
            .as_deref()
            .unwrap()
            .contains("version 2.0.0 unchanged after the reboot"),
        "{last:#?}"
    );
    assert_eq!(last.version, "2.0.0");
    daemon.stop().await;
    // RAUC unmounted every bundle it mounted.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&rauc.dir.join("mnt").display().to_string()),
        "{mounts}"
    );
}
