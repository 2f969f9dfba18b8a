//! The gateway's own firmware upgrade through the real SWUpdate (Debian's
//! `swupdate`, built for signed images): `otabridge run` as a process under
//! the simulated IoTDA installs a signed `.swu` whose `rawfile` handler
//! writes the new version into the box's inactive slot; the reboot is
//! simulated by stopping the daemon, making that slot's version file the
//! running one (or not: a rollback), changing the boot id and starting the
//! daemon again.
//!
//! Nothing outside a temporary directory is touched: SWUpdate's sockets and
//! scratch files go to the daemon's `TMPDIR`, the handler writes into the
//! temporary "slot", and the hardware revision comes from `-H`. Skipped
//! (with a message) without `swupdate` and `openssl`; a failure under
//! `OTABRIDGE_REQUIRE_INTEROP=1`.

mod gateway_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gateway_support::{distinct, run, seq, skip_unless, Daemon, Platform, SimBox};
use otabridge_codecs::iotda::{ResultCode, UpgradeKind};

const STEP: Duration = Duration::from_secs(90);
const HW: &str = "otabridge-test:1.0";

/// One cpio "newc with checksum" (070702) entry, the archive format of a
/// `.swu` (SWUpdate's doc/source/swupdate.rst, "Single image delivery").
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, data: &[u8]) {
    let check: u32 = data.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
    let fields = [
        ino,
        0o100644,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        check,
    ];
    out.extend_from_slice(b"070702");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

struct Swu {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Swu {
    fn new(dir: &Path) -> Swu {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            ])
            .args(["-subj", "/CN=otabridge swupdate test"])
            .args(["-addext", "extendedKeyUsage=emailProtection"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        Swu {
            dir: dir.to_owned(),
            cert,
            key,
        }
    }

    /// A signed `.swu` for `version` with two files for the `rawfile`
    /// handler: the version file, written to `dest`, and a 1.5 MiB image
    /// beside it. The image is there because Debian's SWUpdate 2022.12 `-i`
    /// races its own IPC client when the whole `.swu` fits in a socket
    /// buffer: the client asks for the result before the installer started
    /// and exits with status 1 while it installs (ipc/network_ipc-if.c,
    /// `ipc_wait_for_complete` right after `ipc_end`). Real images are
    /// larger than a socket buffer.
    fn build(&self, version: &str, dest: &Path) -> PathBuf {
        use sha2::{Digest, Sha256};
        let payload = format!("firmware {version}\n");
        let sha = hex::encode(Sha256::digest(payload.as_bytes()));
        let image: Vec<u8> = (0..1_536 * 1024u32)
            .map(|i| (i * 13 + i / 509) as u8)
            .collect();
        let image_sha = hex::encode(Sha256::digest(&image));
        let image_dest = dest.with_file_name("rootfs.img");
        let description = format!(
            "software =\n{{\n\tversion = \"{version}\";\n\tdescription = \"otabridge gateway test\";\n\
             \thardware-compatibility: [ \"1.0\" ];\n\tfiles: (\n\
             \t\t{{\n\t\t\tfilename = \"rootfs.img\";\n\t\t\tpath = \"{}\";\n\t\t\tsha256 = \"{image_sha}\";\n\t\t}},\n\
             \t\t{{\n\t\t\tfilename = \"sw-versions\";\n\t\t\tpath = \"{}\";\n\t\t\tsha256 = \"{sha}\";\n\t\t}}\n\t);\n}};\n",
            image_dest.display(),
            dest.display()
        );
        let work = self.dir.join(format!(
            "build-{version}-{}",
            dest.display().to_string().len()
        ));
        std::fs::create_dir_all(&work).unwrap();
        let desc_file = work.join("sw-description");
        let sig_file = work.join("sw-description.sig");
        std::fs::write(&desc_file, &description).unwrap();
        run(Command::new("openssl")
            .args(["cms", "-sign", "-outform", "DER", "-nosmimecap", "-binary"])
            .arg("-in")
            .arg(&desc_file)
            .arg("-out")
            .arg(&sig_file)
            .arg("-signer")
            .arg(&self.cert)
            .arg("-inkey")
            .arg(&self.key));
        let mut swu = Vec::new();
        cpio_entry(&mut swu, 1, "sw-description", description.as_bytes());
        cpio_entry(
            &mut swu,
            2,
            "sw-description.sig",
            &std::fs::read(&sig_file).unwrap(),
        );
        cpio_entry(&mut swu, 3, "rootfs.img", &image);
        cpio_entry(&mut swu, 4, "sw-versions", payload.as_bytes());
        cpio_entry(&mut swu, 0, "TRAILER!!!", b"");
        let out = work.join("update.swu");
        std::fs::write(&out, swu).unwrap();
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swupdate_installs_a_signed_swu_and_the_version_is_read_after_the_reboot() {
    if skip_unless("swupdate", &["swupdate", "openssl"], false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start(dir.path()).await;
    let mut sim = SimBox::new(&dir.path().join("box"));
    let running = sim.dir.join("running");
    let slot = sim.dir.join("slot-b");
    let scratch = sim.dir.join("swupdate-tmp");
    for d in [&running, &slot, &scratch] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        running.join("sw-versions"),
        "bootloader 2022.10\nfirmware 1.0.0\n",
    )
    .unwrap();
    let swu = Swu::new(&sim.dir.join("keys"));
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        p.config_text(&format!(
            "[gateway]\n{}\n[gateway.firmware]\ninstaller = \"swupdate\"\n\
             args = [\"-k\", {:?}, \"-H\", \"{HW}\"]\n\
             version_file = {:?}\nversion_key = \"firmware\"\n",
            sim.gateway_keys(),
            swu.cert.display().to_string(),
            running.join("sw-versions").display().to_string()
        )),
    )
    .unwrap();
    let log = dir.path().join("otabridge.log");
    let tmpdir = scratch.display().to_string();
    let env = [("TMPDIR", tmpdir.as_str())];
    let start = || Daemon::start(&cfg, &log, &env);
    let mut daemon = start();
    let v = p.gateway_versions(STEP).await;
    assert_eq!(
        v.fw_version.as_deref(),
        Some("1.0.0"),
        "{}",
        daemon.log_text()
    );

    // 1. A signed image: installed, the box reboots into it, success.
    let up = p.serve(&swu.build("2.0.0", &slot.join("sw-versions")), "2.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    let mut reports = p.gateway_reports_until(95, STEP).await;
    sim.wait_reboot_request(STEP).await;
    assert_eq!(
        std::fs::read_to_string(slot.join("sw-versions")).unwrap(),
        "firmware 2.0.0\n",
        "the rawfile handler wrote the slot"
    );
    daemon.stop().await;
    std::fs::copy(slot.join("sw-versions"), running.join("sw-versions")).unwrap();
    sim.boot();
    daemon = start();
    reports.extend(p.gateway_reports(STEP).await);
    let reports = distinct(&reports);
    let s = seq(&reports);
    assert_eq!(s.first(), Some(&(0, 0)), "{reports:#?}");
    assert_eq!(
        s.last(),
        Some(&(0, 100)),
        "{reports:#?}\n{}",
        daemon.log_text()
    );
    // SWUpdate's own progress (the second of two images started: 50 %)
    // came through between the download and the end of the install.
    assert!(
        s.contains(&(0, 40))
            && s.contains(&(0, 65))
            && s.contains(&(0, 90))
            && s.contains(&(0, 95)),
        "{s:?}"
    );
    assert_eq!(reports.last().unwrap().version, "2.0.0");

    // 2. A corrupt image (its sign matches what is served: the download is
    // fine, SWUpdate's own check refuses it): result 7, SWUpdate's words.
    let good = swu.build("3.0.0", &slot.join("sw-versions"));
    let mut bytes = std::fs::read(&good).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w == b"version")
        .expect("sw-description in the archive");
    bytes[at] ^= 0x20;
    let corrupt = sim.dir.join("corrupt.swu");
    std::fs::write(&corrupt, bytes).unwrap();
    let up = p.serve(&corrupt, "3.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    let last = p.gateway_reports(STEP).await.pop().unwrap();
    assert_eq!(last.result_code, ResultCode::CHECK_FAIL, "{last:#?}");
    let d = last.description.unwrap();
    assert!(
        d.starts_with(
            "Integrity check failure for new downloaded package: swupdate exited with status 1: "
        ) && d.contains("Checksum WRONG"),
        "{d}"
    );
    assert_eq!(last.version, "2.0.0");

    // 3. The handler fails (its destination does not exist): result 10
    // with SWUpdate's error lines; no reboot.
    let up = p.serve(
        &swu.build("3.0.0", &sim.dir.join("no/such/dir/sw-versions")),
        "3.0.0",
    );
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    let last = p.gateway_reports(STEP).await.pop().unwrap();
    assert_eq!(last.result_code, ResultCode::INSTALL_FAIL, "{last:#?}");
    let d = last.description.unwrap();
    assert!(
        d.starts_with("Firmware update failed: swupdate exited with status 1: ")
            && d.contains("Installation failed"),
        "{d}"
    );
    assert!(!sim.take_reboot_request());

    // 4. Installed, but the box comes back on the old slot: a rollback.
    let up = p.serve(&swu.build("3.0.0", &slot.join("sw-versions")), "3.0.0");
    p.upgrade_gateway(UpgradeKind::Firmware, &up).await;
    p.gateway_reports_until(95, STEP).await;
    sim.wait_reboot_request(STEP).await;
    daemon.stop().await;
    sim.boot();
    daemon = start();
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
}
