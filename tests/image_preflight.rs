//! Pre-flight from the child (issue 14): an SMP child that reports its slot
//! size ("slot info", group 1 command 6) gets no byte of an image that does
//! not fit; the refusal is result 5 before the first upload chunk.

mod serial_support;

use otabridge::child::{Cause, Child, ErrorKind, Step};
use otabridge::sim::smp_child::{SmpChild, SmpChildOptions};
use serial_support::{child, image, package, Seen};

fn sim(slot_info: bool, slot_size: u64) -> SmpChild {
    let mut o = SmpChildOptions::default();
    o.device.slot_info = slot_info;
    o.device.slot_size = slot_size;
    SmpChild::spawn(o).unwrap()
}

#[tokio::test]
async fn an_image_larger_than_the_reported_slot_is_refused_before_a_byte() {
    let dir = tempfile::tempdir().unwrap();
    let img = image("2.0.0", 20_000, 1);
    let pkg = package(dir.path(), "fw", &img, "2.0.0");

    let small = sim(true, 10_000);
    let c = child("node", &small);
    let seen = Seen::default();
    let e = c.deliver(&pkg, 0, &|n| seen.push(n)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused(Cause::NoStorage), "{e}");
    assert_eq!(e.step(), Step::Deliver { offset: 0 });
    assert!(e.detail().contains("slot holds 10000 (slot info)"), "{e}");
    let v = otabridge::ota::verdict::verdict(otabridge::ota::verdict::Failure::Child(&e));
    assert_eq!(v.code.get(), 5, "{}", v.description);
    assert!(!v.retry);
    assert_eq!(small.stats().first_chunks, 0, "no upload chunk was sent");
    assert!(seen.all().is_empty());

    // A device without slot info finds out itself, after the first chunk.
    let old = sim(false, 10_000);
    let e = child("old", &old)
        .deliver(&pkg, 0, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Refused(_)), "{e:?}");
    assert_eq!(old.stats().first_chunks, 1);

    // A slot that fits: delivered as before.
    let roomy = sim(true, 64 * 1024);
    child("roomy", &roomy)
        .deliver(&pkg, 0, &|_| {})
        .await
        .unwrap();
    assert_eq!(roomy.flash(), img);
}
