//! The `.part` file being written, off the receive path: a hasher thread,
//! a writer thread that puts the body on disk with direct I/O where the
//! file system allows it, and checkpoints (fsync, then the journal row) on
//! a thread of their own.
//!
//! ```text
//!                 ┌── chunk ──► hasher: SHA-256 ──┐
//!  receive task ──┤                               ├──► the last one done gives the chunk back (spare)
//!  (TLS, plan)    └── chunk ──► writer: pwrite(2) ┘
//!                                 └──► sync thread: fsync, then journal ──► durable (epoch, len)
//! ```
//!
//! TLS decryption (hyper's connection task and the receive loop), SHA-256
//! (the hasher), the file writes (the writer) and fsync with the journal
//! row (the sync thread) run side by side instead of in series on one task.
//! The receive task copies each body frame into a [`Chunk`] and hands each
//! full chunk to both threads at once; whichever of them is done with it
//! last gives it back for reuse. So the frames' buffers go back to hyper at
//! once (hyper reads the next frame into the same allocation), a fixed set
//! of chunks circulates, and memory does not grow with the package. The
//! download plan (`otabridge_codecs::download::Plan`) decides when a
//! checkpoint is due and when the file starts over; the messages keep their
//! order, so a checkpoint covers exactly the bytes queued before it (the
//! chunk being filled is queued first), and the journaled length is written
//! only after the fsync that makes it true.
//!
//! # Direct I/O
//! The writer opens the file a second time with `O_DIRECT` and writes the
//! block-aligned middle of each chunk through it: the bytes go from the
//! chunk to the device without a copy into the page cache, and the
//! checkpoints' fsyncs have (almost) no dirty pages to write back. On a
//! two-core box the page-cache copy, its writeback and the fsyncs were
//! about a third of the download's CPU (system time 0.62 s of 1.28 s per
//! 512 MiB against nginx, 0.27 s with direct writes; BENCHMARKS.md,
//! "Package download"), and a 1 GiB package no longer fills a small box's
//! memory with dirty pages. The chunks are laid out for it: a chunk's bytes
//! sit in memory so that a byte at a block boundary of the file is at an
//! aligned address, and a full chunk ends at a block boundary. The few
//! bytes before the first boundary and after the last (after a resume, or
//! where a checkpoint queued a partial chunk) are written through the page
//! cache. A file system that refuses `O_DIRECT` (tmpfs before Linux 6.6,
//! some FUSE and flash file systems) gets buffered writes throughout.
//! Durability is unchanged: a direct write may still sit in the device's
//! cache and the file's length in the inode, so a checkpoint fsyncs before
//! it journals, as before.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::Flock;
use otabridge_codecs::download::{Checkpoint, Start};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{db, DownloadError};
use crate::journal::SharedJournal;

/// Chunks queued for the hasher, and for the writer. At most `QUEUE + 2`
/// chunks exist (being filled, queued, and the one the slower of the two
/// threads is at): 4 MiB.
pub(crate) const QUEUE: usize = 2;
/// The bytes a chunk holds, and so the size of a direct write. Each
/// direct write waits for the device: fewer, larger writes keep it busy
/// (`dd oflag=direct` of 512 MiB here: 0.87 s in 128 KiB writes, 0.36 s in
/// 1 MiB ones). Chosen by measurement against nginx with the queue
/// (BENCHMARKS.md, "Package download"): 128 KiB chunks made the writer the
/// bottleneck; 512 KiB to 2 MiB were within the noise of each other, and
/// the peak RSS grows by a chunk's size per chunk in flight.
pub(crate) const CHUNK: usize = 1024 * 1024;
/// The alignment of direct writes: file offsets, lengths and memory
/// addresses (the logical block size of common devices is 512 or 4096
/// bytes).
const ALIGN: usize = 4096;

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

/// Body bytes on their way to file offset [`Chunk::at`], laid out for
/// direct writes (the module's documentation).
pub(crate) struct Chunk {
    buf: Box<[u8]>,
    /// Index in `buf` of the first byte.
    start: usize,
    len: usize,
    /// The file offset of the first byte.
    at: u64,
}

impl Chunk {
    fn new(at: u64) -> Chunk {
        let mut c = Chunk {
            // Zeroed by the allocator's fresh pages: untouched pages cost
            // no memory until bytes are copied in.
            buf: vec![0u8; CHUNK + ALIGN].into_boxed_slice(),
            start: 0,
            len: 0,
            at: 0,
        };
        c.reset(at);
        c
    }

    /// Empties the chunk for bytes from file offset `at`: the first byte
    /// sits `at % ALIGN` bytes past an aligned address.
    fn reset(&mut self, at: u64) {
        let aligned = (ALIGN - self.buf.as_ptr().addr() % ALIGN) % ALIGN;
        self.start = aligned + (at % ALIGN as u64) as usize;
        self.len = 0;
        self.at = at;
    }

    /// How many more bytes it takes: a full chunk ends at a block boundary
    /// of the file.
    fn room(&self) -> usize {
        CHUNK - (self.at % ALIGN as u64) as usize - self.len
    }

    /// Copies in what fits of `data`; returns how much that was.
    fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        let from = self.start + self.len;
        self.buf[from..from + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The file offset after the last byte.
    fn end(&self) -> u64 {
        self.at + self.len as u64
    }
}

/// A chunk shared by the hasher and the writer: the last of them to drop
/// it gives it back through `spare`.
type Shared = Arc<Chunk>;

/// Gives `chunk` back for reuse if nobody else holds it any more
/// (`Arc::into_inner`: exactly one of the two threads gets it).
fn recycle(chunk: Shared, spare: &mpsc::UnboundedSender<Chunk>) {
    if let Some(c) = Arc::into_inner(chunk) {
        // The receive task may have finished: then it is freed.
        let _ = spare.send(c);
    }
}

/// What the receive task asks of the hasher.
enum Hash {
    Data(Shared),
    /// The file starts over: so does the hash.
    Reset,
}

/// What the receive task asks of the writer, in order.
enum Msg {
    /// A chunk of body bytes.
    Data(Shared),
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
    hash: mpsc::Sender<Hash>,
    /// Body bytes not queued yet.
    fill: Chunk,
    /// Chunks the hasher and the writer are done with.
    spare: mpsc::UnboundedReceiver<Chunk>,
    /// Checkpoints made durable: (epoch, length), or why one failed.
    durable: mpsc::UnboundedReceiver<Result<(u32, u64), DownloadError>>,
    /// The hasher thread, until the hash was taken.
    hasher: Option<JoinHandle<Sha256>>,
    /// The writer thread, until its outcome was taken ([`Part::stopped`]).
    writer: Option<WriterTask>,
    /// Why the writer stopped, once known: a handle is awaited only once
    /// (polling a finished `JoinHandle` again panics; a disk that filled
    /// up mid-download did exactly that in the cleanup's `quiesce`).
    stopped: Option<DownloadError>,
}

/// The writer thread: the file and how its bytes went, or why it stopped.
type WriterTask = JoinHandle<Result<(Flock<File>, Written), DownloadError>>;

/// How the writer put the body on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Written {
    /// Bytes written with direct I/O.
    pub(crate) direct: u64,
    /// Bytes written through the page cache.
    pub(crate) buffered: u64,
}

/// The `.part` file with every byte written, and its SHA-256.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) file: Flock<File>,
    pub(crate) sha256: String,
    pub(crate) written: Written,
}

impl Part {
    /// Keeps the first `start.offset` bytes of `file` (cutting the rest),
    /// hashes them, records `offset` as the durable length, and starts the
    /// hasher and the writer (with direct writes if `direct`).
    pub(crate) async fn open(
        file: Flock<File>,
        path: PathBuf,
        key: String,
        journal: SharedJournal,
        start: &Start,
        direct: bool,
    ) -> Result<Part, DownloadError> {
        file.set_len(start.offset)
            .map_err(|e| io_err("cannot truncate", &path, e))?;
        let hasher = hash_prefix(&file, start.offset, &path).await?;
        let (k, size, offset, validator) = (
            key.clone(),
            start.size,
            start.offset,
            start.validator.clone(),
        );
        journal
            .run(move |j| db::put_progress(j, &k, size, offset, validator.as_deref()))
            .await?;
        let direct = if direct { open_direct(&path) } else { None };
        let (tx, rx) = mpsc::channel(QUEUE);
        let (hash_tx, hash_rx) = mpsc::channel(QUEUE);
        let (durable_tx, durable) = mpsc::unbounded_channel();
        let (spare_tx, spare) = mpsc::unbounded_channel();
        let w = Writer {
            file,
            direct,
            written: Written::default(),
            path,
            key,
            journal,
            spare: spare_tx.clone(),
            sync: None,
            durable: durable_tx,
        };
        let hasher = tokio::task::spawn_blocking(move || hash(hasher, hash_rx, spare_tx));
        let writer = tokio::task::spawn_blocking(move || w.run(rx));
        Ok(Part {
            tx,
            hash: hash_tx,
            fill: Chunk::new(start.offset),
            spare,
            durable,
            hasher: Some(hasher),
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

    /// Hands a message to the hasher. It stops only when the receive task
    /// is done, or on a panic.
    async fn send_hash(&mut self, m: Hash) -> Result<(), DownloadError> {
        self.hash
            .send(m)
            .await
            .map_err(|_| DownloadError::Store("the .part hasher stopped".into()))
    }

    /// Copies body bytes into the chunk being filled, and queues each chunk
    /// that is full (waits while the queue is full).
    pub(crate) async fn append(&mut self, mut data: &[u8]) -> Result<(), DownloadError> {
        while !data.is_empty() {
            let n = self.fill.push(data);
            data = &data[n..];
            if self.fill.room() == 0 {
                self.queue_fill().await?;
            }
        }
        Ok(())
    }

    /// Queues the chunk being filled, if it holds any bytes, and starts a
    /// new one (a chunk the writer gave back, or a new allocation).
    async fn queue_fill(&mut self) -> Result<(), DownloadError> {
        if self.fill.len == 0 {
            return Ok(());
        }
        let at = self.fill.end();
        let next = match self.spare.try_recv() {
            Ok(mut c) => {
                c.reset(at);
                c
            }
            Err(_) => Chunk::new(at),
        };
        let full = Arc::new(std::mem::replace(&mut self.fill, next));
        self.send_hash(Hash::Data(full.clone())).await?;
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
        self.fill.reset(0);
        self.send_hash(Hash::Reset).await?;
        let (ack, done) = oneshot::channel();
        self.send(Msg::Restart(size, validator.map(str::to_owned), ack))
            .await?;
        done.await.map_err(|_| gone())?
    }

    /// Every byte is queued: waits for the hasher and the writer, and gives
    /// the file and the SHA-256 of its content.
    pub(crate) async fn finish(mut self) -> Result<Finished, DownloadError> {
        self.queue_fill().await?;
        drop(self.tx);
        drop(self.hash);
        let Some(writer) = self.writer.take() else {
            return Err(self.stopped.unwrap_or_else(gone));
        };
        let (file, written) = writer.await.map_err(join_err)??;
        let hasher = match self.hasher.take() {
            Some(h) => h.await.map_err(join_err)?,
            None => return Err(gone()),
        };
        Ok(Finished {
            file,
            sha256: hex::encode(hasher.finalize()),
            written,
        })
    }
}

/// The hasher thread: hashes each chunk, in order, until the receive task
/// is done.
fn hash(
    mut hasher: Sha256,
    mut rx: mpsc::Receiver<Hash>,
    spare: mpsc::UnboundedSender<Chunk>,
) -> Sha256 {
    while let Some(m) = rx.blocking_recv() {
        match m {
            Hash::Data(chunk) => {
                hasher.update(chunk.bytes());
                recycle(chunk, &spare);
            }
            Hash::Reset => hasher = Sha256::new(),
        }
    }
    hasher
}

/// The `.part` file opened again for direct writes, if its file system
/// takes them.
fn open_direct(path: &Path) -> Option<File> {
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            debug!(path = %path.display(), "no direct writes ({e}): writing through the page cache");
            None
        }
    }
}

/// How `data`, bound for file offset `at`, splits for direct writes:
/// `(head, body)`, the bytes before the first block boundary of the file
/// and then the whole blocks after it; the rest is the tail. `body` is 0
/// when there is no whole block or its address is not aligned.
fn direct_span(data: &[u8], at: u64) -> (usize, usize) {
    let align = ALIGN as u64;
    let head = (((align - at % align) % align) as usize).min(data.len());
    let body = (data.len() - head) / ALIGN * ALIGN;
    if body == 0 || data[head..].as_ptr().addr() % ALIGN != 0 {
        return (data.len(), 0);
    }
    (head, body)
}

/// The writer thread's state.
struct Writer {
    file: Flock<File>,
    /// The same file opened with `O_DIRECT`, while direct writes work.
    direct: Option<File>,
    written: Written,
    path: PathBuf,
    key: String,
    journal: SharedJournal,
    /// Written chunks go back to the receive task.
    spare: mpsc::UnboundedSender<Chunk>,
    /// The checkpoint in flight on its own thread.
    sync: Option<std::thread::JoinHandle<()>>,
    durable: mpsc::UnboundedSender<Result<(u32, u64), DownloadError>>,
}

impl Writer {
    /// Until the receive task drops its sender; then everything is written and
    /// the last checkpoint is done.
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Result<(Flock<File>, Written), DownloadError> {
        while let Some(m) = rx.blocking_recv() {
            match m {
                Msg::Data(chunk) => {
                    self.write(chunk.bytes(), chunk.at)?;
                    recycle(chunk, &self.spare);
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
        Ok((self.file, self.written))
    }

    /// Writes `data` at file offset `at`: its whole blocks directly when
    /// the file takes direct writes, the rest through the page cache.
    fn write(&mut self, data: &[u8], at: u64) -> Result<(), DownloadError> {
        let (head, body) = match self.direct {
            Some(_) => direct_span(data, at),
            None => (data.len(), 0),
        };
        self.write_buffered(&data[..head], at)?;
        if let (Some(direct), true) = (&self.direct, body > 0) {
            let (bytes, offset) = (&data[head..head + body], at + head as u64);
            match direct.write_all_at(bytes, offset) {
                Ok(()) => self.written.direct += body as u64,
                // The file system took the open but not the write (or a
                // short write left an unaligned remainder): page cache from
                // here on.
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    warn!(path = %self.path.display(), "direct write refused ({e}): writing through the page cache");
                    self.direct = None;
                    self.write_buffered(bytes, offset)?;
                }
                Err(e) => return Err(io_err("cannot write", &self.path, e)),
            }
        }
        self.write_buffered(&data[head + body..], at + (head + body) as u64)
    }

    fn write_buffered(&mut self, data: &[u8], at: u64) -> Result<(), DownloadError> {
        if data.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(data, at)
            .map_err(|e| io_err("cannot write", &self.path, e))?;
        self.written.buffered += data.len() as u64;
        Ok(())
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
        db::put_progress(&mut self.journal.blocking(), &self.key, size, 0, validator)
    }
}

/// The SHA-256 state after the first `len` bytes of the file (after a
/// restart, the hash of the part already on disk).
async fn hash_prefix(file: &File, len: u64, path: &Path) -> Result<Sha256, DownloadError> {
    if len == 0 {
        return Ok(Sha256::new());
    }
    let f = file
        .try_clone()
        .map_err(|e| io_err("cannot dup", path, e))?;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut at = 0;
        while at < len {
            let n = ((len - at) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], at)
                .map_err(|e| io_err("cannot read", &path, e))?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(hasher)
    })
    .await
    .map_err(join_err)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    /// Deterministic bytes: position-dependent, so a byte written at the
    /// wrong offset shows.
    fn pattern(from: u64, len: usize) -> Vec<u8> {
        (from..from + len as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn a_chunk_puts_the_file_s_block_boundaries_at_aligned_addresses() {
        let mut c = Chunk::new(0);
        for at in [0u64, 1, 511, 4095, 4096, 4097, 1 << 20, (1 << 20) + 12_345] {
            c.reset(at);
            let room = c.room();
            assert_eq!(
                (at + room as u64) % ALIGN as u64,
                0,
                "a full chunk ends at a boundary ({at})"
            );
            assert!(room <= CHUNK && room > CHUNK - ALIGN, "{at}: {room}");
            let data = pattern(at, room + 10);
            assert_eq!(c.push(&data), room, "what does not fit stays out");
            assert_eq!(c.push(&data[room..]), 0);
            assert_eq!(c.bytes(), &data[..room]);
            assert_eq!(c.end(), at + room as u64);
            let (head, body) = direct_span(c.bytes(), c.at);
            assert_eq!((at + head as u64) % ALIGN as u64, 0, "{at}");
            assert_eq!(c.bytes()[head..].as_ptr().addr() % ALIGN, 0, "{at}");
            assert_eq!(
                head + body,
                room,
                "{at}: only the head goes through the page cache"
            );
        }
    }

    #[test]
    fn direct_spans_leave_what_cannot_go_direct_to_the_page_cache() {
        let mut c = Chunk::new(0);
        c.push(&pattern(0, 3 * ALIGN + 100));
        let b = c.bytes();
        // From a boundary: three whole blocks, then a 100-byte tail.
        assert_eq!(direct_span(b, 0), (0, 3 * ALIGN));
        // Less than a block.
        assert_eq!(direct_span(&b[..100], 0), (100, 0));
        // The head alone is longer than the data.
        assert_eq!(direct_span(&b[1..10], 1), (9, 0));
        // A file offset whose boundary falls on an unaligned address.
        assert_eq!(direct_span(&b[1..], 0), (3 * ALIGN + 99, 0));
        // Offset 4000 with memory laid out for it: 96 bytes, then blocks.
        let mut c = Chunk::new(4000);
        c.push(&pattern(4000, 2 * ALIGN + 96 + 5));
        assert_eq!(direct_span(c.bytes(), 4000), (96, 2 * ALIGN));
    }

    /// Writes a package through [`Part`] into `dir` the way a download
    /// does: a prefix already on disk and journaled, frames of odd sizes,
    /// partial chunks where checkpoints fall, then finish. Returns what was
    /// written and how, after checking the file and its hash.
    async fn write_package(dir: &Path, direct: bool) -> Written {
        let (size, prefix) = (3 * CHUNK as u64 + 77_777, 12_345u64);
        let path = dir.join("k.part");
        std::fs::write(&path, pattern(0, prefix as usize + 999)).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let file = Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
        let journal = SharedJournal::open(&dir.join("state")).unwrap();
        let start = Start {
            offset: prefix,
            size: Some(size),
            validator: None,
        };
        let mut part = Part::open(
            file,
            path.clone(),
            "k".into(),
            journal.clone(),
            &start,
            direct,
        )
        .await
        .unwrap();
        let (mut at, mut epoch) = (prefix, 0);
        let frames = [16_413usize, 65_536, 1, 4096, 333_333, 9];
        let mut i = 0;
        while at < size {
            let n = frames[i % frames.len()].min((size - at) as usize);
            part.append(&pattern(at, n)).await.unwrap();
            at += n as u64;
            i += 1;
            if i % 7 == 0 {
                epoch += 1;
                let cp = Checkpoint {
                    epoch,
                    len: at,
                    size: Some(size),
                    validator: None,
                };
                part.checkpoint(cp).await.unwrap();
                assert_eq!(part.durable().await.unwrap(), (epoch, at));
            }
        }
        let done = part.finish().await.unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len() as u64, size);
        assert!(
            on_disk == pattern(0, size as usize),
            "the file holds the package byte for byte"
        );
        assert_eq!(done.sha256, hex::encode(Sha256::digest(&on_disk)));
        let row = journal.run(|j| db::get(j, "k")).await.unwrap().unwrap();
        assert!(row.durable_len > prefix, "checkpoints were journaled");
        assert_eq!(done.written.direct + done.written.buffered, size - prefix);
        done.written
    }

    #[tokio::test]
    async fn direct_writes_put_the_package_on_disk_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let supported = open_direct(&dir.path().join("probe")).is_some() || {
            std::fs::write(dir.path().join("probe"), b"").unwrap();
            open_direct(&dir.path().join("probe")).is_some()
        };
        let written = write_package(dir.path(), true).await;
        if supported {
            // Heads after a resume and after each partial chunk go through
            // the page cache; everything else goes direct.
            assert!(
                written.direct > 3 * CHUNK as u64 - 64 * ALIGN as u64,
                "{written:?}"
            );
        } else {
            eprintln!(
                "{} takes no O_DIRECT: only the fallback ran",
                dir.path().display()
            );
            assert_eq!(written.direct, 0);
        }
    }

    #[tokio::test]
    async fn without_direct_writes_everything_goes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_package(dir.path(), false).await;
        assert_eq!(written.direct, 0);
    }

    #[tokio::test]
    async fn a_restart_empties_the_file_and_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.part");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let file = Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
        let journal = SharedJournal::open(&dir.path().join("state")).unwrap();
        let start = Start {
            offset: 0,
            size: None,
            validator: None,
        };
        let mut part = Part::open(file, path.clone(), "r".into(), journal, &start, true)
            .await
            .unwrap();
        part.append(&vec![0xEE; CHUNK + 5000]).await.unwrap();
        part.restart(Some(CHUNK as u64 + 1), Some("\"v2\""))
            .await
            .unwrap();
        let body = pattern(0, CHUNK + 1);
        part.append(&body).await.unwrap();
        let done = part.finish().await.unwrap();
        assert!(std::fs::read(&path).unwrap() == body);
        assert_eq!(done.sha256, hex::encode(Sha256::digest(&body)));
    }
}
