//! A connection's bytes through the fast path, as the accept loop runs it, with no socket
//! (`fileserve::fast::replay`): any bytes, split into reads at any points, pipelined, then
//! half-closed or gone quiet, written back through short writes. Never a panic; every
//! complete request the fast path takes gets exactly one answer, in order; one it does not
//! take is handed to the full stack with every byte from its first on; nothing else is
//! written.
//!
//! Input: one byte of flags (half-close; how much a write takes), one byte seeding the read
//! sizes, then the client's bytes.
#![no_main]
use std::sync::{Arc, OnceLock};

use fileserve::fast::replay::{check, replay, Echo, Script, MIN_MAX_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fn echo() -> Arc<Echo> {
    static ECHO: OnceLock<(tempfile_dir::Dir, Arc<Echo>)> = OnceLock::new();
    ECHO.get_or_init(|| {
        let dir = tempfile_dir::Dir::new();
        let echo = Arc::new(Echo::new(&dir.0).expect("echo file"));
        (dir, echo)
    })
    .1
    .clone()
}

/// A scratch directory for the echo's file, removed at exit.
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("fast-connection-{}", std::process::id()));
            std::fs::create_dir_all(&p).expect("scratch dir");
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, seed, bytes @ ..] = data else {
        return;
    };
    let mut x = u64::from(*seed) * 0x9E37_79B9_7F4A_7C15 | 1;
    let mut chunks = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 11 == 0 {
            chunks.push(Vec::new());
        }
        let n = (1 + (x >> 8) as usize % 97).min(rest.len());
        chunks.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    let script = Script {
        chunks,
        half_close: flags & 1 == 1,
        send_max: [0, 1, 5, 64][usize::from((flags >> 1) & 3)],
        max_header_bytes: MIN_MAX_HEADER_BYTES,
    };
    let t = replay(&script, echo());
    if let Err(m) = check(&script, &t) {
        panic!("{}", m.0);
    }
});
