//! The `.part` file being written: its bytes, their SHA-256, and the
//! checkpoint in flight (fsync, then the journal row).
//!
//! The download plan (`otabridge_codecs::download::Plan`) decides when a
//! checkpoint is due and when the file starts over; this file carries it
//! out. A checkpoint runs on a blocking thread while the download goes on;
//! the journaled length is written only after the fsync that makes it true.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;
use otabridge_codecs::download::Checkpoint;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::{db, DownloadError};
use crate::journal::SharedJournal;

/// Write buffer in front of the `.part` file: few syscalls, bounded memory.
const WRITE_BUFFER: usize = 256 * 1024;

pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> DownloadError {
    DownloadError::Store(format!("{what} {}: {e}", path.display()))
}

fn join_err(e: tokio::task::JoinError) -> DownloadError {
    DownloadError::Store(e.to_string())
}

/// A checkpoint being carried out: its epoch and length once durable.
type InFlight = JoinHandle<Result<(u32, u64), DownloadError>>;

/// The `.part` file, locked, with everything written so far hashed.
pub(crate) struct Part {
    file: Flock<File>,
    path: PathBuf,
    key: String,
    journal: SharedJournal,
    buf: Vec<u8>,
    hasher: Sha256,
    in_flight: Option<InFlight>,
}

impl Part {
    /// Keeps the first `offset` bytes of `file` (cutting the rest), hashes
    /// them, and records `offset` as the durable length.
    pub(crate) async fn open(
        file: Flock<File>,
        path: PathBuf,
        key: String,
        journal: SharedJournal,
        start: &otabridge_codecs::download::Start,
    ) -> Result<Part, DownloadError> {
        file.set_len(start.offset)
            .map_err(|e| io_err("cannot truncate", &path, e))?;
        let hasher = hash_prefix(&file, start.offset, &path).await?;
        (&*file)
            .seek(SeekFrom::Start(start.offset))
            .map_err(|e| io_err("cannot seek", &path, e))?;
        db::put_progress(
            &journal,
            &key,
            start.size,
            start.offset,
            start.validator.as_deref(),
        )?;
        Ok(Part {
            file,
            path,
            key,
            journal,
            buf: Vec::with_capacity(WRITE_BUFFER),
            hasher,
            in_flight: None,
        })
    }

    /// Appends body bytes.
    pub(crate) fn append(&mut self, data: &[u8]) -> Result<(), DownloadError> {
        self.hasher.update(data);
        if self.buf.len() + data.len() > WRITE_BUFFER {
            self.flush()?;
        }
        if data.len() >= WRITE_BUFFER {
            (&*self.file)
                .write_all(data)
                .map_err(|e| io_err("cannot write", &self.path, e))?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DownloadError> {
        if !self.buf.is_empty() {
            (&*self.file)
                .write_all(&self.buf)
                .map_err(|e| io_err("cannot write", &self.path, e))?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Starts `cp` on a blocking thread: fsync, then the journal row. The
    /// plan starts one only when none is in flight.
    pub(crate) fn checkpoint(&mut self, cp: Checkpoint) -> Result<(), DownloadError> {
        self.flush()?;
        let clone = self
            .file
            .try_clone()
            .map_err(|e| io_err("cannot dup", &self.path, e))?;
        let (journal, key, path) = (self.journal.clone(), self.key.clone(), self.path.clone());
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            clone
                .sync_data()
                .map_err(|e| io_err("cannot fsync", &path, e))?;
            db::update_progress(&journal, &key, cp.size, cp.len, cp.validator.as_deref())?;
            Ok((cp.epoch, cp.len))
        }));
        Ok(())
    }

    /// Waits for the checkpoint in flight: (epoch, length) once durable.
    /// Pending forever when none is in flight (for `select!`). Cancel-safe.
    pub(crate) async fn durable(&mut self) -> Result<(u32, u64), DownloadError> {
        let Some(h) = &mut self.in_flight else {
            return std::future::pending().await;
        };
        let r = h.await;
        self.in_flight = None;
        r.map_err(join_err)?
    }

    /// Lets a checkpoint in flight finish, whatever its outcome (so that it
    /// cannot write a journal row after a cleanup or a restart).
    pub(crate) async fn quiesce(&mut self) {
        if let Some(h) = self.in_flight.take() {
            let _ = h.await;
        }
    }

    /// Empties the file: the body starts again from byte 0. Records length
    /// 0 with `size` and `validator`.
    pub(crate) async fn restart(
        &mut self,
        size: Option<u64>,
        validator: Option<&str>,
    ) -> Result<(), DownloadError> {
        self.quiesce().await;
        self.buf.clear();
        self.file
            .set_len(0)
            .map_err(|e| io_err("cannot truncate", &self.path, e))?;
        (&*self.file)
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_err("cannot seek", &self.path, e))?;
        self.hasher = Sha256::new();
        db::put_progress(&self.journal, &self.key, size, 0, validator)
    }

    /// Every byte is written: the file and the SHA-256 of its content.
    pub(crate) async fn finish(mut self) -> Result<(Flock<File>, String), DownloadError> {
        self.quiesce().await;
        self.flush()?;
        Ok((self.file, hex::encode(self.hasher.finalize())))
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
