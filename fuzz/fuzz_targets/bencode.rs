//! Bencode from peers and torrent files: decoding never panics, and what decodes re-encodes
//! to the same bytes (the format is canonical, and info-hashes depend on it).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = bencode::decode(data) {
        assert_eq!(bencode::encode(&v), data);
    }
});
