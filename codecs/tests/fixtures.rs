//! Replays every case in `fixtures/{coap,smp,framed}` against the sans-IO
//! engines, one test per file, with one runner (`fixture::replay`) and one
//! schema (`fixture::schema`, docs/fixtures.md). IoTDA cases need the
//! daemon: `tests/fixtures_iotda.rs` runs them with the same schema.
//!
//! Run one case: `cargo test -p otabridge-codecs --test fixtures -- block1_lost_ack`.

mod fixture;

use std::path::Path;

use fixture::schema::Case;

fn load(path: &Path, text: &str) -> Result<Case, String> {
    Case::parse(text).map_err(|e| format!("{}: {e}", path.display()))
}

fn run(path: &Path, case: &Case) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut subject = fixture::subject(case, dir)?;
    fixture::replay(case, subject.as_mut())
}

/// A case outside `broken/`: it must replay cleanly.
fn good(path: &Path, text: String) -> datatest_stable::Result<()> {
    let case = load(path, &text)?;
    if case.must_fail.is_some() {
        return Err(format!(
            "{}: `must_fail` cases belong in a broken/ folder",
            path.display()
        )
        .into());
    }
    run(path, &case).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// A case in a `broken/` folder: the runner itself must reject it, with an
/// error containing its `must_fail` text. These keep the runner honest: a
/// replay that cannot fail proves nothing.
fn broken(path: &Path, text: String) -> datatest_stable::Result<()> {
    let case = load(path, &text)?;
    let Some(want) = case.must_fail.clone() else {
        return Err(format!("{}: a broken/ case needs `must_fail`", path.display()).into());
    };
    match run(path, &case) {
        Ok(()) => Err(format!(
            "{}: replayed cleanly, expected failure \"{want}\"",
            path.display()
        )
        .into()),
        Err(e) if e.contains(&want) => Ok(()),
        Err(e) => Err(format!("{}: failed with\n{e}\nnot with \"{want}\"", path.display()).into()),
    }
}

datatest_stable::harness! {
    { test = good, root = "../fixtures", pattern = r"^(coap|smp|framed)/[^/]+\.toml$" },
    { test = broken, root = "../fixtures", pattern = r"^(coap|smp|framed)/broken/[^/]+\.toml$" },
}
