//! A librqbit storage that only reads, from a file already open. Seeding must never modify
//! what it seeds: librqbit's own file storage opens files read-write and truncates them to
//! length, which bumps their mtime (making a volunteer re-hash and stop serving them) and
//! would let a wrong torrent write into a mirror. Nor may it open anything by name: the
//! seeder opened the file beneath its tree's root and checked it ([`crate::seeder`]), and a
//! name could meanwhile lead anywhere.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use librqbit::storage::{BoxStorageFactory, StorageFactory, StorageFactoryExt, TorrentStorage};
use librqbit::{ManagedTorrentShared, TorrentMetadata};

#[derive(Clone)]
pub struct ReadOnlyFactory {
    file: Arc<File>,
}

impl ReadOnlyFactory {
    /// Storage for a single-file torrent whose file is `file`.
    pub fn new(file: File) -> Self {
        ReadOnlyFactory {
            file: Arc::new(file),
        }
    }
}

impl StorageFactory for ReadOnlyFactory {
    type Storage = ReadOnlyStorage;

    fn create(
        &self,
        _shared: &ManagedTorrentShared,
        _metadata: &TorrentMetadata,
    ) -> anyhow::Result<ReadOnlyStorage> {
        Ok(ReadOnlyStorage {
            file: self.file.clone(),
        })
    }

    fn clone_box(&self) -> BoxStorageFactory {
        self.clone().boxed()
    }
}

pub struct ReadOnlyStorage {
    file: Arc<File>,
}

impl ReadOnlyStorage {
    fn file(&self, file_id: usize) -> anyhow::Result<&File> {
        match file_id {
            0 => Ok(&self.file),
            _ => bail!("a seeded torrent has one file"),
        }
    }
}

impl TorrentStorage for ReadOnlyStorage {
    fn init(
        &mut self,
        _shared: &ManagedTorrentShared,
        metadata: &TorrentMetadata,
    ) -> anyhow::Result<()> {
        // Torrents here are single-file and named by SHA-256 (`artifacts`).
        if metadata.file_infos.len() != 1 {
            bail!(
                "a seeded torrent has one file, this one {}",
                metadata.file_infos.len()
            );
        }
        Ok(())
    }

    fn pread_exact(&self, file_id: usize, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        self.file(file_id)?
            .read_exact_at(buf, offset)
            .context("reading a seeded file")?;
        Ok(())
    }

    fn pwrite_all(&self, _file_id: usize, _offset: u64, _buf: &[u8]) -> anyhow::Result<()> {
        bail!("seed storage is read-only")
    }

    fn remove_file(&self, _file_id: usize, _filename: &Path) -> anyhow::Result<()> {
        Ok(())
    }

    fn remove_directory_if_empty(&self, _path: &Path) -> anyhow::Result<()> {
        Ok(())
    }

    fn ensure_file_length(&self, file_id: usize, length: u64) -> anyhow::Result<()> {
        let len = self.file(file_id)?.metadata()?.len();
        if len != length {
            bail!("seeded file has {len} bytes, the torrent says {length}");
        }
        Ok(())
    }

    fn take(&self) -> anyhow::Result<Box<dyn TorrentStorage>> {
        Ok(Box::new(ReadOnlyStorage {
            file: self.file.clone(),
        }))
    }
}
