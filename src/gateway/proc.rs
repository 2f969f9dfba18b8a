//! Running the box's commands: installers, version readers, the reboot.
//!
//! Every command runs with standard input closed, in its own process group
//! (a timeout stops the installer and whatever it started), with
//! `OTABRIDGE_SELF_UPGRADE=1` in its environment: a maintainer script can
//! see that otabridge itself runs the install and leave restarting it to
//! otabridge (packaging/debian/postinst does).
//!
//! Output is read as lines split at `\n` or `\r` (progress bars redraw with
//! `\r`), each at most [`MAX_LINE`] bytes, decoded lossily.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The environment variable set for every command otabridge runs for the
/// gateway's own upgrade.
pub const SELF_UPGRADE_ENV: &str = "OTABRIDGE_SELF_UPGRADE";

/// Longest line kept; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 4096;

/// A command that could not be run to the end.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The program could not be started (missing, not executable).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran longer than allowed and was stopped.
    #[error("{program} did not finish within {} s and was stopped", .after.as_secs())]
    Timeout {
        /// The program.
        program: String,
        /// The limit.
        after: Duration,
    },
    /// Waiting for it failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `status` in words: `status 3`, or `signal 9` for a killed process.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => "an unknown status".into(),
    }
}

fn command(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .env(SELF_UPGRADE_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    c
}

/// Starts `argv` (non-empty: the configuration checks it).
pub fn spawn(argv: &[String]) -> Result<Child, ProcError> {
    command(argv).spawn().map_err(|source| ProcError::Spawn {
        program: argv[0].clone(),
        source,
    })
}

/// Stops `child` and everything in its process group.
pub fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.start_kill();
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Sends `r`'s lines to `tx` until end of file.
async fn pump(mut r: impl AsyncRead + Unpin, which: Stream, tx: mpsc::Sender<(Stream, String)>) {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    let mut overflow = false;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                if !line.is_empty() {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if tx.send((which, text)).await.is_err() {
                        return;
                    }
                }
                line.clear();
                overflow = false;
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else if !overflow {
                overflow = true;
            }
        }
    }
    if !line.is_empty() {
        let _ = tx
            .send((which, String::from_utf8_lossy(&line).into_owned()))
            .await;
    }
}

/// Runs `argv` for at most `limit`, handing every output line (standard
/// output and error, interleaved as they come) to `on_line`. Returns the
/// exit status.
pub async fn run_lines(
    argv: &[String],
    limit: Duration,
    mut on_line: impl FnMut(Stream, &str),
) -> Result<ExitStatus, ProcError> {
    let mut child = spawn(argv)?;
    let (tx, mut rx) = mpsc::channel(64);
    let out = child.stdout.take().map(|s| {
        let tx = tx.clone();
        tokio::spawn(pump(s, Stream::Stdout, tx))
    });
    let err = child.stderr.take().map(|s| {
        let tx = tx.clone();
        tokio::spawn(pump(s, Stream::Stderr, tx))
    });
    drop(tx);
    let program = argv[0].clone();
    let deadline = tokio::time::Instant::now() + limit;
    // Lines until both streams end (the process, or whatever inherited its
    // output, closed them), then the exit status.
    loop {
        tokio::select! {
            l = rx.recv() => match l {
                Some((which, line)) => on_line(which, &line),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => {
                kill_group(&mut child);
                return Err(ProcError::Timeout { program, after: limit });
            }
        }
    }
    for t in [out, err].into_iter().flatten() {
        let _ = t.await;
    }
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(r) => r.map_err(|source| ProcError::Wait { program, source }),
        Err(_) => {
            kill_group(&mut child);
            Err(ProcError::Timeout {
                program,
                after: limit,
            })
        }
    }
}

/// What a short command printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Standard output, lines joined with `\n`.
    pub stdout: String,
    /// The last lines of standard error.
    pub stderr_tail: Vec<String>,
}

/// Runs `argv` for at most `limit` and collects its output (standard
/// output whole up to 1 MiB, the last 5 lines of standard error).
pub async fn run_output(argv: &[String], limit: Duration) -> Result<Output, ProcError> {
    let mut stdout = String::new();
    let mut stderr_tail: Vec<String> = Vec::new();
    let status = run_lines(argv, limit, |which, line| match which {
        Stream::Stdout => {
            if stdout.len() < 1 << 20 {
                stdout.push_str(line);
                stdout.push('\n');
            }
        }
        Stream::Stderr => {
            if stderr_tail.len() == 5 {
                stderr_tail.remove(0);
            }
            stderr_tail.push(line.to_owned());
        }
    })
    .await?;
    Ok(Output {
        status,
        stdout,
        stderr_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn lines_from_both_streams_and_the_status() {
        let mut seen = Vec::new();
        let st = run_lines(
            &sh("printf 'a\\rb\\n'; echo e >&2; printf 'tail'; exit 3"),
            Duration::from_secs(30),
            |w, l| seen.push((w, l.to_owned())),
        )
        .await
        .unwrap();
        assert_eq!(describe_status(st), "status 3");
        let mut out: Vec<_> = seen
            .iter()
            .filter(|(w, _)| *w == Stream::Stdout)
            .map(|(_, l)| l.as_str())
            .collect();
        assert_eq!(out, ["a", "b", "tail"]);
        out = seen
            .iter()
            .filter(|(w, _)| *w == Stream::Stderr)
            .map(|(_, l)| l.as_str())
            .collect();
        assert_eq!(out, ["e"]);
    }

    #[tokio::test]
    async fn the_environment_says_who_runs_it() {
        let o = run_output(&sh("echo $OTABRIDGE_SELF_UPGRADE"), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(o.stdout, "1\n");
    }

    #[tokio::test]
    async fn a_timeout_stops_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // A grandchild that would outlive its parent, and its pid.
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let e = run_lines(&sh(&script), Duration::from_secs(2), |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(e, ProcError::Timeout { .. }), "{e}");
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // Killed with its group: gone, or a zombie waiting to be reaped.
        // Bounded: the kill was sent before run_lines returned.
        let mut dead = false;
        for _ in 0..100 {
            match std::fs::read_to_string(&stat) {
                Err(_) => dead = true,
                Ok(s) => {
                    dead = s
                        .rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                }
            }
            if dead {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(dead, "the grandchild survived the timeout");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let e = run_output(&["/nonexistent/installer".into()], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ProcError::Spawn { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/installer"), "{e}");
    }
}
