//! What the operator's MaxMind-format (.mmdb) databases say about an address: its AS number,
//! country and continent, the rungs of issue 35's proximity ladder ("customers go to
//! volunteers near them").
//!
//! MaxMind ships AS numbers (GeoLite2-ASN) and countries (GeoLite2-Country or -City) as
//! separate files, DB-IP and others as one, so a [`GeoDb`] reads any number of files and
//! takes each field from the first file that has it. Nothing is downloaded: the operator
//! keeps the files current (MaxMind's `geoipupdate`, a cron job), and [`GeoWatch`] notices a
//! new file and swaps it in, keeping the old database when the new one does not read.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use serde::Deserialize;

/// Where an address is, as far as the databases know; `None` where none of them says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Geo {
    /// `autonomous_system_number`.
    pub asn: Option<u32>,
    /// ISO 3166-1 alpha-2, upper case (`country.iso_code`, e.g. `DE`).
    pub country: Option<[u8; 2]>,
    /// Two-letter continent code, upper case (`continent.code`, e.g. `EU`).
    pub continent: Option<[u8; 2]>,
}

/// Why a database was not (re)loaded. Names the file: the admin reading the log has several.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a MaxMind database: {source}", path.display())]
    NotMmdb {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
}

/// One or more .mmdb files, read into memory, asked in order.
#[derive(Debug)]
pub struct GeoDb {
    files: Vec<(PathBuf, maxminddb::Reader<Vec<u8>>)>,
}

/// The few fields read from a record, borrowed from the database so a lookup allocates
/// nothing; everything else in the record is skipped. GeoLite2 and DB-IP share this layout.
#[derive(Deserialize)]
struct Raw<'a> {
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    country: Option<Country<'a>>,
    #[serde(borrow)]
    continent: Option<Continent<'a>>,
}

#[derive(Deserialize)]
struct Country<'a> {
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Continent<'a> {
    code: Option<&'a str>,
}

/// `code` if it is two ASCII letters, upper-cased; anything else is no answer.
fn two_letters(code: Option<&str>) -> Option<[u8; 2]> {
    match code?.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

impl GeoDb {
    /// Read and parse every file in `paths`; no files is a database that knows nothing.
    ///
    /// Only the structure is checked (metadata, tree size), not every record: a full
    /// verify of a 60 MB City database takes seconds, and a record that does not decode is
    /// answered as unknown anyway.
    pub fn open(paths: &[PathBuf]) -> Result<GeoDb, GeoError> {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let bytes = std::fs::read(path).map_err(|source| GeoError::Read {
                path: path.clone(),
                source,
            })?;
            let reader =
                maxminddb::Reader::from_source(bytes).map_err(|source| GeoError::NotMmdb {
                    path: path.clone(),
                    source,
                })?;
            files.push((path.clone(), reader));
        }
        Ok(GeoDb { files })
    }

    /// What the databases say about `ip`: each field from the first file that gives it.
    pub fn lookup(&self, ip: IpAddr) -> Geo {
        // A dual-stack listener sees IPv4 customers as ::ffff:a.b.c.d; ask as IPv4, which
        // every database (IPv4-only ones too) answers.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut geo = Geo::default();
        for (_, reader) in &self.files {
            if geo.asn.is_some() && geo.country.is_some() && geo.continent.is_some() {
                break;
            }
            // An IPv6 address in an IPv4-only database, or a record that does not decode:
            // this file does not know.
            let Ok(Some(raw)) = reader.lookup(ip).and_then(|r| r.decode::<Raw>()) else {
                continue;
            };
            geo.asn = geo.asn.or(raw.autonomous_system_number);
            geo.country = geo
                .country
                .or_else(|| two_letters(raw.country.and_then(|c| c.iso_code)));
            geo.continent = geo
                .continent
                .or_else(|| two_letters(raw.continent.and_then(|c| c.code)));
        }
        geo
    }

    /// Each file with the database type its metadata gives (e.g. `GeoLite2-ASN`), for logs.
    pub fn files(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.files
            .iter()
            .map(|(path, r)| (path.as_path(), r.metadata().database_type.as_str()))
    }
}

/// A file's identity as `stat` gives it: a rename over it changes the inode, a rewrite in
/// place the length or modification time. `None` when it cannot be stat'ed.
type Fingerprint = Option<(u64, Option<SystemTime>, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.len(), meta.modified().ok(), inode))
}

/// The current [`GeoDb`], reopened when one of its files changes. The server calls
/// [`check`](GeoWatch::check) every few seconds from a background thread; request handlers
/// take [`current`](GeoWatch::current), which never waits on a reload.
#[derive(Debug)]
pub struct GeoWatch {
    paths: Vec<PathBuf>,
    db: RwLock<Arc<GeoDb>>,
    /// The fingerprints last acted on (loaded, or failed to load); also serialises checks.
    seen: Mutex<Vec<Fingerprint>>,
}

impl GeoWatch {
    /// Open the files; unlike a reload, there is no previous database to fall back on.
    pub fn open(paths: &[PathBuf]) -> Result<GeoWatch, GeoError> {
        // Fingerprint before reading: a change during the read is then seen by the next check.
        let seen = paths.iter().map(|p| fingerprint(p)).collect();
        let db = GeoDb::open(paths)?;
        Ok(GeoWatch {
            paths: paths.to_vec(),
            db: RwLock::new(Arc::new(db)),
            seen: Mutex::new(seen),
        })
    }

    /// The database to ask now.
    pub fn current(&self) -> Arc<GeoDb> {
        Arc::clone(&self.db.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reopen all files if any changed since the last check: `Ok(true)` when a new database
    /// is in use, `Ok(false)` when nothing changed. On an error the previous database stays
    /// in use; the error is returned once per change of the files, not at every check, so a
    /// bad file is logged once and retried when it is replaced.
    pub fn check(&self) -> Result<bool, GeoError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now: Vec<Fingerprint> = self.paths.iter().map(|p| fingerprint(p)).collect();
        if now == *seen {
            return Ok(false);
        }
        *seen = now;
        let db = GeoDb::open(&self.paths)?;
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(db);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmdb_writer::{Record, Writer};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cc(s: &str) -> Option<[u8; 2]> {
        let b = s.as_bytes();
        Some([b[0], b[1]])
    }

    fn asn_rec(asn: u32) -> Record {
        Record {
            asn: Some(asn),
            as_org: Some(format!("Example AS{asn}")),
            ..Record::default()
        }
    }

    fn place(country: &str, continent: &str) -> Record {
        Record {
            country: Some(country.into()),
            continent: Some(continent.into()),
            ..Record::default()
        }
    }

    fn write(path: &Path, kind: &str, nets: &[(&str, Record)]) {
        let mut w = Writer::new(kind);
        for (net, rec) in nets {
            w.insert(net.parse().unwrap(), rec.clone());
        }
        w.write(path).unwrap();
    }

    #[test]
    fn lookups_find_the_longest_network_in_both_families() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("combined.mmdb");
        let both = |asn: u32, c: &str, k: &str| Record {
            asn: Some(asn),
            ..place(c, k)
        };
        write(
            &path,
            "DBIP-Country-ASN-Lite",
            &[
                ("192.0.2.0/24", both(64500, "DE", "EU")),
                ("192.0.2.128/25", both(64501, "NL", "EU")),
                ("198.51.100.0/24", both(64502, "US", "NA")),
                ("2001:db8::/32", both(64510, "JP", "AS")),
                ("2001:db8:1::/48", both(64511, "KR", "AS")),
                // Not two letters: ignored.
                ("203.0.113.0/24", both(64503, "DEU", "E1")),
            ],
        );
        let db = GeoDb::open(std::slice::from_ref(&path)).unwrap();
        assert_eq!(
            db.files().collect::<Vec<_>>(),
            [(path.as_path(), "DBIP-Country-ASN-Lite")]
        );
        let de = Geo {
            asn: Some(64500),
            country: cc("DE"),
            continent: cc("EU"),
        };
        // IPv4 in an IPv6 database, plain and as a dual-stack listener sees it.
        assert_eq!(db.lookup(ip("192.0.2.1")), de);
        assert_eq!(db.lookup(ip("::ffff:192.0.2.1")), de);
        assert_eq!(db.lookup(ip("192.0.2.200")).country, cc("NL"));
        assert_eq!(db.lookup(ip("198.51.100.7")).continent, cc("NA"));
        assert_eq!(db.lookup(ip("2001:db8:2::1")).asn, Some(64510));
        assert_eq!(db.lookup(ip("2001:db8:1:2::1")).country, cc("KR"));
        assert_eq!(
            db.lookup(ip("203.0.113.9")),
            Geo {
                asn: Some(64503),
                ..Geo::default()
            }
        );
        assert_eq!(db.lookup(ip("8.8.8.8")), Geo::default());
        assert_eq!(db.lookup(ip("2001:db9::1")), Geo::default());
        assert_eq!(
            GeoDb::open(&[]).unwrap().lookup(ip("192.0.2.1")),
            Geo::default()
        );
    }

    #[test]
    fn separate_asn_and_country_files_merge_first_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let asn = dir.path().join("GeoLite2-ASN.mmdb");
        let country = dir.path().join("GeoLite2-Country.mmdb");
        write(
            &asn,
            "GeoLite2-ASN",
            &[
                ("192.0.2.0/24", asn_rec(64500)),
                ("2001:db8::/32", asn_rec(64510)),
            ],
        );
        write(
            &country,
            "GeoLite2-Country",
            &[
                (
                    "192.0.2.0/24",
                    Record {
                        asn: Some(1),
                        ..place("fr", "eu")
                    },
                ),
                ("198.51.100.0/24", place("BR", "SA")),
            ],
        );
        let db = GeoDb::open(&[asn, country]).unwrap();
        assert_eq!(
            db.lookup(ip("192.0.2.9")),
            Geo {
                asn: Some(64500),
                country: cc("FR"),
                continent: cc("EU"),
            },
            "the ASN file's AS number wins over the country file's"
        );
        assert_eq!(
            db.lookup(ip("198.51.100.9")),
            Geo {
                asn: None,
                country: cc("BR"),
                continent: cc("SA"),
            }
        );
        assert_eq!(db.lookup(ip("2001:db8::9")).asn, Some(64510));
    }

    #[test]
    fn files_that_are_not_databases_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.mmdb");
        write(&good, "GeoLite2-ASN", &[("192.0.2.0/24", asn_rec(64500))]);
        let garbage = dir.path().join("garbage.mmdb");
        std::fs::write(
            &garbage,
            (0..4096u32)
                .map(|i| (i * 7919 % 251) as u8)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let truncated = dir.path().join("truncated.mmdb");
        let bytes = std::fs::read(&good).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() - 40]).unwrap();
        let missing = dir.path().join("missing.mmdb");

        for bad in [&garbage, &truncated] {
            let e = GeoDb::open(&[good.clone(), bad.clone()]).unwrap_err();
            assert!(matches!(e, GeoError::NotMmdb { .. }), "{e}");
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("{} is not a MaxMind database: ", bad.display())),
                "{text}"
            );
        }
        let e = GeoDb::open(std::slice::from_ref(&missing)).unwrap_err();
        assert!(matches!(e, GeoError::Read { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
    }

    #[test]
    fn the_watch_swaps_in_a_changed_file_and_keeps_the_old_one_when_it_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("asn.mmdb");
        write(&path, "GeoLite2-ASN", &[("192.0.2.0/24", asn_rec(64500))]);
        let watch = GeoWatch::open(std::slice::from_ref(&path)).unwrap();
        let asn = |w: &GeoWatch| w.current().lookup(ip("192.0.2.1")).asn;
        assert_eq!(asn(&watch), Some(64500));
        assert!(!watch.check().unwrap(), "nothing changed");

        let before = watch.current();
        write(&path, "GeoLite2-ASN", &[("192.0.2.0/24", asn_rec(64999))]);
        assert!(watch.check().unwrap());
        assert_eq!(asn(&watch), Some(64999));
        assert_eq!(
            before.lookup(ip("192.0.2.1")).asn,
            Some(64500),
            "a handler holding the old database keeps a consistent view"
        );
        assert!(!watch.check().unwrap());

        std::fs::write(&path, b"not a database at all").unwrap();
        let e = watch.check().unwrap_err();
        assert!(e.to_string().contains("is not a MaxMind database"), "{e}");
        assert_eq!(asn(&watch), Some(64999), "the previous database stays");
        assert!(!watch.check().unwrap(), "a bad file is reported once");

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(watch.check(), Err(GeoError::Read { .. })));
        assert_eq!(asn(&watch), Some(64999));

        write(&path, "GeoLite2-ASN", &[("192.0.2.0/24", asn_rec(65000))]);
        assert!(watch.check().unwrap(), "a repaired file is picked up");
        assert_eq!(asn(&watch), Some(65000));
    }
}
