//! Signed manifests as a volunteer receives them: the envelope and the payload are parsed
//! and checked without panicking, and nothing verifies under a key that did not sign it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = manifest::ServerKey::from_bytes(&[7u8; 32]).public();
    assert!(manifest::SignedManifest::verify(data, &key).is_err());
    if let Ok(m) = serde_json::from_slice::<manifest::Manifest>(data) {
        let _ = m.validate();
        let _ = m.total_bytes();
    }
});
