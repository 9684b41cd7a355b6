//! The content-addressed blob store: `content/blobs/sha256/<hex>`.
//!
//! A blob is written to a temp file in the same directory, hashed and counted while it
//! is written, checked against the expected digest and size, fsync'd, then renamed
//! into place, so a blob under its digest name is always complete and correct. Temp
//! files left by a killed writer start with `.tmp-` and are removed by `clean_temp`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::digest::validate;
use super::{Error, IoContext, Result};

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct ContentStore {
    dir: PathBuf,
}

impl ContentStore {
    pub fn open(content_root: &Path) -> Result<Self> {
        let dir = content_root.join("blobs").join("sha256");
        fs::create_dir_all(&dir).at(&dir)?;
        Ok(ContentStore { dir })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join(validate(digest)?))
    }

    /// Present with the expected size (a blob's name already vouches for its hash).
    pub fn has(&self, digest: &str, size: Option<u64>) -> bool {
        match self.path(digest).and_then(|p| fs::metadata(&p).at(p)) {
            Ok(m) => size.is_none_or(|s| m.len() == s),
            Err(_) => false,
        }
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.path(digest)?;
        let data = fs::read(&p).at(&p)?;
        let actual = super::digest::sha256_of(&data);
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("stored blob {}", p.display()),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(data)
    }

    pub fn open_blob(&self, digest: &str) -> Result<File> {
        let p = self.path(digest)?;
        File::open(&p).at(p)
    }

    pub fn writer(&self, what: &str) -> Result<BlobWriter> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{}", std::process::id(), seq));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at(&tmp)?;
        Ok(BlobWriter {
            dir: self.dir.clone(),
            tmp: Some(tmp),
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            count: 0,
            what: what.to_string(),
        })
    }

    /// Stores `data`, which must hash to `digest` (when given). Returns the digest.
    pub fn put(&self, data: &[u8], digest: Option<&str>, what: &str) -> Result<String> {
        if let Some(d) = digest
            && self.has(d, Some(data.len() as u64))
        {
            return Ok(d.to_string());
        }
        let mut w = self.writer(what)?;
        w.write_all(data).map_err(|e| w.io_err(e))?;
        w.commit(digest, Some(data.len() as u64))
    }

    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).at(&self.dir)? {
            let e = e.at(&self.dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if validate(&format!("sha256:{name}")).is_ok() {
                out.push(format!("sha256:{name}"));
            }
        }
        Ok(out)
    }

    pub fn delete(&self, digest: &str) -> Result<()> {
        let p = self.path(digest)?;
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at(p),
            _ => Ok(()),
        }
    }

    /// Removes temp files of writers whose process is gone (a killed pull).
    pub fn clean_temp(&self) -> Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(&self.dir).at(&self.dir)? {
            let e = e.at(&self.dir)?;
            if super::snapshot::temp_owner_dead(&e.file_name().to_string_lossy()) {
                fs::remove_file(e.path()).at(e.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn size(&self, digest: &str) -> Option<u64> {
        self.path(digest)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .map(|m| m.len())
    }
}

/// A blob being written; dropped without `commit`, its temp file is removed.
pub struct BlobWriter {
    dir: PathBuf,
    tmp: Option<PathBuf>,
    file: io::BufWriter<File>,
    hasher: Sha256,
    count: u64,
    what: String,
}

impl BlobWriter {
    pub fn count(&self) -> u64 {
        self.count
    }

    fn io_err(&self, e: io::Error) -> Error {
        Error::Io {
            path: self.tmp.clone().unwrap_or_default(),
            source: e,
        }
    }

    /// Verifies digest and size, syncs, and renames into place. Returns the digest.
    pub fn commit(mut self, digest: Option<&str>, size: Option<u64>) -> Result<String> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if let Some(s) = size
            && s != self.count
        {
            return Err(Error::SizeMismatch {
                what: self.what.clone(),
                expected: s,
                actual: self.count,
            });
        }
        if let Some(d) = digest
            && d != actual
        {
            return Err(Error::DigestMismatch {
                what: self.what.clone(),
                expected: d.to_string(),
                actual,
            });
        }
        let tmp = self.tmp.clone().unwrap_or_default();
        self.file.flush().at(&tmp)?;
        self.file.get_ref().sync_all().at(&tmp)?;
        let dest = self.dir.join(validate(&actual)?);
        fs::rename(&tmp, &dest).at(&dest)?;
        self.tmp = None;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .at(&self.dir)?;
        Ok(actual)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        let before = self.count;
        self.count += n as u64;
        // Start writeback of each finished 8 MiB chunk now, so the fsync at commit
        // has little left to wait for (a pull would otherwise pay for it all at the end).
        const CHUNK: u64 = 8 << 20;
        if before / CHUNK != self.count / CHUNK {
            let end = self.count / CHUNK * CHUNK;
            self.file.flush()?;
            // SAFETY: valid fd; only a writeback hint.
            unsafe {
                libc::sync_file_range(
                    self.file.get_ref().as_raw_fd(),
                    (end - CHUNK) as i64,
                    CHUNK as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(t) = self.tmp.take() {
            let _ = fs::remove_file(t);
        }
    }
}

/// Copies everything read from `inner` into a blob writer, so one pass over a network
/// stream both stores the blob and feeds the decompressor.
pub struct TeeReader<R> {
    pub inner: R,
    pub writer: BlobWriter,
    /// Refuses to store more than this (the manifest's size), bounding a lying server.
    pub limit: u64,
}

impl<R: Read> Read for TeeReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.writer.count() + n as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob is larger than its declared size {}", self.limit),
            ));
        }
        self.writer.write_all(&buf[..n])?;
        Ok(n)
    }
}
