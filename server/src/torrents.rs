//! Which torrents the embedded tracker lists: those it keeps swarms for whatever else is
//! announced (`tracker.torrents = "published"` refuses everything else; `"open"` never
//! refuses them for want of room).
//!
//! Per repository: the torrent of every large file of the current generation, and of the
//! generation that one replaced, so that a pull of the generation just superseded still
//! finds its swarm. Older generations' torrents drop out (a pull of one falls back to the
//! origin over HTTP, or gives way to the newest generation). After a restart the generation
//! replaced before it is not known unless the start itself published a new one: reading
//! its manifest back would cost a parse of the whole manifest at every start.
//!
//! The repositories' own swarms (`tracker::mirror::mirror_info_hash`) are added by the
//! caller: they are listed whatever is published.

use std::collections::{BTreeMap, HashSet};

/// The torrents of each repository's last two generations.
#[derive(Debug, Default)]
pub struct PublishedTorrents {
    repos: BTreeMap<String, Generations>,
}

#[derive(Debug)]
struct Generations {
    generation: u64,
    current: Vec<[u8; 20]>,
    previous: Vec<[u8; 20]>,
}

impl PublishedTorrents {
    /// A publish of `repo` left `generation` (with `current`'s torrents) being served;
    /// `replaced` are the torrents of the generation it replaced, if it made a new one.
    /// Whether the listed torrents changed.
    pub fn published(
        &mut self,
        repo: &str,
        generation: u64,
        current: &[[u8; 20]],
        replaced: &[[u8; 20]],
    ) -> bool {
        match self.repos.get_mut(repo) {
            Some(g) if g.generation == generation => false,
            Some(g) => {
                // `replaced` is the generation before this one, whatever this process saw;
                // without it (a publish that made no generation but moved on: none today),
                // what was current is.
                g.previous = if replaced.is_empty() {
                    std::mem::take(&mut g.current)
                } else {
                    replaced.to_vec()
                };
                g.current = current.to_vec();
                g.generation = generation;
                true
            }
            None => {
                self.repos.insert(
                    repo.to_string(),
                    Generations {
                        generation,
                        current: current.to_vec(),
                        previous: replaced.to_vec(),
                    },
                );
                true
            }
        }
    }

    /// Every listed torrent of every repository.
    pub fn all(&self) -> HashSet<[u8; 20]> {
        self.repos
            .values()
            .flat_map(|g| g.current.iter().chain(&g.previous))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_and_the_replaced_generation_are_listed() {
        let mut p = PublishedTorrents::default();
        // Start: generation 3 kept as it was, the one before it unknown.
        assert!(p.published("deb", 3, &[[3; 20]], &[]));
        assert_eq!(p.all(), HashSet::from([[3; 20]]));
        assert!(!p.published("deb", 3, &[[3; 20]], &[]), "unchanged");
        // Generation 4 replaces 3: both listed.
        assert!(p.published("deb", 4, &[[4; 20], [3; 20]], &[[3; 20]]));
        assert_eq!(p.all(), HashSet::from([[3; 20], [4; 20]]));
        // Generation 5 drops what only 3 had.
        assert!(p.published("deb", 5, &[[5; 20]], &[[4; 20], [3; 20]]));
        assert!(p.published("deb", 6, &[[6; 20]], &[[5; 20]]));
        assert_eq!(p.all(), HashSet::from([[5; 20], [6; 20]]));
        // Another repository's are kept apart.
        assert!(p.published("fedora", 1, &[[9; 20]], &[]));
        assert_eq!(p.all(), HashSet::from([[5; 20], [6; 20], [9; 20]]));
    }
}
