//! An in-process simulated child: a firmware slot in memory.
//!
//! It behaves like a well-mannered device: delivery writes the package into a
//! staging slot in chunks (hashing as it goes, so memory stays constant),
//! activation checks the staged image is whole and its SHA-256 matches, then
//! "reboots" into the package's version. Tests switch it offline, make it
//! reject activation, or slow it down.

use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use otabridge_codecs::iotda::ResultCode;
use otabridge_codecs::version::Policy;

use super::{BoxFuture, Cause, Child, ChildError, Package, Progress, Step};

/// Chunk size of a simulated delivery.
const CHUNK: usize = 4096;

#[derive(Debug)]
struct State {
    version: String,
    online: bool,
    /// Bytes of the staged image received, and their running hash.
    staged_len: u64,
    staged_hash: Sha256,
    staged_sha: Option<String>,
    /// Per-chunk delay, to make progress visible in demos.
    chunk_delay: Duration,
    /// Activation fails with this result code (as a framed profile would
    /// declare it) and these words.
    reject_activation: Option<(ResultCode, String)>,
    /// The largest image its slot holds.
    capacity: Option<u64>,
    activations: u32,
    /// The `resume_from` of every delivery asked of it.
    delivery_starts: Vec<u64>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct MemoryChild {
    device_id: String,
    /// It verifies nothing itself; the OTA job compares by this.
    version_policy: Policy,
    state: Mutex<State>,
    /// Delivery pauses once this many bytes are staged, until cleared.
    hold: tokio::sync::watch::Sender<Option<u64>>,
}

impl MemoryChild {
    /// A child running `version`, online.
    pub fn new(device_id: &str, version: &str) -> Self {
        MemoryChild {
            device_id: device_id.to_owned(),
            version_policy: Policy::default(),
            state: Mutex::new(State {
                version: version.to_owned(),
                online: true,
                staged_len: 0,
                staged_hash: Sha256::new(),
                staged_sha: None,
                chunk_delay: Duration::ZERO,
                reject_activation: None,
                capacity: None,
                activations: 0,
                delivery_starts: Vec::new(),
            }),
            hold: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Compares versions by `policy` (the child's `version_match`; the
    /// default is [`Policy::Normalised`]).
    pub fn with_version_policy(mut self, policy: Policy) -> Self {
        self.version_policy = policy;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the child on or off the network.
    pub fn set_online(&self, online: bool) {
        self.state().online = online;
    }

    /// Pauses delivery once `bytes` are staged (and acknowledged through
    /// the progress callback) until [`MemoryChild::release`]: a transfer a
    /// test can look at in the middle.
    pub fn hold_at(&self, bytes: u64) {
        self.hold.send_replace(Some(bytes));
    }

    /// Lets a delivery paused by [`MemoryChild::hold_at`] go on.
    pub fn release(&self) {
        self.hold.send_replace(None);
    }

    /// Slows delivery down by `d` per 4 KiB chunk.
    pub fn set_chunk_delay(&self, d: Duration) {
        self.state().chunk_delay = d;
    }

    /// Makes the next activations fail with `result_code` and `description`.
    pub fn reject_activation(&self, result_code: ResultCode, description: &str) {
        self.state().reject_activation = Some((result_code, description.to_owned()));
    }

    /// Makes the slot hold at most `bytes`: larger packages are refused
    /// with result 5, as LwM2M result 2 / SMP "image too large" would be.
    pub fn set_capacity(&self, bytes: u64) {
        self.state().capacity = Some(bytes);
    }

    /// How many times an image was activated.
    pub fn activations(&self) -> u32 {
        self.state().activations
    }

    /// The resume offset the gateway asked for, per delivery attempt.
    pub fn delivery_starts(&self) -> Vec<u64> {
        self.state().delivery_starts.clone()
    }

    /// The running version.
    pub fn version(&self) -> String {
        self.state().version.clone()
    }

    fn check_online(&self, step: Step) -> Result<(), ChildError> {
        if self.state().online {
            Ok(())
        } else {
            Err(ChildError::unreachable(
                step,
                format!("{} is offline", self.device_id),
            ))
        }
    }
}

impl Child for MemoryChild {
    fn version_policy(&self) -> Policy {
        self.version_policy
    }

    fn device_id(&self) -> &str {
        &self.device_id
    }

    fn transport(&self) -> &'static str {
        "sim"
    }

    fn read_version(&self) -> BoxFuture<'_, Result<String, ChildError>> {
        Box::pin(async move {
            self.check_online(Step::ReadVersion)?;
            Ok(self.state().version.clone())
        })
    }

    fn deliver<'a>(
        &'a self,
        package: &'a Package,
        resume_from: u64,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            let step = Step::Deliver {
                offset: resume_from,
            };
            self.check_online(step)?;
            self.state().delivery_starts.push(resume_from);
            if let Some(c) = self.state().capacity.filter(|c| package.size > *c) {
                return Err(ChildError::refused(
                    Cause::NoStorage,
                    step,
                    format!("{} bytes do not fit a slot of {c}", package.size),
                ));
            }
            // A staged image of another package, or a resume point we do not
            // hold, restarts from zero: like a device, we trust our own slot.
            let start = {
                let mut s = self.state();
                if s.staged_sha.as_deref() != Some(&package.sha256) || resume_from != s.staged_len {
                    s.staged_len = 0;
                    s.staged_hash = Sha256::new();
                    s.staged_sha = Some(package.sha256.clone());
                }
                s.staged_len
            };
            let step = Step::Deliver { offset: start };
            let io = |e: std::io::Error| {
                ChildError::io(step, package.path.display().to_string()).with_source(e)
            };
            let mut file = tokio::fs::File::open(&package.path).await.map_err(io)?;
            if start > 0 {
                use tokio::io::AsyncSeekExt;
                file.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(io)?;
            }
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = file.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                let (delay, staged) = {
                    let mut s = self.state();
                    if !s.online {
                        return Err(ChildError::unreachable(
                            Step::Deliver {
                                offset: s.staged_len,
                            },
                            format!("{} went offline", self.device_id),
                        ));
                    }
                    s.staged_hash.update(&buf[..n]);
                    s.staged_len += n as u64;
                    progress(s.staged_len);
                    (s.chunk_delay, s.staged_len)
                };
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut hold = self.hold.subscribe();
                let _ = hold.wait_for(|h| h.is_none_or(|at| staged < at)).await;
            }
            Ok(())
        })
    }

    fn activate<'a>(&'a self, package: &'a Package) -> BoxFuture<'a, Result<(), ChildError>> {
        Box::pin(async move {
            self.check_online(Step::Activate)?;
            let mut s = self.state();
            if let Some((code, description)) = s.reject_activation.clone() {
                return Err(ChildError::refused(
                    Cause::Declared(code),
                    Step::Activate,
                    "activation refused",
                )
                .with_said(format!("result {code}"), Some(description)));
            }
            let digest = format!("{:x}", s.staged_hash.clone().finalize());
            if s.staged_len != package.size || !digest.eq_ignore_ascii_case(&package.sha256) {
                return Err(ChildError::refused(
                    Cause::Integrity,
                    Step::Activate,
                    format!(
                        "staged {} bytes hashing to {digest}, the package has {} bytes",
                        s.staged_len, package.size
                    ),
                ));
            }
            s.version = package.version.clone();
            s.activations += 1;
            s.staged_len = 0;
            s.staged_hash = Sha256::new();
            s.staged_sha = None;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn deliver_resume_and_activate() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("pkg");
        std::fs::write(&path, &data).unwrap();
        let pkg = Package {
            path,
            size: data.len() as u64,
            sha256: format!("{:x}", Sha256::digest(&data)),
            version: "2.0".into(),
        };
        let child = MemoryChild::new("c", "1.0");
        let seen = AtomicU64::new(0);
        let progress = |n: u64| seen.store(n, Ordering::SeqCst);
        child.deliver(&pkg, 0, &progress).await.unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 10_000);
        // Delivering again from the end is a no-op resume.
        child.deliver(&pkg, 10_000, &progress).await.unwrap();
        child.activate(&pkg).await.unwrap();
        assert_eq!(child.read_version().await.unwrap(), "2.0");
        assert_eq!(child.activations(), 1);
        // Nothing staged any more: activating again is an integrity failure.
        let e = child.activate(&pkg).await.unwrap_err();
        assert_eq!(e.cause(), Some(Cause::Integrity), "{e}");
        child.set_online(false);
        let e = child.read_version().await.unwrap_err();
        assert_eq!(e.kind(), crate::child::ErrorKind::Unreachable, "{e}");
    }
}
