//! The volunteer's durable credential: exchanged once for the admin's enrollment token, then
//! kept in the data directory (mode 0600) and reused on every restart.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    pub server: String,
    pub volunteer_id: String,
    pub name: String,
    /// HMAC key for announces, hex.
    pub secret: String,
    /// The server's ed25519 public key, hex: manifests must verify against it.
    pub public_key: String,
    /// The mirror's servers as enrollment named them (empty: the server was alone); the
    /// announces' replies keep the list current after that.
    #[serde(default)]
    pub servers: Vec<String>,
}

impl Credential {
    pub fn secret_bytes(&self) -> Result<Vec<u8>> {
        hex::decode(&self.secret).context("credential secret is not hex")
    }
}

pub fn credential_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("credential.json")
}

pub fn load(data_dir: &Path) -> Result<Option<Credential>> {
    let p = credential_path(data_dir);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

pub fn save(data_dir: &Path, cred: &Credential) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(data_dir)?;
    let p = credential_path(data_dir);
    let tmp = p.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(cred)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &p)?;
    Ok(())
}

/// The server key fingerprint an enrollment token vouches for (`<secret>.<fingerprint>`).
pub fn token_fingerprint(token: &str) -> Result<&str> {
    let (_, fp) = token
        .split_once('.')
        .ok_or_else(|| anyhow!("malformed token: expected <secret>.<fingerprint>"))?;
    if fp.len() != 32 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("malformed token: bad fingerprint part");
    }
    Ok(fp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let c = Credential {
            server: "http://s".into(),
            volunteer_id: "id".into(),
            servers: Vec::new(),
            name: "n".into(),
            secret: "00ff".into(),
            public_key: "ab".into(),
        };
        save(dir.path(), &c).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.secret_bytes().unwrap(), vec![0, 255]);
        std::fs::write(credential_path(dir.path()), b"{").unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn token_fingerprints() {
        assert_eq!(
            token_fingerprint(&format!("abc.{}", "a".repeat(32))).unwrap(),
            "a".repeat(32)
        );
        assert!(token_fingerprint("abc").is_err());
        assert!(token_fingerprint("abc.zz").is_err());
    }
}
