//! What a packager installs, checked without installing it: the systemd units in
//! `packaging/` pass `systemd-analyze verify` with their binary in place.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mirrorswarm");

#[test]
fn the_systemd_units_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let mut paths = Vec::new();
    for name in [
        "mirrorswarm-server.service",
        "mirrorswarm-volunteer.service",
        "mirrorswarm-proxy.service",
    ] {
        let text = std::fs::read_to_string(units.join(name)).unwrap();
        // Hardened: a read-only system but for what it writes, no new privileges.
        for key in ["ProtectSystem=strict", "NoNewPrivileges=true", "ExecStart="] {
            assert!(text.contains(key), "{name} lacks {key}");
        }
        // The binary where this build put it (the units name /usr/local/bin).
        let here = text.replace("/usr/local/bin/mirrorswarm", BIN);
        let path = tmp.path().join(name);
        std::fs::write(&path, here).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze (package systemd) is needed: .ci/run installs it");
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    // Warnings about the units themselves (unknown keys, bad values) fail too; others (the
    // machine's own units, no running systemd) are not ours.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("mirrorswarm-"))
        .collect();
    assert!(ours.is_empty(), "{said}");
}
