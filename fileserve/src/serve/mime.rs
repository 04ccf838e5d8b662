//! Content types for the files a package mirror serves.
//!
//! A small fixed table instead of a MIME database: the set of file kinds on
//! a mirror is small, and a fixed table keeps responses identical on every
//! volunteer regardless of what is installed on their machine.

use std::path::Path;

const TEXT: &str = "text/plain; charset=utf-8";
const OCTET: &str = "application/octet-stream";

/// The `Content-Type` for a file, from its extension (case-insensitive), or
/// its whole name for the extension-less APT index files.
pub fn content_type_for(path: &Path) -> &'static str {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return OCTET;
    };
    match name {
        "Release" | "InRelease" | "Packages" | "Sources" | "Contents" | "Index" => return TEXT,
        _ => {}
    }
    let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
        return OCTET;
    };
    match ext.to_ascii_lowercase().as_str() {
        "deb" | "udeb" => "application/vnd.debian.binary-package",
        "rpm" => "application/x-rpm",
        "gz" | "tgz" => "application/gzip",
        "xz" => "application/x-xz",
        "bz2" => "application/x-bzip2",
        "zst" => "application/zstd",
        "json" => "application/json",
        "xml" => "application/xml",
        "html" | "htm" => "text/html; charset=utf-8",
        "txt" => TEXT,
        "iso" => "application/x-iso9660-image",
        "tar" => "application/x-tar",
        "zip" => "application/zip",
        "sig" | "asc" | "gpg" => "application/pgp-signature",
        "torrent" => "application/x-bittorrent",
        "meta4" => "application/metalink4+xml",
        _ => OCTET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(name: &str) -> &'static str {
        content_type_for(Path::new(name))
    }

    #[test]
    fn table() {
        assert_eq!(
            ct("pool/main/h/hello_1.0_all.deb"),
            "application/vnd.debian.binary-package"
        );
        assert_eq!(ct("x.rpm"), "application/x-rpm");
        assert_eq!(ct("Packages.gz"), "application/gzip");
        assert_eq!(ct("Packages.xz"), "application/x-xz");
        assert_eq!(ct("Packages.bz2"), "application/x-bzip2");
        assert_eq!(ct("a.tar.zst"), "application/zstd");
        assert_eq!(ct("a.json"), "application/json");
        assert_eq!(ct("repomd.xml"), "application/xml");
        assert_eq!(ct("index.html"), "text/html; charset=utf-8");
        assert_eq!(ct("README.txt"), "text/plain; charset=utf-8");
        assert_eq!(ct("debian.iso"), "application/x-iso9660-image");
        assert_eq!(ct("a.tar"), "application/x-tar");
        assert_eq!(ct("a.zip"), "application/zip");
        assert_eq!(ct("Release.gpg"), "application/pgp-signature");
        assert_eq!(ct("SHA256SUMS.sign.asc"), "application/pgp-signature");
        assert_eq!(ct("a.sig"), "application/pgp-signature");
        assert_eq!(ct("a.iso.torrent"), "application/x-bittorrent");
        assert_eq!(ct("a.meta4"), "application/metalink4+xml");
    }

    #[test]
    fn apt_index_names() {
        assert_eq!(ct("dists/stable/Release"), TEXT);
        assert_eq!(ct("dists/stable/InRelease"), TEXT);
        assert_eq!(ct("dists/stable/main/binary-amd64/Packages"), TEXT);
    }

    #[test]
    fn extension_case_is_ignored() {
        assert_eq!(ct("A.DEB"), "application/vnd.debian.binary-package");
        assert_eq!(ct("x.Gz"), "application/gzip");
    }

    #[test]
    fn unknown_is_octet_stream() {
        assert_eq!(ct("noext"), OCTET);
        assert_eq!(ct("a.weird"), OCTET);
        assert_eq!(ct(".hidden"), OCTET);
        assert_eq!(ct(""), OCTET);
        // Only the exact name counts, not a prefix.
        assert_eq!(ct("Releases"), OCTET);
    }
}
