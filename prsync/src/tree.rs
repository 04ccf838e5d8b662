//! Whose a destination tree is, and which of its files a sync may delete.
//!
//! A sync deletes only what it put there. A tree becomes mirrorswarm's own when a pull fills
//! it from empty or adopts it: `--adopt`, or without asking when every file in it is one the
//! manifest lists (a copy made with rsync, or a tree an older mirrorswarm filled), since
//! adopting such a tree deletes nothing. `<dest>/.mirrorswarm/owner.json` records it, with the
//! repository and the server key. What a new generation drops is deleted only if a
//! generation installed in this tree listed it (`listed`, and `listed.pending` while one is
//! being installed, so a killed pull still knows what it put there); any other file is left
//! alone unless the admin asks (`--delete-extraneous`, as `rsync --delete` must be asked for).

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use manifest::delta::Delta;
use manifest::walk::{walk, Visit};
use manifest::Manifest;
use serde::{Deserialize, Serialize};

use crate::local::StateDir;

/// How many unknown files a refusal names.
pub const NAMED_UNKNOWN: usize = 5;

/// The marker of a tree mirrorswarm owns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    pub repo: String,
    /// The server's public key (hex) whose manifests filled it.
    pub server_key: String,
    /// It held files before mirrorswarm came (adopted), rather than filled from empty.
    pub adopted: bool,
}

/// What a destination tree is, before a pull touches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// mirrorswarm filled or adopted it, for this repository.
    Own(Owner),
    /// Missing, or nothing in it but mirrorswarm's own state: the pull fills it.
    Empty,
    /// Not ours, but every file in it is one the manifest lists.
    Copy { files: usize },
    /// Not ours, and it holds files the manifest does not list.
    Foreign(Unknown),
}

/// Files in a tree that a manifest does not list: the first few by name, and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub first: Vec<String>,
    pub count: usize,
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.first.join(", "))?;
        if self.count > self.first.len() {
            write!(f, ", and {} more", self.count - self.first.len())?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(
        "{} holds {} that `{repo}` does not list ({unknown}) and mirrorswarm did not fill it; \
         refusing to sync into it. Pass --adopt to take it over: files the manifest lists are \
         verified and kept or replaced, the others are left alone (add --delete-extraneous to \
         remove them)",
        dest.display(),
        files(unknown.count)
    )]
    NotOwn {
        dest: PathBuf,
        repo: String,
        unknown: Unknown,
    },
    #[error(
        "{} is a mirror of `{owner}`, not of `{repo}` ({}); refusing to sync `{repo}` into it",
        dest.display(),
        marker.display()
    )]
    OtherRepo {
        dest: PathBuf,
        owner: String,
        repo: String,
        marker: PathBuf,
    },
    #[error("{} is not a valid ownership marker ({why}); move it away to adopt the tree again", path.display())]
    BadMarker { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn files(n: usize) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The owner marker of the tree, if it has one.
pub fn owner(state: &StateDir) -> Result<Option<Owner>, TreeError> {
    let path = state.owner();
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| TreeError::BadMarker {
                path,
                why: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Where `dest` stands for a pull of `repo` whose newest generation is `manifest`. A tree
/// that is not ours is walked (names only, nothing is read) to find files the manifest does
/// not list.
pub fn standing(dest: &Path, repo: &str, manifest: &Manifest) -> Result<Standing, TreeError> {
    let state = StateDir::new(dest);
    if let Some(o) = owner(&state)? {
        if o.repo != repo {
            return Err(TreeError::OtherRepo {
                dest: dest.to_path_buf(),
                owner: o.repo,
                repo: repo.to_string(),
                marker: state.owner(),
            });
        }
        return Ok(Standing::Own(o));
    }
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Standing::Empty),
        Err(e) => return Err(io(dest)(e)),
        Ok(_) => {}
    }
    let found = walk(dest, || Listing {
        manifest,
        files: 0,
        unknown: Vec::new(),
        count: 0,
    })
    .map_err(|e| TreeError::Io {
        path: dest.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut files = 0;
    let mut count = 0;
    let mut unknown = Vec::new();
    for l in found {
        files += l.files;
        count += l.count;
        unknown.extend(l.unknown);
    }
    unknown.sort();
    unknown.truncate(NAMED_UNKNOWN);
    Ok(if count > 0 {
        Standing::Foreign(Unknown {
            first: unknown,
            count,
        })
    } else if files == 0 {
        Standing::Empty
    } else {
        Standing::Copy { files }
    })
}

/// Collects, per walker, the files of a tree a manifest does not list (and anything the walk
/// left out: a symlink out of the tree, a socket, a name that is no valid path, all the same
/// not ours).
struct Listing<'a> {
    manifest: &'a Manifest,
    files: usize,
    unknown: Vec<String>,
    count: usize,
}

impl Listing<'_> {
    fn note(&mut self, what: String) {
        self.count += 1;
        // Enough to name the first few in order once all walkers are merged.
        if self.unknown.len() < 64 {
            self.unknown.push(what);
        } else if let Some(max) = self.unknown.iter_mut().max() {
            if what < *max {
                *max = what;
            }
        }
    }
}

impl Visit for Listing<'_> {
    fn file(
        &mut self,
        rel: &str,
        _read: &Path,
        _meta: &std::fs::Metadata,
    ) -> Result<bool, manifest::ManifestError> {
        self.files += 1;
        if !self.manifest.files.contains_key(rel) {
            self.note(rel.to_string());
        }
        Ok(true)
    }

    fn skipped(&mut self, what: String, _why: String) {
        self.note(what);
    }
}

/// Make the tree ours (atomically: a marker is whole or absent).
pub fn claim(state: &StateDir, owner: &Owner) -> Result<(), TreeError> {
    std::fs::create_dir_all(&state.0).map_err(io(&state.0))?;
    let bytes = serde_json::to_vec_pretty(owner).map_err(|e| TreeError::Io {
        path: state.owner(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&state.owner(), &bytes)
}

/// Record that the generation `manifest` is being installed: from now on its paths are ones
/// this tree's syncs put there. Written before the first file is installed.
pub fn begin_install(state: &StateDir, manifest: &Manifest) -> Result<(), TreeError> {
    let mut out = Vec::with_capacity(manifest.files.len() * 48);
    for path in manifest.files.keys() {
        // Manifest paths hold no control characters, so a newline ends each.
        out.extend_from_slice(path.as_bytes());
        out.push(b'\n');
    }
    write_atomic(&state.listed_pending(), &out)
}

/// [`begin_install`] for a generation known by its changes since the one installed here:
/// the installed generation's listed paths, less those it removes, with those it adds.
/// Streamed from one record to the other: the tree's millions of paths are never held.
pub fn begin_install_delta(state: &StateDir, delta: &Delta) -> Result<(), TreeError> {
    let removed: HashSet<&str> = delta.removed.iter().map(String::as_str).collect();
    let mut added: BTreeSet<&str> = delta.changed.keys().map(String::as_str).collect();
    let listed = state.listed();
    let f = std::fs::File::open(&listed).map_err(io(&listed))?;
    let pending = state.listed_pending();
    write_atomic_with(&pending, |w| {
        for line in std::io::BufReader::with_capacity(1 << 20, f).lines() {
            let line = line?;
            if removed.contains(line.as_str()) {
                continue;
            }
            added.remove(line.as_str());
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")?;
        }
        for path in &added {
            w.write_all(path.as_bytes())?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// The generation being installed is installed: its paths are the listed ones. Records which
/// generation that is ([`installed_generation`]).
pub fn finish_install(state: &StateDir, generation: u64) -> Result<(), TreeError> {
    std::fs::rename(state.listed_pending(), state.listed()).map_err(io(&state.listed()))?;
    write_atomic(&state.installed(), generation.to_string().as_bytes())
}

/// What the generation last installed here holds: the selection it was installed with
/// ([`manifest::select::Selection::canonical`], `""` for everything), and its files and bytes
/// (what a partial tree's next delta counts from).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub selection: String,
    pub files: u64,
    pub bytes: u64,
}

/// Record what the generation just installed holds (after [`finish_install`]: killed between
/// the two, the next pull finds a record that is not its own, and takes the whole manifest).
pub fn record_held(state: &StateDir, held: &Held) -> Result<(), TreeError> {
    let bytes = serde_json::to_vec(held).map_err(|e| TreeError::Io {
        path: state.held(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&state.held(), &bytes)
}

/// What the last installed generation holds, if recorded (trees a release before this one
/// filled hold everything, of a count not recorded).
pub fn held(state: &StateDir) -> Option<Held> {
    serde_json::from_slice(&std::fs::read(state.held()).ok()?).ok()
}

/// The selection the last installed generation was installed with (`""`: everything).
pub fn installed_selection(state: &StateDir) -> String {
    held(state).map(|h| h.selection).unwrap_or_default()
}

/// The generation last installed whole here, if the tree says.
pub fn installed_generation(state: &StateDir) -> Option<u64> {
    std::fs::read_to_string(state.installed())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Which of `candidates` a generation installed here listed (the last one completed, and
/// one a killed pull was installing). Streams the records: only the candidates are held.
pub fn listed_among(
    state: &StateDir,
    candidates: &BTreeSet<&str>,
) -> Result<BTreeSet<String>, TreeError> {
    let mut found = BTreeSet::new();
    if candidates.is_empty() {
        return Ok(found);
    }
    for path in [state.listed(), state.listed_pending()] {
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(io(&path))?;
            if candidates.contains(line.as_str()) {
                found.insert(line);
            }
        }
    }
    Ok(found)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TreeError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Write `path` whole or not at all: through a temporary file, synced, then renamed.
fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), TreeError> {
    let tmp = path.with_extension("tmp");
    let all = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    all().map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifest::{Entry, Sha256};

    fn manifest(paths: &[&str]) -> Manifest {
        let mut m = Manifest {
            repo: "debian".into(),
            generation: 1,
            published_at: 0,
            files: Default::default(),
        };
        for p in paths {
            m.files.insert(
                p.to_string(),
                Entry {
                    size: 1,
                    sha256: Sha256([0; 32]),
                    changed_in: 1,
                    btih: None,
                },
            );
        }
        m
    }

    #[test]
    fn a_tree_is_empty_a_copy_or_foreign_until_it_is_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t");
        let m = manifest(&["a", "d/b"]);
        assert_eq!(standing(&dest, "debian", &m).unwrap(), Standing::Empty);
        std::fs::create_dir_all(dest.join(".mirrorswarm/staging")).unwrap();
        std::fs::create_dir_all(dest.join("d")).unwrap();
        assert_eq!(standing(&dest, "debian", &m).unwrap(), Standing::Empty);
        std::fs::write(dest.join("a"), b"x").unwrap();
        assert_eq!(
            standing(&dest, "debian", &m).unwrap(),
            Standing::Copy { files: 1 }
        );
        for n in ["notes.txt", "rpm1", "rpm2", "rpm3", "rpm4", "rpm5"] {
            std::fs::write(dest.join(n), b"mine").unwrap();
        }
        match standing(&dest, "debian", &m).unwrap() {
            Standing::Foreign(u) => {
                assert_eq!(u.count, 6);
                assert_eq!(u.first, ["notes.txt", "rpm1", "rpm2", "rpm3", "rpm4"]);
                assert!(u.to_string().ends_with("and 1 more"), "{u}");
            }
            other => panic!("{other:?}"),
        }
        let state = StateDir::new(&dest);
        let o = Owner {
            repo: "debian".into(),
            server_key: "k".into(),
            adopted: true,
        };
        claim(&state, &o).unwrap();
        assert_eq!(standing(&dest, "debian", &m).unwrap(), Standing::Own(o));
        assert!(matches!(
            standing(&dest, "fedora", &m),
            Err(TreeError::OtherRepo { .. })
        ));
        std::fs::write(state.owner(), b"{not json").unwrap();
        assert!(matches!(
            standing(&dest, "debian", &m),
            Err(TreeError::BadMarker { .. })
        ));
    }

    #[test]
    fn a_symlink_out_of_the_tree_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t");
        std::fs::create_dir_all(&dest).unwrap();
        std::os::unix::fs::symlink("/etc", dest.join("etc")).unwrap();
        assert!(matches!(
            standing(&dest, "debian", &manifest(&["a"])).unwrap(),
            Standing::Foreign(Unknown { count: 1, .. })
        ));
    }

    #[test]
    fn listed_paths_are_those_of_installed_and_pending_generations() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        std::fs::create_dir_all(&state.0).unwrap();
        let cands: BTreeSet<&str> = ["a", "b", "c", "x"].into_iter().collect();
        assert!(listed_among(&state, &cands).unwrap().is_empty());
        begin_install(&state, &manifest(&["a", "b"])).unwrap();
        finish_install(&state, 1).unwrap();
        begin_install(&state, &manifest(&["c"])).unwrap();
        // Killed here: both generations' paths count as put there.
        let got = listed_among(&state, &cands).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        finish_install(&state, 1).unwrap();
        let got = listed_among(&state, &cands).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn a_delta_lists_the_installed_paths_less_the_removed_with_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        std::fs::create_dir_all(&state.0).unwrap();
        let old = manifest(&["a", "b", "c"]);
        begin_install(&state, &old).unwrap();
        finish_install(&state, 1).unwrap();
        let mut new = manifest(&["a", "c", "d"]);
        new.generation = 2;
        new.files.get_mut("c").unwrap().size = 5;
        begin_install_delta(&state, &Delta::between(&old, &new)).unwrap();
        let pending = std::fs::read_to_string(state.listed_pending()).unwrap();
        assert_eq!(pending.lines().collect::<Vec<_>>(), ["a", "c", "d"]);
        // Without an installed generation's list there is nothing to start from.
        std::fs::remove_file(state.listed()).unwrap();
        assert!(begin_install_delta(&state, &Delta::between(&old, &new)).is_err());
    }
}
