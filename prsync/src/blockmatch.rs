//! zsync-style reuse: the server published the new file's block signatures; we roll over an
//! old, similar local file, find blocks the new file also has, and copy them to where the new
//! file wants them. The result is a first guess that BitTorrent then checks piece by piece.
//!
//! Signatures come from the network, so they are parsed and bounded before use (fast_rsync's
//! own parser accepts a block size of 0, which would panic later).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use md4::Digest as _;

use crate::rollsum::Rollsum;

const MD4_MAGIC: u32 = 0x7273_0136;
const MAX_BLOCK: u32 = 16 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature too short")]
    Short,
    #[error("not an MD4 librsync signature (magic {0:#x})")]
    Magic(u32),
    #[error("block size {0} outside 512..=16 MiB")]
    BlockSize(u32),
    #[error("strong hash length {0} outside 1..=16")]
    StrongLen(u32),
    #[error("signature has {got} blocks, a file of {len} bytes needs {want}")]
    BlockCount { got: usize, want: u64, len: u64 },
}

/// A parsed, validated block signature of the new file.
#[derive(Debug)]
pub struct BlockSignature {
    pub block_len: u32,
    strong_len: usize,
    file_len: u64,
    weak: Vec<u32>,
    strong: Vec<u8>,
}

impl BlockSignature {
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<Self, SignatureError> {
        let word = |at: usize| -> Result<u32, SignatureError> {
            let b: [u8; 4] = bytes
                .get(at..at + 4)
                .ok_or(SignatureError::Short)?
                .try_into()
                .map_err(|_| SignatureError::Short)?;
            Ok(u32::from_be_bytes(b))
        };
        let magic = word(0)?;
        if magic != MD4_MAGIC {
            return Err(SignatureError::Magic(magic));
        }
        let block_len = word(4)?;
        if !(512..=MAX_BLOCK).contains(&block_len) {
            return Err(SignatureError::BlockSize(block_len));
        }
        let strong_len = word(8)?;
        if !(1..=16).contains(&strong_len) {
            return Err(SignatureError::StrongLen(strong_len));
        }
        let entry = 4 + strong_len as usize;
        let body = &bytes[12..];
        let want = file_len.div_ceil(u64::from(block_len));
        if !body.len().is_multiple_of(entry) || (body.len() / entry) as u64 != want {
            return Err(SignatureError::BlockCount {
                got: body.len() / entry,
                want,
                len: file_len,
            });
        }
        let mut weak = Vec::with_capacity(want as usize);
        let mut strong = Vec::with_capacity(want as usize * strong_len as usize);
        for e in body.chunks_exact(entry) {
            weak.push(u32::from_be_bytes([e[0], e[1], e[2], e[3]]));
            strong.extend_from_slice(&e[4..]);
        }
        Ok(BlockSignature {
            block_len,
            strong_len: strong_len as usize,
            file_len,
            weak,
            strong,
        })
    }

    fn full_blocks(&self) -> usize {
        (self.file_len / u64::from(self.block_len)) as usize
    }

    fn strong_of(&self, i: usize) -> &[u8] {
        &self.strong[i * self.strong_len..(i + 1) * self.strong_len]
    }
}

/// What a first guess achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuessStats {
    pub matched_blocks: usize,
    pub matched_bytes: u64,
}

/// Bits of a weak sum used by the cheap pre-filter before the hash map.
const FILTER_BITS: u32 = 20;

/// Write into `out` (created at the new file's length, unknown regions left as holes) every
/// full block of the new file that `old` also contains. Streams `old`; memory is one index
/// entry per block plus one read buffer.
pub fn first_guess(sig: &BlockSignature, old: &Path, out: &Path) -> std::io::Result<GuessStats> {
    let bl = sig.block_len as usize;
    let mut index: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut filter = vec![0u64; 1 << (FILTER_BITS - 6)];
    for i in 0..sig.full_blocks() {
        let w = sig.weak[i];
        index.entry(w).or_default().push(i as u32);
        let bit = w & ((1 << FILTER_BITS) - 1);
        filter[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
    let mut found: Vec<Option<u64>> = vec![None; sig.full_blocks()];
    let mut remaining = found.len();

    let mut src = File::open(old)?;
    let chunk = (bl * 8).max(1 << 20);
    let mut buf: Vec<u8> = Vec::with_capacity(bl + chunk);
    let mut base: u64 = 0; // file offset of buf[0]
    let mut pos = 0usize;
    let fill = |buf: &mut Vec<u8>, src: &mut File| -> std::io::Result<bool> {
        let start = buf.len();
        buf.resize(start + chunk, 0);
        let mut n = 0;
        while start + n < buf.len() {
            match src.read(&mut buf[start + n..])? {
                0 => break,
                k => n += k,
            }
        }
        buf.truncate(start + n);
        Ok(n > 0)
    };
    fill(&mut buf, &mut src)?;
    if buf.len() < bl || remaining == 0 {
        return write_guess(sig, old, out, &found);
    }
    let mut r = Rollsum::of(&buf[..bl]);
    loop {
        let w = r.digest();
        let bit = w & ((1 << FILTER_BITS) - 1);
        let mut jumped = false;
        if filter[(bit >> 6) as usize] & (1 << (bit & 63)) != 0 {
            if let Some(cands) = index.get(&w) {
                let md4 = md4::Md4::digest(&buf[pos..pos + bl]);
                let mut hit = false;
                for &c in cands {
                    let c = c as usize;
                    if found[c].is_none() && md4[..sig.strong_len] == *sig.strong_of(c) {
                        found[c] = Some(base + pos as u64);
                        remaining -= 1;
                        hit = true;
                    }
                }
                if hit {
                    if remaining == 0 {
                        break;
                    }
                    // Like rsync, continue after the matched block.
                    pos += bl;
                    jumped = true;
                }
            }
        }
        // Make sure the window [pos, pos + bl] (one byte past, to roll) is in the buffer.
        if pos + bl >= buf.len() {
            buf.drain(..pos);
            base += pos as u64;
            pos = 0;
            if !fill(&mut buf, &mut src)? || buf.len() <= bl {
                if jumped && buf.len() == bl {
                    // One last full window after a jump: check it, then stop.
                    r = Rollsum::of(&buf[..bl]);
                    check_last(sig, &index, &buf, base, &mut found, r);
                }
                break;
            }
        }
        if jumped {
            r = Rollsum::of(&buf[pos..pos + bl]);
        } else {
            r.rotate(bl as u32, buf[pos], buf[pos + bl]);
            pos += 1;
        }
    }
    write_guess(sig, old, out, &found)
}

fn check_last(
    sig: &BlockSignature,
    index: &HashMap<u32, Vec<u32>>,
    buf: &[u8],
    base: u64,
    found: &mut [Option<u64>],
    r: Rollsum,
) {
    if let Some(cands) = index.get(&r.digest()) {
        let md4 = md4::Md4::digest(&buf[..sig.block_len as usize]);
        for &c in cands {
            let c = c as usize;
            if found[c].is_none() && md4[..sig.strong_len] == *sig.strong_of(c) {
                found[c] = Some(base);
            }
        }
    }
}

fn write_guess(
    sig: &BlockSignature,
    old: &Path,
    out: &Path,
    found: &[Option<u64>],
) -> std::io::Result<GuessStats> {
    let src = File::open(old)?;
    let dst = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(out)?;
    dst.set_len(sig.file_len)?;
    let bl = sig.block_len as usize;
    let mut block = vec![0u8; bl];
    let mut stats = GuessStats::default();
    for (i, off) in found.iter().enumerate() {
        if let Some(off) = off {
            src.read_exact_at(&mut block, *off)?;
            dst.write_all_at(&block, (i * bl) as u64)?;
            stats.matched_blocks += 1;
            stats.matched_bytes += bl as u64;
        }
    }
    dst.sync_all()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts;

    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn finds_shifted_and_edited_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let new: Vec<u8> = noise(1, 4 << 20);
        // The old version: 1000 bytes inserted at the front, a region changed in the middle.
        let mut old = noise(2, 1000);
        old.extend_from_slice(&new);
        for b in &mut old[2_000_000..2_100_000] {
            *b ^= 0x5a;
        }
        std::fs::write(dir.path().join("new"), &new).unwrap();
        std::fs::write(dir.path().join("old"), &old).unwrap();
        let a = artifacts::build(&dir.path().join("new"), "x", "http://t/a").unwrap();
        let sig = BlockSignature::parse(&a.signature, new.len() as u64).unwrap();
        let out = dir.path().join("guess");
        let st = first_guess(&sig, &dir.path().join("old"), &out).unwrap();
        let guess = std::fs::read(&out).unwrap();
        assert_eq!(guess.len(), new.len());
        let bl = sig.block_len as usize;
        let total = new.len() / bl;
        // 100 000 changed bytes touch at most 100 000 / block + 2 blocks.
        assert!(
            st.matched_blocks >= total - (100_000 / sig.block_len as usize + 2),
            "{st:?} of {total}"
        );
        // Every block written is right; the rest are holes (zeros).
        let mut right = 0;
        for i in 0..total {
            let g = &guess[i * bl..(i + 1) * bl];
            if g == &new[i * bl..(i + 1) * bl] {
                right += 1;
            } else {
                assert!(
                    g.iter().all(|&b| b == 0),
                    "block {i} is neither right nor a hole"
                );
            }
        }
        assert_eq!(right, st.matched_blocks);
    }

    #[test]
    fn hostile_signatures_are_refused() {
        let mut sig = Vec::new();
        sig.extend_from_slice(&MD4_MAGIC.to_be_bytes());
        sig.extend_from_slice(&0u32.to_be_bytes());
        sig.extend_from_slice(&8u32.to_be_bytes());
        assert_eq!(
            BlockSignature::parse(&sig, 0).unwrap_err(),
            SignatureError::BlockSize(0)
        );
        assert_eq!(
            BlockSignature::parse(&sig[..5], 0).unwrap_err(),
            SignatureError::Short
        );
        assert!(matches!(
            BlockSignature::parse(&[0; 12], 0),
            Err(SignatureError::Magic(0))
        ));
        let mut s = Vec::new();
        s.extend_from_slice(&MD4_MAGIC.to_be_bytes());
        s.extend_from_slice(&1024u32.to_be_bytes());
        s.extend_from_slice(&99u32.to_be_bytes());
        assert_eq!(
            BlockSignature::parse(&s, 0).unwrap_err(),
            SignatureError::StrongLen(99)
        );
        let mut s = Vec::new();
        s.extend_from_slice(&MD4_MAGIC.to_be_bytes());
        s.extend_from_slice(&1024u32.to_be_bytes());
        s.extend_from_slice(&8u32.to_be_bytes());
        s.extend_from_slice(&[0; 12]);
        assert!(matches!(
            BlockSignature::parse(&s, 5000),
            Err(SignatureError::BlockCount { .. })
        ));
    }

    #[test]
    fn unrelated_file_matches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("new"), noise(3, 1 << 20)).unwrap();
        std::fs::write(dir.path().join("old"), noise(4, 1 << 20)).unwrap();
        let a = artifacts::build(&dir.path().join("new"), "x", "http://t/a").unwrap();
        let sig = BlockSignature::parse(&a.signature, 1 << 20).unwrap();
        let st = first_guess(&sig, &dir.path().join("old"), &dir.path().join("g")).unwrap();
        assert_eq!(st.matched_blocks, 0);
    }
}
