//! Running the box's commands: installers, version readers, the reboot.
//!
//! Every command runs with standard input closed, in its own process group
//! (a timeout stops the installer and whatever it started; so does its exit:
//! see [`run_lines`]), with
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

/// How long output is still read after the command exited, for what it
/// wrote just before; whatever still holds its output then is stopped.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

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

/// Stops the process group `pgid` (a command started by [`spawn`] leads
/// its own), and `child` if it still runs.
fn kill_group(child: &mut Child, pgid: Option<u32>) {
    if let Some(pid) = pgid {
        // ESRCH (nothing left in the group) is the usual answer after an exit.
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
///
/// The command's exit ends the run, not the end of its output: lines keep
/// coming for at most [`EXIT_GRACE`] after it, then whatever it left running
/// in its process group is stopped. A process it forked can outlive it and
/// hold its output open: Debian's SWUpdate 2022.12 `-i`, refusing a corrupt
/// image, exits with status 1 but leaves a child blocked on its notifier
/// socket, which holds the socket's address too (the next `swupdate` fails
/// with "Error binding notifier socket: Address already in use").
pub async fn run_lines(
    argv: &[String],
    limit: Duration,
    mut on_line: impl FnMut(Stream, &str),
) -> Result<ExitStatus, ProcError> {
    let mut child = spawn(argv)?;
    // The group's id, kept: `child.id()` is gone once the exit is reaped.
    let pgid = child.id();
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
    let mut exited: Option<ExitStatus> = None;
    // Until the exit: the deadline. After it: the end of the grace.
    let mut until = deadline;
    let mut held_open = false;
    loop {
        tokio::select! {
            l = rx.recv() => match l {
                Some((which, line)) => on_line(which, &line),
                None => break,
            },
            r = child.wait(), if exited.is_none() => {
                let st = r.map_err(|source| ProcError::Wait { program: program.clone(), source })?;
                exited = Some(st);
                until = deadline.min(tokio::time::Instant::now() + EXIT_GRACE);
            }
            _ = tokio::time::sleep_until(until) => {
                if exited.is_none() {
                    kill_group(&mut child, pgid);
                    return Err(ProcError::Timeout { program, after: limit });
                }
                held_open = true;
                break;
            }
        }
    }
    let status = match exited {
        Some(st) => st,
        // Both streams closed first: the exit follows.
        None => match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(r) => r.map_err(|source| ProcError::Wait {
                program: program.clone(),
                source,
            })?,
            Err(_) => {
                kill_group(&mut child, pgid);
                return Err(ProcError::Timeout {
                    program,
                    after: limit,
                });
            }
        },
    };
    kill_group(&mut child, pgid);
    if held_open {
        tracing::warn!(
            "{program} exited ({}) but a process it started still held its output \
             {} s later; stopped its process group",
            describe_status(status),
            EXIT_GRACE.as_secs()
        );
    }
    // The pumps end once the group is gone (or return as `rx` drops).
    for t in [out, err].into_iter().flatten() {
        if held_open {
            t.abort();
        } else {
            let _ = t.await;
        }
    }
    Ok(status)
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
        // Killed with its group; bounded: the kill was sent before
        // run_lines returned.
        assert!(gone(&pidfile).await, "the grandchild survived the timeout");
    }

    /// The pid a script wrote to `file`, and whether that process is gone
    /// (or a zombie waiting to be reaped), polled for at most 2 s.
    async fn gone(file: &std::path::Path) -> bool {
        let pid = std::fs::read_to_string(file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        for _ in 0..100 {
            let dead = match std::fs::read_to_string(&stat) {
                Err(_) => true,
                Ok(s) => s
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')),
            };
            if dead {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn the_exit_ends_the_run_though_a_child_holds_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // Like SWUpdate refusing an image: its verdict, its status, and a
        // forked process left behind with the same standard output.
        let script = format!(
            "sleep 600 & echo $! > {}; echo 'Checksum WRONG' >&2; exit 1",
            pidfile.display()
        );
        let mut seen = Vec::new();
        let st = run_lines(&sh(&script), Duration::from_secs(600), |_, l| {
            seen.push(l.to_owned())
        })
        .await
        .unwrap();
        assert_eq!(describe_status(st), "status 1");
        assert_eq!(seen, ["Checksum WRONG"]);
        assert!(gone(&pidfile).await, "the leftover process still runs");
    }

    #[tokio::test]
    async fn what_an_exit_leaves_in_the_group_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // Its output closed: the run ends with the exit, the process is
        // stopped all the same (it could hold a socket the next run needs).
        let script = format!(
            "sleep 600 >/dev/null 2>&1 & echo $! > {}; exit 0",
            pidfile.display()
        );
        let st = run_lines(&sh(&script), Duration::from_secs(600), |_, _| {})
            .await
            .unwrap();
        assert!(st.success());
        assert!(gone(&pidfile).await, "the leftover process still runs");
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
