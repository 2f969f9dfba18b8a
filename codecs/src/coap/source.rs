//! Random access to an image or package by offset, so that no engine holds a
//! whole firmware image: the driver implements [`ReadAt`] over a file
//! (`pread`), tests over a slice.

/// Reading `(offset, len)` of an image failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading {len} bytes at offset {offset}: {reason}")]
pub struct ReadError {
    /// Where the read started.
    pub offset: u64,
    /// How many bytes were asked for.
    pub len: usize,
    /// What went wrong, for the log.
    pub reason: String,
}

/// Fills a buffer from a fixed-size byte source at a given offset.
pub trait ReadAt {
    /// Fills all of `buf` with the bytes at `offset..offset + buf.len()`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError>;
}

impl ReadAt for [u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let fail = |reason: &str| ReadError {
            offset,
            len: buf.len(),
            reason: reason.into(),
        };
        let start = usize::try_from(offset).map_err(|_| fail("offset out of range"))?;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| fail("offset out of range"))?;
        let src = self.get(start..end).ok_or_else(|| fail("past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.as_mut_slice().read_at(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_read_in_range_and_refuse_outside() {
        let mut v: Vec<u8> = (0..10).collect();
        let mut buf = [0u8; 3];
        v.read_at(7, &mut buf).unwrap();
        assert_eq!(buf, [7, 8, 9]);
        let err = v.read_at(8, &mut buf).unwrap_err();
        assert_eq!((err.offset, err.len), (8, 3));
        assert!(v.read_at(u64::MAX, &mut buf).is_err());
    }
}
