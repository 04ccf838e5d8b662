//! HTTPS certificates for the listeners (server, volunteer, proxy).
//!
//! The certificate and key come from PEM files named in the configuration,
//! because that is what certbot and the other ACME clients (or an operator)
//! produce, and they renew by rewriting those files (certbot swaps the
//! symlinks in `live/`) without telling us. So [`Certs`] reads and checks the
//! files ([`Certs::load`]), serves the result through rustls'
//! [`ResolvesServerCert`], and can read them again while the listener runs
//! ([`Certs::reload`], driven by [`watch`] on SIGHUP and on file changes).
//! A reload only changes what *new* handshakes present: an open connection
//! keeps its session keys, which were agreed once at its own handshake, so
//! downloads in flight are not interrupted. A reload that fails (a half-written
//! file, a key that does not match yet) keeps serving the previous
//! certificate.
//!
//! The checks are the ones that would otherwise only show up as clients
//! refusing to connect: the key matches the leaf certificate, the leaf is valid
//! now, and it covers the names the listener is reached by.
//!
//! Crypto is rustls with the aws-lc-rs provider, always passed explicitly
//! (never the process-wide default); no OpenSSL.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The PEM files of a listener's certificate: `cert` holds the leaf
/// certificate first, then any intermediates (certbot's `fullchain.pem`);
/// `key` holds its private key (PKCS#8, PKCS#1 or SEC1; certbot's
/// `privkey.pem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why certificate files were refused. Each message is one line and names the
/// file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {}: cannot read it: {error}", path.display())]
    ReadCert { path: PathBuf, error: io::Error },
    #[error("TLS key {}: cannot read it: {error}", path.display())]
    ReadKey { path: PathBuf, error: io::Error },
    #[error("TLS certificate {}: bad PEM: {reason}", path.display())]
    CertPem { path: PathBuf, reason: String },
    #[error("TLS certificate {}: no PEM certificate in it", path.display())]
    NoCert { path: PathBuf },
    #[error("TLS certificate {}: not a valid X.509 certificate: {reason}", path.display())]
    BadCert { path: PathBuf, reason: String },
    #[error("TLS key {}: bad PEM: {reason}", path.display())]
    KeyPem { path: PathBuf, reason: String },
    #[error("TLS key {}: no private key (PKCS#8, PKCS#1 or SEC1 PEM) in it", path.display())]
    NoKey { path: PathBuf },
    #[error("TLS key {}: not a usable private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("TLS key {} does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error(
        "TLS key {}: cannot check that it matches the certificate {}: {reason}",
        key.display(),
        cert.display()
    )]
    KeyUnchecked {
        key: PathBuf,
        cert: PathBuf,
        reason: String,
    },
    #[error("TLS certificate {}: expired on {}", path.display(), utc(*not_after))]
    Expired {
        path: PathBuf,
        not_after: SystemTime,
    },
    #[error("TLS certificate {}: not valid yet, only from {}", path.display(), utc(*not_before))]
    NotYetValid {
        path: PathBuf,
        not_before: SystemTime,
    },
    #[error("TLS certificate {}: not valid for {name} (it names: {names})", path.display())]
    WrongName {
        path: PathBuf,
        name: String,
        /// The leaf's DNS and IP subject alternative names, comma separated.
        names: String,
    },
    #[error(
        "TLS certificate {}: cannot check it against {name:?}: not a host name or IP address",
        path.display()
    )]
    BadName { path: PathBuf, name: String },
}

/// What [`Certs::reload`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hold another certificate chain or key; new handshakes get it.
    Changed,
    /// The files hold what is already served.
    Unchanged,
}

/// The certificate a listener presents, reloadable while connections stay
/// open. Hand [`Certs::server_config`] to the acceptor.
pub struct Certs {
    files: TlsFiles,
    /// The names the leaf must be valid for, checked at every (re)load.
    names: Vec<String>,
    current: RwLock<Loaded>,
    /// The files' metadata as seen just before the last read attempt, so
    /// [`watch`] reads again only after they change.
    seen: Mutex<Stamps>,
}

/// What was read from the files.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The key's DER, to tell a changed key from an unchanged one.
    key_der: PrivateKeyDer<'static>,
    leaf: LeafInfo,
}

impl Certs {
    /// Read and check the files: at least one certificate; a private key that
    /// parses and matches the leaf's public key; the leaf valid now; and, for
    /// each of `names` (host names or IP literals, `[::1]` accepted), the leaf
    /// valid for it.
    pub fn load(files: TlsFiles, names: Vec<String>) -> Result<Arc<Certs>, TlsError> {
        let seen = Stamps::of(&files);
        let loaded = read(&files, &names)?;
        Ok(Arc::new(Certs {
            files,
            names,
            current: RwLock::new(loaded),
            seen: Mutex::new(seen),
        }))
    }

    /// Read the files again with the same checks. On success serve what was
    /// read to new handshakes (open connections are untouched) and say
    /// whether it differs (by the DER of the chain and key). On failure keep
    /// serving the previous certificate and return the error.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        // Before reading: a change during or after the read must show up as a
        // difference at the next check.
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Stamps::of(&self.files);
        let new = read(&self.files, &self.names)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.key.cert == new.key.cert
            && current.key_der.secret_der() == new.key_der.secret_der()
        {
            return Ok(Reloaded::Unchanged);
        }
        *current = new;
        Ok(Reloaded::Changed)
    }

    /// A rustls server configuration presenting these certificates (reloads
    /// included): no client authentication, ALPN `http/1.1` only, TLS 1.2 and
    /// 1.3, the aws-lc-rs provider.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut provider = aws_lc_rs::default_provider();
        // AES-128-GCM with SHA-256 first, whatever the client lists first (OpenSSL lists
        // AES-256 with SHA-384): a handshake's key schedule then hashes with SHA-256, which
        // runs on the CPU's SHA extensions, where SHA-384 ran in software and was a fifth
        // of a new connection's time (perf, BENCHMARKS.md); AES-128 is TLS 1.3's mandatory
        // suite and ample for public files.
        provider.cipher_suites.sort_by_key(|s| {
            !matches!(
                s.suite(),
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            )
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ignore_client_order = true;
        Arc::new(config)
    }

    /// One line for logs: the served leaf's names, its expiry and the file.
    pub fn describe(&self) -> String {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        format!(
            "TLS certificate {} for {}, valid until {}",
            self.files.cert.display(),
            current.leaf.names_list(),
            utc(current.leaf.not_after),
        )
    }

    /// The files this was read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The certificate and key served now.
    fn current_key(&self) -> Arc<CertifiedKey> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&current.key)
    }

    /// Whether the files look as they did before the last read attempt.
    fn files_unchanged(&self) -> bool {
        Stamps::of(&self.files) == *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current_key())
    }
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Certs")
            .field("files", &self.files)
            .field("names", &self.names)
            .field("leaf_names", &current.leaf.names)
            .field("not_after", &utc(current.leaf.not_after))
            .finish_non_exhaustive()
    }
}

/// Reload `certs` on SIGHUP and whenever either file's metadata (mtime, ctime,
/// length, device and inode, following symlinks such as certbot's `live/`
/// links) differs from what it was at the last read, checked every `every`.
/// Logs a reload that changed the certificate (info) and one that failed
/// (error; the previous certificate stays). Files that changed but fail to
/// read are read again only at their next change or SIGHUP. (A rewrite in
/// place that keeps the length within one tick of the file system's clock
/// can go unnoticed; SIGHUP reads the files regardless.) Runs until the future
/// is dropped or its task aborted.
pub async fn watch(certs: Arc<Certs>, every: Duration) {
    use tokio::signal::unix::{signal, SignalKind};

    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS certificate reloads only on file changes");
            None
        }
    };
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            got = next_hangup(&mut hangup) => {
                if got.is_none() {
                    hangup = None;
                    continue;
                }
                true
            }
        };
        let c = Arc::clone(&certs);
        let outcome = tokio::task::spawn_blocking(move || {
            if !forced && c.files_unchanged() {
                None
            } else {
                Some(c.reload())
            }
        })
        .await;
        match outcome {
            Ok(None) => {}
            Ok(Some(Ok(Reloaded::Changed))) => {
                tracing::info!(certificate = %certs.describe(), "TLS certificate reloaded");
            }
            Ok(Some(Ok(Reloaded::Unchanged))) => {
                tracing::debug!(certificate = %certs.describe(), "TLS certificate files read; unchanged");
            }
            Ok(Some(Err(e))) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; kept the previous one");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; kept the previous one");
            }
        }
    }
}

async fn next_hangup(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(hangup) => hangup.recv().await,
        None => std::future::pending().await,
    }
}

/// A file's metadata, to notice it changed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: (i64, i64),
    ctime: (i64, i64),
    len: u64,
    dev: u64,
    ino: u64,
}

/// The certificate's and key's [`Stamp`]s; `None` for a file that cannot be
/// stat'ed (which is a state too: it changes when the file comes back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamps {
    cert: Option<Stamp>,
    key: Option<Stamp>,
}

impl Stamps {
    fn of(files: &TlsFiles) -> Stamps {
        Stamps {
            cert: Stamp::of(&files.cert),
            key: Stamp::of(&files.key),
        }
    }
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Read both files and check them (see [`Certs::load`]).
fn read(files: &TlsFiles, names: &[String]) -> Result<Loaded, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key_der = read_key(&files.key)?;
    let Some(leaf_der) = chain.first() else {
        return Err(TlsError::NoCert {
            path: files.cert.clone(),
        });
    };
    let bad_cert = |reason: String| TlsError::BadCert {
        path: files.cert.clone(),
        reason,
    };
    let end_entity =
        webpki::EndEntityCert::try_from(leaf_der).map_err(|e| bad_cert(e.to_string()))?;
    let leaf = LeafInfo::parse(leaf_der).map_err(|e| bad_cert(e.to_string()))?;

    let provider = aws_lc_rs::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| TlsError::BadKey {
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain.clone(), signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                key: files.key.clone(),
                cert: files.cert.clone(),
            })
        }
        Err(e) => {
            return Err(TlsError::KeyUnchecked {
                key: files.key.clone(),
                cert: files.cert.clone(),
                reason: e.to_string(),
            })
        }
    }

    let now = unix_now();
    if now < leaf.not_before {
        return Err(TlsError::NotYetValid {
            path: files.cert.clone(),
            not_before: system_time(leaf.not_before),
        });
    }
    if now > leaf.not_after {
        return Err(TlsError::Expired {
            path: files.cert.clone(),
            not_after: system_time(leaf.not_after),
        });
    }

    for name in names {
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        let server_name = ServerName::try_from(bare).map_err(|_| TlsError::BadName {
            path: files.cert.clone(),
            name: name.clone(),
        })?;
        match end_entity.verify_is_valid_for_subject_name(&server_name) {
            Ok(()) => {}
            Err(webpki::Error::CertNotValidForName(_)) => {
                return Err(TlsError::WrongName {
                    path: files.cert.clone(),
                    name: name.clone(),
                    names: leaf.names_list(),
                })
            }
            Err(e) => return Err(bad_cert(e.to_string())),
        }
    }

    Ok(Loaded {
        key: Arc::new(certified),
        key_der,
        leaf,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |e: pem::Error| match e {
        pem::Error::Io(error) => TlsError::ReadCert {
            path: path.to_path_buf(),
            error,
        },
        other => TlsError::CertPem {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::Io(error) => TlsError::ReadKey {
            path: path.to_path_buf(),
            error,
        },
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        other => TlsError::KeyPem {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// What the logs and errors say about a leaf certificate, read from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeafInfo {
    /// Seconds since the Unix epoch.
    not_before: i64,
    not_after: i64,
    /// DNS names and IP addresses from the subject alternative names.
    names: Vec<String>,
}

impl LeafInfo {
    /// Read tbsCertificate's validity and subjectAltName extension
    /// (RFC 5280 4.1 and 4.2.1.6).
    fn parse(der: &[u8]) -> Result<LeafInfo, &'static str> {
        let certificate = Der::new(der).only(SEQUENCE)?;
        let mut tbs = Der::new(Der::new(certificate).next_of(SEQUENCE)?);
        if tbs.peek() == Some(0xa0) {
            tbs.next()?; // version
        }
        tbs.next_of(INTEGER)?; // serialNumber
        tbs.next_of(SEQUENCE)?; // signature
        tbs.next_of(SEQUENCE)?; // issuer
        let mut validity = Der::new(tbs.next_of(SEQUENCE)?);
        let not_before = parse_time(validity.next()?)?;
        let not_after = parse_time(validity.next()?)?;
        tbs.next_of(SEQUENCE)?; // subject
        tbs.next_of(SEQUENCE)?; // subjectPublicKeyInfo
        let mut names = Vec::new();
        while !tbs.is_empty() {
            let (tag, body) = tbs.next()?;
            if tag != 0xa3 {
                continue; // issuerUniqueID, subjectUniqueID
            }
            let mut extensions = Der::new(Der::new(body).only(SEQUENCE)?);
            while !extensions.is_empty() {
                let mut extension = Der::new(extensions.next_of(SEQUENCE)?);
                let oid = extension.next_of(OID)?;
                if extension.peek() == Some(BOOLEAN) {
                    extension.next()?; // critical
                }
                let value = extension.next_of(OCTET_STRING)?;
                if oid == SUBJECT_ALT_NAME {
                    names = parse_alt_names(value)?;
                }
            }
        }
        Ok(LeafInfo {
            not_before,
            not_after,
            names,
        })
    }

    /// The names, comma separated, for messages.
    fn names_list(&self) -> String {
        if self.names.is_empty() {
            "no DNS name or IP address".to_string()
        } else {
            self.names.join(", ")
        }
    }
}

const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const SEQUENCE: u8 = 0x30;
/// 2.5.29.17
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// GeneralNames: dNSName is `[2] IA5String`, iPAddress `[7] OCTET STRING`.
fn parse_alt_names(value: &[u8]) -> Result<Vec<String>, &'static str> {
    let mut general_names = Der::new(Der::new(value).only(SEQUENCE)?);
    let mut names = Vec::new();
    while !general_names.is_empty() {
        let (tag, body) = general_names.next()?;
        match tag {
            0x82 => names.push(String::from_utf8_lossy(body).into_owned()),
            0x87 => {
                let ip = if let Ok(v4) = <[u8; 4]>::try_from(body) {
                    IpAddr::V4(Ipv4Addr::from(v4))
                } else if let Ok(v6) = <[u8; 16]>::try_from(body) {
                    IpAddr::V6(Ipv6Addr::from(v6))
                } else {
                    return Err("bad iPAddress in subjectAltName");
                };
                names.push(ip.to_string());
            }
            _ => {}
        }
    }
    Ok(names)
}

/// A DER reader over the contents of one constructed value: single-byte tags,
/// definite lengths.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Der { rest }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next value's tag and contents.
    fn next(&mut self) -> Result<(u8, &'a [u8]), &'static str> {
        const TRUNCATED: &str = "truncated DER";
        let (&tag, rest) = self.rest.split_first().ok_or(TRUNCATED)?;
        if tag & 0x1f == 0x1f {
            return Err("unsupported DER tag");
        }
        let (&first, mut rest) = rest.split_first().ok_or(TRUNCATED)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err("unsupported DER length");
            }
            if rest.len() < count {
                return Err(TRUNCATED);
            }
            let (bytes, after) = rest.split_at(count);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b))
        };
        if rest.len() < len {
            return Err(TRUNCATED);
        }
        let (body, after) = rest.split_at(len);
        self.rest = after;
        Ok((tag, body))
    }

    /// The next value's contents, which must have tag `tag`.
    fn next_of(&mut self, tag: u8) -> Result<&'a [u8], &'static str> {
        match self.next()? {
            (t, body) if t == tag => Ok(body),
            _ => Err("unexpected DER tag"),
        }
    }

    /// The contents of the one value that must fill the input.
    fn only(mut self, tag: u8) -> Result<&'a [u8], &'static str> {
        let body = self.next_of(tag)?;
        if !self.is_empty() {
            return Err("trailing data after DER value");
        }
        Ok(body)
    }
}

/// An X.509 Time as seconds since the Unix epoch: UTCTime `YYMMDDHHMMSSZ`
/// (years 1950 to 2049) or GeneralizedTime `YYYYMMDDHHMMSSZ`, the forms RFC
/// 5280 4.1.2.5 allows.
fn parse_time((tag, body): (u8, &[u8])) -> Result<i64, &'static str> {
    const BAD: &str = "bad validity time";
    let digits = match (tag, body) {
        (UTC_TIME, [digits @ .., b'Z']) if digits.len() == 12 => digits,
        (GENERALIZED_TIME, [digits @ .., b'Z']) if digits.len() == 14 => digits,
        _ => return Err(BAD),
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    let number = |d: &[u8]| d.iter().fold(0i64, |n, &b| n * 10 + i64::from(b - b'0'));
    let (year, rest) = if tag == UTC_TIME {
        let yy = number(&digits[..2]);
        (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
    } else {
        (number(&digits[..4]), &digits[4..])
    };
    let (month, day) = (number(&rest[0..2]), number(&rest[2..4]));
    let (hour, minute, second) = (
        number(&rest[4..6]),
        number(&rest[6..8]),
        number(&rest[8..10]),
    );
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(BAD);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn unix_now() -> i64 {
    unix_seconds(SystemTime::now())
}

fn system_time(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
    .unwrap_or(UNIX_EPOCH)
}

/// `2020-01-02 00:00:00 UTC`.
fn utc(t: impl Into<UtcTime>) -> String {
    let seconds = t.into().0;
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let in_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// Seconds since the Unix epoch, for [`utc`].
struct UtcTime(i64);

impl From<i64> for UtcTime {
    fn from(seconds: i64) -> Self {
        UtcTime(seconds)
    }
}

impl From<SystemTime> for UtcTime {
    fn from(t: SystemTime) -> Self {
        UtcTime(unix_seconds(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use testcerts::{Ca, Issued, Validity};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// Every async test finishes within this or fails.
    const BOUND: Duration = Duration::from_secs(20);

    async fn bounded<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(BOUND, f)
            .await
            .expect("test took too long")
    }

    fn files_of((cert, key): (PathBuf, PathBuf)) -> TlsFiles {
        TlsFiles { cert, key }
    }

    fn leaf_of(issued: &Issued) -> CertificateDer<'static> {
        CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    /// A TLS echo server on loopback; runs until the test's runtime ends.
    async fn serve(certs: &Arc<Certs>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(certs.server_config());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).await.is_err()
                                    || tls.flush().await.is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn client_config(
        ca: &Ca,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for ca_cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            roots.add(ca_cert.unwrap()).unwrap();
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Every connection is a full handshake, so it shows the certificate
        // served at that moment.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

    async fn connect(
        addr: SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        name: &str,
    ) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await
            .unwrap()
    }

    /// Send `msg` and read the echo.
    async fn exchange(stream: &mut TlsStream<TcpStream>, msg: &[u8]) {
        stream.write_all(msg).await.unwrap();
        stream.flush().await.unwrap();
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }

    fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
        stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    fn refused(files: TlsFiles, names: Vec<String>) -> String {
        let e = Certs::load(files, names).expect_err("should be refused");
        let message = e.to_string();
        assert!(!message.contains('\n'), "{message}");
        message
    }

    #[test]
    fn current_cert_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        let issued = ca.issue(&["localhost", "127.0.0.1", "::1"], Validity::Current);
        let files = files_of(issued.write(dir.path(), "srv"));
        let certs = Certs::load(
            files.clone(),
            names(&["localhost", "127.0.0.1", "[::1]", "::1"]),
        )
        .unwrap();
        assert_eq!(certs.files(), &files);
        let line = certs.describe();
        assert!(!line.contains('\n'));
        for part in [
            "localhost, 127.0.0.1, ::1",
            files.cert.to_str().unwrap(),
            "valid until 20",
            " UTC",
        ] {
            assert!(line.contains(part), "{line:?} lacks {part:?}");
        }
        assert!(format!("{certs:?}").contains("localhost"));
        let config = certs.server_config();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(certs.current_key().cert[0], leaf_of(&issued));
        // leaf then CA
        assert_eq!(certs.current_key().cert.len(), 2);
    }

    #[tokio::test]
    async fn handshake() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let ca = Ca::new("test CA");
            let issued = ca.issue(&["localhost", "127.0.0.1"], Validity::Current);
            let certs = Certs::load(
                files_of(issued.write(dir.path(), "srv")),
                names(&["localhost"]),
            )
            .unwrap();
            let addr = serve(&certs).await;
            for (versions, expected) in [
                (
                    &[&rustls::version::TLS13][..],
                    rustls::ProtocolVersion::TLSv1_3,
                ),
                (
                    &[&rustls::version::TLS12][..],
                    rustls::ProtocolVersion::TLSv1_2,
                ),
            ] {
                let config = client_config(&ca, versions);
                for name in ["localhost", "127.0.0.1"] {
                    let mut stream = connect(addr, &config, name).await;
                    let (_, conn) = stream.get_ref();
                    assert_eq!(conn.protocol_version(), Some(expected));
                    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
                    assert_eq!(peer_leaf(&stream), leaf_of(&issued));
                    exchange(&mut stream, b"GET / HTTP/1.1\r\n\r\n").await;
                    exchange(&mut stream, &[7u8; 5000]).await;
                }
            }
        })
        .await;
    }

    #[test]
    fn expired_refused() {
        let dir = tempfile::tempdir().unwrap();
        let issued = Ca::new("test CA").issue(&["localhost"], Validity::Expired);
        let files = files_of(issued.write(dir.path(), "old"));
        let message = refused(files.clone(), vec![]);
        let expected = format!("TLS certificate {}: expired on ", files.cert.display());
        assert!(message.starts_with(&expected), "{message}");
        assert!(message.ends_with(" UTC"), "{message}");
    }

    #[test]
    fn not_yet_valid_refused() {
        let dir = tempfile::tempdir().unwrap();
        let issued = Ca::new("test CA").issue(&["localhost"], Validity::NotYetValid);
        let files = files_of(issued.write(dir.path(), "new"));
        let message = refused(files.clone(), vec![]);
        let expected = format!("TLS certificate {}: not valid yet", files.cert.display());
        assert!(message.starts_with(&expected), "{message}");
    }

    #[test]
    fn key_of_another_cert_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        let (cert, _) = ca
            .issue(&["localhost"], Validity::Current)
            .write(dir.path(), "a");
        let (_, key) = ca
            .issue(&["localhost"], Validity::Current)
            .write(dir.path(), "b");
        let message = refused(
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            },
            vec![],
        );
        assert_eq!(
            message,
            format!(
                "TLS key {} does not match the certificate {}",
                key.display(),
                cert.display()
            )
        );
    }

    #[test]
    fn name_not_covered_refused() {
        let dir = tempfile::tempdir().unwrap();
        let issued = Ca::new("test CA").issue(&["localhost", "10.0.0.1"], Validity::Current);
        let files = files_of(issued.write(dir.path(), "srv"));
        let message = refused(files.clone(), names(&["mirror.example.org"]));
        assert_eq!(
            message,
            format!(
                "TLS certificate {}: not valid for mirror.example.org (it names: localhost, 10.0.0.1)",
                files.cert.display()
            )
        );
        let message = refused(files.clone(), names(&["localhost", "10.0.0.2"]));
        assert!(message.contains("not valid for 10.0.0.2"), "{message}");
        let message = refused(files, names(&["not a host!"]));
        assert!(message.contains("\"not a host!\""), "{message}");
    }

    #[test]
    fn garbage_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = Ca::new("test CA")
            .issue(&["localhost"], Validity::Current)
            .write(dir.path(), "srv");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "this is not PEM at all\n\0\u{1}\u{2}").unwrap();

        let message = refused(
            TlsFiles {
                cert: garbage.clone(),
                key: key.clone(),
            },
            vec![],
        );
        assert_eq!(
            message,
            format!(
                "TLS certificate {}: no PEM certificate in it",
                garbage.display()
            )
        );

        let message = refused(
            TlsFiles {
                cert: cert.clone(),
                key: garbage.clone(),
            },
            vec![],
        );
        assert_eq!(
            message,
            format!(
                "TLS key {}: no private key (PKCS#8, PKCS#1 or SEC1 PEM) in it",
                garbage.display()
            )
        );
        // The certificate file holds no key.
        let message = refused(
            TlsFiles {
                cert: cert.clone(),
                key: cert.clone(),
            },
            vec![],
        );
        assert!(
            message.starts_with(&format!("TLS key {}: no private key", cert.display())),
            "{message}"
        );

        // PEM armour around bytes that are not base64, or not a certificate.
        let bad_base64 = dir.path().join("bad64.pem");
        std::fs::write(
            &bad_base64,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let message = refused(
            TlsFiles {
                cert: bad_base64.clone(),
                key: key.clone(),
            },
            vec![],
        );
        assert!(
            message.starts_with(&format!(
                "TLS certificate {}: bad PEM",
                bad_base64.display()
            )),
            "{message}"
        );
        let not_der = dir.path().join("notder.pem");
        std::fs::write(
            &not_der,
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let message = refused(
            TlsFiles {
                cert: not_der.clone(),
                key: key.clone(),
            },
            vec![],
        );
        assert!(
            message.starts_with(&format!(
                "TLS certificate {}: not a valid X.509 certificate",
                not_der.display()
            )),
            "{message}"
        );
        let bad_key = dir.path().join("badkey.pem");
        std::fs::write(
            &bad_key,
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let message = refused(
            TlsFiles {
                cert,
                key: bad_key.clone(),
            },
            vec![],
        );
        assert!(
            message.starts_with(&format!(
                "TLS key {}: not a usable private key",
                bad_key.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn missing_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = Ca::new("test CA")
            .issue(&["localhost"], Validity::Current)
            .write(dir.path(), "srv");
        let missing = dir.path().join("missing.pem");
        let message = refused(
            TlsFiles {
                cert: missing.clone(),
                key,
            },
            vec![],
        );
        assert!(
            message.starts_with(&format!(
                "TLS certificate {}: cannot read it: ",
                missing.display()
            )),
            "{message}"
        );
        assert!(message.contains("No such file"), "{message}");
        let message = refused(
            TlsFiles {
                cert,
                key: missing.clone(),
            },
            vec![],
        );
        assert!(
            message.starts_with(&format!("TLS key {}: cannot read it: ", missing.display())),
            "{message}"
        );
        assert!(message.contains("No such file"), "{message}");
    }

    #[tokio::test]
    async fn reload_swaps_for_new_handshakes_only() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let ca = Ca::new("test CA");
            let first = ca.issue(&["localhost"], Validity::Current);
            let files = files_of(first.write(dir.path(), "srv"));
            let certs = Certs::load(files.clone(), names(&["localhost"])).unwrap();
            let addr = serve(&certs).await;
            let config = client_config(&ca, &[&rustls::version::TLS13]);

            let mut before = connect(addr, &config, "localhost").await;
            exchange(&mut before, b"before").await;
            assert_eq!(peer_leaf(&before), leaf_of(&first));

            let second = ca.issue(&["localhost"], Validity::Current);
            second.write(dir.path(), "srv");
            assert_eq!(certs.reload().unwrap(), Reloaded::Changed);
            let mut after = connect(addr, &config, "localhost").await;
            assert_eq!(peer_leaf(&after), leaf_of(&second));
            exchange(&mut after, b"after").await;
            // The connection opened before still works.
            exchange(&mut before, b"still there").await;

            assert_eq!(certs.reload().unwrap(), Reloaded::Unchanged);

            std::fs::write(&files.key, "garbage").unwrap();
            let e = certs.reload().unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("TLS key {}: no private key", files.key.display())),
                "{e}"
            );
            let mut kept = connect(addr, &config, "localhost").await;
            assert_eq!(peer_leaf(&kept), leaf_of(&second));
            exchange(&mut kept, b"kept").await;
            exchange(&mut before, b"and still").await;

            // An expired renewal is refused too.
            ca.issue(&["localhost"], Validity::Expired)
                .write(dir.path(), "srv");
            assert!(matches!(certs.reload(), Err(TlsError::Expired { .. })));
            let kept = connect(addr, &config, "localhost").await;
            assert_eq!(peer_leaf(&kept), leaf_of(&second));
        })
        .await;
    }

    #[tokio::test]
    async fn watch_follows_file_changes() {
        bounded(async {
            // certbot's layout: live/ symlinks into archive/, swapped on renewal.
            let dir = tempfile::tempdir().unwrap();
            let archive = dir.path().join("archive");
            let live = dir.path().join("live");
            std::fs::create_dir(&archive).unwrap();
            std::fs::create_dir(&live).unwrap();
            let link = |stem: &str| {
                for (target, name) in [
                    (format!("{stem}.crt.pem"), "fullchain.pem"),
                    (format!("{stem}.key.pem"), "privkey.pem"),
                ] {
                    let tmp = live.join(format!("{name}.tmp"));
                    std::os::unix::fs::symlink(archive.join(target), &tmp).unwrap();
                    std::fs::rename(&tmp, live.join(name)).unwrap();
                }
            };
            let ca = Ca::new("test CA");
            let first = ca.issue(&["localhost"], Validity::Current);
            first.write(&archive, "1");
            link("1");
            let certs = Certs::load(
                TlsFiles {
                    cert: live.join("fullchain.pem"),
                    key: live.join("privkey.pem"),
                },
                names(&["localhost"]),
            )
            .unwrap();
            let addr = serve(&certs).await;
            let watcher = tokio::spawn(watch(Arc::clone(&certs), Duration::from_millis(50)));

            let wait_for = |leaf: CertificateDer<'static>| {
                let certs = Arc::clone(&certs);
                async move {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    while certs.current_key().cert[0] != leaf {
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "the watcher did not pick up the new certificate within 5 s"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };

            // Renewal by swapping symlinks.
            let second = ca.issue(&["localhost"], Validity::Current);
            second.write(&archive, "2");
            link("2");
            wait_for(leaf_of(&second)).await;
            let config = client_config(&ca, &[&rustls::version::TLS13]);
            let stream = connect(addr, &config, "localhost").await;
            assert_eq!(peer_leaf(&stream), leaf_of(&second));

            // A broken renewal is not taken; once fixed, it is.
            std::fs::write(archive.join("3.crt.pem"), "not yet").unwrap();
            std::fs::write(archive.join("3.key.pem"), "not yet").unwrap();
            link("3");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(certs.current_key().cert[0], leaf_of(&second));
            let third = ca.issue(&["localhost"], Validity::Current);
            third.write(&archive, "3"); // in place: same inodes
            wait_for(leaf_of(&third)).await;

            watcher.abort();
        })
        .await;
    }

    #[test]
    fn stamps_notice_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        let files = files_of(
            ca.issue(&["localhost"], Validity::Current)
                .write(dir.path(), "srv"),
        );
        let certs = Certs::load(files.clone(), vec![]).unwrap();
        assert!(certs.files_unchanged());
        // Past the file system's timestamp granularity: the rewrite keeps the
        // inode and may keep the length.
        std::thread::sleep(Duration::from_millis(50));
        ca.issue(&["localhost"], Validity::Current)
            .write(dir.path(), "srv");
        assert!(!certs.files_unchanged());
        assert_eq!(certs.reload().unwrap(), Reloaded::Changed);
        assert!(certs.files_unchanged());
        std::fs::remove_file(&files.key).unwrap();
        assert!(!certs.files_unchanged());
        assert!(matches!(certs.reload(), Err(TlsError::ReadKey { .. })));
        // The failed attempt is remembered: no change, no retry.
        assert!(certs.files_unchanged());
    }

    #[test]
    fn times() {
        let t = |tag, s: &str| parse_time((tag, s.as_bytes()));
        assert_eq!(t(UTC_TIME, "700101000000Z"), Ok(0));
        assert_eq!(t(UTC_TIME, "200102000000Z"), Ok(1_577_923_200));
        assert_eq!(t(GENERALIZED_TIME, "20200102000000Z"), Ok(1_577_923_200));
        assert_eq!(t(UTC_TIME, "491231235959Z"), Ok(2_524_607_999));
        assert_eq!(t(UTC_TIME, "500101000000Z"), Ok(-631_152_000));
        assert_eq!(t(GENERALIZED_TIME, "99991231235959Z"), Ok(253_402_300_799));
        assert_eq!(t(GENERALIZED_TIME, "20240229120000Z"), Ok(1_709_208_000));
        for bad in [
            (UTC_TIME, "20010200000Z"),
            (UTC_TIME, "2001020000000"),
            (UTC_TIME, "200230000000Z"),
            (UTC_TIME, "230229000000Z"),
            (UTC_TIME, "201301000000Z"),
            (UTC_TIME, "200101240000Z"),
            (UTC_TIME, "20010100000aZ"),
            (GENERALIZED_TIME, "200102000000Z"),
            (GENERALIZED_TIME, "20200102000000.5Z"),
            (INTEGER, "200102000000Z"),
        ] {
            assert!(t(bad.0, bad.1).is_err(), "{bad:?}");
        }
        assert_eq!(utc(1_577_923_200i64), "2020-01-02 00:00:00 UTC");
        assert_eq!(utc(-1i64), "1969-12-31 23:59:59 UTC");
        assert_eq!(utc(253_402_300_799i64), "9999-12-31 23:59:59 UTC");
        assert_eq!(utc(system_time(1_709_208_000)), "2024-02-29 12:00:00 UTC");
        for days in [-800_000i64, -1, 0, 1, 59, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn der_reader_refuses_truncation() {
        let issued = Ca::new("test CA").issue(&["localhost", "::1"], Validity::Current);
        let leaf = leaf_of(&issued);
        let info = LeafInfo::parse(&leaf).unwrap();
        assert_eq!(info.names, vec!["localhost", "::1"]);
        assert!(info.not_before < unix_now() && unix_now() < info.not_after);
        for cut in [0, 1, 2, 10, leaf.len() / 2, leaf.len() - 1] {
            assert!(LeafInfo::parse(&leaf[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = leaf.to_vec();
        trailing.push(0);
        assert!(LeafInfo::parse(&trailing).is_err());
    }
}
