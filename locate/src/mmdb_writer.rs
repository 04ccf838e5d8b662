//! A small writer of MaxMind DB (format 2.0, <https://maxmind.github.io/MaxMind-DB/>) files.
//!
//! It exists so that tests — this crate's, the server's end-to-end tests, and the lab — can
//! make the databases an operator would otherwise download from MaxMind or DB-IP: the
//! `maxminddb` crate only reads, and real databases are too large (and too licensed) to
//! commit. It holds everything in memory and writes the simplest valid layout: an IPv6 tree
//! with 32-bit records, IPv4 networks under `::/96` (where readers look for them) and again
//! under their IPv4-mapped alias `::ffff:0:0/96`, and one data record per distinct value.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Netblock;

/// What a network maps to, written in GeoLite2's layout:
/// `{"autonomous_system_number": u32, "autonomous_system_organization": str}` (GeoLite2-ASN)
/// and/or `{"country": {"iso_code": str}, "continent": {"code": str}}` (GeoLite2-Country).
/// Fields left `None` are not written, so a record can mimic either file or a combined one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub asn: Option<u32>,
    pub as_org: Option<String>,
    pub country: Option<String>,
    pub continent: Option<String>,
}

/// A database being assembled: networks and their records, written out by [`Writer::write`].
#[derive(Debug, Clone)]
pub struct Writer {
    database_type: String,
    /// In insertion order; (first address in the 128-bit space, prefix length, record).
    networks: Vec<(u128, u8, Record)>,
}

/// Bits per search-tree record: the widest the format allows, so no size check is needed
/// below four billion nodes plus data bytes.
const RECORD_SIZE: u16 = 32;
const METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";

// Data-section type numbers (spec, "Output Data Section").
const T_STRING: u8 = 2;
const T_UINT16: u8 = 5;
const T_UINT32: u8 = 6;
const T_MAP: u8 = 7;
const T_UINT64: u8 = 9;
const T_ARRAY: u8 = 11;

/// A search-tree record while the tree is built.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Empty,
    Node(usize),
    /// An offset into the data section.
    Data(usize),
}

impl Writer {
    /// An empty database whose metadata says `database_type` (e.g. "GeoLite2-ASN").
    pub fn new(database_type: &str) -> Writer {
        Writer {
            database_type: database_type.to_string(),
            networks: Vec::new(),
        }
    }

    /// Map `net` to `record`. Where networks nest the longest prefix wins whatever the
    /// insertion order; the same network twice keeps the later record.
    pub fn insert(&mut self, net: Netblock, record: Record) {
        let (bits, len) = net.bits_and_len();
        if net.is_v4() {
            // Readers look IPv4 up under ::/96; ::ffff:0:0/96 serves IPv4-mapped addresses.
            self.networks
                .push((bits & 0xffff_ffff, len, record.clone()));
        }
        self.networks.push((bits, len, record));
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut data = Vec::new();
        let mut offsets: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut nodes: Vec<[Slot; 2]> = vec![[Slot::Empty; 2]];
        // Shorter prefixes first, so a longer one only ever splits a shorter one's record.
        let mut order: Vec<&(u128, u8, Record)> = self.networks.iter().collect();
        order.sort_by_key(|(_, len, _)| *len);
        for (bits, len, record) in order {
            let encoded = encode_record(record);
            let offset = *offsets.entry(encoded).or_insert_with_key(|bytes| {
                data.extend_from_slice(bytes);
                data.len() - bytes.len()
            });
            if *len == 0 {
                nodes[0] = [Slot::Data(offset); 2];
                continue;
            }
            let mut node = 0;
            for depth in 0..usize::from(*len) {
                let bit = ((bits >> (127 - depth)) & 1) as usize;
                if depth + 1 == usize::from(*len) {
                    nodes[node][bit] = Slot::Data(offset);
                    break;
                }
                node = match nodes[node][bit] {
                    Slot::Node(next) => next,
                    split @ (Slot::Empty | Slot::Data(_)) => {
                        nodes.push([split; 2]);
                        nodes[node][bit] = Slot::Node(nodes.len() - 1);
                        nodes.len() - 1
                    }
                };
            }
        }

        let node_count = nodes.len() as u64;
        let mut out = Vec::with_capacity(nodes.len() * 8 + 16 + data.len() + 256);
        for slot in nodes.iter().flatten() {
            let value = match *slot {
                Slot::Empty => node_count,
                Slot::Node(n) => n as u64,
                Slot::Data(offset) => node_count + 16 + offset as u64,
            };
            let value = u32::try_from(value).expect("a test database under 4 GB");
            out.extend_from_slice(&value.to_be_bytes());
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&data);
        out.extend_from_slice(METADATA_MARKER);
        self.encode_metadata(&mut out, node_count);
        out
    }

    /// Write the file at `path`: to a temporary file beside it, then renamed over it, so a
    /// reader reloading on change never sees half a database.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        std::fs::write(&tmp, self.to_bytes())?;
        std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    fn encode_metadata(&self, out: &mut Vec<u8>, node_count: u64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        put_ctrl(out, T_MAP, 9);
        put_str(out, "binary_format_major_version");
        put_uint(out, T_UINT16, 2);
        put_str(out, "binary_format_minor_version");
        put_uint(out, T_UINT16, 0);
        put_str(out, "build_epoch");
        put_uint(out, T_UINT64, now);
        put_str(out, "database_type");
        put_str(out, &self.database_type);
        put_str(out, "description");
        put_ctrl(out, T_MAP, 1);
        put_str(out, "en");
        put_str(
            out,
            &format!("{} (mirrorswarm test data)", self.database_type),
        );
        put_str(out, "ip_version");
        put_uint(out, T_UINT16, 6);
        put_str(out, "languages");
        put_ctrl(out, T_ARRAY, 1);
        put_str(out, "en");
        put_str(out, "node_count");
        put_uint(out, T_UINT32, node_count);
        put_str(out, "record_size");
        put_uint(out, T_UINT16, RECORD_SIZE.into());
    }
}

/// `record` as one data-section map.
fn encode_record(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    let entries = [
        record.asn.is_some(),
        record.as_org.is_some(),
        record.country.is_some(),
        record.continent.is_some(),
    ];
    put_ctrl(&mut out, T_MAP, entries.iter().filter(|e| **e).count());
    if let Some(asn) = record.asn {
        put_str(&mut out, "autonomous_system_number");
        put_uint(&mut out, T_UINT32, asn.into());
    }
    if let Some(org) = &record.as_org {
        put_str(&mut out, "autonomous_system_organization");
        put_str(&mut out, org);
    }
    for (outer, inner, value) in [
        ("country", "iso_code", &record.country),
        ("continent", "code", &record.continent),
    ] {
        if let Some(value) = value {
            put_str(&mut out, outer);
            put_ctrl(&mut out, T_MAP, 1);
            put_str(&mut out, inner);
            put_str(&mut out, value);
        }
    }
    out
}

/// A control byte: type in the top three bits (types past 7 as 0 plus an extended-type
/// byte), then the size in the low five bits, growing into 1–3 more bytes past 28.
fn put_ctrl(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (low, extra, extra_len) = match size {
        0..29 => (size as u8, 0, 0),
        29..285 => (29, size - 29, 1),
        285..65_821 => (30, size - 285, 2),
        _ => {
            assert!(size - 65_821 < 1 << 24, "a field under 16 MB");
            (31, size - 65_821, 3)
        }
    };
    if kind > 7 {
        out.push(low);
        out.push(kind - 7);
    } else {
        out.push(kind << 5 | low);
    }
    out.extend_from_slice(&(extra as u32).to_be_bytes()[4 - extra_len..]);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_ctrl(out, T_STRING, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// An unsigned integer in as few big-endian bytes as hold it (zero in none).
fn put_uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = (value.leading_zeros() / 8) as usize;
    put_ctrl(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn the_written_file_verifies_and_nests() {
        let mut w = Writer::new("Test-Combined");
        let rec = |asn: u32, cc: &str| Record {
            asn: Some(asn),
            as_org: Some(format!(
                "AS {asn} with a long enough name to need a size byte"
            )),
            country: Some(cc.into()),
            continent: Some("EU".into()),
        };
        // More specific first: the order must not matter.
        w.insert("10.1.2.0/24".parse().unwrap(), rec(3, "FR"));
        w.insert("10.0.0.0/8".parse().unwrap(), rec(1, "DE"));
        w.insert("10.1.0.0/16".parse().unwrap(), rec(2, "NL"));
        w.insert("2001:db8::/32".parse().unwrap(), rec(4_000_000_000, "SE"));
        w.insert("::/0".parse().unwrap(), Record::default());
        let reader = maxminddb::Reader::from_source(w.to_bytes()).unwrap();
        reader.verify().unwrap();
        assert_eq!(reader.metadata().database_type, "Test-Combined");
        let asn = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            let r = reader.lookup(ip).unwrap();
            r.decode_path::<u32>(&maxminddb::path!["autonomous_system_number"])
                .unwrap()
        };
        assert_eq!(asn("10.1.2.3"), Some(3));
        assert_eq!(asn("::ffff:10.1.2.3"), Some(3));
        assert_eq!(asn("10.1.3.3"), Some(2));
        assert_eq!(asn("10.9.3.3"), Some(1));
        assert_eq!(asn("2001:db8:5::1"), Some(4_000_000_000));
        assert_eq!(asn("11.0.0.1"), None, "::/0 has a record without an AS");
        // Strings long enough to need one, two and three size bytes.
        let mut w = Writer::new("Test-Sizes");
        let sizes = [0, 28, 29, 284, 285, 65_820, 65_821, 70_000];
        for (i, size) in sizes.into_iter().enumerate() {
            let org = Record {
                as_org: Some("x".repeat(size)),
                ..Record::default()
            };
            w.insert(format!("192.0.2.{i}/32").parse().unwrap(), org);
        }
        let reader = maxminddb::Reader::from_source(w.to_bytes()).unwrap();
        reader.verify().unwrap();
        for (i, size) in sizes.into_iter().enumerate() {
            let ip: IpAddr = format!("192.0.2.{i}").parse().unwrap();
            let org: Option<&str> = reader
                .lookup(ip)
                .unwrap()
                .decode_path(&maxminddb::path!["autonomous_system_organization"])
                .unwrap();
            assert_eq!(org.map(str::len), Some(size));
        }
    }
}
