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
    #[error("missing ms_sig (it must be the last parameter)")]
    MissingSignature,
    #[error("ms_sig must be 64 lowercase hex characters")]
    MalformedSignature,
}

/// Indices of the `ms_*` fields in [`FIELDS`] order.
const FIELDS: [&str; 8] = [
    "ms_vid", "ms_seq", "ms_gen", "ms_cc", "ms_sc", "ms_up", "ms_cap", "ms_url",
];

/// Reads the mirror report from an announce's extra parameters.
///
/// `Ok(None)` when there is no `ms_vid` (a plain BitTorrent client). Once
/// `ms_vid` is present every field is required, each at most once. Other
/// `ms_*` names (including `ms_sig`) are ignored for forward compatibility.
pub fn parse_mirror_report(
    extra: &[(String, Vec<u8>)],
) -> Result<Option<MirrorReport>, MirrorError> {
    let mut values: [Option<&[u8]>; 8] = [None; 8];
    for (name, value) in extra {
        let Some(i) = FIELDS.iter().position(|f| f == name) else {
            continue;
        };
        let Some(slot) = values.get_mut(i) else {
            continue;
        };
        if slot.is_some() {
            return Err(MirrorError::Duplicate(FIELDS.get(i).copied().unwrap_or("ms_*")));
        }
        *slot = Some(value);
    }
    let [vid, seq, generation, cc, sc, up, cap, url] = values;
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

    Ok(Some(MirrorReport {
        volunteer,
        seq,
        generation,
        customer_conns,
        sync_conns,
        upload_bps,
        capacity,
        url,
    }))
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
        .ok_or(MirrorError::InvalidUrl("must start with http:// or https://"))?;
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
    let mut block = [0u8; 64];
    if secret.len() > block.len() {
        let digest: [u8; 32] = Sha256::digest(secret).into();
        block[..32].copy_from_slice(&digest);
    } else {
        block[..secret.len()].copy_from_slice(secret);
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
         &ms_vid={}&ms_seq={}&ms_gen={}&ms_cc={}&ms_sc={}&ms_up={}&ms_cap={}&ms_url={}",
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
    )
}
