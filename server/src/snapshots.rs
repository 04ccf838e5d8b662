//! The current generation of each repository, swapped whole by a publish and read by every
//! request.
//!
//! Reading it through the lock and cloning the snapshot's `Arc` wrote four atomic counters per
//! request that every serving core shares (the lock's reader count and the reference count,
//! each up and down): on all cores those cache lines moved from core to core on every
//! redirect. So each thread keeps its own copy of the map, checked against an epoch that only
//! a publish writes; a request reads one shared word that does not change.
//!
//! The price: a thread's copy holds the generation it last saw until it serves its next
//! request, so a replaced generation's memory is freed once every serving thread has served
//! one after the swap (at most one old generation per thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::locks::{read, write};
use crate::publish::RepoSnapshot;

type Map = HashMap<String, Arc<RepoSnapshot>>;

pub struct Snapshots {
    map: RwLock<Map>,
    /// Bumped under the write lock by every change.
    epoch: AtomicU64,
    /// Which `Snapshots` a thread's copy is of: tests run several servers in one process,
    /// and their requests may share a thread.
    id: usize,
}

/// A thread's copy: of which `Snapshots`, at which epoch.
struct Copy {
    id: usize,
    epoch: u64,
    map: Map,
}

thread_local! {
    static COPY: RefCell<Copy> = RefCell::new(Copy { id: usize::MAX, epoch: 0, map: Map::new() });
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots {
            map: RwLock::new(Map::new()),
            epoch: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Snapshots {
    /// The current snapshot of `name`, to keep (a clone of its `Arc`).
    pub fn get(&self, name: &str) -> Option<Arc<RepoSnapshot>> {
        read(&self.map).get(name).cloned()
    }

    /// Every current snapshot.
    pub fn all(&self) -> Vec<Arc<RepoSnapshot>> {
        read(&self.map).values().cloned().collect()
    }

    /// Make `snap` current for `name`; returns the one it replaced.
    pub fn install(&self, name: &str, snap: Arc<RepoSnapshot>) -> Option<Arc<RepoSnapshot>> {
        let mut map = write(&self.map);
        let replaced = map.insert(name.to_string(), snap);
        // Under the lock, so that a reader that copies the map reads the epoch it is at.
        self.epoch.fetch_add(1, Ordering::Release);
        replaced
    }

    /// Call `f` with this thread's copy of the map, brought up to date first if a publish
    /// changed it: the request path's read, which writes nothing shared. `f` must not call
    /// back into `with_current` (the copy is borrowed meanwhile).
    pub fn with_current<R>(&self, f: impl FnOnce(&Map) -> R) -> R {
        COPY.with(|c| {
            let mut copy = c.borrow_mut();
            let now = self.epoch.load(Ordering::Acquire);
            if copy.id != self.id || copy.epoch != now {
                let map = read(&self.map);
                copy.epoch = self.epoch.load(Ordering::Acquire);
                copy.map = map.clone();
                copy.id = self.id;
            }
            f(&copy.map)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str) -> Arc<RepoSnapshot> {
        let manifest = manifest::Manifest {
            repo: name.into(),
            generation: 1,
            published_at: 0,
            files: Default::default(),
        };
        let files = crate::file_index::FileIndex::build(&manifest, &Default::default()).unwrap();
        Arc::new(RepoSnapshot {
            name: name.into(),
            root: Default::default(),
            beneath: Arc::new(manifest::beneath::Root::open(&std::env::temp_dir()).unwrap()),
            generation: 1,
            published_at: 0,
            files: Arc::new(files),
            signed_path: Default::default(),
            not_held: 0,
            staged: None,
        })
    }

    #[test]
    fn a_thread_sees_each_install_at_its_next_read() {
        let s = Snapshots::default();
        assert!(s.with_current(|m| m.is_empty()));
        let a = snap("a");
        s.install("a", a.clone());
        assert!(s.with_current(|m| Arc::ptr_eq(&m["a"], &a)));
        let b = snap("a");
        assert!(s
            .install("a", b.clone())
            .is_some_and(|old| Arc::ptr_eq(&old, &a)));
        assert!(s.with_current(|m| Arc::ptr_eq(&m["a"], &b)));
        // Another thread's first read is of the current map too.
        let s = Arc::new(s);
        let s2 = s.clone();
        let seen = std::thread::spawn(move || s2.with_current(|m| m.contains_key("a")))
            .join()
            .unwrap();
        assert!(seen);
    }

    #[test]
    fn two_instances_on_one_thread_do_not_read_each_others_copy() {
        let (x, y) = (Snapshots::default(), Snapshots::default());
        x.install("only-x", snap("only-x"));
        assert!(x.with_current(|m| m.contains_key("only-x")));
        // Same epoch (1 install each), different instance.
        y.install("only-y", snap("only-y"));
        assert!(y.with_current(|m| m.contains_key("only-y") && !m.contains_key("only-x")));
        assert!(x.with_current(|m| m.contains_key("only-x") && !m.contains_key("only-y")));
    }
}
