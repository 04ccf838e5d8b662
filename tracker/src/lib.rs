//! The BitTorrent HTTP tracker for mirrorswarm: announces, scrapes and swarms, and the
//! signed extension by which volunteers report to the server (the balancing that reads
//! those reports is the `balance` crate).
//!
//! Everything here is pure, synchronous and HTTP-free: the server crate owns
//! sockets and routing, and hands this crate the raw query string and the
//! peer's socket address. All parsing is strict and bounded because the
//! tracker endpoints face the open internet.
//!
//! - bencode is the crate of its own (`bencode/`) that the tracker, prsync and the volunteer share.
//! - [`query`]: bounded percent-decoding of raw URL query strings.
//! - [`announce`]: BEP 3 announce and BEP 48 scrape request parsing.
//! - [`swarm`]: in-memory peer store with expiry, hard size limits and bounds per source.
//! - [`source`]: the address and prefix an announce is counted against.
//! - [`rate`]: announces per second per address, in a table of fixed size.
//! - [`response`]: bencoded announce, scrape and failure responses.
//! - [`mirror`]: the signed mirrorswarm extension volunteers put on announces.

pub mod announce;
pub mod mirror;
pub mod query;
pub mod rate;
pub mod response;
pub mod source;
pub mod swarm;
