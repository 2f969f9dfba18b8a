//! The serial link across a port that goes away and comes back, as a
//! USB-CDC child's port does while the child reboots (issue 12, defect 5):
//! the device node vanishes, reads end, and a second or more later the
//! device is back, under a new node behind the same `/dev/serial/by-id`
//! link. Here the device is a pty behind a symlink; it vanishes for 1.5 s
//! and returns as another pty. Time is paused: the waits are virtual, the
//! pty I/O is real.

use std::path::{Path, PathBuf};
use std::time::Duration;

use otabridge::child::link::port::{PortError, PortSettings, SharedPort};
use otabridge::config::Framing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialStream};

/// Reads of a test end after this many, so a broken link fails the test
/// instead of hanging it.
const READ_BUDGET: usize = 1000;

/// A pty standing for the device behind `link`: the symlink points at its
/// slave, whose end stays open here so only the test decides when the
/// device goes away.
struct Device {
    master: SerialStream,
    _slave: SerialStream,
}

fn plug(link: &Path) -> Device {
    let (master, slave) = SerialStream::pair().unwrap();
    let node = slave.name().unwrap();
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(node, link).unwrap();
    Device {
        master,
        _slave: slave,
    }
}

/// The device after its reboot: prints its banner every 100 ms (a driver
/// that opens the port at any moment sees one) until `want` arrives, then
/// answers `reply`.
async fn booted(mut dev: Device, want: &'static [u8], reply: &'static [u8]) -> Device {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    for _ in 0..READ_BUDGET {
        tokio::select! {
            r = dev.master.read(&mut buf) => {
                got.extend_from_slice(&buf[..r.unwrap()]);
                if got.windows(want.len()).any(|w| w == want) {
                    dev.master.write_all(reply).await.unwrap();
                    return dev;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                dev.master.write_all(b"*** Booting Zephyr OS ***\n").await.unwrap();
            }
        }
    }
    panic!("the driver never wrote {want:?}");
}

async fn read_until(link: &mut otabridge::child::link::port::Link<'_>, want: &[u8]) {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    for _ in 0..READ_BUDGET {
        let n = link.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
        if got.windows(want.len()).any(|w| w == want) {
            return;
        }
    }
    panic!("never read {want:?}; got {got:?}");
}

fn settings(reopen: Duration) -> PortSettings {
    PortSettings {
        reopen_timeout: reopen,
        ..PortSettings::new(115_200, Framing::EIGHT_N_ONE)
    }
}

fn by_id(dir: &Path) -> PathBuf {
    dir.join("usb-Acme_Sensor_0001-if00")
}

#[tokio::test(start_paused = true)]
async fn a_port_that_goes_away_while_the_child_reboots_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = by_id(dir.path());
    let mut dev = plug(&path);
    let port = SharedPort::new(&path, settings(Duration::from_secs(10)));
    let mut link = port.lock().await.unwrap();
    link.write(b"reset\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = dev.master.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"reset\n");

    // The child resets: its USB device, and with it the port, is gone for
    // 1.5 s; then it is back as another node behind the same link.
    let node_before = std::fs::read_link(&path).unwrap();
    drop(dev);
    std::fs::remove_file(&path).unwrap();
    let back = {
        let path = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            // Another pty takes the freed node number, so the device comes
            // back under a new node, as a re-enumerated USB device may.
            let squatter = SerialStream::pair().unwrap();
            let dev = plug(&path);
            drop(squatter);
            booted(dev, b"state\n", b"ok\n").await
        })
    };
    let away = tokio::time::Instant::now();
    // The driver's read waits through the outage and sees the banner...
    read_until(&mut link, b"*** Booting Zephyr OS ***\n").await;
    assert!(away.elapsed() >= Duration::from_millis(1500));
    assert_ne!(std::fs::read_link(&path).unwrap(), node_before);
    // ...and the line works both ways on the port that came back.
    link.write(b"state\n").await.unwrap();
    read_until(&mut link, b"ok\n").await;
    let _dev = back.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_write_while_the_port_is_away_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = by_id(dir.path());
    let dev = plug(&path);
    let port = SharedPort::new(&path, settings(Duration::from_secs(10)));
    let mut link = port.lock().await.unwrap();
    drop(dev);
    std::fs::remove_file(&path).unwrap();
    let back = {
        let path = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            booted(plug(&path), b"hello\n", b"ok\n").await
        })
    };
    // The write fails on the vanished port, waits, and goes out whole on
    // the new one.
    link.write(b"hello\n").await.unwrap();
    read_until(&mut link, b"ok\n").await;
    let _dev = back.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_port_that_stays_away_is_gone_after_the_reopen_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = by_id(dir.path());
    let dev = plug(&path);
    let port = SharedPort::new(&path, settings(Duration::from_secs(3)));
    {
        let mut link = port.lock().await.unwrap();
        drop(dev);
        std::fs::remove_file(&path).unwrap();
        let t = tokio::time::Instant::now();
        let mut buf = [0u8; 16];
        let e = link.read(&mut buf).await.unwrap_err();
        assert!(matches!(e, PortError::Gone { .. }), "{e}");
        assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(e.to_string().contains("did not come back within 3s"), "{e}");
    }
    // The next operation does not wait again for a port already given up
    // on: one attempt, then the same error...
    let t = tokio::time::Instant::now();
    let e = port.lock().await.unwrap_err();
    assert!(matches!(e, PortError::Gone { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // ...and takes the port again as soon as it is back.
    let mut dev = plug(&path);
    let mut link = port.lock().await.unwrap();
    link.write(b"again\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = dev.master.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"again\n");
}

#[tokio::test(start_paused = true)]
async fn a_port_that_never_opened_is_an_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = SharedPort::new(&by_id(dir.path()), settings(Duration::from_secs(60)));
    let t = tokio::time::Instant::now();
    let e = port.lock().await.unwrap_err();
    assert!(matches!(e, PortError::Open { .. }), "{e}");
    assert_eq!(t.elapsed(), Duration::ZERO);
}
