//! Handing a verified package to the box's installer: the command line of
//! each preset, the progress and failures read from what it prints, and
//! the result code a failure is reported with.
//!
//! | preset | command | progress from | failure classified from |
//! |---|---|---|---|
//! | swupdate | `swupdate [args] -v -i FILE` | images started of those `sw-description` lists (`-v` trace lines) | `Image invalid or corrupted`, `Checksum WRONG`, `HASH mismatch`, `Signature verification failed` → 7; `HW compatibility not found` / `Compatible SW not found` → 8 |
//! | rauc | `rauc [args] install FILE` | its `NN% step` lines | `Checking bundle failed` → 7; `Compatible mismatch` → 8 |
//! | mender | `mender [args] install FILE` | `NN%` in its progress bar | exit status only |
//! | dpkg | `dpkg [args] --install FILE` | `Preparing to unpack` 10, `Unpacking` 40, `Setting up` 80 | `not a Debian format archive`, `corrupted`, `unexpected end of file` → 7; architecture mismatch → 8 |
//! | command | `command`, `{file}` replaced | `progress: N` lines | exit status only |
//!
//! Any other failure (a non-zero exit status, a timeout) is result 10
//! (package installation failure, docs/protocols/iotda.md §4.6) with the
//! exit status and the installer's last error lines as the description; an
//! installer that cannot be started at all is result 255 (the gateway's
//! configuration is wrong, not the package).

use std::path::Path;
use std::time::Duration;

use otabridge_codecs::iotda::ResultCode;
use tracing::{debug, info};

use super::proc::{self, ProcError, Stream};
use crate::config::{InstallConfig, Installer, FILE_PLACEHOLDER};

/// Lines kept for a failure's description.
const SUMMARY_LINES: usize = 3;
/// Longest failure description.
const SUMMARY_CHARS: usize = 480;

/// The install did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The installer could not be started, or ran out of time.
    #[error("{0}")]
    Run(#[from] ProcError),
    /// It ran and failed.
    #[error("{program} exited with {status}{}", summary_suffix(.summary))]
    Failed {
        /// The program.
        program: String,
        /// `status N` or `signal N`.
        status: String,
        /// What the output says the failure is (7, 8 or 10).
        code: ResultCode,
        /// Its last error lines (or last lines), joined with ` | `.
        summary: String,
    },
}

fn summary_suffix(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl InstallError {
    /// The `upgrade_progress_report` result code (docs/protocols/iotda.md §4.6).
    pub fn result_code(&self) -> ResultCode {
        match self {
            InstallError::Run(ProcError::Timeout { .. }) => ResultCode::INSTALL_FAIL,
            InstallError::Run(_) => ResultCode::INNER_ERROR,
            InstallError::Failed { code, .. } => *code,
        }
    }

    /// The `description` of the failure report: the platform's wording for
    /// the code (docs/protocols/iotda.md §9), then what the installer said.
    pub fn description(&self) -> String {
        format!("{}: {self}", self.result_code().description())
    }
}

/// The command line that installs `file`.
pub fn argv(cfg: &InstallConfig, file: &Path) -> Vec<String> {
    let path = file.display().to_string();
    if let Some(c) = &cfg.command {
        return c
            .iter()
            .map(|a| a.replace(FILE_PLACEHOLDER, &path))
            .collect();
    }
    let (program, tail): (&str, &[&str]) = match cfg.installer {
        Installer::Swupdate => ("swupdate", &["-v", "-i"]),
        Installer::Rauc => ("rauc", &["install"]),
        Installer::Mender => ("mender", &["install"]),
        Installer::Dpkg => ("dpkg", &["--install"]),
        // The configuration requires `command` for this one.
        Installer::Command => ("false", &[]),
    };
    let mut v = vec![program.to_owned()];
    v.extend(cfg.args.iter().cloned());
    v.extend(tail.iter().map(|s| (*s).to_owned()));
    v.push(path);
    v
}

/// A leading or embedded `NN%` (the last one on the line), 0–100.
fn percent(line: &str) -> Option<u8> {
    let b = line.as_bytes();
    let mut found = None;
    for (i, _) in line.match_indices('%') {
        let start = b[..i]
            .iter()
            .rposition(|c| !c.is_ascii_digit())
            .map_or(0, |p| p + 1);
        if start < i && i - start <= 3 {
            if let Ok(n) = line[start..i].parse::<u8>() {
                if n <= 100 {
                    found = Some(n);
                }
            }
        }
    }
    found
}

/// `progress: N` (any case, spaces allowed), 0–100.
fn progress_line(line: &str) -> Option<u8> {
    let l = line.trim();
    let (head, rest) = l.split_once(':')?;
    if !head.trim().eq_ignore_ascii_case("progress") {
        return None;
    }
    let n: u32 = rest.trim().trim_end_matches('%').trim().parse().ok()?;
    Some(n.min(100) as u8)
}

/// Reads an installer's output as it comes.
#[derive(Debug, Clone)]
pub struct OutputParser {
    installer: Installer,
    /// swupdate: images and files `sw-description` lists, and those started.
    total: u32,
    started: u32,
    errors: Vec<String>,
    /// Whether the previous line was an error line (dpkg indents the
    /// details of an error on the lines after it).
    in_error: bool,
    /// The last lines of standard error, and of everything.
    stderr: Vec<String>,
    last: Vec<String>,
    code: ResultCode,
}

fn push_bounded(v: &mut Vec<String>, line: &str) {
    if v.len() == SUMMARY_LINES {
        v.remove(0);
    }
    v.push(line.trim().to_owned());
}

impl OutputParser {
    /// A parser for `cfg`'s installer (a preset whose command was replaced
    /// still prints what the preset prints).
    pub fn new(installer: Installer) -> Self {
        OutputParser {
            installer,
            total: 0,
            started: 0,
            errors: Vec::new(),
            in_error: false,
            stderr: Vec::new(),
            last: Vec::new(),
            code: ResultCode::INSTALL_FAIL,
        }
    }

    /// Takes one line from `stream`; returns the install's progress
    /// (0–100) when the line says it.
    pub fn line(&mut self, stream: Stream, line: &str) -> Option<u8> {
        if line.trim().is_empty() {
            return None;
        }
        push_bounded(&mut self.last, line);
        if stream == Stream::Stderr {
            push_bounded(&mut self.stderr, line);
        }
        let error = self.error_text(line);
        self.in_error = error.is_some();
        if let Some(e) = error {
            push_bounded(&mut self.errors, &e);
        }
        self.classify(line);
        match self.installer {
            Installer::Command => progress_line(line),
            Installer::Rauc | Installer::Mender => percent(line),
            Installer::Dpkg => {
                let l = line.trim_start();
                if l.starts_with("Preparing to unpack") {
                    Some(10)
                } else if l.starts_with("Unpacking ") {
                    Some(40)
                } else if l.starts_with("Setting up ") {
                    Some(80)
                } else {
                    None
                }
            }
            Installer::Swupdate => {
                if line.contains("[_parse_images] : Found")
                    || line.contains("[_parse_files] : Found")
                {
                    self.total += 1;
                    None
                } else if line.contains("[install_single_image] : Found installer for stream") {
                    self.started += 1;
                    let done = self.started.saturating_sub(1);
                    Some((done * 100 / self.total.max(self.started)) as u8)
                } else if line.contains("SWUPDATE successful") {
                    Some(100)
                } else {
                    None
                }
            }
        }
    }

    /// The part of `line` worth reporting when it is an error line.
    fn error_text(&self, line: &str) -> Option<String> {
        let l = line.trim();
        match self.installer {
            Installer::Swupdate => l.contains("[ERROR]").then(|| {
                let msg = l.rsplit("ERROR : ").next().unwrap_or(l);
                let msg = msg.rsplit("] ").next().unwrap_or(msg);
                msg.trim().to_owned()
            }),
            Installer::Rauc => l.starts_with("LastError:").then(|| l.to_owned()),
            Installer::Dpkg => (l.starts_with("dpkg: ")
                || l.starts_with("dpkg-deb")
                || (line.starts_with(' ') && self.in_error))
                .then(|| l.to_owned()),
            Installer::Mender => {
                let lower = l.to_ascii_lowercase();
                (lower.contains("level=error")
                    || lower.starts_with("erro")
                    || lower.contains("error:"))
                .then(|| l.to_owned())
            }
            Installer::Command => None,
        }
    }

    fn classify(&mut self, line: &str) {
        let unsupported = match self.installer {
            Installer::Swupdate => {
                line.contains("HW compatibility not found")
                    || line.contains("Compatible SW not found")
            }
            Installer::Rauc => line.contains("Compatible mismatch"),
            Installer::Dpkg => {
                line.contains("package architecture") && line.contains("does not match system")
            }
            Installer::Mender | Installer::Command => false,
        };
        let corrupt = match self.installer {
            Installer::Swupdate => [
                "Image invalid or corrupted",
                "Checksum WRONG",
                "HASH mismatch",
                "Signature verification failed",
            ]
            .iter()
            .any(|m| line.contains(m)),
            Installer::Rauc => line.contains("Checking bundle failed"),
            Installer::Dpkg => {
                line.contains("not a Debian format archive")
                    || line.contains("corrupted")
                    || line.contains("unexpected end of file")
            }
            Installer::Mender | Installer::Command => false,
        };
        // "not for this box" beats "corrupt": SWUpdate reports an image for
        // another board as invalid too.
        if unsupported {
            self.code = ResultCode::UNKNOWN_TYPE;
        } else if corrupt && self.code == ResultCode::INSTALL_FAIL {
            self.code = ResultCode::CHECK_FAIL;
        }
    }

    /// The failure for an installer that ended with `status`. Its
    /// description quotes the last error lines the preset recognises, else
    /// the last lines of standard error, else the last lines.
    pub fn failure(&self, program: &str, status: String) -> InstallError {
        let lines = [&self.errors, &self.stderr, &self.last]
            .into_iter()
            .find(|l| !l.is_empty())
            .unwrap_or(&self.last);
        let mut summary = lines.join(" | ");
        if summary.chars().count() > SUMMARY_CHARS {
            summary = summary.chars().take(SUMMARY_CHARS).collect::<String>() + "...";
        }
        InstallError::Failed {
            program: program.to_owned(),
            status,
            code: self.code,
            summary,
        }
    }
}

/// Runs `cfg`'s installer on `file` for at most `limit`, calling `progress`
/// with the install's own progress (0–100) whenever its output says it.
pub async fn install(
    cfg: &InstallConfig,
    file: &Path,
    limit: Duration,
    mut progress: impl FnMut(u8),
) -> Result<(), InstallError> {
    let argv = argv(cfg, file);
    info!(installer = cfg.installer.name(), command = ?argv, "running the gateway's installer");
    let mut parser = OutputParser::new(cfg.installer);
    let program = argv[0].clone();
    let status = proc::run_lines(&argv, limit, |stream, line| {
        debug!(installer = %program, "{line}");
        if let Some(p) = parser.line(stream, line) {
            progress(p);
        }
    })
    .await?;
    if status.success() {
        Ok(())
    } else {
        Err(parser.failure(&program, proc::describe_status(status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{After, VersionSource};

    fn cfg(installer: Installer, args: &[&str]) -> InstallConfig {
        InstallConfig {
            installer,
            command: None,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            version: VersionSource::Installer,
            after: After::Reboot,
            commit: None,
            package: "otabridge".into(),
        }
    }

    fn feed(installer: Installer, text: &str) -> (Vec<u8>, OutputParser) {
        let mut p = OutputParser::new(installer);
        let got = text
            .lines()
            .filter_map(|l| p.line(Stream::Stdout, l))
            .collect();
        (got, p)
    }

    #[test]
    fn preset_command_lines() {
        let f = Path::new("/var/lib/otabridge/packages/ab");
        assert_eq!(
            argv(&cfg(Installer::Swupdate, &["-k", "/etc/swupdate.pem"]), f),
            [
                "swupdate",
                "-k",
                "/etc/swupdate.pem",
                "-v",
                "-i",
                "/var/lib/otabridge/packages/ab"
            ]
        );
        assert_eq!(
            argv(&cfg(Installer::Rauc, &[]), f),
            ["rauc", "install", "/var/lib/otabridge/packages/ab"]
        );
        assert_eq!(
            argv(&cfg(Installer::Dpkg, &["--root=/r"]), f),
            [
                "dpkg",
                "--root=/r",
                "--install",
                "/var/lib/otabridge/packages/ab"
            ]
        );
        let mut c = cfg(Installer::Command, &[]);
        c.command = Some(vec!["/usr/sbin/fw".into(), "--image={file}".into()]);
        assert_eq!(
            argv(&c, f),
            ["/usr/sbin/fw", "--image=/var/lib/otabridge/packages/ab"]
        );
    }

    /// What `rauc install` printed for Debian's rauc 1.8 (a signed plain
    /// bundle into a file-backed slot, then a bundle with one byte changed).
    #[test]
    fn rauc_progress_and_a_corrupt_bundle() {
        let ok = "installing\n  0% Installing\n 20% Determining slot states done.\n 40% Verifying signature done.\n \
                  60% Checking manifest contents done.\n 80% Updating slots\n 99% Updating slots done.\n100% Installing done.\n\
                  Installing `/x/update.raucb` succeeded\n";
        assert_eq!(feed(Installer::Rauc, ok).0, [0, 20, 40, 60, 80, 99, 100]);
        let bad = " 20% Verifying signature\n 40% Verifying signature failed.\n 40% Checking bundle failed.\n\
                   100% Installing failed.\nLastError: signature verification failed: error:1700009E:CMS routines::verification failure\n\
                   Installing `/x/corrupt.raucb` failed\n";
        let (_, p) = feed(Installer::Rauc, bad);
        let e = p.failure("rauc", "status 1".into());
        assert_eq!(e.result_code(), ResultCode::CHECK_FAIL);
        assert_eq!(
            e.to_string(),
            "rauc exited with status 1: LastError: signature verification failed: error:1700009E:CMS routines::verification failure"
        );
        let (_, p) = feed(
            Installer::Rauc,
            "100% Installing failed.\nLastError: Installation error: Compatible mismatch: Expected 'a' but bundle manifest has 'b'\n",
        );
        assert_eq!(
            p.failure("rauc", "status 1".into()).result_code(),
            ResultCode::UNKNOWN_TYPE
        );
    }

    /// SWUpdate 2022.12's `-v` trace lines (Debian bookworm), trimmed.
    #[test]
    fn swupdate_steps_and_failures() {
        let ok = "[TRACE] : SWUPDATE running :  [_parse_files] : Found File: a.txt --> /x/a (ROOTFS)\n\
                  [TRACE] : SWUPDATE running :  [_parse_images] : Found Image: rootfs.ext4 in device : /dev/x for handler raw\n\
                  [INFO ] : SWUPDATE running :  Installation in progress\n\
                  [TRACE] : SWUPDATE running :  [install_single_image] : Found installer for stream a.txt rawfile\n\
                  [TRACE] : SWUPDATE running :  [install_single_image] : Found installer for stream rootfs.ext4 raw\n\
                  [INFO ] : SWUPDATE successful ! SWUPDATE successful !\n";
        assert_eq!(feed(Installer::Swupdate, ok).0, [0, 50, 100]);
        let failed = "[ERROR] : SWUPDATE failed [0] ERROR : I cannot open /nonexistent/dir/x 2\n\
                      [TRACE] : SWUPDATE running :  [install_single_image] : Installer for rawfile not successful !\n\
                      [ERROR] : SWUPDATE failed [1] Installation failed !\n\
                      [INFO ] : SWUPDATE running :  [endupdate] : SWUpdate was successful !\n";
        let e = feed(Installer::Swupdate, failed)
            .1
            .failure("swupdate", "status 1".into());
        assert_eq!(e.result_code(), ResultCode::INSTALL_FAIL);
        assert_eq!(
            e.to_string(),
            "swupdate exited with status 1: I cannot open /nonexistent/dir/x 2 | Installation failed !"
        );
        let corrupt = "[ERROR] : SWUPDATE failed [0] ERROR : Checksum WRONG ! Computed 0x5215, it should be 0x5214\n\
                       [ERROR] : SWUPDATE failed [1] Image invalid or corrupted. Not installing ...\n";
        let e = feed(Installer::Swupdate, corrupt)
            .1
            .failure("swupdate", "status 1".into());
        assert_eq!(e.result_code(), ResultCode::CHECK_FAIL);
        assert!(
            e.description()
                .starts_with(otabridge_codecs::iotda::result::DESC_INTEGRITY),
            "{}",
            e.description()
        );
        let other_board = "[ERROR] : SWUPDATE failed [0] ERROR : HW compatibility not found\n\
                           [ERROR] : SWUPDATE failed [1] Image invalid or corrupted. Not installing ...\n";
        let e = feed(Installer::Swupdate, other_board)
            .1
            .failure("swupdate", "status 1".into());
        assert_eq!(e.result_code(), ResultCode::UNKNOWN_TYPE);
    }

    #[test]
    fn dpkg_and_command_progress() {
        let ok = "Selecting previously unselected package x.\n(Reading database ... 0 files)\n\
                  Preparing to unpack x.deb ...\nUnpacking x (2.0.0) ...\nSetting up x (2.0.0) ...\n";
        assert_eq!(feed(Installer::Dpkg, ok).0, [10, 40, 80]);
        let (_, p) = feed(
            Installer::Dpkg,
            "dpkg-deb: error: 'x.deb' is not a Debian format archive\ndpkg: error processing archive x.deb (--install):\n \
             dpkg-deb --control subprocess returned error exit status 2\nErrors were encountered while processing:\n x.deb\n",
        );
        assert_eq!(
            p.failure("dpkg", "status 1".into()).result_code(),
            ResultCode::CHECK_FAIL
        );
        // What dpkg 1.21 prints for a package whose dependency is missing.
        let (_, p) = feed(
            Installer::Dpkg,
            "Unpacking x (3.0.0) over (2.0.0) ...\ndpkg: dependency problems prevent configuration of x:\n \
             x depends on y; however:\n  Package y is not installed.\n\n\
             dpkg: error processing package x (--install):\n dependency problems - leaving unconfigured\n\
             Errors were encountered while processing:\n x\n",
        );
        let e = p.failure("dpkg", "status 1".into());
        assert_eq!(e.result_code(), ResultCode::INSTALL_FAIL);
        assert_eq!(
            e.to_string(),
            "dpkg exited with status 1: Package y is not installed. | \
             dpkg: error processing package x (--install): | dependency problems - leaving unconfigured"
        );
        let (got, p) = feed(
            Installer::Command,
            "checking\nprogress: 10\nPROGRESS : 55%\nprogress: 250\nprogress: x\nwriting slot\nflash error 5\n",
        );
        assert_eq!(got, [10, 55, 100]);
        let e = p.failure("/usr/sbin/fw", "status 5".into());
        assert_eq!(e.result_code(), ResultCode::INSTALL_FAIL);
        assert_eq!(
            e.to_string(),
            "/usr/sbin/fw exited with status 5: progress: x | writing slot | flash error 5"
        );
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(" 20% Checking bundle"), Some(20));
        assert_eq!(percent("....  57% 1024 KiB"), Some(57));
        assert_eq!(percent("1000% no"), None);
        assert_eq!(percent("no digits %"), None);
    }

    #[tokio::test]
    async fn a_command_installer_runs_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("pkg");
        std::fs::write(&pkg, b"image").unwrap();
        let mut c = cfg(Installer::Command, &[]);
        c.command = Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "test \"$(cat \"$1\")\" = image && echo progress: 50 && echo progress: 100".into(),
            "sh".into(),
            "{file}".into(),
        ]);
        let mut seen = Vec::new();
        install(&c, &pkg, Duration::from_secs(30), |p| seen.push(p))
            .await
            .unwrap();
        assert_eq!(seen, [50, 100]);
        c.command = Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo boom >&2; exit 7 # {file}".into(),
        ]);
        let e = install(&c, &pkg, Duration::from_secs(30), |_| {})
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "/bin/sh exited with status 7: boom");
        assert_eq!(
            e.description(),
            format!(
                "{}: /bin/sh exited with status 7: boom",
                otabridge_codecs::iotda::result::DESC_UPDATE_FAILED
            )
        );
    }
}
