//! The `.part` file being written, off the receive path: a writer thread
//! that hashes and writes the body's buffers, and starts checkpoints
//! (fsync, then the journal row) on a thread of their own.
//!
//! ```text
//!  receive task ── chunks (bounded queue) ──► writer: SHA-256, write(2) ──► sync: fsync, journal
//!   (TLS, plan)  ◄── chunks, written (spare) ──┘                              │
//!                ◄───────────────── durable (epoch, len) ─────────────────────┘
//! ```
//!
//! TLS decryption (hyper's connection task and the receive loop), SHA-256
//! with the file writes (the writer), and fsync with the journal row (the
//! sync thread) run side by side instead of in series on one task. The
//! receive task copies each body frame into a chunk of [`CHUNK`] bytes and
//! hands full chunks to the writer; the writer hashes and writes a chunk
//! and gives it back for reuse. So the frames' buffers go back to hyper at
//! once (hyper reads the next frame into the same allocation), a fixed set
//! of chunks circulates, and memory does not grow with the package. The
//! download plan (`otabridge_codecs::download::Plan`) decides when a
//! checkpoint is due and when the file starts over; the messages keep their
//! order, so a checkpoint covers exactly the bytes queued before it (the
//! chunk being filled is queued first), and the journaled length is
//! written only after the fsync that makes it true.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;
use otabridge_codecs::download::{Checkpoint, Start};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{db, DownloadError};
use crate::journal::SharedJournal;

/// Chunks queued between the receive task and the writer.
pub(crate) const QUEUE: usize = 4;
/// The size of a chunk: the receive task gathers body frames (at most
/// [`super::http::READ_BUFFER`] bytes each) into chunks of this size, and
/// the writer hashes and writes each in one write(2). At most `QUEUE + 2`
/// chunks exist (queued, being written, being filled): 768 KiB.
///
/// Chosen by measurement against nginx (BENCHMARKS.md, "Package download"):
/// queues of 4 to 64 and writes of 64 KiB to 1 MiB were within the noise of
/// each other in throughput. What did cost throughput was handing hyper's
/// frames themselves to the writer thread: each frame's 64 KiB allocation
/// was freed there, and glibc trimmed and re-grew the heaps for it (about
/// 1 000 `madvise(MADV_DONTNEED)` more per 512 MiB, and the page faults
/// after them).
pub(crate) const CHUNK: usize = 128 * 1024;

pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> DownloadError {
    let why = format!("{what} {}: {e}", path.display());
    match e.kind() {
        // ENOSPC, EDQUOT: the disk, not the package, is at fault.
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            DownloadError::DiskFull(why)
        }
        _ => DownloadError::Store(why),
    }
}

fn join_err(e: tokio::task::JoinError) -> DownloadError {
    DownloadError::Store(e.to_string())
}

fn gone() -> DownloadError {
    DownloadError::Store("the .part writer stopped".into())
}

/// What the receive task asks of the writer, in order.
enum Msg {
    /// A chunk of body bytes, given back through `spare` once written.
    Data(Vec<u8>),
    Checkpoint(Checkpoint),
    /// Empty the file and record length 0 with this size and validator.
    Restart(
        Option<u64>,
        Option<String>,
        oneshot::Sender<Result<(), DownloadError>>,
    ),
    /// Let the checkpoint in flight finish.
    Quiesce(oneshot::Sender<()>),
}

/// The `.part` file, as the receive task sees it.
pub(crate) struct Part {
    tx: mpsc::Sender<Msg>,
    /// Body bytes not queued yet (less than [`CHUNK`]).
    fill: Vec<u8>,
    /// Chunks the writer is done with.
    spare: mpsc::UnboundedReceiver<Vec<u8>>,
    /// Checkpoints made durable: (epoch, length), or why one failed.
    durable: mpsc::UnboundedReceiver<Result<(u32, u64), DownloadError>>,
    /// The writer task, until its outcome was taken ([`Part::stopped`]).
    writer: Option<WriterTask>,
    /// Why the writer stopped, once known: a handle is awaited only once
    /// (polling a finished `JoinHandle` again panics; a disk that filled
    /// up mid-download did exactly that in the cleanup's `quiesce`).
    stopped: Option<DownloadError>,
}

/// The writer thread: the file and the hash of its content, or why it
/// stopped.
type WriterTask = JoinHandle<Result<(Flock<File>, Sha256), DownloadError>>;

impl Part {
    /// Keeps the first `start.offset` bytes of `file` (cutting the rest),
    /// hashes them, records `offset` as the durable length, and starts the
    /// writer.
    pub(crate) async fn open(
        file: Flock<File>,
        path: PathBuf,
        key: String,
        journal: SharedJournal,
        start: &Start,
    ) -> Result<Part, DownloadError> {
        file.set_len(start.offset)
            .map_err(|e| io_err("cannot truncate", &path, e))?;
        let hasher = hash_prefix(&file, start.offset, &path).await?;
        (&*file)
            .seek(SeekFrom::Start(start.offset))
            .map_err(|e| io_err("cannot seek", &path, e))?;
        let (k, size, offset, validator) = (
            key.clone(),
            start.size,
            start.offset,
            start.validator.clone(),
        );
        journal
            .run(move |j| db::put_progress(j, &k, size, offset, validator.as_deref()))
            .await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (durable_tx, durable) = mpsc::unbounded_channel();
        let (spare_tx, spare) = mpsc::unbounded_channel();
        let w = Writer {
            file,
            path,
            key,
            journal,
            spare: spare_tx,
            hasher,
            sync: None,
            durable: durable_tx,
        };
        let writer = tokio::task::spawn_blocking(move || w.run(rx));
        Ok(Part {
            tx,
            fill: Vec::with_capacity(CHUNK),
            spare,
            durable,
            writer: Some(writer),
            stopped: None,
        })
    }

    /// Why the writer stopped (it has, or is stopping): its own error,
    /// taken from its task once and kept.
    async fn stopped(&mut self) -> DownloadError {
        if let Some(w) = self.writer.take() {
            self.stopped = Some(match w.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => gone(),
                Err(e) => join_err(e),
            });
        }
        self.stopped.clone().unwrap_or_else(gone)
    }

    async fn send(&mut self, m: Msg) -> Result<(), DownloadError> {
        if self.tx.send(m).await.is_ok() {
            return Ok(());
        }
        // The writer stopped: its error says why.
        Err(self.stopped().await)
    }

    /// Copies body bytes into the chunk being filled, and queues each chunk
    /// that is full (waits while the queue is full).
    pub(crate) async fn append(&mut self, mut data: &[u8]) -> Result<(), DownloadError> {
        while !data.is_empty() {
            let n = data.len().min(CHUNK - self.fill.len());
            self.fill.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.fill.len() == CHUNK {
                self.queue_fill().await?;
            }
        }
        Ok(())
    }

    /// Queues the chunk being filled, if it holds any bytes, and starts a
    /// new one (a chunk the writer gave back, or a new allocation).
    async fn queue_fill(&mut self) -> Result<(), DownloadError> {
        if self.fill.is_empty() {
            return Ok(());
        }
        let next = match self.spare.try_recv() {
            Ok(mut v) => {
                v.clear();
                v
            }
            Err(_) => Vec::with_capacity(CHUNK),
        };
        let full = std::mem::replace(&mut self.fill, next);
        self.send(Msg::Data(full)).await
    }

    /// Queues a checkpoint of the bytes received so far (the chunk being
    /// filled is queued first). The plan starts one only when none is in
    /// flight.
    pub(crate) async fn checkpoint(&mut self, cp: Checkpoint) -> Result<(), DownloadError> {
        self.queue_fill().await?;
        self.send(Msg::Checkpoint(cp)).await
    }

    /// The next checkpoint made durable: (epoch, length). Pending while
    /// none is in flight (for `select!`). Cancel-safe.
    pub(crate) async fn durable(&mut self) -> Result<(u32, u64), DownloadError> {
        match self.durable.recv().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    /// Lets a checkpoint in flight finish, whatever its outcome (so that it
    /// cannot write a journal row after a cleanup).
    pub(crate) async fn quiesce(&mut self) {
        let (ack, done) = oneshot::channel();
        if self.send(Msg::Quiesce(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Empties the file: the body starts again from byte 0. Records length
    /// 0 with `size` and `validator` once the checkpoint in flight is done.
    pub(crate) async fn restart(
        &mut self,
        size: Option<u64>,
        validator: Option<&str>,
    ) -> Result<(), DownloadError> {
        // The bytes not queued yet belong to the file being emptied.
        self.fill.clear();
        let (ack, done) = oneshot::channel();
        self.send(Msg::Restart(size, validator.map(str::to_owned), ack))
            .await?;
        done.await.map_err(|_| gone())?
    }

    /// Every byte is queued: waits for the writer, and gives the file and
    /// the SHA-256 of its content.
    pub(crate) async fn finish(mut self) -> Result<(Flock<File>, String), DownloadError> {
        self.queue_fill().await?;
        drop(self.tx);
        let Some(writer) = self.writer.take() else {
            return Err(self.stopped.unwrap_or_else(gone));
        };
        let (file, hasher) = writer.await.map_err(join_err)??;
        Ok((file, hex::encode(hasher.finalize())))
    }
}

/// The writer thread's state.
struct Writer {
    file: Flock<File>,
    path: PathBuf,
    key: String,
    journal: SharedJournal,
    /// Written chunks go back to the receive task.
    spare: mpsc::UnboundedSender<Vec<u8>>,
    hasher: Sha256,
    /// The checkpoint in flight on its own thread.
    sync: Option<std::thread::JoinHandle<()>>,
    durable: mpsc::UnboundedSender<Result<(u32, u64), DownloadError>>,
}

impl Writer {
    /// Until the receive task drops its sender; then everything is written
    /// and the last checkpoint is done.
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Result<(Flock<File>, Sha256), DownloadError> {
        while let Some(m) = rx.blocking_recv() {
            match m {
                Msg::Data(chunk) => {
                    self.append(&chunk)?;
                    // The receive task may have finished: then it is freed.
                    let _ = self.spare.send(chunk);
                }
                Msg::Checkpoint(cp) => self.checkpoint(cp)?,
                Msg::Restart(size, validator, ack) => {
                    let _ = ack.send(self.restart(size, validator.as_deref()));
                }
                Msg::Quiesce(ack) => {
                    self.wait_sync();
                    let _ = ack.send(());
                }
            }
        }
        self.wait_sync();
        Ok((self.file, self.hasher))
    }

    fn append(&mut self, data: &[u8]) -> Result<(), DownloadError> {
        self.hasher.update(data);
        (&*self.file)
            .write_all(data)
            .map_err(|e| io_err("cannot write", &self.path, e))
    }

    fn wait_sync(&mut self) {
        if let Some(h) = self.sync.take() {
            let _ = h.join();
        }
    }

    /// Fsyncs what was written and journals it, on a thread of its own
    /// while the writer goes on.
    fn checkpoint(&mut self, cp: Checkpoint) -> Result<(), DownloadError> {
        // The plan starts one only after the last was reported: this join
        // returns at once.
        self.wait_sync();
        let clone = self
            .file
            .try_clone()
            .map_err(|e| io_err("cannot dup", &self.path, e))?;
        let (journal, key, path) = (self.journal.clone(), self.key.clone(), self.path.clone());
        let durable = self.durable.clone();
        let h = std::thread::Builder::new()
            .name("otabridge-sync".into())
            .spawn(move || {
                let r = clone
                    .sync_data()
                    .map_err(|e| io_err("cannot fsync", &path, e))
                    .and_then(|()| {
                        db::update_progress(
                            &mut journal.blocking(),
                            &key,
                            cp.size,
                            cp.len,
                            cp.validator.as_deref(),
                        )
                    });
                let _ = durable.send(r.map(|()| (cp.epoch, cp.len)));
            })
            .map_err(|e| io_err("cannot start a thread for", &self.path, e))?;
        self.sync = Some(h);
        Ok(())
    }

    fn restart(&mut self, size: Option<u64>, validator: Option<&str>) -> Result<(), DownloadError> {
        self.wait_sync();
        self.file
            .set_len(0)
            .map_err(|e| io_err("cannot truncate", &self.path, e))?;
        (&*self.file)
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_err("cannot seek", &self.path, e))?;
        self.hasher = Sha256::new();
        db::put_progress(&mut self.journal.blocking(), &self.key, size, 0, validator)
    }
}

/// The SHA-256 state after the first `len` bytes of the file (after a
/// restart, the hash of the part already on disk).
async fn hash_prefix(file: &File, len: u64, path: &Path) -> Result<Sha256, DownloadError> {
    if len == 0 {
        return Ok(Sha256::new());
    }
    let mut f = file
        .try_clone()
        .map_err(|e| io_err("cannot dup", path, e))?;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        f.seek(SeekFrom::Start(0))
            .map_err(|e| io_err("cannot seek", &path, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            f.read_exact(&mut buf[..n])
                .map_err(|e| io_err("cannot read", &path, e))?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(hasher)
    })
    .await
    .map_err(join_err)?
}
