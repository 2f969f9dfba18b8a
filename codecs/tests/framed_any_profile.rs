//! "The engine runs any valid profile": profiles generated at random across
//! every dimension the format has (sync, header order, sequence byte, length
//! type and coverage, CRC algorithm, coverage and byte order, field types and
//! byte orders, optional messages and fields) are parsed, then an upgrade runs
//! against the simulator playing the same profile, over a line that drops
//! frames, with a child that reboots mid-transfer. Every valid profile must
//! deliver the image byte for byte. The seeds are fixed: the run is the same
//! every time.

use std::fmt::Write as _;
use std::sync::Arc;

use otabridge_codecs::framed::engine::{Engine, Event, ImageInfo, Outcome, Upgrade};
use otabridge_codecs::framed::profile::{Profile, ProfileErrorKind};
use otabridge_codecs::framed::sim::{Device, DeviceConfig, Link, LinkFaults};
use otabridge_codecs::rng::Rng;
use otabridge_codecs::time::Instant;

const UINTS: [&str; 5] = ["u8", "u16le", "u16be", "u32le", "u32be"];
const WIDE: [&str; 4] = ["u16le", "u16be", "u32le", "u32be"];
const CRCS: [&str; 6] = [
    "none",
    "crc8",
    "crc16-modbus",
    "crc16-ccitt-false",
    "crc16-xmodem",
    "crc32",
];

/// Random choices, drawn from a seed so a failing case names its seed.
struct Gen(Rng);

impl Gen {
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.0.range_inclusive(0, from.len() as u64 - 1) as usize]
    }
    fn coin(&mut self) -> bool {
        self.0.next_u32() & 1 == 1
    }
    fn list(items: &[&str]) -> String {
        let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }
}

/// A random profile's text.
fn generate(seed: u64) -> String {
    let mut g = Gen(Rng::new(seed));
    let mut t = String::new();
    let sync_len = g.0.range_inclusive(1, 4) as usize;
    let mut sync = vec![0u8; sync_len];
    g.0.fill(&mut sync);
    let sync: Vec<String> = sync.iter().map(|b| format!("{b:02x}")).collect();

    let mut header = vec!["command", "length"];
    if g.coin() {
        header.swap(0, 1);
    }
    let seq = g.coin();
    if seq {
        let at = g.0.range_inclusive(0, 2) as usize;
        header.insert(at, "seq");
    }
    let crc = g.pick(&CRCS);
    let mut covers = vec!["payload"];
    for part in ["sync", "command", "seq", "length", "crc"] {
        let present = match part {
            "seq" => seq,
            "crc" => crc != "none",
            _ => true,
        };
        if present && g.coin() {
            covers.push(part);
        }
    }
    let length = g.pick(&UINTS);
    writeln!(t, "[protocol]\nname = \"gen-{seed}\"\n\n[framing]").unwrap();
    writeln!(t, "sync = \"{}\"", sync.join(" ")).unwrap();
    writeln!(t, "header = {}", Gen::list(&header)).unwrap();
    writeln!(
        t,
        "length = {{ type = \"{length}\", covers = {} }}",
        Gen::list(&covers)
    )
    .unwrap();
    if crc == "none" {
        writeln!(t, "crc = {{ algorithm = \"none\" }}").unwrap();
    } else {
        let order: Vec<&str> = std::iter::once("sync")
            .chain(header.iter().copied())
            .chain(["payload"])
            .collect();
        let lo = g.0.range_inclusive(0, order.len() as u64 - 1) as usize;
        let hi = g.0.range_inclusive(lo as u64, order.len() as u64 - 1) as usize;
        let endian = if g.coin() { "big" } else { "little" };
        writeln!(
            t,
            "crc = {{ algorithm = \"{crc}\", covers = {}, endian = \"{endian}\" }}",
            Gen::list(&order[lo..=hi])
        )
        .unwrap();
    }

    let status = g.pick(&UINTS);
    let st = format!("{{ name = \"status\", type = \"{status}\" }}");
    let mut version = || match g.0.range_inclusive(0, 2) {
        0 => "{ name = \"version\", type = \"bytes\", prefix = \"u8\" }".to_string(),
        1 => "{ name = \"version\", type = \"bytes\", len = 12 }".to_string(),
        _ => "{ name = \"version\", type = \"bytes\", prefix = \"u16be\" }".to_string(),
    };
    let (v1, v2) = (version(), version());
    let use_sha = g.coin();
    let digest = if use_sha {
        "{ name = \"sha256\", type = \"bytes\", len = 32 }".to_string()
    } else {
        format!(
            "{{ name = \"crc32\", type = \"{}\" }}",
            g.pick(&["u32le", "u32be"])
        )
    };
    let max_chunk = [16u32, 50, 64, 200][g.0.range_inclusive(0, 3) as usize];
    let data = match g.0.range_inclusive(0, 2) {
        0 => "{ name = \"data\", type = \"bytes\", prefix = \"u8\" }".to_string(),
        1 => format!(
            "{{ name = \"data\", type = \"bytes\", prefix = \"{}\" }}",
            g.pick(&WIDE)
        ),
        _ => "{ name = \"data\", type = \"bytes\" }".to_string(),
    };
    let off = |g: &mut Gen| format!("{{ name = \"offset\", type = \"{}\" }}", g.pick(&WIDE));
    let common = "timeout_ms = 100\nretries = 10";
    writeln!(
        t,
        "\n[messages.version_query]\ncommand = 1\nrequest = [{{ type = \"const\", hex = \"5A\" }}]\n\
         reply_command = 129\nreply = [{st}, {v1}]\n{common}"
    )
    .unwrap();
    writeln!(
        t,
        "\n[messages.begin]\ncommand = 2\nrequest = [{{ name = \"size\", type = \"{}\" }}, {digest}, {v2}]\n\
         reply_command = 130\nreply = [{st}]\n{common}",
        g.pick(&WIDE)
    )
    .unwrap();
    if g.coin() {
        let o = off(&mut g);
        writeln!(
            t,
            "\n[messages.offset_query]\ncommand = 3\nreply_command = 131\nreply = [{st}, {o}]\n{common}"
        )
        .unwrap();
    }
    let o = off(&mut g);
    let reply_offset = if g.coin() {
        format!(", {}", off(&mut g))
    } else {
        String::new()
    };
    writeln!(
        t,
        "\n[messages.chunk]\ncommand = 4\nrequest = [{o}, {data}]\nreply_command = 132\n\
         reply = [{st}{reply_offset}]\nmax_chunk = {max_chunk}\n{common}"
    )
    .unwrap();
    writeln!(
        t,
        "\n[messages.verify]\ncommand = 5\nrequest = [{digest}]\nreply_command = 133\nreply = [{st}]\n{common}"
    )
    .unwrap();
    if g.coin() {
        writeln!(t, "\n[messages.activate]\ncommand = 6\nreply_command = 134\nreply = [{st}]\n{common}\nsettle_ms = 700").unwrap();
    } else {
        writeln!(t, "\n[messages.activate]\ncommand = 6\nrequest = [{{ name = \"_pad\", type = \"u32le\" }}]\nretries = 5\nsettle_ms = 700").unwrap();
    }
    for (v, means) in [(0, "ok"), (1, "retry"), (2, "restart"), (3, "resync")] {
        writeln!(t, "\n[[status]]\nvalue = {v}\nmeans = \"{means}\"").unwrap();
    }
    for (v, code) in [(16, 5), (17, 7), (18, 10)] {
        writeln!(
            t,
            "\n[[status]]\nvalue = {v}\nmeans = \"fail\"\nresult_code = {code}"
        )
        .unwrap();
    }
    t
}

fn upgrade(p: Arc<Profile>, seed: u64) -> Result<(), String> {
    let mut img = vec![0u8; 700 + (seed % 300) as usize];
    Rng::new(seed).fill(&mut img);
    let up = Upgrade {
        image: ImageInfo::of(&img, "9.8.7"),
        skip_if_current: false,
        version_policy: Default::default(),
        seed,
    };
    let mut e = Engine::new(Arc::clone(&p), up, Instant::ZERO).unwrap();
    let mut cfg = DeviceConfig::new("1.0");
    cfg.reboot_at_offset = Some(img.len() as u32 / 2);
    let mut d = Device::new(Arc::clone(&p), cfg);
    let faults = LinkFaults {
        drop: 0.05,
        ..LinkFaults::default()
    };
    let (mut up_link, mut down_link) = (Link::new(faults, seed), Link::new(faults, !seed));
    let mut now = Instant::ZERO;
    for _ in 0..20_000 {
        if let Some(r) = e.poll_read() {
            let end = r.offset as usize + r.len;
            e.handle_data(r.offset, &img[r.offset as usize..end], now)
                .unwrap();
        }
        let mut moved = false;
        while let Some(b) = e.poll_transmit() {
            d.handle_input(&up_link.carry(&b), now);
            moved = true;
        }
        while let Some(b) = d.poll_transmit() {
            e.handle_input(&down_link.carry(&b), now);
            moved = true;
        }
        while let Some(ev) = e.poll_event() {
            if let Event::Finished(o) = ev {
                let want = Outcome::Upgraded {
                    version: "9.8.7".into(),
                };
                if o != want {
                    return Err(format!("{o:?}"));
                }
                if d.installed() != Some(&img[..]) {
                    return Err("the installed image differs".into());
                }
                return Ok(());
            }
        }
        if moved {
            continue;
        }
        let next = [e.poll_timeout(), d.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(t) => now = now.max(t),
            None if e.poll_read().is_some() => {}
            None => return Err("engine stalled".into()),
        }
        e.handle_timeout(now);
        d.handle_timeout(now);
    }
    Err("step budget exhausted".into())
}

#[test]
fn every_valid_generated_profile_upgrades() {
    let mut upgraded = 0;
    let mut failures = Vec::new();
    for seed in 0..300 {
        let text = generate(seed);
        match Profile::parse(&text, "generated.toml") {
            Ok(p) => match upgrade(Arc::new(p), seed) {
                Ok(()) => upgraded += 1,
                Err(e) => failures.push(format!("seed {seed}: {e}\n{text}")),
            },
            // The generator may pick a length field or a data prefix too
            // narrow for its largest message; nothing else may be wrong.
            Err(e) => {
                let narrow = matches!(
                    e.kind,
                    ProfileErrorKind::PayloadTooLarge { .. }
                        | ProfileErrorKind::ChunkTooLargeForPrefix { .. }
                );
                if !narrow {
                    failures.push(format!("seed {seed}: {e}\n{text}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        upgraded >= 150,
        "only {upgraded} of 300 generated profiles were valid"
    );
}

#[test]
fn the_generator_covers_the_format() {
    // Enough generated profiles are valid, and they differ where it matters.
    let mut valid = 0;
    let mut seen = std::collections::HashSet::new();
    for seed in 0..200 {
        if let Ok(p) = Profile::parse(&generate(seed), "generated.toml") {
            valid += 1;
            let f = &p.framing;
            seen.insert((
                f.has_seq(),
                f.crc.as_ref().map(|c| (c.algorithm, c.big_endian)),
                f.length,
            ));
        }
    }
    assert!(valid >= 100, "{valid} of 200 valid");
    assert!(seen.len() >= 30, "{} framing combinations", seen.len());
}
