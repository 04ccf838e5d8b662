//! Manifest keys are relative paths that volunteers join to their own directories, so a
//! hostile key (`../../etc/passwd`) must be impossible by construction.

/// Check that `path` is a plain relative path: `/`-separated, non-empty normal segments, no
/// `.`/`..`, no backslash, NUL or control characters, at most 4096 bytes.
pub fn validate_rel_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > 4096 {
        return Err("path longer than 4096 bytes");
    }
    if path.starts_with('/') {
        return Err("absolute path");
    }
    if path.chars().any(|c| c == '\\' || c.is_control()) {
        return Err("backslash or control character");
    }
    for seg in path.split('/') {
        match seg {
            "" => return Err("empty segment"),
            "." | ".." => return Err("`.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_paths() {
        for ok in [
            "a",
            "pool/main/h/hello_1.0_all.deb",
            "dists/stable/Release",
            "a b/c+d~e",
        ] {
            assert!(validate_rel_path(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_hostile_paths() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
            "a\nb",
            "..",
            ".",
        ] {
            assert!(validate_rel_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_rel_path(&"a".repeat(4097)).is_err());
    }
}
