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
    assert!(text.contains("6 of 6 children ended as expected"), "{text}");
}
