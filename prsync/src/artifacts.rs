//! What the server computes once per large file version, so that it does no per-volunteer
//! work: BitTorrent metadata (a private, single-file torrent named by the file's SHA-256, so
//! identical bytes anywhere share one swarm) and librsync block signatures. One streaming pass
//! over the file computes both; memory stays at one buffer whatever the file's size.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use bencode::Value;
use sha1::Digest as _;

/// Piece length for a file: about four thousand pieces, between 16 KiB (BitTorrent's request
/// size) and 4 MiB, powers of two. Small pieces matter: a local edit costs the customer the
/// whole piece it falls in, so 64 MiB files get 16 KiB pieces (and 4 KiB rsync blocks, rsync's
/// own granularity), at 80 KB of piece hashes.
pub fn piece_length(size: u64) -> u32 {
    let target = (size / 4096).clamp(16 * 1024, 4 * 1024 * 1024);
    target.next_power_of_two().min(4 * 1024 * 1024) as u32
}

/// rsync block size: a quarter piece, so four matched blocks make a whole valid piece.
pub fn block_size(size: u64) -> u32 {
    piece_length(size) / 4
}

/// How many bytes of each MD4 the signature keeps.
pub const STRONG_LEN: u32 = 8;

#[derive(Debug, Clone)]
pub struct Artifacts {
    /// A complete `.torrent` (bencoded, with `announce`).
    pub torrent: Vec<u8>,
    pub info_hash: [u8; 20],
    /// librsync MD4 signature, fast_rsync's format.
    pub signature: Vec<u8>,
}

/// The torrent's info dictionary for a file of `size` bytes named `name`, given its pieces.
fn info_dict(name: &str, size: u64, piece_len: u32, pieces: Vec<u8>) -> Value {
    Value::dict([
        ("length", Value::Int(size as i64)),
        ("name", Value::str(name)),
        ("piece length", Value::Int(i64::from(piece_len))),
        ("pieces", Value::Bytes(pieces)),
        // Private: peers come from our tracker only, never from DHT or peer exchange.
        ("private", Value::Int(1)),
    ])
}

/// Info-hash of a bencoded `.torrent`, checked to be a single-file torrent of `expected_len`.
pub fn torrent_info_hash(torrent: &[u8]) -> Result<[u8; 20], String> {
    let v = bencode::decode(torrent).map_err(|e| format!("torrent is not bencode: {e}"))?;
    let info = v.get("info").ok_or("torrent has no info")?;
    Ok(sha1::Sha1::digest(bencode::encode(info)).into())
}

/// The same torrent announcing to `tracker` only (the server this node syncs from, which
/// may be reached at another URL than the one the server wrote in). The info dictionary,
/// and so the info-hash, is unchanged. librqbit uses just one tracker of a private torrent
/// and warns about the rest on every pull; which one it kept was a hash set's choice.
pub fn with_tracker(torrent: &[u8], tracker: &str) -> Result<Vec<u8>, String> {
    let v = bencode::decode(torrent).map_err(|e| format!("torrent is not bencode: {e}"))?;
    let dict = v.as_dict().ok_or("torrent is not a dictionary")?;
    let mut out = dict.clone();
    out.remove(b"announce-list".as_slice());
    out.insert(b"announce".to_vec(), bencode::Value::str(tracker));
    Ok(bencode::encode(&bencode::Value::Dict(out)))
}

/// Build artifacts for the file at `path` (whose SHA-256 is `sha256_hex`), streaming.
pub fn build(path: &Path, sha256_hex: &str, announce: &str) -> std::io::Result<Artifacts> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    let piece_len = piece_length(size);
    let block = block_size(size) as usize;
    let mut pieces = Vec::with_capacity(((size / u64::from(piece_len)) as usize + 1) * 20);
    let mut signature = Vec::new();
    let mut header_written = false;
    // A buffer of whole pieces; each piece is a whole number of blocks.
    let mut buf = vec![0u8; piece_len as usize * 4];
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        for piece in chunk.chunks(piece_len as usize) {
            pieces.extend_from_slice(&sha1::Sha1::digest(piece));
        }
        let sig = fast_rsync::Signature::calculate(
            chunk,
            fast_rsync::SignatureOptions {
                block_size: block as u32,
                crypto_hash_size: STRONG_LEN,
            },
        );
        let bytes = sig.serialized();
        // Each call writes a 12-byte header then independent per-block entries: keep one header.
        if header_written {
            signature.extend_from_slice(&bytes[12..]);
        } else {
            signature.extend_from_slice(bytes);
            header_written = true;
        }
        if n < buf.len() {
            break;
        }
    }
    if !header_written {
        let sig = fast_rsync::Signature::calculate(
            &[],
            fast_rsync::SignatureOptions {
                block_size: block as u32,
                crypto_hash_size: STRONG_LEN,
            },
        );
        signature.extend_from_slice(sig.serialized());
    }
    let info = info_dict(sha256_hex, size, piece_len, pieces);
    let info_hash: [u8; 20] = sha1::Sha1::digest(bencode::encode(&info)).into();
    let torrent = bencode::encode(&Value::dict([
        ("announce", Value::str(announce)),
        ("info", info),
    ]));
    Ok(Artifacts {
        torrent,
        info_hash,
        signature,
    })
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_and_block_sizes() {
        assert_eq!(piece_length(0), 16 * 1024);
        assert_eq!(piece_length(10 << 20), 16 * 1024);
        assert_eq!(piece_length(64 << 20), 16 * 1024);
        assert_eq!(piece_length(1 << 30), 256 * 1024);
        assert_eq!(piece_length(1 << 40), 4 << 20);
        assert_eq!(block_size(64 << 20), 4 * 1024);
    }

    #[test]
    fn streaming_signature_equals_one_shot() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let a = build(&p, "abc", "http://t/announce").unwrap();
        let one = fast_rsync::Signature::calculate(
            &data,
            fast_rsync::SignatureOptions {
                block_size: block_size(data.len() as u64),
                crypto_hash_size: STRONG_LEN,
            },
        );
        assert_eq!(a.signature, one.serialized());
        assert_eq!(torrent_info_hash(&a.torrent).unwrap(), a.info_hash);
        let v = bencode::decode(&a.torrent).unwrap();
        let info = v.get("info").unwrap();
        let pl = piece_length(data.len() as u64) as usize;
        assert_eq!(
            info.get("pieces").unwrap().as_bytes().unwrap().len(),
            data.len().div_ceil(pl) * 20
        );
        assert_eq!(info.get("private").unwrap().as_int(), Some(1));
        // Pointed at another tracker, it is the same torrent.
        let moved = with_tracker(&a.torrent, "http://elsewhere:1/announce").unwrap();
        assert_eq!(
            torrent_info_hash(&moved).unwrap(),
            torrent_info_hash(&a.torrent).unwrap()
        );
        let v = bencode::decode(&moved).unwrap();
        assert_eq!(
            v.get("announce").unwrap().as_bytes(),
            Some(b"http://elsewhere:1/announce".as_slice())
        );
    }
}
