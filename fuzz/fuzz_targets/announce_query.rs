//! Announce and scrape queries as a hostile client would send them, including mirrorswarm's
//! signed `ms_*` extension: every input is accepted or refused with an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = tracker::announce::parse_announce(raw) {
        let _ = tracker::mirror::parse_mirror_report(&req.extra);
    }
    let _ = tracker::announce::parse_scrape(raw);
    if let Ok((signed, sig)) = tracker::mirror::split_signed_query(raw) {
        let _ = tracker::mirror::verify_query_signature(
            b"0123456789abcdef0123456789abcdef",
            signed,
            &sig,
        );
    }
});
