//! The mirrorswarm extension: volunteers announce with extra `ms_*`
//! parameters describing their mirror, and sign the whole query.
//!
//! Signing covers the exact raw query bytes before a final
//! `&ms_sig=<64 lowercase hex>`, so the server must verify against the
//! query exactly as received, before any decoding. `ms_seq` lets the
//! server reject replays (it must increase per volunteer); that check
//! belongs to whoever keeps per-volunteer state, not to this module.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::query::{parse_decimal, percent_encode};

type HmacSha256 = Hmac<Sha256>;

/// Longest accepted volunteer id.
pub const MAX_VOLUNTEER_LEN: usize = 64;
/// Longest accepted public base URL, in bytes.
pub const MAX_URL_LEN: usize = 512;
/// Longest part a volunteer may announce (`ms_part`, decoded, bytes): a pattern set, not a
/// list of files, so a volunteer holding a million files still sends a few hundred bytes.
pub const MAX_PART_LEN: usize = 2048;
/// Longest list of netblocks a volunteer may declare (`ms_nets`, bytes): a campus's or a
/// company's few networks, not a routing table.
pub const MAX_NETS_LEN: usize = 1024;
/// Most URLs a volunteer may give beside its own (`ms_urls`): an `https://` one, one over
/// IPv6, one of each.
pub const MAX_OTHER_URLS: usize = 3;
/// Separator that introduces the signature; always the last parameter.
const SIG_PARAM: &str = "&ms_sig=";

/// The virtual torrent a repository's mirrors announce on.
pub fn mirror_info_hash(repo: &str) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(b"mirrorswarm-repo:");
    h.update(repo.as_bytes());
    h.finalize().into()
}

/// A volunteer's self-report, carried on its announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorReport {
    /// Volunteer id, `[A-Za-z0-9_-]{1,64}`.
    pub volunteer: String,
    /// Strictly increasing per volunteer; used against replays.
    pub seq: u64,
    /// Newest repository generation the mirror fully holds.
    pub generation: u64,
    /// Customer connections currently being served.
    pub customer_conns: u32,
    /// Connections currently used for syncing from upstream.
    pub sync_conns: u32,
    /// Recent upload rate in bytes per second.
    pub upload_bps: u64,
    /// Declared maximum concurrent customers, at least 1.
    pub capacity: u32,
    /// Public base URL, `http://` or `https://`.
    pub url: String,
    /// Recent upload rate of sync traffic to other volunteers, bytes/s (optional `ms_sbps`,
    /// 0 if absent).
    pub sync_bps: u64,
    /// The uplink customers and sync share, bytes/s, if the admin declared one (optional
    /// `ms_link`, 0: unknown).
    pub link_bps: u64,
    /// Its admin paused it: keep it registered, send it no customers (optional `ms_pause=1`).
    pub paused: bool,
    /// The part of the repository it holds, as its include and exclude patterns
    /// (`manifest::select::Selection`'s canonical text; optional `ms_part`, empty: all of
    /// it). The tracker checks only its length and encoding; the registry reads it.
    pub part: String,
    /// The networks it says it is inside, comma-separated netblocks (optional `ms_nets`,
    /// empty: none). The tracker checks only its length and characters; the registry reads
    /// it.
    pub nets: String,
    /// It serves only customers inside `nets` (optional `ms_priv=1`): a campus or company
    /// mirror.
    pub private: bool,
    /// The same files at other URLs (optional `ms_urls`, space-separated, at most
    /// [`MAX_OTHER_URLS`]): an `https://` URL beside an `http://` one, an IPv6 one beside an
    /// IPv4 one. Each is checked as `ms_url` is.
    pub other_urls: Vec<String>,
}

/// Why a mirror report or its signature framing was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    #[error("ms_vid must be 1-{MAX_VOLUNTEER_LEN} characters from A-Z a-z 0-9 _ -")]
    InvalidVolunteer,
    #[error("{0} must be a non-negative decimal integer in range")]
    InvalidNumber(&'static str),
    #[error("ms_cap must be at least 1")]
    ZeroCapacity,
    #[error("ms_url {0}")]
    InvalidUrl(&'static str),
    #[error("ms_part must be UTF-8 of at most {MAX_PART_LEN} bytes")]
    InvalidPart,
    #[error("ms_nets must be at most {MAX_NETS_LEN} bytes of netblocks separated by commas")]
    InvalidNets,
    #[error("ms_urls {0}")]
    InvalidOtherUrls(&'static str),
    #[error("missing ms_sig (it must be the last parameter)")]
    MissingSignature,
    #[error("ms_sig must be 64 lowercase hex characters")]
    MalformedSignature,
}

/// The report's parameter names, in [`MirrorReport`] field order. The last seven are
/// optional (older volunteers do not send them).
const FIELDS: [&str; 15] = [
    "ms_vid", "ms_seq", "ms_gen", "ms_cc", "ms_sc", "ms_up", "ms_cap", "ms_url", "ms_sbps",
    "ms_link", "ms_pause", "ms_part", "ms_nets", "ms_priv", "ms_urls",
];

/// Reads the mirror report from an announce's extra parameters.
///
/// `Ok(None)` when there is no `ms_vid` (a plain BitTorrent client). Once
/// `ms_vid` is present every field is required, each at most once. Other
/// `ms_*` names (including `ms_sig`) are ignored for forward compatibility.
pub fn parse_mirror_report(
    extra: &[(String, Vec<u8>)],
) -> Result<Option<MirrorReport>, MirrorError> {
    let mut values: [Option<&[u8]>; 15] = [None; 15];
    for (name, value) in extra {
        let Some((field, slot)) = FIELDS
            .iter()
            .zip(values.iter_mut())
            .find(|(f, _)| *f == name)
        else {
            continue;
        };
        if slot.is_some() {
            return Err(MirrorError::Duplicate(field));
        }
        *slot = Some(value);
    }
    let [vid, seq, generation, cc, sc, up, cap, url, sbps, link, pause, part, nets, private, urls] =
        values;
    let Some(vid) = vid else {
        return Ok(None);
    };

    let volunteer = parse_volunteer(vid)?;
    let seq = number(seq, "ms_seq")?;
    let generation = number(generation, "ms_gen")?;
    let customer_conns = number_u32(cc, "ms_cc")?;
    let sync_conns = number_u32(sc, "ms_sc")?;
    let upload_bps = number(up, "ms_up")?;
    let capacity = number_u32(cap, "ms_cap")?;
    if capacity == 0 {
        return Err(MirrorError::ZeroCapacity);
    }
    let url = parse_url(url.ok_or(MirrorError::Missing("ms_url"))?)?;
    let other_urls = match urls {
        None => Vec::new(),
        Some(raw) => parse_other_urls(raw)?,
    };
    let sync_bps = sbps.map_or(Ok(0), |v| number(Some(v), "ms_sbps"))?;
    let link_bps = link.map_or(Ok(0), |v| number(Some(v), "ms_link"))?;
    let paused = flag(pause, "ms_pause")?;
    let private = flag(private, "ms_priv")?;
    let nets = match nets {
        None => String::new(),
        Some(raw)
            if raw.len() <= MAX_NETS_LEN
                && raw
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || b".:/,".contains(b)) =>
        {
            String::from_utf8(raw.to_vec()).map_err(|_| MirrorError::InvalidNets)?
        }
        Some(_) => return Err(MirrorError::InvalidNets),
    };
    let part = match part {
        None => String::new(),
        Some(raw) if raw.len() <= MAX_PART_LEN => {
            String::from_utf8(raw.to_vec()).map_err(|_| MirrorError::InvalidPart)?
        }
        Some(_) => return Err(MirrorError::InvalidPart),
    };

    Ok(Some(MirrorReport {
        volunteer,
        seq,
        generation,
        customer_conns,
        sync_conns,
        upload_bps,
        capacity,
        url,
        sync_bps,
        link_bps,
        paused,
        part,
        nets,
        private,
        other_urls,
    }))
}

/// `ms_urls`: at most [`MAX_OTHER_URLS`] URLs separated by single spaces, each as `ms_url`.
fn parse_other_urls(raw: &[u8]) -> Result<Vec<String>, MirrorError> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for one in raw.split(|&b| b == b' ') {
        if out.len() == MAX_OTHER_URLS {
            return Err(MirrorError::InvalidOtherUrls("lists more than 3 URLs"));
        }
        let url = parse_url(one).map_err(|e| match e {
            MirrorError::InvalidUrl(why) => MirrorError::InvalidOtherUrls(why),
            other => other,
        })?;
        out.push(url);
    }
    Ok(out)
}

/// An optional `0`/`1` parameter.
fn flag(raw: Option<&[u8]>, name: &'static str) -> Result<bool, MirrorError> {
    match raw {
        None | Some(b"0") => Ok(false),
        Some(b"1") => Ok(true),
        Some(_) => Err(MirrorError::InvalidNumber(name)),
    }
}

fn parse_volunteer(raw: &[u8]) -> Result<String, MirrorError> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_VOLUNTEER_LEN
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
    if !ok {
        return Err(MirrorError::InvalidVolunteer);
    }
    String::from_utf8(raw.to_vec()).map_err(|_| MirrorError::InvalidVolunteer)
}

fn number(raw: Option<&[u8]>, name: &'static str) -> Result<u64, MirrorError> {
    let raw = raw.ok_or(MirrorError::Missing(name))?;
    parse_decimal(raw).ok_or(MirrorError::InvalidNumber(name))
}

fn number_u32(raw: Option<&[u8]>, name: &'static str) -> Result<u32, MirrorError> {
    u32::try_from(number(raw, name)?).map_err(|_| MirrorError::InvalidNumber(name))
}

/// Accepts `http(s)://host...` made only of visible ASCII, since the URL
/// is later handed to customers in redirects.
fn parse_url(raw: &[u8]) -> Result<String, MirrorError> {
    if raw.len() > MAX_URL_LEN {
        return Err(MirrorError::InvalidUrl("is longer than 512 bytes"));
    }
    if !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(MirrorError::InvalidUrl(
            "must be visible ASCII without whitespace or control characters",
        ));
    }
    let rest = raw
        .strip_prefix(b"https://")
        .or_else(|| raw.strip_prefix(b"http://"))
        .ok_or(MirrorError::InvalidUrl(
            "must start with http:// or https://",
        ))?;
    let host_end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    if host_end == 0 {
        return Err(MirrorError::InvalidUrl("must name a host"));
    }
    String::from_utf8(raw.to_vec()).map_err(|_| MirrorError::InvalidUrl("must be ASCII"))
}

/// HMAC-SHA256 keyed with `secret`.
///
/// HMAC accepts keys of any length, but hmac's slice constructor still
/// returns a `Result`. To stay panic-free we apply RFC 2104's key rule
/// ourselves (hash keys longer than the 64-byte block, zero-pad the rest)
/// and use the infallible fixed-size constructor; the RFC 4231 vectors in
/// the tests pin this to standard HMAC.
fn keyed_mac(secret: &[u8]) -> HmacSha256 {
    let hashed: [u8; 32];
    let key = if secret.len() > 64 {
        hashed = Sha256::digest(secret).into();
        &hashed[..]
    } else {
        secret
    };
    let mut block = [0u8; 64];
    for (dst, src) in block.iter_mut().zip(key) {
        *dst = *src;
    }
    <HmacSha256 as KeyInit>::new(&block.into())
}

/// Appends `&ms_sig=<hex HMAC-SHA256 of unsigned_query>` to the query.
pub fn sign_query(secret: &[u8], unsigned_query: &str) -> String {
    let mut mac = keyed_mac(secret);
    mac.update(unsigned_query.as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    format!("{unsigned_query}{SIG_PARAM}{sig}")
}

/// Splits a signed query into the signed prefix and the signature. The
/// signature must be the final parameter and exactly 64 lowercase hex
/// digits, so there is one unambiguous byte string to verify.
pub fn split_signed_query(raw_query: &str) -> Result<(&str, [u8; 32]), MirrorError> {
    let (signed, sig_hex) = raw_query
        .rsplit_once(SIG_PARAM)
        .ok_or(MirrorError::MissingSignature)?;
    if signed.is_empty() {
        return Err(MirrorError::MissingSignature);
    }
    let well_formed = sig_hex.len() == 64
        && sig_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return Err(MirrorError::MalformedSignature);
    }
    let mut sig = [0u8; 32];
    hex::decode_to_slice(sig_hex, &mut sig).map_err(|_| MirrorError::MalformedSignature)?;
    Ok((signed, sig))
}

/// Checks `sig` against `signed_part` in constant time.
pub fn verify_query_signature(secret: &[u8], signed_part: &str, sig: &[u8; 32]) -> bool {
    let mut mac = keyed_mac(secret);
    mac.update(signed_part.as_bytes());
    mac.verify_slice(sig).is_ok()
}

/// Builds the unsigned announce query a volunteer sends for `repo`. It
/// parses back through `parse_announce` + `parse_mirror_report`; pass it
/// to [`sign_query`] before sending.
pub fn build_mirror_query(
    repo: &str,
    peer_id: [u8; 20],
    port: u16,
    report: &MirrorReport,
) -> String {
    format!(
        "info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left=0&compact=1&numwant=0\
         &ms_vid={}&ms_seq={}&ms_gen={}&ms_cc={}&ms_sc={}&ms_up={}&ms_cap={}&ms_url={}\
         &ms_sbps={}&ms_link={}&ms_pause={}{}{}",
        percent_encode(&mirror_info_hash(repo)),
        percent_encode(&peer_id),
        percent_encode(report.volunteer.as_bytes()),
        report.seq,
        report.generation,
        report.customer_conns,
        report.sync_conns,
        report.upload_bps,
        report.capacity,
        percent_encode(report.url.as_bytes()),
        report.sync_bps,
        report.link_bps,
        u8::from(report.paused),
        part_param(&report.part),
        place_params(report),
    ) + &urls_param(&report.other_urls)
}

/// `&ms_urls=…` for a volunteer with URLs beside its own, nothing for one without.
fn urls_param(urls: &[String]) -> String {
    if urls.is_empty() {
        return String::new();
    }
    format!("&ms_urls={}", percent_encode(urls.join(" ").as_bytes()))
}

/// `&ms_nets=…` and `&ms_priv=1` for a volunteer that declared where it is, nothing for one
/// that did not. Netblocks need no escaping: hex digits, `.`, `:`, `/` and `,`.
fn place_params(report: &MirrorReport) -> String {
    let mut out = String::new();
    if !report.nets.is_empty() {
        out.push_str("&ms_nets=");
        out.push_str(&report.nets);
    }
    if report.private {
        out.push_str("&ms_priv=1");
    }
    out
}

/// `&ms_part=…` for a volunteer holding part of the repository, nothing for one holding all
/// of it. Path characters a query may carry as they are (`/`, `*`) are left so: the part is
/// sent with every announce.
fn part_param(part: &str) -> String {
    if part.is_empty() {
        return String::new();
    }
    let mut out = String::from("&ms_part=");
    for piece in part.split_inclusive(['/', '*']) {
        let (text, sep) = match piece.strip_suffix(['/', '*']) {
            Some(t) => (t, &piece[t.len()..]),
            None => (piece, ""),
        };
        out.push_str(&percent_encode(text.as_bytes()));
        out.push_str(sep);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announce::{parse_announce, Event};

    const SECRET: &[u8] = b"volunteer-secret";
    const PEER: [u8; 20] = *b"-MS0001-\x00\xff&=+%abcdef";

    fn report() -> MirrorReport {
        MirrorReport {
            volunteer: "vol_01-A".to_string(),
            seq: 17,
            generation: 123_456,
            customer_conns: 3,
            sync_conns: 1,
            upload_bps: 9_000_000,
            capacity: 50,
            url: "https://mirror.example.org:8443/debian/?a=b&c=d".to_string(),
            sync_bps: 0,
            link_bps: 0,
            paused: false,
            part: String::new(),
            nets: String::new(),
            private: false,
            other_urls: Vec::new(),
        }
    }

    fn extra(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn full() -> Vec<(&'static str, &'static str)> {
        vec![
            ("ms_vid", "v1"),
            ("ms_seq", "1"),
            ("ms_gen", "2"),
            ("ms_cc", "3"),
            ("ms_sc", "4"),
            ("ms_up", "5"),
            ("ms_cap", "6"),
            ("ms_url", "http://h"),
        ]
    }

    fn with(name: &str, value: &str) -> Vec<(String, Vec<u8>)> {
        let pairs: Vec<_> = full()
            .into_iter()
            .map(|(k, v)| if k == name { (k, value) } else { (k, v) })
            .collect();
        extra(&pairs)
    }

    #[test]
    fn info_hash_is_sha1_of_prefixed_repo() {
        // `printf 'mirrorswarm-repo:debian' | sha1sum`
        assert_eq!(
            hex::encode(mirror_info_hash("debian")),
            "fee7d44fa803b565d9e726c2f62d9ae5acc800a5"
        );
        assert_ne!(mirror_info_hash("debian"), mirror_info_hash("ubuntu"));
    }

    #[test]
    fn build_sign_parse_round_trip() {
        let q = build_mirror_query("debian", PEER, 8080, &report());
        let signed = sign_query(SECRET, &q);
        let (signed_part, sig) = split_signed_query(&signed).unwrap();
        assert_eq!(signed_part, q);
        assert!(verify_query_signature(SECRET, signed_part, &sig));

        let req = parse_announce(&signed).unwrap();
        assert_eq!(req.info_hash, mirror_info_hash("debian"));
        assert_eq!(req.peer_id, PEER);
        assert_eq!(req.port, 8080);
        assert_eq!((req.uploaded, req.downloaded, req.left), (0, 0, 0));
        assert_eq!(req.event, Event::None);
        assert!(req.compact);
        assert_eq!(req.numwant, 0);
        assert_eq!(parse_mirror_report(&req.extra), Ok(Some(report())));
    }

    #[test]
    fn a_part_goes_signed_and_reads_back_whole_up_to_its_bound() {
        let mut r = report();
        r.part = "+ pool/main/**\n- **/*_arm64.deb\n+ a b&c=d%/?.deb\n".to_string();
        let q = build_mirror_query("debian", PEER, 8080, &r);
        assert!(q.contains("&ms_part=%2B%20pool/main/**%0A"), "{q}");
        let req = parse_announce(&sign_query(SECRET, &q)).unwrap();
        assert_eq!(parse_mirror_report(&req.extra), Ok(Some(r.clone())));
        // The longest part, every byte escaped, still fits a query.
        r.part = "\n".repeat(MAX_PART_LEN);
        let q = build_mirror_query("debian", PEER, 8080, &r);
        let req = parse_announce(&sign_query(SECRET, &q)).unwrap();
        assert_eq!(parse_mirror_report(&req.extra), Ok(Some(r)));
        let mut pairs = full();
        let long = "x".repeat(MAX_PART_LEN + 1);
        pairs.push(("ms_part", &long));
        assert_eq!(
            parse_mirror_report(&extra(&pairs)),
            Err(MirrorError::InvalidPart)
        );
    }

    #[test]
    fn declared_netblocks_go_signed_and_only_their_characters_pass() {
        let mut r = report();
        r.nets = "192.0.2.0/24,2001:db8::/32".to_string();
        r.private = true;
        let q = build_mirror_query("debian", PEER, 8080, &r);
        assert!(
            q.contains("&ms_nets=192.0.2.0/24,2001:db8::/32&ms_priv=1"),
            "{q}"
        );
        let req = parse_announce(&sign_query(SECRET, &q)).unwrap();
        assert_eq!(parse_mirror_report(&req.extra), Ok(Some(r)));
        for bad in ["10.0.0.0/8 ", "10.0.0.0/8;x", &"1".repeat(MAX_NETS_LEN + 1)] {
            let mut pairs = full();
            pairs.push(("ms_nets", bad));
            assert_eq!(
                parse_mirror_report(&extra(&pairs)),
                Err(MirrorError::InvalidNets),
                "{bad}"
            );
        }
        let mut pairs = full();
        pairs.push(("ms_priv", "2"));
        assert_eq!(
            parse_mirror_report(&extra(&pairs)),
            Err(MirrorError::InvalidNumber("ms_priv"))
        );
    }

    #[test]
    fn bandwidth_fields_are_optional_and_checked() {
        let mut pairs = full();
        pairs.push(("ms_sbps", "500"));
        pairs.push(("ms_link", "1000"));
        let r = parse_mirror_report(&extra(&pairs)).unwrap().unwrap();
        assert_eq!((r.sync_bps, r.link_bps), (500, 1000));
        let r = parse_mirror_report(&extra(&full())).unwrap().unwrap();
        assert_eq!((r.sync_bps, r.link_bps), (0, 0), "absent means unknown");
        let mut pairs = full();
        pairs.push(("ms_pause", "1"));
        assert!(parse_mirror_report(&extra(&pairs)).unwrap().unwrap().paused);
        let mut pairs = full();
        pairs.push(("ms_pause", "yes"));
        assert_eq!(
            parse_mirror_report(&extra(&pairs)),
            Err(MirrorError::InvalidNumber("ms_pause"))
        );
        let mut pairs = full();
        pairs.push(("ms_link", "-1"));
        assert_eq!(
            parse_mirror_report(&extra(&pairs)),
            Err(MirrorError::InvalidNumber("ms_link"))
        );
    }

    #[test]
    fn build_exact_text() {
        let q = build_mirror_query("r", [b'p'; 20], 1, &report());
        assert_eq!(
            q,
            format!(
                "info_hash={}&peer_id=pppppppppppppppppppp&port=1&uploaded=0&downloaded=0&left=0\
&compact=1&numwant=0&ms_vid=vol_01-A&ms_seq=17&ms_gen=123456&ms_cc=3&ms_sc=1&ms_up=9000000\
&ms_cap=50&ms_url=https%3A%2F%2Fmirror.example.org%3A8443%2Fdebian%2F%3Fa%3Db%26c%3Dd\
&ms_sbps=0&ms_link=0&ms_pause=0",
                percent_encode(&mirror_info_hash("r"))
            )
        );
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // Test case 2: short key.
        let signed = sign_query(b"Jefe", "what do ya want for nothing?");
        assert_eq!(
            signed,
            "what do ya want for nothing?&ms_sig=\
5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: 131-byte key, longer than the block, gets hashed first.
        let signed = sign_query(
            &[0xaa; 131],
            "Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert!(signed
            .ends_with("&ms_sig=60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"));
        // Exactly one block (64 bytes) is used as-is, not hashed.
        let key64 = [0x0bu8; 64];
        let mut reference = <HmacSha256 as Mac>::new_from_slice(&key64).unwrap();
        reference.update(b"m");
        let want = hex::encode(reference.finalize().into_bytes());
        assert_eq!(sign_query(&key64, "m"), format!("m&ms_sig={want}"));
    }

    #[test]
    fn tampering_any_byte_fails() {
        let q = build_mirror_query("debian", PEER, 8080, &report());
        let signed = sign_query(SECRET, &q);
        let (part, sig) = split_signed_query(&signed).unwrap();
        let bytes = part.as_bytes();
        for i in 0..bytes.len() {
            let mut t = bytes.to_vec();
            t[i] ^= 0x01;
            let t = String::from_utf8(t).unwrap();
            assert!(!verify_query_signature(SECRET, &t, &sig), "byte {i}");
        }
        for i in 0..32 {
            let mut s = sig;
            s[i] ^= 0x80;
            assert!(!verify_query_signature(SECRET, part, &s), "sig byte {i}");
        }
        assert!(!verify_query_signature(b"other", part, &sig));
        assert!(!verify_query_signature(
            SECRET,
            &format!("{part}&x=1"),
            &sig
        ));
        assert!(!verify_query_signature(
            SECRET,
            &part[..part.len() - 1],
            &sig
        ));
    }

    #[test]
    fn split_rejects_bad_framing() {
        let sig = "ab".repeat(32);
        assert_eq!(
            split_signed_query("a=1"),
            Err(MirrorError::MissingSignature)
        );
        assert_eq!(
            split_signed_query(&format!("ms_sig={sig}")),
            Err(MirrorError::MissingSignature)
        );
        assert_eq!(
            split_signed_query(&format!("&ms_sig={sig}")),
            Err(MirrorError::MissingSignature)
        );
        assert_eq!(
            split_signed_query(&format!("a=1&ms_sig={}", "AB".repeat(32))),
            Err(MirrorError::MalformedSignature)
        );
        assert_eq!(
            split_signed_query(&format!("a=1&ms_sig={}", &sig[..63])),
            Err(MirrorError::MalformedSignature)
        );
        assert_eq!(
            split_signed_query(&format!("a=1&ms_sig={sig}0")),
            Err(MirrorError::MalformedSignature)
        );
        // Not the last parameter.
        assert_eq!(
            split_signed_query(&format!("a=1&ms_sig={sig}&b=2")),
            Err(MirrorError::MalformedSignature)
        );
        assert_eq!(
            split_signed_query(&format!("a=1&ms_sig={sig}")),
            Ok(("a=1", [0xab; 32]))
        );
    }

    #[test]
    fn plain_client_has_no_report() {
        assert_eq!(parse_mirror_report(&[]), Ok(None));
        // ms_* fields without ms_vid are not a report.
        assert_eq!(
            parse_mirror_report(&extra(&[("ms_seq", "1"), ("x", "y")])),
            Ok(None)
        );
    }

    #[test]
    fn minimal_report_parses_exactly() {
        let mut pairs = full();
        pairs.push(("ms_future", "ignored"));
        pairs.push(("ms_sig", "whatever"));
        assert_eq!(
            parse_mirror_report(&extra(&pairs)),
            Ok(Some(MirrorReport {
                volunteer: "v1".to_string(),
                seq: 1,
                generation: 2,
                customer_conns: 3,
                sync_conns: 4,
                upload_bps: 5,
                capacity: 6,
                url: "http://h".to_string(),
                sync_bps: 0,
                link_bps: 0,
                paused: false,
                part: String::new(),
                nets: String::new(),
                private: false,
                other_urls: Vec::new(),
            }))
        );
    }

    #[test]
    fn other_urls_go_signed_and_each_is_checked() {
        let mut r = report();
        r.other_urls = vec![
            "https://mirror.example.org:8443/debian".to_string(),
            "http://[2001:db8::1]:8081/".to_string(),
        ];
        let q = build_mirror_query("debian", PEER, 8080, &r);
        assert!(q.contains("&ms_urls=https%3A%2F%2F"), "{q}");
        let req = parse_announce(&sign_query(SECRET, &q)).unwrap();
        assert_eq!(parse_mirror_report(&req.extra), Ok(Some(r)));
        for (bad, why) in [
            ("ftp://h", "ms_urls must start with http:// or https://"),
            ("http://a http://", "ms_urls must name a host"),
            (
                "http://a  http://b",
                "ms_urls must start with http:// or https://",
            ),
            (
                "http://a http://b http://c http://d",
                "ms_urls lists more than 3 URLs",
            ),
        ] {
            let mut pairs = full();
            pairs.push(("ms_urls", bad));
            let err = parse_mirror_report(&extra(&pairs)).unwrap_err();
            assert_eq!(err.to_string(), why, "{bad}");
        }
    }

    #[test]
    fn every_field_is_required() {
        for (name, _) in full().into_iter().skip(1) {
            let pairs: Vec<_> = full().into_iter().filter(|(k, _)| *k != name).collect();
            let err = parse_mirror_report(&extra(&pairs)).unwrap_err();
            assert_eq!(err.to_string(), format!("missing {name}"));
        }
    }

    #[test]
    fn duplicates_rejected() {
        for (name, value) in full() {
            let mut pairs = full();
            pairs.push((name, value));
            assert_eq!(
                parse_mirror_report(&extra(&pairs)).unwrap_err().to_string(),
                format!("duplicate {name}")
            );
        }
    }

    #[test]
    fn volunteer_id_rules() {
        let long = "a".repeat(64);
        let too_long = "a".repeat(65);
        assert!(parse_mirror_report(&with("ms_vid", &long)).is_ok());
        for bad in ["", &too_long, "a b", "a.b", "a/b", "\u{00e9}", "a\u{0}"] {
            assert_eq!(
                parse_mirror_report(&with("ms_vid", bad)),
                Err(MirrorError::InvalidVolunteer),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(
            parse_mirror_report(&with("ms_seq", "18446744073709551615")).map(|r| r.map(|r| r.seq)),
            Ok(Some(u64::MAX))
        );
        assert_eq!(
            parse_mirror_report(&with("ms_seq", "18446744073709551616")),
            Err(MirrorError::InvalidNumber("ms_seq"))
        );
        assert_eq!(
            parse_mirror_report(&with("ms_cc", "4294967296")),
            Err(MirrorError::InvalidNumber("ms_cc"))
        );
        assert_eq!(
            parse_mirror_report(&with("ms_sc", "-1")),
            Err(MirrorError::InvalidNumber("ms_sc"))
        );
        assert_eq!(
            parse_mirror_report(&with("ms_up", "")),
            Err(MirrorError::InvalidNumber("ms_up"))
        );
        assert_eq!(
            parse_mirror_report(&with("ms_cap", "0")),
            Err(MirrorError::ZeroCapacity)
        );
        assert_eq!(
            parse_mirror_report(&with("ms_cap", "4294967295")).map(|r| r.map(|r| r.capacity)),
            Ok(Some(u32::MAX))
        );
    }

    #[test]
    fn url_rules() {
        let max = format!("https://h/{}", "a".repeat(MAX_URL_LEN - 10));
        let over = format!("https://h/{}", "a".repeat(MAX_URL_LEN - 9));
        assert!(parse_mirror_report(&with("ms_url", &max)).is_ok());
        for ok in ["http://h", "https://h:1/x?y#z", "http://[::1]:8080/"] {
            assert!(parse_mirror_report(&with("ms_url", ok)).is_ok(), "{ok}");
        }
        for (bad, why) in [
            (over.as_str(), "ms_url is longer than 512 bytes"),
            ("ftp://h", "ms_url must start with http:// or https://"),
            ("HTTP://h", "ms_url must start with http:// or https://"),
            ("http://", "ms_url must name a host"),
            ("https:///x", "ms_url must name a host"),
            (
                "http://h/a b",
                "ms_url must be visible ASCII without whitespace or control characters",
            ),
            (
                "http://h/\t",
                "ms_url must be visible ASCII without whitespace or control characters",
            ),
            (
                "http://h/\u{00e9}",
                "ms_url must be visible ASCII without whitespace or control characters",
            ),
            (
                "http://h\r\nX: y",
                "ms_url must be visible ASCII without whitespace or control characters",
            ),
        ] {
            let err = parse_mirror_report(&with("ms_url", bad)).unwrap_err();
            assert_eq!(err.to_string(), why, "{bad:?}");
        }
    }
}
