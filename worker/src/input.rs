//! The file an item reads, opened once from the store. A parser child is fed from it by the
//! kernel (file to pipe), so the worker holds a document's bytes only where it reads them
//! itself: small plain text parsed in-process, a worker without a parser child, a page shown
//! to a vision model. A worker with several 200 MiB files in flight stays small.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// Bytes read up front: format detection and the fault markers look no further.
const HEAD: u64 = 1024;

/// An opened stored file.
#[derive(Debug)]
pub struct Input {
    file: File,
    size: u64,
    head: Vec<u8>,
}

impl Input {
    /// Reads the head of an opened file.
    pub fn new(file: File) -> std::io::Result<Self> {
        let size = file.metadata()?.len();
        let mut head = vec![0; usize::try_from(size.min(HEAD)).unwrap_or(0)];
        file.read_exact_at(&mut head, 0)?;
        Ok(Self { file, size, head })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first KiB (less for a smaller file).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The whole file, read into memory.
    pub fn bytes(&self) -> std::io::Result<Vec<u8>> {
        let len = usize::try_from(self.size)
            .map_err(|_| std::io::Error::other("file too large for this platform"))?;
        let mut bytes = vec![0; len];
        self.file.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }

    /// Copies the whole file into `to` without passing it through the worker's memory where
    /// the kernel can (`sendfile`/`splice` into a pipe).
    pub fn copy_into(&self, to: &mut impl Write) -> std::io::Result<u64> {
        let mut from = &self.file;
        from.seek(SeekFrom::Start(0))?;
        std::io::copy(&mut from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_bytes_and_copy_agree_with_the_file() {
        let dir = std::env::temp_dir().join(format!("docfleet-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let input = Input::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(input.size(), 5000);
        assert_eq!(input.head(), &content[..1024]);
        assert_eq!(input.bytes().unwrap(), content);
        // Twice: each copy starts from the beginning.
        for _ in 0..2 {
            let mut out = Vec::new();
            assert_eq!(input.copy_into(&mut out).unwrap(), 5000);
            assert_eq!(out, content);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
