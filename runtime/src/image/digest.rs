//! sha256 digests (`sha256:<64 hex>`) and a reader that hashes what passes through it,
//! so content is verified while it streams instead of in a second pass.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::{Error, Result};

/// Checks the `sha256:<64 lowercase hex>` form and returns the hex part.
pub fn validate(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(Error::InvalidDigest(digest.to_string())),
    }
}

pub fn sha256_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads whatever is left (a tar stream ends before its padding does), then returns
    /// `(digest, bytes)`.
    pub fn finish(mut self) -> io::Result<(String, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        Ok((digest, self.count, self.inner))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Chain ID of a layer stack (OCI image spec): `chain(L0) = diff(L0)`,
/// `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_reader_matches_one_shot_hash() {
        let data = vec![7u8; 100_000];
        let r = HashingReader::new(&data[..]);
        let (d, n, _) = r.finish().unwrap();
        assert_eq!(n, 100_000);
        assert_eq!(d, sha256_of(&data));
        assert!(validate(&d).is_ok());
        assert!(validate("sha256:ABC").is_err());
        assert!(validate(&d.replace("sha256", "sha512")).is_err());
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = sha256_of(b"a");
        let b = sha256_of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256_of(format!("{a} {b}").as_bytes()));
    }
}
