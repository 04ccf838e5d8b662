//! Request paths and Range headers from customers: decoding never panics, and a decoded path
//! never climbs out of its root.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = fileserve::decode_url_path(s) {
        assert!(!p.split('/').any(|seg| seg == ".."), "{p}");
        assert!(!p.contains('\0'));
    }
    let _ = fileserve::parse_range(s, 1 << 20);
});
