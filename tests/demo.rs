//! `otabridge demo` end to end, as a new user runs it: exit status and the
//! final table.

use std::process::Command;

#[test]
fn the_demo_upgrades_every_child_as_expected() {
    let out = Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args([
            "demo",
            "--children",
            "3",
            "--smp-children",
            "1",
            "--image-size",
            "65536",
            "--offline",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("child "))
        .collect();
    let row = |id: &str| {
        *table
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row {id}: {text}"))
    };
    let cols = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    // child, transport, from, ->, to, result, ...
    let ok = cols(row("demo-product_node01"));
    assert_eq!(
        (ok[1].as_str(), ok[4].as_str(), ok[5].as_str()),
        ("sim", "2.0.0", "0"),
        "{text}"
    );
    let bad = cols(row("demo-product_node02"));
    assert_eq!(bad[5], "7", "{text}");
    assert!(row("demo-product_node02").contains("Integrity check failure"));
    let off = cols(row("demo-product_node03"));
    assert_eq!(off[5], "6", "{text}");
    let mcu = cols(row("demo-product_mcu01"));
    assert_eq!(
        (mcu[1].as_str(), mcu[4].as_str(), mcu[5].as_str()),
        ("serial", "2.0.0", "0"),
        "{text}"
    );
    for id in ["demo-product_lwm2m01pull", "demo-product_lwm2m02push"] {
        let c = cols(row(id));
        assert_eq!(
            (c[1].as_str(), c[4].as_str(), c[5].as_str()),
            ("coap", "2.0.0", "0"),
            "{text}"
        );
    }
    // The registering child (queue mode, delivery auto) and the
    // registrations in the summary.
    let reg = cols(row("demo-product_lwm2m-reg"));
    assert_eq!(
        (reg[1].as_str(), reg[4].as_str(), reg[5].as_str()),
        ("coap", "2.0.0", "0"),
        "{text}"
    );
    assert!(text.contains("LwM2M registrations: 1 now"), "{text}");
    assert!(text.contains("urn:dev:demo-queue-1"), "{text}");
    assert!(text.contains("queue mode"), "{text}");
    assert!(text.contains("7 of 7 children ended as expected"), "{text}");
}

#[test]
fn the_demo_fault_mix_ends_on_the_new_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args([
            "demo",
            "--children",
            "1",
            "--smp-children",
            "1",
            "--image-size",
            "32768",
            "--loss",
            "10",
            "--reboots",
            "--no-bad-sign",
            "--seed",
            "5",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = text
        .lines()
        .find(|l| l.starts_with("child "))
        .unwrap_or_else(|| panic!("no table: {text}"));
    assert!(header.contains("retries"), "{header}");
    for id in [
        "demo-product_node01",
        "demo-product_lwm2m01pull",
        "demo-product_lwm2m02push",
        "demo-product_mcu01",
    ] {
        let row = text
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row {id}: {text}"));
        let c: Vec<&str> = row.split_whitespace().collect();
        assert_eq!((c[4], c[5]), ("2.0.0", "0"), "{text}");
        // child, transport, from, ->, to, result, time, bytes, retries
        let retries: u64 = c[8].parse().unwrap();
        if id.contains("node") {
            assert_eq!(retries, 0, "an in-process child has no link: {text}");
        } else {
            // SMP answers dropped, CoAP datagrams lost: resent, and counted.
            assert!(retries > 0, "{id}: losses are retried: {text}");
        }
    }
    assert!(text.contains("5 of 5 children ended as expected"), "{text}");
}

#[test]
fn the_demo_refuses_a_loss_it_cannot_carry() {
    let out = Command::new(env!("CARGO_BIN_EXE_otabridge"))
        .args(["demo", "--loss", "80"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--loss must be between 0 and 30"), "{err}");
}
