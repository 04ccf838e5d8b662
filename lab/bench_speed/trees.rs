//! The trees the bench publishes and serves. Built once per work directory and reused (a
//! marker file says a tree is complete), since a million files take a while to create.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::{Rng, RngCore, SeedableRng};

fn marker(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.complete"))
}

/// The relative path of file `i` of the many-file tree: a Debian-like pool, ten versions per
/// package, packages spread over 26 directories.
pub fn pool_path(i: usize) -> String {
    let pkg = i / 10;
    let letter = (b'a' + (pkg % 26) as u8) as char;
    format!(
        "pool/main/{letter}/pkg{pkg:06}/pkg{pkg:06}_1.{}_amd64.deb",
        i % 10
    )
}

/// `n` files laid out by [`pool_path`]. Each is a hole of 1 to 8 bytes (no disk blocks): the
/// redirector and the publisher's scan care about names and metadata, and the first publish
/// still reads and hashes every one.
pub fn many_files(dir: &Path, n: usize) -> Result<()> {
    let done = marker(dir);
    if std::fs::read_to_string(&done).ok().as_deref() == Some(&n.to_string()) {
        return Ok(());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<()> {
                    // Each thread owns whole packages, so directories are made once.
                    let mut i = t * 10;
                    while i < n {
                        let first = dir.join(pool_path(i));
                        if let Some(parent) = first.parent() {
                            std::fs::create_dir_all(parent)?;
                        }
                        for j in i..(i + 10).min(n) {
                            let f = std::fs::File::create(dir.join(pool_path(j)))?;
                            f.set_len(1 + (j % 8) as u64)?;
                        }
                        i += threads * 10;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("tree builder panicked"))??;
        }
        Ok(())
    })?;
    std::fs::write(&done, n.to_string())?;
    Ok(())
}

/// `count` files of `size` random bytes, named `<prefix>NNNNN.bin`, directly in `dir`.
pub fn random_files(
    dir: &Path,
    prefix: &str,
    count: usize,
    size: usize,
    seed: u64,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut names = Vec::with_capacity(count);
    let mut buf = vec![0u8; size.min(1 << 20)];
    for i in 0..count {
        let name = format!("{prefix}{i:05}.bin");
        let path = dir.join(&name);
        let complete = std::fs::metadata(&path).is_ok_and(|m| m.len() == size as u64);
        if !complete {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len());
                rng.fill_bytes(&mut buf[..n]);
                f.write_all(&buf[..n])?;
                left -= n;
            }
            f.flush()?;
        }
        names.push(name);
    }
    Ok(names)
}

/// Read every file once, so timed runs start from the page cache and measure CPU, not disk.
pub fn warm(paths: &[PathBuf]) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = std::fs::File::open(p)?;
        while std::io::Read::read(&mut f, &mut buf)? > 0 {}
    }
    Ok(())
}

/// Paths of `sample` files of the many-file tree drawn at random (fixed seed), as URL paths
/// under `/<repo>/`, written one per line for wrk.
pub fn sample_paths(out: &Path, repo: &str, n: usize, sample: usize) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    for _ in 0..sample.min(n.max(1)) {
        writeln!(f, "/{repo}/{}", pool_path(rng.gen_range(0..n.max(1))))?;
    }
    f.flush()?;
    Ok(())
}
