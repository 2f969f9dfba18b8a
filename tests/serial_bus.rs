//! Two children on one port (an RS-485 bus): their operations take turns on
//! the line and never interleave.

mod serial_support;

use otabridge::child::link::port::Ports;
use otabridge::child::Child;
use otabridge::sim::smp_child::{SmpChild, SmpChildOptions};
use otabridge_codecs::smp::sim::SimEvent;
use serial_support::{bus_child, image, package};

#[tokio::test]
async fn two_children_on_one_port_are_serialized() {
    let dir = tempfile::tempdir().unwrap();
    // One simulated device answers both: interleaved requests from two
    // uploads with different `sha`s would make it restart its session on
    // every switch, so only a serialized line gives two clean sessions.
    let sim = SmpChild::spawn(SmpChildOptions::default()).unwrap();
    let img_a = image("2.0.0", 12_000, 21);
    let img_b = image("3.0.0", 12_000, 22);
    let pkg_a = package(dir.path(), "a", &img_a, "2.0.0");
    let pkg_b = package(dir.path(), "b", &img_b, "3.0.0");
    let mut ports = Ports::default();
    let a = bus_child(&mut ports, "node-a", &sim);
    let b = bus_child(&mut ports, "node-b", &sim);
    assert!(std::sync::Arc::ptr_eq(a.port(), b.port()));
    let (ra, rb, va) = tokio::join!(
        a.deliver(&pkg_a, 0, &|_| {}),
        b.deliver(&pkg_b, 0, &|_| {}),
        a.read_version(),
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(va.unwrap(), "1.0.0");
    let uploads: Vec<&'static str> = sim
        .events()
        .iter()
        .filter_map(|e| match e {
            SimEvent::UploadStarted { .. } => Some("start"),
            SimEvent::UploadComplete { .. } => Some("complete"),
            SimEvent::UploadResumed { .. } => Some("resumed"),
            _ => None,
        })
        .collect();
    assert_eq!(uploads, ["start", "complete", "start", "complete"]);
    let s = sim.stats();
    assert_eq!((s.sessions, s.first_chunks), (2, 2), "{s:?}");
    // The slot holds the image of whichever upload completed last; which
    // one that is depends on who took the port first, not on this test.
    let last = sim
        .events()
        .iter()
        .rev()
        .find_map(|e| match e {
            SimEvent::UploadComplete { version } => Some(version.clone()),
            _ => None,
        })
        .unwrap();
    let want = if last == "3.0.0" { &img_b } else { &img_a };
    assert!(last == "3.0.0" || last == "2.0.0", "{last}");
    assert!(
        sim.flash() == *want,
        "the slot does not hold the {last} image byte for byte"
    );
}
