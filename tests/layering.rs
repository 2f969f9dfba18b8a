//! The layer order of docs/design.md ("Layer order"), checked: every
//! `crate::<module>` path in the library's code (`use crate::…` lines and
//! paths written inline; comments are skipped) must point at a module in
//! an earlier layer, or be one of the few same-layer arrows the document
//! names. The binary's own files (`main.rs`, `cli*.rs`, `man.rs`, `bin/`)
//! sit above everything and are not checked.

use std::collections::BTreeMap;
use std::path::Path;

/// The layers, lowest first, as docs/design.md lists them. `codecs` is a
/// crate of its own (it cannot name `crate::` at all), so it is not here.
const LAYERS: &[&[&str]] = &[
    &[
        "clock", "config", "journal", "metrics", "tls", "retry", "http",
    ],
    &["platform", "package", "child", "image"],
    &["ota", "gateway"],
    &["exporter", "control"],
    &["daemon"],
    &["sim"],
];

/// Arrows within one layer that docs/design.md names.
const SAME_LAYER: &[(&str, &str)] = &[
    // `Package` lives in `package`; the drivers take it from there.
    ("child", "package"),
    // The gateway's own upgrade is dispatched by `ota` and maps its
    // failures with `ota::verdict`.
    ("ota", "gateway"),
    ("gateway", "ota"),
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The code of a Rust file without its comments (line comments, doc
/// comments and block comments; string literals are kept as they are,
/// which is good enough for `crate::` paths).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Every module of the crate that `code` names through `crate::`,
/// including each item of a `use crate::{a, b::c}` group.
fn targets(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        // `$crate::` in macros and `otabridge_crate::` are not ours.
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group, up to its closing brace.
            let (mut depth, mut start) = (0usize, 0usize);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// The arrows against the order among `files` (module, file, code).
fn violations(files: &[(String, String, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (from, file, text) in files {
        let Some(lf) = layer(from) else {
            bad.push(format!(
                "{file}: module `{from}` is in no layer of docs/design.md"
            ));
            continue;
        };
        for to in targets(&code(text)) {
            if to == *from {
                continue;
            }
            let Some(lt) = layer(&to) else {
                bad.push(format!(
                    "{file}: `crate::{to}` is in no layer of docs/design.md"
                ));
                continue;
            };
            let allowed =
                lt < lf || (lt == lf && SAME_LAYER.contains(&(from.as_str(), to.as_str())));
            if !allowed {
                bad.push(format!(
                    "{file}: `{from}` uses `crate::{to}`, which is not below it"
                ));
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

/// The library's modules and their files: `src/<m>.rs` and `src/<m>/**`.
fn library_files(src: &Path) -> Vec<(String, String, String)> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let binary = ["main", "cli", "cli_sim", "cli_jobs", "man", "lib", "bin"];
    let mut paths = Vec::new();
    walk(src, &mut paths);
    let mut files = Vec::new();
    for p in paths {
        let rel = p.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if binary.contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        files.push((module, format!("src/{}", rel.display()), text));
    }
    files
}

/// The order as docs/design.md writes it.
fn rendered() -> String {
    let mut parts = vec!["`codecs`".to_owned()];
    for l in LAYERS {
        parts.push(
            l.iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    parts.join(" < ")
}

#[test]
fn every_crate_path_follows_the_documented_layer_order() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = library_files(&root.join("src"));
    let modules: BTreeMap<&str, usize> = files.iter().map(|(m, ..)| (m.as_str(), 0)).collect();
    assert!(
        modules.contains_key("ota") && modules.contains_key("child"),
        "{modules:?}"
    );
    let bad = violations(&files);
    assert!(
        bad.is_empty(),
        "arrows against docs/design.md's layer order:\n{}",
        bad.join("\n")
    );
    // The document lists the same order as this test.
    let design = std::fs::read_to_string(root.join("docs/design.md")).unwrap();
    let flat = design.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(&rendered()),
        "docs/design.md does not list the layer order {}",
        rendered()
    );
}

/// The checker finds what it must: an arrow upwards, a same-layer arrow
/// the document does not name, and paths in groups and inline; it skips
/// comments and `$crate`.
#[test]
fn the_checker_catches_arrows_against_the_order() {
    let f = |m: &str, text: &str| (m.to_owned(), format!("src/{m}.rs"), text.to_owned());
    let files = vec![
        f("journal", "use crate::ota::job::Phase;\n"),
        f("package", "use crate::{clock, child::{Package, Step}};\n"),
        f("platform", "fn f() { crate::daemon::run(); }\n"),
        f(
            "child",
            "// crate::ota in a comment\n/* crate::sim */ use crate::package::Package;\n",
        ),
        f("config", "macro_rules! m { () => { $crate::ota::x() } }\n"),
        f(
            "ota",
            "use crate::gateway::SelfUpgrade; use crate::child::Child;\n",
        ),
    ];
    assert_eq!(
        violations(&files),
        vec![
            "src/journal.rs: `journal` uses `crate::ota`, which is not below it".to_owned(),
            "src/package.rs: `package` uses `crate::child`, which is not below it".to_owned(),
            "src/platform.rs: `platform` uses `crate::daemon`, which is not below it".to_owned(),
        ]
    );
}

/// The simulators are a feature (`sim`, off in the Debian package's build):
/// an integration test that uses them must say so in Cargo.toml, or the
/// build without them (`cargo clippy --all-targets --no-default-features`,
/// run by .ci/run) fails to compile it.
#[test]
fn every_test_that_uses_the_simulators_requires_the_sim_feature() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // The needles are built so that this file does not match itself.
        let uses_sim = text.contains(&["otabridge", "::sim"].concat())
            || text.contains(&["mod run", "_support;"].concat());
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let declared = manifest.split("[[test]]").skip(1).any(|t| {
            t.contains(&format!("name = \"{name}\"")) && t.contains("required-features = [\"sim\"]")
        });
        if uses_sim && !declared {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "add a [[test]] entry with required-features = [\"sim\"] to Cargo.toml for: {missing:?}"
    );
}
