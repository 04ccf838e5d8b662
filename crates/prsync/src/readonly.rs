//! A librqbit storage that only reads. Seeding must never modify what it seeds: librqbit's
//! own file storage opens files read-write and truncates them to length, which bumps their
//! mtime (making a volunteer re-hash and stop serving them) and would let a wrong torrent
//! write into a mirror.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use librqbit::storage::{BoxStorageFactory, StorageFactory, StorageFactoryExt, TorrentStorage};
use librqbit::{ManagedTorrentShared, TorrentMetadata};

#[derive(Clone)]
pub struct ReadOnlyFactory {
    folder: PathBuf,
}

impl ReadOnlyFactory {
    pub fn new(folder: &Path) -> Self {
        ReadOnlyFactory {
            folder: folder.to_path_buf(),
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
            folder: self.folder.clone(),
            files: Vec::new(),
        })
    }

    fn clone_box(&self) -> BoxStorageFactory {
        self.clone().boxed()
    }
}

pub struct ReadOnlyStorage {
    folder: PathBuf,
    files: Vec<Arc<File>>,
}

impl TorrentStorage for ReadOnlyStorage {
    fn init(
        &mut self,
        _shared: &ManagedTorrentShared,
        metadata: &TorrentMetadata,
    ) -> anyhow::Result<()> {
        let mut files = Vec::new();
        for fi in metadata.file_infos.iter() {
            let p = self.folder.join(&fi.relative_filename);
            files.push(Arc::new(
                File::open(&p).with_context(|| format!("opening {} to seed", p.display()))?,
            ));
        }
        self.files = files;
        Ok(())
    }

    fn pread_exact(&self, file_id: usize, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let f = self.files.get(file_id).context("no such file")?;
        f.read_exact_at(buf, offset)?;
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
        let f = self.files.get(file_id).context("no such file")?;
        let len = f.metadata()?.len();
        if len != length {
            bail!("seeded file has {len} bytes, the torrent says {length}");
        }
        Ok(())
    }

    fn take(&self) -> anyhow::Result<Box<dyn TorrentStorage>> {
        Ok(Box::new(ReadOnlyStorage {
            folder: self.folder.clone(),
            files: self.files.clone(),
        }))
    }
}
