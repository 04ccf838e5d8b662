//! A repository tree walked by a few threads at once, each file handed to a visitor with its
//! path relative to the root and its metadata.
//!
//! What it decides for every caller alike: which entries are files of the tree (a symbolic
//! link only if [`crate::beneath`] would open it: relative, resolved without leaving the
//! root, to a regular file; our own `.mirrorswarm*`
//! staging and lock files never), and which are skipped and why. Each file's metadata is
//! taken relative to its open directory: walking a million files by full path cost as much
//! in the kernel's path lookups as everything else together.
//!
//! A visitor should allocate little that outlives the walk: each walker thread has its own
//! malloc arena, and a million small allocations left there after a publish stayed in the
//! server's memory for good (60-100 MB with two walkers).

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::beneath::{OpenError, Root};
use crate::{relpath::validate_rel_path, ManifestError};

/// Threads reading directories at once: past a few, a local disk gains nothing.
pub const MAX_WALKERS: usize = 8;

/// What a walker does with what it finds. Each walker has its own.
pub trait Visit: Send {
    /// A file of the tree; `read` is where its bytes are (a link's checked target).
    /// `Ok(false)` ends the walk early, for every walker.
    fn file(&mut self, rel: &str, read: &Path, meta: &Metadata) -> Result<bool, ManifestError>;
    /// An entry left out of the tree, with the reason (for the log).
    fn skipped(&mut self, what: String, why: String);
}

/// Walk `root` with one visitor per walker, made by `visitor`; returns them when the walk
/// is done or was ended early. The first error ends the walk and is returned.
pub fn walk<V: Visit>(
    root: &Path,
    visitor: impl Fn() -> V + Sync,
) -> Result<Vec<V>, ManifestError> {
    let canon_root = root
        .canonicalize()
        .map_err(|e| ManifestError::io(root, e))?;
    if !canon_root.is_dir() {
        return Err(ManifestError::io(
            root,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory"),
        ));
    }
    let beneath = Root::open(&canon_root).map_err(|e| ManifestError::io(root, e))?;
    let walkers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WALKERS);
    let w = Walkers {
        beneath: &beneath,
        queue: Mutex::new(Queue {
            dirs: vec![(canon_root.clone(), String::new())],
            busy: 0,
            ended: false,
            failed: None,
        }),
        ready: Condvar::new(),
    };
    let joined: Vec<Option<V>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..walkers).map(|_| s.spawn(|| w.run(visitor()))).collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    let queue = w.queue.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = queue.failed {
        return Err(e);
    }
    // A walker's panics inside a directory become `failed`; one outside would lose what it
    // found, and a tree short of files must never be published.
    joined
        .into_iter()
        .collect::<Option<Vec<V>>>()
        .ok_or_else(|| ManifestError::io(root, std::io::Error::other("a scanning thread failed")))
}

/// The directories still to read, shared by the walkers.
struct Queue {
    /// Each with its path relative to the root, `/`-terminated (empty for the root).
    dirs: Vec<(PathBuf, String)>,
    /// Walkers reading a directory now (which may add more).
    busy: usize,
    /// A visitor asked to stop, or a directory failed.
    ended: bool,
    failed: Option<ManifestError>,
}

struct Walkers<'a> {
    /// The root held open: links are checked by opening them beneath it.
    beneath: &'a Root,
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Walkers<'_> {
    fn run<V: Visit>(&self, mut v: V) -> V {
        let mut subdirs = Vec::new();
        let mut rel = String::new();
        let mut q = self.lock();
        while !q.ended {
            let Some((dir, rel_dir)) = q.dirs.pop() else {
                if q.busy == 0 {
                    break;
                }
                q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            q.busy += 1;
            drop(q);
            // A panic must end the walk with an error, not leave the others waiting or a
            // manifest short.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.read_dir(&dir, &rel_dir, &mut v, &mut subdirs, &mut rel)
            }))
            .unwrap_or_else(|_| {
                Err(ManifestError::io(
                    &dir,
                    std::io::Error::other("internal error while scanning"),
                ))
            });
            q = self.lock();
            q.busy -= 1;
            q.dirs.append(&mut subdirs);
            match result {
                Ok(true) => {}
                Ok(false) => q.ended = true,
                Err(e) => {
                    q.ended = true;
                    q.failed.get_or_insert(e);
                }
            }
            // New work, or the end of it, for whoever waits.
            self.ready.notify_all();
        }
        drop(q);
        v
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One directory's entries: files to the visitor, subdirectories queued. An unreadable
    /// directory is reported and skipped; a file that cannot be stat'ed fails the walk.
    fn read_dir(
        &self,
        dir: &Path,
        rel_dir: &str,
        v: &mut impl Visit,
        subdirs: &mut Vec<(PathBuf, String)>,
        rel: &mut String,
    ) -> Result<bool, ManifestError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                v.skipped(dir.display().to_string(), e.to_string());
                return Ok(true);
            }
        };
        for item in entries {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    v.skipped(dir.display().to_string(), e.to_string());
                    continue;
                }
            };
            let name = item.file_name();
            let Some(name) = name.to_str() else {
                v.skipped(item.path().display().to_string(), "not valid UTF-8".into());
                continue;
            };
            if name.starts_with(".mirrorswarm") {
                continue; // our own staging and lock files
            }
            let ft = item
                .file_type()
                .map_err(|e| ManifestError::io(&item.path(), e))?;
            rel.clear();
            rel.push_str(rel_dir);
            rel.push_str(name);
            if ft.is_dir() {
                subdirs.push((item.path(), format!("{rel}/")));
                continue;
            }
            if let Err(reason) = validate_rel_path(rel) {
                v.skipped(rel.clone(), reason.into());
                continue;
            }
            let more = if ft.is_symlink() {
                // Listed only if it opens as every later open of it will (`beneath`): a
                // relative link whose resolution stays in the root, to a regular file.
                let opened = self.beneath.open_file(rel);
                match opened.map(|(_, meta)| (item.path().canonicalize(), meta)) {
                    Ok((Ok(t), meta)) => v.file(rel, &t, &meta)?,
                    Ok((Err(e), _)) | Err(OpenError::Io(e)) => {
                        v.skipped(rel.clone(), format!("symlink: {e}"));
                        continue;
                    }
                    Err(OpenError::NotFound) => {
                        v.skipped(rel.clone(), "dangling symlink".into());
                        continue;
                    }
                    Err(e) => {
                        let why = format!(
                            "symlink not followed (only relative links to a file that stay \
                             inside the root are): {e}"
                        );
                        v.skipped(rel.clone(), why);
                        continue;
                    }
                }
            } else if ft.is_file() {
                // Relative to the open directory: no walk of the whole path.
                let meta = item
                    .metadata()
                    .map_err(|e| ManifestError::io(&item.path(), e))?;
                v.file(rel, &item.path(), &meta)?
            } else {
                v.skipped(rel.clone(), "not a regular file".into());
                continue;
            };
            if !more {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(usize, bool);

    impl Visit for Count {
        fn file(&mut self, rel: &str, _: &Path, _: &Metadata) -> Result<bool, ManifestError> {
            if self.1 && rel == "d3/f3" {
                panic!("a visitor that fails");
            }
            self.0 += 1;
            Ok(true)
        }
        fn skipped(&mut self, _: String, _: String) {}
    }

    struct Names(Vec<String>, Vec<String>);

    impl Visit for Names {
        fn file(&mut self, rel: &str, _: &Path, _: &Metadata) -> Result<bool, ManifestError> {
            self.0.push(rel.to_string());
            Ok(true)
        }
        fn skipped(&mut self, what: String, _: String) {
            self.1.push(what);
        }
    }

    #[test]
    fn a_link_is_listed_exactly_when_it_opens_beneath_the_root() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("pool/main")).unwrap();
        std::fs::write(root.join("pool/main/a.deb"), b"deb").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        symlink("pool/main/a.deb", root.join("rel")).unwrap();
        symlink("../main/a.deb", root.join("pool/main/up")).unwrap();
        symlink(root.join("pool/main/a.deb"), root.join("abs")).unwrap();
        symlink("../root/pool/main/a.deb", root.join("outandin")).unwrap();
        symlink("../secret", root.join("out")).unwrap();
        symlink("pool", root.join("dir")).unwrap();
        symlink("nowhere", root.join("dangling")).unwrap();
        let (mut listed, mut skipped) = (Vec::new(), Vec::new());
        for n in walk(&root, || Names(Vec::new(), Vec::new())).unwrap() {
            listed.extend(n.0);
            skipped.extend(n.1);
        }
        listed.sort();
        skipped.sort();
        assert_eq!(listed, ["pool/main/a.deb", "pool/main/up", "rel"]);
        assert_eq!(skipped, ["abs", "dangling", "dir", "out", "outandin"]);
        // Every listed path opens beneath the root; no skipped one does.
        let beneath = Root::open(&root).unwrap();
        for rel in &listed {
            assert!(beneath.open_file(rel).is_ok(), "{rel}");
        }
        for rel in &skipped {
            assert!(beneath.open_file(rel).is_err(), "{rel}");
        }
    }

    #[test]
    fn every_file_is_visited_once_and_a_panic_fails_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..8 {
            std::fs::create_dir_all(dir.path().join(format!("d{d}/sub"))).unwrap();
            for f in 0..10 {
                std::fs::write(dir.path().join(format!("d{d}/f{f}")), b"x").unwrap();
                std::fs::write(dir.path().join(format!("d{d}/sub/f{f}")), b"x").unwrap();
            }
        }
        let seen: usize = walk(dir.path(), || Count(0, false))
            .unwrap()
            .iter()
            .map(|c| c.0)
            .sum();
        assert_eq!(seen, 160);
        assert!(walk(dir.path(), || Count(0, true)).is_err());
    }
}
