//! Reading the gateway's running firmware or software version
//! (`version_file`, `version_command`, or the installer's own record).
//!
//! The installers' records:
//! - RAUC: `rauc [args] status --detailed --output-format=json`; the slot
//!   whose `state` is `booted` and its `slot_status.bundle.version` (the
//!   `version` of the manifest of the bundle RAUC installed into it).
//! - Mender: `mender [args] show-artifact` (the running artifact's name).
//! - dpkg: `dpkg-query [args] --showformat='${db:Status-Status} ${Version}'
//!   --show PACKAGE`, only for a package in state `installed` (a package
//!   dpkg unpacked but could not configure does not run its new version).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::proc::{self, ProcError};
use crate::config::{InstallConfig, Installer, VersionSource};

/// The version could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The command could not run to the end.
    #[error(transparent)]
    Run(#[from] ProcError),
    /// The command failed.
    #[error("{program} exited with {status}{}", tail(.stderr))]
    Exit {
        /// The program.
        program: String,
        /// `status N` or `signal N`.
        status: String,
        /// The last lines of its standard error.
        stderr: Vec<String>,
    },
    /// The version file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command or file gave no version.
    #[error("{0}")]
    Missing(String),
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join(" | "))
    }
}

/// The first non-empty line of `text`, trimmed.
fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// The version in a version file: without `key`, its first non-empty line;
/// with `key`, the value of the first line `key value` or `key=value`
/// (quotes around the value removed, as in `/etc/os-release`). `#` lines
/// are comments.
pub fn from_file_text(text: &str, key: Option<&str>) -> Option<String> {
    let lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let value = match key {
        None => lines.map(str::to_owned).next()?,
        Some(k) => lines
            .filter_map(|l| {
                let rest = l.strip_prefix(k)?;
                let rest = rest.strip_prefix('=').or_else(|| {
                    rest.starts_with(char::is_whitespace)
                        .then(|| rest.trim_start())
                })?;
                Some(rest.trim().to_owned())
            })
            .next()?,
    };
    let v = value.trim_matches(|c| c == '"' || c == '\'').trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// The booted slot's bundle version in `rauc status --detailed
/// --output-format=json`.
pub fn from_rauc_status(json: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| format!("rauc status is not the JSON expected: {e}"))?;
    let slots = v
        .get("slots")
        .and_then(Value::as_array)
        .ok_or("rauc status has no slots")?;
    for entry in slots {
        let Some(map) = entry.as_object() else {
            continue;
        };
        for (name, slot) in map {
            if slot.get("state").and_then(Value::as_str) != Some("booted") {
                continue;
            }
            return slot
                .pointer("/slot_status/bundle/version")
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_owned())
                .ok_or_else(|| {
                    format!(
                        "rauc status has no bundle version for the booted slot {name} \
                         (it was not installed by RAUC)"
                    )
                });
        }
    }
    Err(format!(
        "rauc status shows no booted slot (booted: {})",
        v.get("booted").and_then(Value::as_str).unwrap_or("unknown")
    ))
}

/// The version in `dpkg-query --showformat='${db:Status-Status} ${Version}'`.
pub fn from_dpkg_query(out: &str, package: &str) -> Result<String, String> {
    let line =
        first_line(out).ok_or_else(|| format!("dpkg-query printed nothing for {package}"))?;
    match line.split_once(' ') {
        Some(("installed", v)) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        Some((state, v)) => Err(format!(
            "package {package} {} is {state}, not installed",
            v.trim()
        )),
        None => Err(format!("package {package} is {line}, not installed")),
    }
}

/// The preset command that reads the installer's record.
fn installer_argv(cfg: &InstallConfig) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    let (program, tail): (&str, Vec<String>) = match cfg.installer {
        Installer::Rauc => (
            "rauc",
            vec![
                "status".into(),
                "--detailed".into(),
                "--output-format=json".into(),
            ],
        ),
        Installer::Mender => ("mender", vec!["show-artifact".into()]),
        Installer::Dpkg => (
            "dpkg-query",
            vec![
                "--showformat=${db:Status-Status} ${Version}".into(),
                "--show".into(),
                cfg.package.clone(),
            ],
        ),
        // The configuration requires a file or a command for these.
        Installer::Swupdate | Installer::Command => ("true", Vec::new()),
    };
    argv.push(program.into());
    argv.extend(cfg.args.iter().cloned());
    argv.extend(tail);
    argv
}

async fn command_stdout(argv: &[String], limit: Duration) -> Result<String, VersionError> {
    let out = proc::run_output(argv, limit).await?;
    if !out.status.success() {
        return Err(VersionError::Exit {
            program: argv[0].clone(),
            status: proc::describe_status(out.status),
            stderr: out.stderr_tail,
        });
    }
    Ok(out.stdout)
}

async fn read_file(path: &Path, key: Option<&str>) -> Result<String, VersionError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| VersionError::Read {
            path: path.to_owned(),
            source,
        })?;
    from_file_text(&text, key).ok_or_else(|| {
        VersionError::Missing(match key {
            Some(k) => format!("{} has no entry {k}", path.display()),
            None => format!("{} is empty", path.display()),
        })
    })
}

/// Reads the running version as `cfg` says, within `limit`.
pub async fn read(cfg: &InstallConfig, limit: Duration) -> Result<String, VersionError> {
    match &cfg.version {
        VersionSource::File { path, key } => read_file(path, key.as_deref()).await,
        VersionSource::Command(argv) => {
            let out = command_stdout(argv, limit).await?;
            first_line(&out)
                .ok_or_else(|| VersionError::Missing(format!("{} printed no version", argv[0])))
        }
        VersionSource::Installer => {
            let argv = installer_argv(cfg);
            let out = command_stdout(&argv, limit).await?;
            match cfg.installer {
                Installer::Rauc => from_rauc_status(&out).map_err(VersionError::Missing),
                Installer::Dpkg => {
                    from_dpkg_query(&out, &cfg.package).map_err(VersionError::Missing)
                }
                _ => first_line(&out).ok_or_else(|| {
                    VersionError::Missing(format!("{} printed no version", argv[0]))
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_files() {
        assert_eq!(
            from_file_text("\n 2.0.1 \nx\n", None).as_deref(),
            Some("2.0.1")
        );
        let sw = "# components\nbootloader 2023.01\nrootfs 4.2.0\n";
        assert_eq!(from_file_text(sw, Some("rootfs")).as_deref(), Some("4.2.0"));
        assert_eq!(from_file_text(sw, Some("root")), None, "whole names only");
        let os = "NAME=\"Box OS\"\nVERSION_ID=\"4.2\"\n";
        assert_eq!(
            from_file_text(os, Some("VERSION_ID")).as_deref(),
            Some("4.2")
        );
        assert_eq!(from_file_text("", None), None);
        assert_eq!(from_file_text("rootfs \"\"\n", Some("rootfs")), None);
    }

    /// Shaped as RAUC 1.8 prints it (`rauc status --detailed
    /// --output-format=json`, read from Debian's rauc 1.8-2 on a
    /// file-backed two-slot system).
    const RAUC: &str = r#"{"compatible":"otabridge-test","variant":"","booted":"B","boot_primary":"rootfs.1",
      "slots":[{"rootfs.1":{"class":"rootfs","device":"/x/slot-b.img","type":"raw","bootname":"B",
        "state":"booted","parent":null,"mountpoint":null,"boot_status":"good",
        "slot_status":{"bundle":{"compatible":"otabridge-test","version":"2.0.0"},"status":"ok"}}},
      {"rootfs.0":{"class":"rootfs","device":"/x/slot-a.img","type":"raw","bootname":"A",
        "state":"inactive","parent":null,"mountpoint":null,"boot_status":"good",
        "slot_status":{"bundle":{"compatible":"otabridge-test","version":"1.0.0"}}}}]}"#;

    #[test]
    fn rauc_status_gives_the_booted_slots_bundle() {
        assert_eq!(from_rauc_status(RAUC).unwrap(), "2.0.0");
        let factory = RAUC
            .replace("\"state\":\"booted\"", "\"state\":\"x\"")
            .replace("\"state\":\"inactive\"", "\"state\":\"booted\"")
            .replace("\"version\":\"1.0.0\"", "\"other\":1");
        let e = from_rauc_status(&factory).unwrap_err();
        assert!(
            e.contains("rootfs.0") && e.contains("not installed by RAUC"),
            "{e}"
        );
        assert!(from_rauc_status("{}").is_err());
        assert!(from_rauc_status("not json").unwrap_err().contains("JSON"));
    }

    fn cfg(installer: Installer, version: VersionSource) -> InstallConfig {
        InstallConfig {
            installer,
            command: None,
            args: vec!["--root=/r".into()],
            version,
            after: crate::config::After::None,
            commit: None,
            package: "otabridge".into(),
        }
    }

    #[test]
    fn installer_records_are_read_with_the_args() {
        assert_eq!(
            installer_argv(&cfg(Installer::Dpkg, VersionSource::Installer)),
            [
                "dpkg-query",
                "--root=/r",
                "--showformat=${db:Status-Status} ${Version}",
                "--show",
                "otabridge"
            ]
        );
        assert_eq!(
            installer_argv(&cfg(Installer::Rauc, VersionSource::Installer)),
            [
                "rauc",
                "--root=/r",
                "status",
                "--detailed",
                "--output-format=json"
            ]
        );
    }

    #[test]
    fn dpkg_query_counts_installed_packages_only() {
        assert_eq!(
            from_dpkg_query("installed 2.0.0-1", "x").unwrap(),
            "2.0.0-1"
        );
        let e = from_dpkg_query("unpacked 3.0.0", "x").unwrap_err();
        assert_eq!(e, "package x 3.0.0 is unpacked, not installed");
        assert!(from_dpkg_query("", "x").is_err());
    }

    #[tokio::test]
    async fn files_and_commands() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sw-versions");
        std::fs::write(&f, "rootfs 3.1\n").unwrap();
        let limit = Duration::from_secs(30);
        let c = cfg(
            Installer::Swupdate,
            VersionSource::File {
                path: f.clone(),
                key: Some("rootfs".into()),
            },
        );
        assert_eq!(read(&c, limit).await.unwrap(), "3.1");
        let c = cfg(
            Installer::Command,
            VersionSource::File {
                path: dir.path().join("none"),
                key: None,
            },
        );
        assert!(matches!(
            read(&c, limit).await,
            Err(VersionError::Read { .. })
        ));
        let sh = |s: &str| vec!["/bin/sh".to_owned(), "-c".into(), s.into()];
        let c = cfg(
            Installer::Command,
            VersionSource::Command(sh("echo; echo ' 9.9 '")),
        );
        assert_eq!(read(&c, limit).await.unwrap(), "9.9");
        let c = cfg(
            Installer::Command,
            VersionSource::Command(sh("echo no such slot >&2; exit 4")),
        );
        let e = read(&c, limit).await.unwrap_err().to_string();
        assert_eq!(e, "/bin/sh exited with status 4: no such slot");
    }
}
