//! Static file serving for mirrorswarm: the central server (as origin
//! fallback) and volunteer mirrors both serve files to apt, wget and curl.
//!
//! - [`path`]: turn a hostile URL path into a strictly checked relative one, which
//!   [`Root`] (from `manifest::beneath`) opens without leaving the served directory.
//! - [`serve`]: answer GET/HEAD for one file with validators, conditional
//!   requests and byte ranges, streamed from disk.
//! - [`guard`]: keep a value alive until a response body is finished, to
//!   count active downloads.
//! - [`index`]: plain HTML directory listings.
//! - [`listen`]: the accept loop, with limits for slow and greedy clients.
//! - [`fast`]: plain GET and HEAD requests answered without the full stack.
//! - [`tls`]: HTTPS certificates from files, checked and reloaded in place.

mod accept;
pub mod fast;
pub mod guard;
pub mod index;
pub mod listen;
pub mod path;
pub mod protocol;
pub mod request;
pub mod serve;
pub mod tls;

pub use guard::{with_guard, with_stall_guard};
pub use index::{
    encode_path_segment, needs_no_escape, push_encoded_segment, render_index, IndexEntry,
};
pub use path::{decode_url_path, decode_url_path_cow, PathError};
pub use request::{bearer_matches, customer_path, declared_length, text_response};
pub use serve::{
    content_type_for, fast_whole_file, is_plain_file_request, open_error_response, parse_range,
    serve_file, serve_open, OpenError, RangeOutcome, Root, ServeOptions,
};
