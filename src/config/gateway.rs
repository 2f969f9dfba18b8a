//! `[gateway]`: the gateway's own upgrade, handed to the installer the box
//! already uses (docs/config.md, "[gateway]"; docs/operations.md, "The
//! gateway's own upgrade").
//!
//! Two optional sub-tables, `[gateway.firmware]` and `[gateway.software]`,
//! say which installer takes `firmware_upgrade[_v2]` and
//! `software_upgrade[_v2]` events for the gateway's own device id, how the
//! running version is read back, and what makes the new version run (a
//! reboot, otabridge restarting itself, or nothing). Without a sub-table the
//! event is refused with result 8.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The placeholder in an installer command that becomes the verified
/// package's path.
pub const FILE_PLACEHOLDER: &str = "{file}";

/// The installer a `[gateway.*]` table hands packages to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Installer {
    /// SWUpdate: `swupdate -v [args] -i {file}` (a `.swu` image).
    Swupdate,
    /// RAUC: `rauc [args] install {file}` (a bundle), through the RAUC service.
    Rauc,
    /// Mender (standalone mode): `mender [args] install {file}` (an artifact).
    Mender,
    /// Debian packages: `dpkg [args] --install {file}`.
    Dpkg,
    /// The box vendor's own command (`command`, with `{file}`).
    Command,
}

impl Installer {
    /// The name used in the configuration and in descriptions.
    pub fn name(self) -> &'static str {
        match self {
            Installer::Swupdate => "swupdate",
            Installer::Rauc => "rauc",
            Installer::Mender => "mender",
            Installer::Dpkg => "dpkg",
            Installer::Command => "command",
        }
    }
}

/// What makes the installed version the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum After {
    /// Reboot the box (`reboot_command`); the restarted daemon reads the
    /// version and reports.
    Reboot,
    /// otabridge restarts itself on the new binary (its own package).
    Restart,
    /// The new version runs as soon as the installer exits.
    None,
}

/// How the running version is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// The installer's own record: RAUC's booted slot, Mender's artifact
    /// name, dpkg's package version.
    Installer,
    /// A file: its first non-empty line, or with `key` the value of the
    /// line `key value` / `key=value` (`/etc/sw-versions`, `/etc/os-release`).
    File {
        /// The file.
        path: PathBuf,
        /// The entry to take.
        key: Option<String>,
    },
    /// A command whose standard output's first non-empty line is the version.
    Command(Vec<String>),
}

/// One of `[gateway.firmware]` / `[gateway.software]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallConfig {
    /// The installer.
    pub installer: Installer,
    /// The command run instead of the preset's (`command` installer: the
    /// only command). Holds [`FILE_PLACEHOLDER`].
    pub command: Option<Vec<String>>,
    /// Extra arguments right after the preset's program name (also given
    /// to the preset's version and commit commands).
    pub args: Vec<String>,
    /// How the running version is read.
    pub version: VersionSource,
    /// What makes the new version run.
    pub after: After,
    /// Run once the new version was read back (Mender's preset: `mender
    /// commit`); `None`: nothing.
    pub commit: Option<Vec<String>>,
    /// dpkg: the package whose version is read (default `otabridge`).
    pub package: String,
}

/// `[gateway]`, validated. [`GatewayConfig::default`] is the file without
/// the section: no installer, every gateway upgrade refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `[gateway.firmware]`.
    pub firmware: Option<InstallConfig>,
    /// `[gateway.software]`.
    pub software: Option<InstallConfig>,
    /// Run to reboot the box (default `systemctl reboot`).
    pub reboot_command: Vec<String>,
    /// A file whose content changes at every boot, to tell a reboot from a
    /// restart of the daemon alone.
    pub boot_id_file: PathBuf,
    /// Start an install while child upgrade jobs run (default false: the
    /// install waits until none does; the download does not wait).
    pub install_while_children_busy: bool,
    /// The installer is stopped after this long (result 10).
    pub install_timeout: Duration,
    /// After the reboot command, how long the daemon may still be running
    /// before the job fails (the box did not reboot).
    pub reboot_timeout: Duration,
    /// Reading a version (a command, or a file).
    pub version_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            firmware: None,
            software: None,
            reboot_command: vec!["systemctl".into(), "reboot".into()],
            boot_id_file: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            install_while_children_busy: false,
            install_timeout: Duration::from_secs(3600),
            reboot_timeout: Duration::from_secs(600),
            version_timeout: Duration::from_secs(60),
        }
    }
}

/// `[gateway]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    firmware: Option<RawInstall>,
    software: Option<RawInstall>,
    reboot_command: Option<Vec<String>>,
    boot_id_file: Option<PathBuf>,
    install_while_children_busy: Option<bool>,
    install_timeout_secs: Option<u64>,
    reboot_timeout_secs: Option<u64>,
    version_timeout_secs: Option<u64>,
}

/// `[gateway.firmware]` / `[gateway.software]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstall {
    installer: Installer,
    command: Option<Vec<String>>,
    #[serde(default)]
    args: Vec<String>,
    version_file: Option<PathBuf>,
    version_key: Option<String>,
    version_command: Option<Vec<String>>,
    after: Option<After>,
    commit: Option<Vec<String>>,
    package: Option<String>,
}

/// A `[gateway]` key whose value cannot be used: the dotted key and why.
pub(super) type Invalid = (String, String);

fn command(key: &str, argv: Vec<String>) -> Result<Vec<String>, Invalid> {
    if argv.first().is_none_or(|p| p.trim().is_empty()) {
        return Err((key.into(), "must name a program (a non-empty list)".into()));
    }
    Ok(argv)
}

impl RawGateway {
    /// Validates the section.
    pub(super) fn validate(self) -> Result<GatewayConfig, Invalid> {
        let d = GatewayConfig::default();
        let secs = |key: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err((format!("gateway.{key}"), "must be at least 1".to_owned())),
            Some(s) => Ok(Duration::from_secs(s)),
        };
        Ok(GatewayConfig {
            firmware: self
                .firmware
                .map(|r| r.validate("gateway.firmware", After::Reboot))
                .transpose()?,
            software: self
                .software
                .map(|r| r.validate("gateway.software", After::Restart))
                .transpose()?,
            reboot_command: match self.reboot_command {
                Some(c) => command("gateway.reboot_command", c)?,
                None => d.reboot_command,
            },
            boot_id_file: self.boot_id_file.unwrap_or(d.boot_id_file),
            install_while_children_busy: self.install_while_children_busy.unwrap_or(false),
            install_timeout: secs(
                "install_timeout_secs",
                self.install_timeout_secs,
                d.install_timeout,
            )?,
            reboot_timeout: secs(
                "reboot_timeout_secs",
                self.reboot_timeout_secs,
                d.reboot_timeout,
            )?,
            version_timeout: secs(
                "version_timeout_secs",
                self.version_timeout_secs,
                d.version_timeout,
            )?,
        })
    }
}

impl RawInstall {
    fn validate(self, table: &str, default_after: After) -> Result<InstallConfig, Invalid> {
        let key = |k: &str| format!("{table}.{k}");
        let cmd = match self.command.clone() {
            Some(c) => {
                let c = command(&key("command"), c)?;
                if !c.iter().any(|a| a.contains(FILE_PLACEHOLDER)) {
                    return Err((
                        key("command"),
                        format!("must contain {FILE_PLACEHOLDER} (the verified package's path)"),
                    ));
                }
                Some(c)
            }
            None if self.installer == Installer::Command => {
                return Err((
                    key("command"),
                    format!(
                        "is required for installer = \"command\", for example [\"/usr/sbin/install-firmware\", \"{FILE_PLACEHOLDER}\"]"
                    ),
                ))
            }
            None => None,
        };
        if cmd.is_some() && !self.args.is_empty() {
            return Err((
                key("args"),
                "is added to a preset's own command; with command, write the arguments into it"
                    .into(),
            ));
        }
        let version = self.version_source(&key)?;
        if self.package.is_some() && self.installer != Installer::Dpkg {
            return Err((key("package"), "applies to installer = \"dpkg\"".into()));
        }
        let package = self.package.unwrap_or_else(|| "otabridge".into());
        if package.trim().is_empty() {
            return Err((key("package"), "is empty".into()));
        }
        let commit = match self.commit {
            Some(c) if c.is_empty() => None,
            Some(c) => Some(command(&key("commit"), c)?),
            None if self.installer == Installer::Mender => {
                let mut c = vec!["mender".to_owned()];
                c.extend(self.args.iter().cloned());
                c.push("commit".into());
                Some(c)
            }
            None => None,
        };
        Ok(InstallConfig {
            installer: self.installer,
            command: cmd,
            args: self.args,
            version,
            after: self.after.unwrap_or(default_after),
            commit,
            package,
        })
    }

    /// `version_file` (+ `version_key`), `version_command`, or the
    /// installer's own record.
    fn version_source(&self, key: &dyn Fn(&str) -> String) -> Result<VersionSource, Invalid> {
        let name = self.installer.name();
        Ok(
            match (self.version_file.clone(), self.version_command.clone()) {
                (Some(_), Some(_)) => {
                    return Err((
                        key("version_command"),
                        "give version_file or version_command, not both".into(),
                    ))
                }
                (Some(path), None) => VersionSource::File {
                    path,
                    key: self.version_key.clone(),
                },
                (None, c) => {
                    if self.version_key.is_some() {
                        return Err((key("version_key"), "needs version_file".into()));
                    }
                    match c {
                        Some(c) => VersionSource::Command(command(&key("version_command"), c)?),
                        None => match self.installer {
                            Installer::Rauc | Installer::Mender | Installer::Dpkg => {
                                VersionSource::Installer
                            }
                            Installer::Swupdate | Installer::Command => {
                                return Err((
                                    key("version_file"),
                                    format!(
                                "installer = \"{name}\" keeps no record of the running version: \
                                     give version_file (for example \"/etc/sw-versions\" with \
                                     version_key) or version_command"
                            ),
                                ))
                            }
                        },
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GatewayConfig, Invalid> {
        let raw: RawGateway = toml::from_str(text).unwrap();
        raw.validate()
    }

    #[test]
    fn presets_take_their_defaults() {
        let g = parse(
            "[firmware]\ninstaller = \"rauc\"\nargs = [\"--conf=/etc/rauc/system.conf\"]\n\
             [software]\ninstaller = \"dpkg\"\n",
        )
        .unwrap();
        let fw = g.firmware.unwrap();
        assert_eq!(fw.installer, Installer::Rauc);
        assert_eq!(fw.version, VersionSource::Installer);
        assert_eq!(fw.after, After::Reboot);
        assert_eq!(fw.commit, None);
        let sw = g.software.unwrap();
        assert_eq!(sw.after, After::Restart);
        assert_eq!(sw.package, "otabridge");
        assert_eq!(g.reboot_command, ["systemctl", "reboot"]);
        assert!(!g.install_while_children_busy);
        let m = parse("[firmware]\ninstaller = \"mender\"\nargs = [\"--data\", \"/d\"]\n").unwrap();
        assert_eq!(
            m.firmware.unwrap().commit.unwrap(),
            ["mender", "--data", "/d", "commit"]
        );
    }

    #[test]
    fn bad_sections_name_the_key() {
        let cases = [
            ("[firmware]\ninstaller = \"command\"\n", "gateway.firmware.command"),
            (
                "[firmware]\ninstaller = \"command\"\ncommand = [\"x\"]\nversion_file = \"/v\"\n",
                "gateway.firmware.command",
            ),
            (
                "[firmware]\ninstaller = \"swupdate\"\n",
                "gateway.firmware.version_file",
            ),
            (
                "[software]\ninstaller = \"rauc\"\npackage = \"x\"\n",
                "gateway.software.package",
            ),
            (
                "[firmware]\ninstaller = \"rauc\"\nversion_key = \"x\"\n",
                "gateway.firmware.version_key",
            ),
            (
                "[firmware]\ninstaller = \"rauc\"\nversion_file = \"/v\"\nversion_command = [\"c\"]\n",
                "gateway.firmware.version_command",
            ),
            (
                "[firmware]\ninstaller = \"command\"\ncommand = [\"i\", \"{file}\"]\nargs = [\"-x\"]\nversion_file = \"/v\"\n",
                "gateway.firmware.args",
            ),
            ("reboot_command = []\n", "gateway.reboot_command"),
            ("install_timeout_secs = 0\n", "gateway.install_timeout_secs"),
        ];
        for (text, key) in cases {
            let (k, msg) = parse(text).unwrap_err();
            assert_eq!(k, key, "{text}: {msg}");
        }
        assert!(toml::from_str::<RawGateway>("[firmware]\ninstaller = \"yum\"\n").is_err());
    }

    #[test]
    fn a_command_installer_with_a_version_file() {
        let g = parse(
            "install_while_children_busy = true\nreboot_command = [\"/sbin/reboot\"]\n\
             [firmware]\ninstaller = \"command\"\ncommand = [\"/usr/sbin/fw-install\", \"--image={file}\"]\n\
             version_file = \"/etc/sw-versions\"\nversion_key = \"rootfs\"\nafter = \"none\"\n",
        )
        .unwrap();
        let fw = g.firmware.unwrap();
        assert_eq!(
            fw.version,
            VersionSource::File {
                path: "/etc/sw-versions".into(),
                key: Some("rootfs".into())
            }
        );
        assert_eq!(fw.after, After::None);
        assert!(g.install_while_children_busy);
        assert_eq!(g.reboot_command, ["/sbin/reboot"]);
    }
}
