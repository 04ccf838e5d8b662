//! Opening a published path strictly inside its tree, whatever the tree has become since.
//!
//! A manifest key was checked when it was published, but the tree is the operator's (or a
//! volunteer admin's) and changes between publishes: a listed file can be swapped for a
//! symbolic link to `/etc/passwd`, a directory on its way for a link to `/`, the file for a
//! FIFO. Whoever opens a listed path to send its bytes (the origin, a volunteer, a seed)
//! opens it through a [`Root`]: the tree's directory held open once, and each path opened
//! relative to it with `openat2(RESOLVE_BENEATH)`, so the kernel refuses any resolution
//! that leaves the directory, then checked on the descriptor (a regular file, of the size
//! expected). Opening by a joined path (or checking a path and then opening it) would
//! follow whatever the path names at that moment.
//!
//! The rule for symbolic links, the same at publish ([`crate::walk`]) and at every open: a
//! link is followed only if it is relative and its resolution never leaves the root (what
//! `RESOLVE_BENEATH` allows). An absolute link is refused even when it names a file inside,
//! as is `../root/x` from the root's own top. On kernels without `openat2` (before 5.6)
//! the path is opened with `openat` and the descriptor's real location, read back from
//! `/proc/self/fd`, must lie inside the root's: never outside either way, though that
//! fallback also accepts a link that ends inside by another way (absolute, or out and back
//! in through `..`).

use std::ffi::CStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::relpath::validate_rel_path;

/// A directory held open, that paths are opened beneath.
#[derive(Debug)]
pub struct Root {
    /// `O_PATH`: a handle on the directory itself, usable only as the base of lookups.
    dir: OwnedFd,
    /// As it was named when opened, for messages only: nothing is opened through it.
    path: PathBuf,
}

/// Why a path was not opened. Every variant but [`OpenError::Io`] says the tree no longer
/// holds a regular file there as it was listed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The path is not a plain relative path (never true of a manifest key).
    #[error("not a plain relative path: {0}")]
    BadPath(&'static str),
    /// Nothing there, or a file where a directory should be.
    #[error("no such file")]
    NotFound,
    /// A symbolic link on the way leads out of the root (or is absolute, or one of a loop).
    #[error("a symbolic link on the way leads out of the root")]
    OutsideRoot,
    /// Something other than a regular file: a directory, FIFO, socket or device.
    #[error("not a regular file but a {0}")]
    NotRegular(&'static str),
    /// A regular file, but not of the size expected.
    #[error("{found} bytes where {expected} were published")]
    SizeChanged { expected: u64, found: u64 },
    /// The tree was found not to hold the published bytes (a replica still catching up with
    /// a generation another server published); not opened.
    #[error("this server's copy is not the published one yet")]
    NotHeld,
    /// Anything else (permissions, I/O): the tree may be fine.
    #[error("{0}")]
    Io(#[source] io::Error),
}

/// Whether `openat2` works here: not tried yet, yes, or no (`ENOSYS`: the fallback).
static OPENAT2: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const WORKS: u8 = 1;
const MISSING: u8 = 2;

/// How a path is resolved beneath the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolve {
    /// `openat2` with `RESOLVE_BENEATH`: the kernel refuses to leave the root.
    Beneath,
    /// `openat`, then the descriptor's location checked (kernels without `openat2`).
    Checked,
}

/// Times an `openat2` that met a concurrent rename (`EAGAIN`) is tried again.
const EAGAIN_RETRIES: usize = 4;

/// Flags of every open: read only, never blocking (a FIFO must not hang the open), and no
/// controlling terminal from a device.
const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;

impl Root {
    /// Hold `dir` open. It may itself be reached through symbolic links: those are the
    /// operator's configuration, resolved once, here.
    pub fn open(dir: &Path) -> io::Result<Root> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)?;
        Ok(Root {
            dir: OwnedFd::from(f),
            path: dir.to_path_buf(),
        })
    }

    /// The directory as named when opened (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `dir` names the directory held open (a tree renamed or replaced since is not
    /// the one held).
    pub fn is_at(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: all-zero is a valid `stat`, which `fstat` fills on success.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a descriptor we own and a `stat` to fill.
        if unsafe { libc::fstat(self.dir.as_raw_fd(), &mut st) } != 0 {
            return false;
        }
        std::fs::metadata(dir)
            .is_ok_and(|m| m.dev() == st.st_dev as u64 && m.ino() == st.st_ino as u64)
    }

    /// Open `rel` for reading: only a regular file, reached without leaving the root.
    /// Size and mtime in the metadata are the descriptor's: what is sent is what was
    /// checked.
    pub fn open_file(&self, rel: &str) -> Result<(File, Metadata), OpenError> {
        self.open_file_with(rel, resolve_mode())
    }

    /// [`Root::open_file`], and the file must have `size` bytes (what was published or
    /// verified): a file rewritten since is not what the name promises.
    pub fn open_sized(&self, rel: &str, size: u64) -> Result<(File, Metadata), OpenError> {
        let (f, meta) = self.open_file(rel)?;
        if meta.len() != size {
            return Err(OpenError::SizeChanged {
                expected: size,
                found: meta.len(),
            });
        }
        Ok((f, meta))
    }

    fn open_file_with(&self, rel: &str, how: Resolve) -> Result<(File, Metadata), OpenError> {
        validate_rel_path(rel).map_err(OpenError::BadPath)?;
        let f = with_c_path(rel, |c| self.open_raw(c, how))?;
        let meta = f.metadata().map_err(OpenError::Io)?;
        let ft = meta.file_type();
        if ft.is_file() {
            return Ok((f, meta));
        }
        Err(OpenError::NotRegular(if ft.is_dir() {
            "directory"
        } else if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else {
            "device"
        }))
    }

    fn open_raw(&self, rel: &CStr, how: Resolve) -> Result<File, OpenError> {
        match how {
            Resolve::Beneath => {
                for _ in 0..EAGAIN_RETRIES {
                    match openat2_beneath(self.dir.as_raw_fd(), rel) {
                        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                            OPENAT2.store(MISSING, Ordering::Relaxed);
                            return self.open_raw(rel, Resolve::Checked);
                        }
                        r => {
                            OPENAT2.store(WORKS, Ordering::Relaxed);
                            return r.map_err(open_error);
                        }
                    }
                }
                Err(OpenError::Io(io::Error::from_raw_os_error(libc::EAGAIN)))
            }
            Resolve::Checked => {
                // SAFETY: a valid directory descriptor and a NUL-terminated path.
                let fd = unsafe { libc::openat(self.dir.as_raw_fd(), rel.as_ptr(), OPEN_FLAGS) };
                if fd < 0 {
                    return Err(open_error(io::Error::last_os_error()));
                }
                // SAFETY: `openat` just returned this descriptor to us alone.
                let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                // Where it really is, as the kernel names it now: a file it reached through
                // a link out of the root lies outside the root's own location.
                let root = fd_path(self.dir.as_raw_fd()).map_err(OpenError::Io)?;
                let at = fd_path(f.as_raw_fd()).map_err(OpenError::Io)?;
                if at.starts_with(&root) && at != root {
                    Ok(f)
                } else {
                    Err(OpenError::OutsideRoot)
                }
            }
        }
    }
}

/// How this process resolves paths: by `openat2` unless it is known to be missing.
fn resolve_mode() -> Resolve {
    match OPENAT2.load(Ordering::Relaxed) {
        MISSING => Resolve::Checked,
        _ => Resolve::Beneath,
    }
}

/// `openat2(dir, rel, {OPEN_FLAGS, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS})`. `libc` has
/// the call's number and `struct open_how` (linux/openat2.h) but no wrapper.
fn openat2_beneath(dir: libc::c_int, rel: &CStr) -> io::Result<File> {
    // SAFETY: all-zero is a valid `open_how` (no flags, no mode, no resolve flags).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = OPEN_FLAGS as u64;
    // No magic links (`/proc/self/root` and the like) either: they jump anywhere.
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid descriptor, NUL-terminated path, and `how` of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall just returned this descriptor to us alone.
    Ok(File::from(unsafe {
        OwnedFd::from_raw_fd(fd as libc::c_int)
    }))
}

fn open_error(e: io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => OpenError::NotFound,
        // EXDEV: the resolution would leave the root (or is absolute); ELOOP: a loop, or a
        // magic link refused.
        Some(libc::EXDEV) | Some(libc::ELOOP) => OpenError::OutsideRoot,
        _ => OpenError::Io(e),
    }
}

/// Where the kernel says descriptor `fd` is.
fn fd_path(fd: libc::c_int) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
}

/// Call `f` with `rel` NUL-terminated: on the stack when it is short (every request opens a
/// path; a `CString` would be an allocation each time).
fn with_c_path<T>(
    rel: &str,
    f: impl FnOnce(&CStr) -> Result<T, OpenError>,
) -> Result<T, OpenError> {
    let mut buf = [0u8; 512];
    if rel.len() < buf.len() {
        buf[..rel.len()].copy_from_slice(rel.as_bytes());
        // `validate_rel_path` refused NUL, so the first NUL is the terminator.
        let c = CStr::from_bytes_until_nul(&buf).map_err(|_| OpenError::BadPath("NUL"))?;
        f(c)
    } else {
        let c = std::ffi::CString::new(rel).map_err(|_| OpenError::BadPath("NUL"))?;
        f(&c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// `root/` with a file, a directory, and a secret beside the root.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("pool/main")).unwrap();
        std::fs::write(root.join("pool/main/a.deb"), b"deb").unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/a.deb"), b"secret").unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        (dir, root)
    }

    fn both(root: &Root, rel: &str) -> [Result<(File, Metadata), OpenError>; 2] {
        [
            root.open_file_with(rel, Resolve::Beneath),
            root.open_file_with(rel, Resolve::Checked),
        ]
    }

    #[test]
    fn regular_files_inside_open_and_relative_links_inside_are_followed() {
        let (_d, dir) = tree();
        symlink("pool/main/a.deb", dir.join("latest.deb")).unwrap();
        symlink("../main/a.deb", dir.join("pool/main/up.deb")).unwrap();
        let root = Root::open(&dir).unwrap();
        for rel in ["pool/main/a.deb", "latest.deb", "pool/main/up.deb"] {
            for r in both(&root, rel) {
                let (_, meta) = r.unwrap_or_else(|e| panic!("{rel}: {e}"));
                assert_eq!(meta.len(), 3, "{rel}");
            }
        }
        assert!(root.open_sized("pool/main/a.deb", 3).is_ok());
    }

    #[test]
    fn a_file_swapped_for_a_link_out_of_the_root_is_refused() {
        let (d, dir) = tree();
        let root = Root::open(&dir).unwrap();
        std::fs::remove_file(dir.join("pool/main/a.deb")).unwrap();
        symlink(d.path().join("secret"), dir.join("pool/main/a.deb")).unwrap();
        symlink("/etc/passwd", dir.join("passwd")).unwrap();
        symlink("../../../secret", dir.join("pool/main/rel")).unwrap();
        for rel in ["pool/main/a.deb", "passwd", "pool/main/rel"] {
            for r in both(&root, rel) {
                assert!(matches!(r, Err(OpenError::OutsideRoot)), "{rel}: {r:?}");
            }
        }
    }

    #[test]
    fn a_directory_on_the_way_swapped_for_a_link_out_is_refused() {
        let (d, dir) = tree();
        let root = Root::open(&dir).unwrap();
        std::fs::remove_dir_all(dir.join("pool/main")).unwrap();
        symlink(d.path().join("outside"), dir.join("pool/main")).unwrap();
        for r in both(&root, "pool/main/a.deb") {
            assert!(matches!(r, Err(OpenError::OutsideRoot)), "{r:?}");
        }
        // Relative, and out by `..` from the top: the same.
        std::fs::remove_file(dir.join("pool/main")).unwrap();
        symlink("../../outside", dir.join("pool/main")).unwrap();
        for r in both(&root, "pool/main/a.deb") {
            assert!(matches!(r, Err(OpenError::OutsideRoot)), "{r:?}");
        }
    }

    #[test]
    fn an_absolute_link_is_refused_even_to_a_file_inside() {
        let (_d, dir) = tree();
        let root = Root::open(&dir).unwrap();
        symlink(dir.join("pool/main/a.deb"), dir.join("abs")).unwrap();
        assert!(matches!(
            root.open_file_with("abs", Resolve::Beneath),
            Err(OpenError::OutsideRoot)
        ));
    }

    #[test]
    fn fifos_directories_and_sizes_that_changed_are_refused() {
        let (_d, dir) = tree();
        let root = Root::open(&dir).unwrap();
        let fifo = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::create_dir(dir.join("dir")).unwrap();
        for r in both(&root, "fifo") {
            assert!(matches!(r, Err(OpenError::NotRegular("FIFO"))), "{r:?}");
        }
        for r in both(&root, "dir") {
            assert!(
                matches!(r, Err(OpenError::NotRegular("directory"))),
                "{r:?}"
            );
        }
        for r in both(&root, "nope") {
            assert!(matches!(r, Err(OpenError::NotFound)), "{r:?}");
        }
        for r in both(&root, "pool/main/a.deb/x") {
            assert!(matches!(r, Err(OpenError::NotFound)), "{r:?}");
        }
        std::fs::write(dir.join("pool/main/a.deb"), b"longer").unwrap();
        assert!(matches!(
            root.open_sized("pool/main/a.deb", 3),
            Err(OpenError::SizeChanged {
                expected: 3,
                found: 6
            })
        ));
    }

    #[test]
    fn paths_that_are_not_plain_are_refused_before_any_open() {
        let (_d, dir) = tree();
        let root = Root::open(&dir).unwrap();
        for bad in [
            "",
            "/etc/passwd",
            "../secret",
            "pool/../../secret",
            "a//b",
            "a\0b",
        ] {
            assert!(
                matches!(root.open_file(bad), Err(OpenError::BadPath(_))),
                "{bad:?}"
            );
        }
        let long = "a/".repeat(300) + "x";
        assert!(matches!(root.open_file(&long), Err(OpenError::NotFound)));
    }

    #[test]
    fn the_root_held_open_is_the_one_served_even_if_renamed() {
        let (d, dir) = tree();
        let root = Root::open(&dir).unwrap();
        assert!(root.is_at(&dir));
        std::fs::rename(&dir, d.path().join("moved")).unwrap();
        assert!(!root.is_at(&dir));
        assert!(root.is_at(&d.path().join("moved")));
        for r in both(&root, "pool/main/a.deb") {
            assert!(r.is_ok(), "{r:?}");
        }
    }
}
