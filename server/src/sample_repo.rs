//! A small, real, apt-installable sample repository, generated on the fly.
//!
//! Used by the `demo` command and the end-to-end tests. Nothing here calls
//! external tools: the `.deb` files are written by hand (an `ar` archive with
//! uncompressed `control.tar` / `data.tar` members, which dpkg accepts) and
//! the repository indexes (`Packages`, `Release`) are plain text.
//!
//! Layout written by [`write_apt_repo`] (classic Debian layout):
//!
//! ```text
//! pool/<component>/<letter>/<name>/<name>_<version>_all.deb
//! dists/<suite>/<component>/binary-all/Packages
//! dists/<suite>/<component>/binary-<arch>/Packages   (same content, for each of INDEX_ARCHES)
//! dists/<suite>/Release                               (unsigned)
//! ```
//!
//! The repository is unsigned; clients use
//! `deb [trusted=yes] <URL> <suite> <component>`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Fixed modification time for every tar / ar entry, so output is deterministic.
pub const SAMPLE_MTIME: u64 = 1_700_000_000;

/// Architectures that get a (identical) copy of the `binary-all` index, so
/// apt on those machines finds the `Architecture: all` packages without
/// having to fetch `binary-all` (see `No-Support-for-Architecture-all` in
/// the Release file).
pub const INDEX_ARCHES: &[&str] = &["amd64", "arm64", "i386"];

const MAINTAINER: &str = "mirrorswarm demo <demo@mirrorswarm.invalid>";

/// One package of the sample repository. Always `Architecture: all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplePackage {
    pub name: String,
    pub version: String,
    /// Files to install: (path relative to `/`, e.g.
    /// `usr/share/doc/ms-hello/README`, contents). Files below a `bin/` or
    /// `sbin/` directory are installed with mode 0755, the rest 0644.
    pub files: Vec<(String, Vec<u8>)>,
    /// First line: synopsis. Further lines (if any): extended description.
    /// Without further lines, a generic extended line is added.
    pub description: String,
}

/// Where [`write_apt_repo`] put things; all paths relative to the repo root,
/// `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptRepoLayout {
    /// e.g. `pool/main/m/ms-hello/ms-hello_1.0_all.deb`, in input order.
    pub deb_paths: Vec<String>,
    /// The `binary-all` index, e.g. `dists/stable/main/binary-all/Packages`.
    pub packages_path: String,
    /// e.g. `dists/stable/Release`.
    pub release_path: String,
    /// Every index file written (all `Packages` files, then `Release`).
    pub index_paths: Vec<String>,
}

/// Size of the pseudo-random payload in `ms-data` (above a 32 KiB threshold).
pub const BIG_PAYLOAD_LEN: usize = 200 * 1024;

/// The default sample packages: `ms-hello 1.0`, `ms-tools 2.1`, `ms-data 0.3`
/// (the latter carries a ~200 KiB deterministic pseudo-random file, so its
/// `.deb` is well above 32 KiB). Deterministic.
pub fn default_packages() -> Vec<SamplePackage> {
    vec![
        SamplePackage {
            name: "ms-hello".into(),
            version: "1.0".into(),
            files: vec![
                (
                    "usr/share/doc/ms-hello/README".into(),
                    b"ms-hello: a tiny sample package served by mirrorswarm.\n\
                      If you can read this file, apt installed it from the mirror.\n"
                        .to_vec(),
                ),
                (
                    "usr/share/ms-hello/greeting.txt".into(),
                    b"Hello from mirrorswarm!\n".to_vec(),
                ),
            ],
            description: "sample greeting package for mirrorswarm".into(),
        },
        SamplePackage {
            name: "ms-tools".into(),
            version: "2.1".into(),
            files: vec![
                (
                    "usr/bin/ms-tool".into(),
                    b"#!/bin/sh\necho \"ms-tool 2.1 (mirrorswarm sample)\"\n".to_vec(),
                ),
                (
                    "usr/share/doc/ms-tools/README".into(),
                    b"ms-tools: sample command-line tool package for mirrorswarm.\n".to_vec(),
                ),
            ],
            description: "sample tool package for mirrorswarm\n\
                          Ships a tiny shell script, /usr/bin/ms-tool."
                .into(),
        },
        SamplePackage {
            name: "ms-data".into(),
            version: "0.3".into(),
            files: vec![
                (
                    "usr/share/ms-data/payload.bin".into(),
                    pseudo_random_bytes(0x6d73_6461_7461_0003, BIG_PAYLOAD_LEN),
                ),
                (
                    "usr/share/doc/ms-data/README".into(),
                    b"ms-data: sample data package with a 200 KiB pseudo-random payload.\n"
                        .to_vec(),
                ),
            ],
            description: "sample data package for mirrorswarm (200 KiB payload)".into(),
        },
    ]
}

/// Deterministic pseudo-random bytes (splitmix64).
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------
// .deb
// ---------------------------------------------------------------------------

/// Normalise an install path: strip leading `/` and `./`, reject empty,
/// `.` and `..` components.
///
/// # Panics
/// On an invalid path (the sample packages are program-defined).
fn normalize_install_path(path: &str) -> String {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            break;
        }
    }
    let ok = !p.is_empty()
        && p.split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    assert!(ok, "sample_repo: invalid install path {path:?}");
    p.to_string()
}

fn file_mode(path: &str) -> u32 {
    let mut comps: Vec<&str> = path.split('/').collect();
    comps.pop();
    if comps.iter().any(|c| *c == "bin" || *c == "sbin") {
        0o755
    } else {
        0o644
    }
}

/// Installed-Size in KiB, as dpkg-gencontrol would roughly compute it.
fn installed_size_kib(pkg: &SamplePackage) -> u64 {
    pkg.files
        .iter()
        .map(|(_, data)| (data.len() as u64).div_ceil(1024).max(1))
        .sum::<u64>()
        .max(1)
}

/// Format the Description field value (without the `Description: ` prefix).
fn format_description(desc: &str) -> String {
    let mut lines = desc.lines();
    let synopsis = lines.next().unwrap_or("").trim();
    let synopsis = if synopsis.is_empty() {
        "mirrorswarm sample package"
    } else {
        synopsis
    };
    let extended: Vec<&str> = lines.collect();
    let mut out = synopsis.to_string();
    if extended.iter().all(|l| l.trim().is_empty()) {
        out.push_str("\n This package was generated by mirrorswarm for demos and tests.");
    } else {
        for l in extended {
            let l = l.trim_end();
            if l.trim().is_empty() {
                out.push_str("\n .");
            } else {
                out.push_str("\n ");
                out.push_str(l.trim_start());
            }
        }
    }
    out
}

/// Control fields except Description, in order.
fn control_fields(pkg: &SamplePackage) -> Vec<(&'static str, String)> {
    vec![
        ("Package", pkg.name.clone()),
        ("Version", pkg.version.clone()),
        ("Architecture", "all".into()),
        ("Maintainer", MAINTAINER.into()),
        ("Installed-Size", installed_size_kib(pkg).to_string()),
        ("Section", "misc".into()),
        ("Priority", "optional".into()),
    ]
}

/// The `DEBIAN/control` file of `pkg`.
pub fn control_file(pkg: &SamplePackage) -> String {
    let mut s = String::new();
    for (k, v) in control_fields(pkg) {
        let _ = writeln!(s, "{k}: {v}");
    }
    let _ = writeln!(s, "Description: {}", format_description(&pkg.description));
    s
}

/// Build a real `.deb` (ar archive: `debian-binary`, `control.tar`,
/// `data.tar`, tar members uncompressed). Deterministic.
///
/// # Panics
/// If an install path is invalid (empty, contains `..`) or too long for ustar.
pub fn build_deb(pkg: &SamplePackage) -> Vec<u8> {
    // control.tar
    let control = control_file(pkg);
    let mut ctl = TarWriter::new();
    ctl.dir("./");
    ctl.file("./control", 0o644, control.as_bytes());
    let control_tar = ctl.finish();

    // data.tar: all entries sorted by path so parents precede children.
    enum Entry<'a> {
        Dir,
        File(&'a [u8]),
    }
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for (path, data) in &pkg.files {
        let p = normalize_install_path(path);
        let mut acc = String::from("./");
        let comps: Vec<&str> = p.split('/').collect();
        for dir in &comps[..comps.len() - 1] {
            acc.push_str(dir);
            acc.push('/');
            entries.entry(acc.clone()).or_insert(Entry::Dir);
        }
        entries.insert(format!("./{p}"), Entry::File(data));
    }
    let mut dt = TarWriter::new();
    dt.dir("./");
    for (name, entry) in &entries {
        match entry {
            Entry::Dir => dt.dir(name),
            Entry::File(data) => dt.file(name, file_mode(&name[2..]), data),
        }
    }
    let data_tar = dt.finish();

    let mut ar = ArWriter::new();
    ar.member("debian-binary", b"2.0\n");
    ar.member("control.tar", &control_tar);
    ar.member("data.tar", &data_tar);
    ar.finish()
}

/// Minimal ustar writer.
struct TarWriter {
    buf: Vec<u8>,
}

impl TarWriter {
    fn new() -> Self {
        TarWriter { buf: Vec::new() }
    }

    fn dir(&mut self, name: &str) {
        self.header(name, 0o755, 0, b'5');
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.header(name, mode, data.len() as u64, b'0');
        self.buf.extend_from_slice(data);
        let rem = data.len() % 512;
        if rem != 0 {
            self.buf.resize(self.buf.len() + 512 - rem, 0);
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, typeflag: u8) {
        let mut h = [0u8; 512];
        let (prefix, short) = split_ustar_name(name);
        h[..short.len()].copy_from_slice(short.as_bytes());
        put_octal(&mut h[100..108], u64::from(mode)); // mode
        put_octal(&mut h[108..116], 0); // uid
        put_octal(&mut h[116..124], 0); // gid
        put_octal(&mut h[124..136], size); // size
        put_octal(&mut h[136..148], SAMPLE_MTIME); // mtime
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root"); // uname
        h[297..301].copy_from_slice(b"root"); // gname
        put_octal(&mut h[329..337], 0); // devmajor
        put_octal(&mut h[337..345], 0); // devminor
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // Checksum: computed with the checksum field as spaces, stored as
        // six octal digits, NUL, space.
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.buf.extend_from_slice(&h);
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.resize(self.buf.len() + 1024, 0);
        self.buf
    }
}

/// Write `value` as zero-padded octal, NUL-terminated, filling the field.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    assert!(s.len() == digits, "sample_repo: tar field overflow");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// Split a tar member name into (prefix, name) per ustar limits.
fn split_ustar_name(name: &str) -> (&str, &str) {
    if name.len() <= 100 {
        return ("", name);
    }
    // Split at a '/' such that prefix <= 155 and the rest <= 100 (and the
    // rest is non-empty; a trailing '/' of a dir stays with the name).
    let bytes = name.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' && i <= 155 && name.len() - i - 1 <= 100 && i + 1 < name.len() {
            let rest = &name[i + 1..];
            if rest != "/" && !rest.is_empty() {
                return (&name[..i], rest);
            }
        }
    }
    panic!("sample_repo: path too long for ustar: {name:?}");
}

/// Minimal `ar` writer (common / System V format as used by dpkg).
struct ArWriter {
    buf: Vec<u8>,
}

impl ArWriter {
    fn new() -> Self {
        ArWriter {
            buf: b"!<arch>\n".to_vec(),
        }
    }

    fn member(&mut self, name: &str, data: &[u8]) {
        assert!(name.len() <= 16);
        let header = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            name,
            SAMPLE_MTIME,
            0,
            0,
            "100644",
            data.len()
        );
        debug_assert_eq!(header.len(), 60);
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(data);
        if data.len() % 2 == 1 {
            self.buf.push(b'\n');
        }
    }

    fn finish(self) -> Vec<u8> {
        self.buf
    }
}

// ---------------------------------------------------------------------------
// Repository
// ---------------------------------------------------------------------------

/// Version as used in file names (epoch stripped).
fn filename_version(version: &str) -> &str {
    match version.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        _ => version,
    }
}

/// Pool directory letter: first letter, or `libX` for `lib*` packages.
fn pool_letter(name: &str) -> &str {
    if name.starts_with("lib") && name.len() > 3 {
        &name[..4]
    } else {
        &name[..1.min(name.len())]
    }
}

/// Relative pool path of a package's `.deb`.
pub fn deb_pool_path(component: &str, pkg: &SamplePackage) -> String {
    format!(
        "pool/{component}/{}/{name}/{name}_{}_all.deb",
        pool_letter(&pkg.name),
        filename_version(&pkg.version),
        name = pkg.name,
    )
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn write_file(root: &Path, rel: &str, data: &[u8]) -> io::Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, data)
}

/// Write a complete unsigned apt repository for `pkgs` under `root`.
///
/// Writes the `.deb`s to the pool, `dists/<suite>/<component>/binary-all/Packages`
/// plus an identical `binary-<arch>/Packages` for each of [`INDEX_ARCHES`],
/// and `dists/<suite>/Release` (with a `SHA256:` section and the current date).
pub fn write_apt_repo(
    root: &Path,
    suite: &str,
    component: &str,
    pkgs: &[SamplePackage],
) -> io::Result<AptRepoLayout> {
    let bad = |v: &str| v.is_empty() || v.contains('/') || v.contains(char::is_whitespace);
    if bad(suite) || bad(component) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid suite/component {suite:?}/{component:?}"),
        ));
    }

    let mut deb_paths = Vec::with_capacity(pkgs.len());
    let mut packages = String::new();
    for pkg in pkgs {
        let deb = build_deb(pkg);
        let rel = deb_pool_path(component, pkg);
        write_file(root, &rel, &deb)?;

        if !packages.is_empty() {
            packages.push('\n');
        }
        for (k, v) in control_fields(pkg) {
            let _ = writeln!(packages, "{k}: {v}");
        }
        let _ = writeln!(packages, "Filename: {rel}");
        let _ = writeln!(packages, "Size: {}", deb.len());
        let _ = writeln!(packages, "SHA256: {}", sha256_hex(&deb));
        let _ = writeln!(
            packages,
            "Description: {}",
            format_description(&pkg.description)
        );
        deb_paths.push(rel);
    }

    let dist = format!("dists/{suite}");
    let mut index_rel = Vec::new(); // relative to dists/<suite>
    for arch in std::iter::once("all").chain(INDEX_ARCHES.iter().copied()) {
        let rel = format!("{component}/binary-{arch}/Packages");
        write_file(root, &format!("{dist}/{rel}"), packages.as_bytes())?;
        index_rel.push(rel);
    }

    let mut release = String::new();
    let _ = writeln!(release, "Origin: mirrorswarm");
    let _ = writeln!(release, "Label: mirrorswarm sample");
    let _ = writeln!(release, "Suite: {suite}");
    let _ = writeln!(release, "Codename: {suite}");
    let _ = writeln!(release, "Date: {}", rfc2822_utc(SystemTime::now()));
    let _ = writeln!(release, "Architectures: all {}", INDEX_ARCHES.join(" "));
    let _ = writeln!(release, "No-Support-for-Architecture-all: Packages");
    let _ = writeln!(release, "Components: {component}");
    let _ = writeln!(release, "Description: mirrorswarm sample repository");
    let _ = writeln!(release, "SHA256:");
    let digest = sha256_hex(packages.as_bytes());
    for rel in &index_rel {
        let _ = writeln!(release, " {digest} {:>16} {rel}", packages.len());
    }
    let release_path = format!("{dist}/Release");
    write_file(root, &release_path, release.as_bytes())?;

    let mut index_paths: Vec<String> = index_rel.iter().map(|r| format!("{dist}/{r}")).collect();
    index_paths.push(release_path.clone());
    Ok(AptRepoLayout {
        deb_paths,
        packages_path: index_paths[0].clone(),
        release_path,
        index_paths,
    })
}

/// Format a time as an RFC 2822 date in UTC, e.g. `Tue, 14 Nov 2023 22:13:20 UTC`
/// (the form Debian Release files use).
pub fn rfc2822_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} UTC",
        WD[days.rem_euclid(7) as usize],
        d,
        MON[(m - 1) as usize],
        y,
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn have(tool: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool} >/dev/null 2>&1"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn run_ok(cmd: &mut Command) -> std::process::Output {
        let out = cmd.output().expect("spawn");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    #[test]
    fn date_format() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(rfc2822_utc(t), "Tue, 14 Nov 2023 22:13:20 UTC");
        assert_eq!(rfc2822_utc(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 UTC");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc2822_utc(t), "Tue, 29 Feb 2000 00:00:00 UTC");
    }

    #[test]
    fn deterministic_and_sizes() {
        let a = default_packages();
        let b = default_packages();
        assert_eq!(a, b);
        assert!(a.len() >= 3);
        for p in &a {
            assert_eq!(build_deb(p), build_deb(p));
        }
        let big = a.iter().find(|p| p.name == "ms-data").unwrap();
        assert!(build_deb(big).len() > 32 * 1024);
        let small = a.iter().find(|p| p.name == "ms-hello").unwrap();
        assert!(build_deb(small).len() < 32 * 1024);
    }

    #[test]
    fn tar_checksums_valid() {
        let pkg = &default_packages()[1];
        let deb = build_deb(pkg);
        assert!(deb.starts_with(b"!<arch>\n"));
        // Walk ar members.
        let mut off = 8;
        let mut names = Vec::new();
        while off < deb.len() {
            let h = &deb[off..off + 60];
            assert_eq!(&h[58..60], b"`\n");
            let name = std::str::from_utf8(&h[..16])
                .unwrap()
                .trim_end()
                .to_string();
            let size: usize = std::str::from_utf8(&h[48..58])
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let data = &deb[off + 60..off + 60 + size];
            if name.ends_with(".tar") {
                let mut t = 0;
                while data[t..t + 512].iter().any(|&b| b != 0) {
                    let hdr = &data[t..t + 512];
                    let stored =
                        u32::from_str_radix(std::str::from_utf8(&hdr[148..154]).unwrap(), 8)
                            .unwrap();
                    let sum: u32 = hdr
                        .iter()
                        .enumerate()
                        .map(|(i, &b)| {
                            if (148..156).contains(&i) {
                                32
                            } else {
                                u32::from(b)
                            }
                        })
                        .sum();
                    assert_eq!(stored, sum);
                    let sz = u64::from_str_radix(std::str::from_utf8(&hdr[124..135]).unwrap(), 8)
                        .unwrap() as usize;
                    t += 512 + sz.div_ceil(512) * 512;
                }
                assert_eq!(data.len(), t + 1024);
            }
            names.push(name);
            off += 60 + size + size % 2;
        }
        assert_eq!(off, deb.len());
        assert_eq!(names, ["debian-binary", "control.tar", "data.tar"]);
    }

    #[test]
    fn ustar_long_names() {
        assert_eq!(split_ustar_name("./short"), ("", "./short"));
        let long = format!("./{}/{}", "a".repeat(80), "b".repeat(60));
        let (p, n) = split_ustar_name(&long);
        assert_eq!(format!("{p}/{n}"), long);
        assert!(p.len() <= 155 && n.len() <= 100);
    }

    #[test]
    fn dpkg_deb_accepts_and_extracts() {
        if !have("dpkg-deb") {
            eprintln!("NOTE: dpkg-deb not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for pkg in default_packages() {
            let deb = build_deb(&pkg);
            let debp = dir.path().join(format!("{}.deb", pkg.name));
            std::fs::write(&debp, &deb).unwrap();

            let info = run_ok(Command::new("dpkg-deb").arg("--info").arg(&debp));
            let info = String::from_utf8_lossy(&info.stdout);
            assert!(info.contains(&format!("Package: {}", pkg.name)), "{info}");
            assert!(
                info.contains(&format!("Version: {}", pkg.version)),
                "{info}"
            );
            assert!(info.contains("Architecture: all"), "{info}");

            let f = run_ok(
                Command::new("dpkg-deb")
                    .args(["--field"])
                    .arg(&debp)
                    .arg("Package"),
            );
            assert_eq!(String::from_utf8_lossy(&f.stdout).trim(), pkg.name);

            let contents = run_ok(Command::new("dpkg-deb").arg("--contents").arg(&debp));
            let contents = String::from_utf8_lossy(&contents.stdout);
            for (path, _) in &pkg.files {
                assert!(contents.contains(&format!("./{path}")), "{contents}");
            }

            let x = dir.path().join(format!("x-{}", pkg.name));
            run_ok(Command::new("dpkg-deb").arg("-x").arg(&debp).arg(&x));
            for (path, data) in &pkg.files {
                let got = std::fs::read(x.join(path)).unwrap();
                assert_eq!(&got, data, "{path}");
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(x.join(path))
                        .unwrap()
                        .permissions()
                        .mode();
                    assert_eq!(mode & 0o777, file_mode(path), "{path}");
                }
            }

            if have("ar") {
                let t = run_ok(Command::new("ar").arg("t").arg(&debp));
                let names: Vec<String> = String::from_utf8_lossy(&t.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect();
                assert_eq!(names, ["debian-binary", "control.tar", "data.tar"]);
            } else {
                eprintln!("NOTE: ar not installed; skipping ar check");
            }
        }
    }

    #[test]
    fn repo_layout_and_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let pkgs = default_packages();
        let layout = write_apt_repo(dir.path(), "stable", "main", &pkgs).unwrap();
        assert_eq!(
            layout.deb_paths[0],
            "pool/main/m/ms-hello/ms-hello_1.0_all.deb"
        );
        assert_eq!(
            layout.packages_path,
            "dists/stable/main/binary-all/Packages"
        );
        assert_eq!(layout.release_path, "dists/stable/Release");
        for (p, pkg) in layout.deb_paths.iter().zip(&pkgs) {
            assert_eq!(std::fs::read(dir.path().join(p)).unwrap(), build_deb(pkg));
        }
        let packages = std::fs::read_to_string(dir.path().join(&layout.packages_path)).unwrap();
        assert_eq!(packages.matches("Package: ").count(), pkgs.len());
        let amd64 =
            std::fs::read_to_string(dir.path().join("dists/stable/main/binary-amd64/Packages"))
                .unwrap();
        assert_eq!(packages, amd64);
        let release = std::fs::read_to_string(dir.path().join(&layout.release_path)).unwrap();
        assert!(release.contains("Suite: stable"));
        assert!(release.contains(&format!(
            " {} {:>16} main/binary-amd64/Packages",
            sha256_hex(packages.as_bytes()),
            packages.len()
        )));
        assert_eq!(layout.index_paths.len(), 1 + INDEX_ARCHES.len() + 1);
        for p in &layout.index_paths {
            assert!(dir.path().join(p).is_file(), "{p}");
        }
        assert!(write_apt_repo(dir.path(), "bad/suite", "main", &pkgs).is_err());
    }

    /// Runs real apt-get against the generated repo via a `file:` URL, with
    /// fully isolated state, then downloads a package.
    #[test]
    fn apt_get_update_and_download() {
        if !have("apt-get") {
            eprintln!("NOTE: apt-get not installed; skipping apt test");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let repo = t.join("repo");
        let pkgs = default_packages();
        write_apt_repo(&repo, "stable", "main", &pkgs).unwrap();

        let sources = t.join("sources.list");
        std::fs::write(
            &sources,
            format!("deb [trusted=yes] file://{} stable main\n", repo.display()),
        )
        .unwrap();
        for d in ["state/lists/partial", "cache/archives/partial", "dl"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        std::fs::write(t.join("status"), b"").unwrap();

        let opts: Vec<String> = vec![
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/nonexistent".into(),
            format!("Dir::State={}", t.join("state").display()),
            format!("Dir::State::status={}", t.join("status").display()),
            format!("Dir::Cache={}", t.join("cache").display()),
            "Debug::NoLocking=1".into(),
            "APT::Sandbox::User=root".into(),
            "Acquire::Languages=none".into(),
        ];
        let apt = |args: &[&str]| {
            let mut c = Command::new("apt-get");
            for o in &opts {
                c.arg("-o").arg(o);
            }
            c.args(args).current_dir(t.join("dl"));
            run_ok(&mut c)
        };
        let upd = apt(&["update"]);
        let upd_out = String::from_utf8_lossy(&upd.stdout).to_string()
            + &String::from_utf8_lossy(&upd.stderr);
        assert!(!upd_out.contains("W:"), "apt-get update warned:\n{upd_out}");

        for name in ["ms-hello", "ms-data"] {
            apt(&["download", name]);
            let pkg = pkgs.iter().find(|p| p.name == name).unwrap();
            let file = t
                .join("dl")
                .join(format!("{}_{}_all.deb", pkg.name, pkg.version));
            let got = std::fs::read(&file).expect("downloaded .deb");
            assert_eq!(got, build_deb(pkg), "{name}");
        }
    }
}
