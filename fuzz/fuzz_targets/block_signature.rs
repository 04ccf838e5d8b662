//! Block signatures (`/artifacts/<sha>.sig`) as a volunteer downloads them: parsing checks
//! every length against the file size, and matching a local file against any signature that
//! parses never panics and never writes more than the file's size.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A local "old version" to match against, made once per process.
fn old_file() -> &'static std::path::Path {
    static OLD: OnceLock<std::path::PathBuf> = OnceLock::new();
    OLD.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("ms-fuzz-old-{}", std::process::id()));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&p, data).unwrap();
        p
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let file_len = u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 20);
    let Ok(sig) = prsync::blockmatch::BlockSignature::parse(&data[8..], file_len) else {
        return;
    };
    let out = std::env::temp_dir().join(format!("ms-fuzz-out-{}", std::process::id()));
    if prsync::blockmatch::first_guess(&sig, old_file(), &out).is_ok() {
        let len = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        assert!(
            len <= file_len,
            "wrote {len} bytes for a {file_len}-byte file"
        );
    }
});
