//! `activation_window` and `timezone` (issue 15 item 1, docs/config.md
//! `[ota]`): the text is checked here and the zone file read here; when a
//! window opens is `crate::ota::window`'s business.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

/// Where IANA zone names are looked up (tzdata's files, TZif: RFC 8536).
pub const ZONEINFO: &str = "/usr/share/zoneinfo";

/// A daily window in local time, `HH:MM-HH:MM`; it crosses midnight when
/// it ends before it starts (`22:00-05:00`). The start is in it, the end
/// is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minute of the day it opens (0..1440).
    pub start: u32,
    /// Minute of the day it closes (1..=1440; 1440 is `24:00`).
    pub end: u32,
}

impl Window {
    /// Parses a key's value: `"HH:MM-HH:MM"`, or `"always"` (no window:
    /// `None`).
    pub fn parse(s: &str) -> Result<Option<Window>, String> {
        let s = s.trim();
        if s == "always" {
            return Ok(None);
        }
        let bad = || {
            format!(
                "'{s}' is not a window: write \"HH:MM-HH:MM\" in local time (\"22:00-05:00\" \
                 crosses midnight) or \"always\""
            )
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str, end: bool| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            match (h, m) {
                (24, 0) if end => Some(1440),
                (0..=23, 0..=59) => Some(h * 60 + m),
                _ => None,
            }
        };
        let (start, end) = (
            minute(a, false).ok_or_else(bad)?,
            minute(b, true).ok_or_else(bad)?,
        );
        if start == end {
            return Err(format!(
                "'{s}' opens and closes at the same time: for no restriction write \"always\""
            ));
        }
        Ok(Some(Window { start, end }))
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

/// Serde: an optional window (`"always"` is none).
pub(super) fn de_window<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Window>, D::Error> {
    let s = String::deserialize(d)?;
    Window::parse(&s).map_err(serde::de::Error::custom)
}

/// The gateway's time zone, read from a TZif file.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// As configured (an IANA name or a path), or `UTC`.
    pub name: String,
    /// Its rules (transitions and the footer's rule for later times).
    pub tz: Arc<tz::TimeZone>,
}

impl Default for Zone {
    fn default() -> Self {
        Zone {
            name: "UTC".into(),
            tz: Arc::new(tz::TimeZone::utc()),
        }
    }
}

impl Zone {
    /// The zone `name`: an IANA name under [`ZONEINFO`]
    /// (`Europe/Berlin`), or an absolute path to a TZif file.
    pub fn load(name: &str) -> Result<Zone, String> {
        let path = if name.starts_with('/') {
            PathBuf::from(name)
        } else {
            let ok = !name.is_empty()
                && name
                    .split('/')
                    .all(|p| !p.is_empty() && p != "." && p != "..")
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
            if !ok {
                return Err(format!(
                    "'{name}' is not a time zone name (like \"Europe/Berlin\") nor an absolute path"
                ));
            }
            Path::new(ZONEINFO).join(name)
        };
        Self::from_file(name, &path)
    }

    /// The box's own zone (`/etc/localtime`), UTC when it has none.
    pub fn system() -> Result<Zone, String> {
        let p = Path::new("/etc/localtime");
        if !p.exists() {
            return Ok(Zone::default());
        }
        Self::from_file("localtime", p)
    }

    fn from_file(name: &str, path: &Path) -> Result<Zone, String> {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "cannot read the zone file {}: {e} (is tzdata installed?)",
                path.display()
            )
        })?;
        let tz = tz::TimeZone::from_tz_data(&bytes)
            .map_err(|e| format!("{} is not a TZif zone file: {e}", path.display()))?;
        Ok(Zone {
            name: name.to_owned(),
            tz: Arc::new(tz),
        })
    }

    /// Seconds east of UTC at Unix time `t`.
    pub fn offset(&self, t: i64) -> i64 {
        self.tz
            .find_local_time_type(t)
            .map_or(0, |l| i64::from(l.ut_offset()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_print() {
        let w = Window::parse("22:00-05:00").unwrap().unwrap();
        assert_eq!((w.start, w.end), (1320, 300));
        assert_eq!(w.to_string(), "22:00-05:00");
        assert_eq!(
            Window::parse("00:00-24:00").unwrap().unwrap().to_string(),
            "00:00-24:00"
        );
        assert_eq!(Window::parse("always").unwrap(), None);
        for bad in [
            "22-05",
            "22:00",
            "25:00-01:00",
            "22:60-23:00",
            "24:00-01:00",
            "2:00-3:00",
            "x",
        ] {
            let e = Window::parse(bad).unwrap_err();
            assert!(e.contains("is not a window"), "{bad}: {e}");
        }
        let e = Window::parse("03:00-03:00").unwrap_err();
        assert!(e.contains("same time"), "{e}");
    }

    #[test]
    fn zones_are_names_or_paths() {
        for bad in ["../etc/passwd", "Europe/../x", "", "a b"] {
            assert!(
                Zone::load(bad)
                    .unwrap_err()
                    .contains("not a time zone name"),
                "{bad}"
            );
        }
        let e = Zone::load("Mars/Olympus").unwrap_err();
        assert!(
            e.contains("cannot read the zone file /usr/share/zoneinfo/Mars/Olympus"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("zone");
        std::fs::write(&f, b"not tzif").unwrap();
        let e = Zone::load(f.to_str().unwrap()).unwrap_err();
        assert!(e.contains("is not a TZif zone file"), "{e}");
    }
}
