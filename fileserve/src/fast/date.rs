//! The `Date` header, formatted once a second per thread rather than once a response.

use std::cell::RefCell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT`: always 29 bytes.
const LEN: usize = 29;

struct Cached {
    /// The text holds until this instant (the end of its second); `None`: not yet formatted.
    until: Option<Instant>,
    text: [u8; LEN],
}

thread_local! {
    static NOW: RefCell<Cached> = const { RefCell::new(Cached { until: None, text: [0; LEN] }) };
}

/// Call `f` with the time `now` as an HTTP date. `now` is the monotonic clock the connection
/// already read for the request: the wall clock is read once a second, not once a response.
pub(crate) fn with_now<R>(now: Instant, f: impl FnOnce(&[u8]) -> R) -> R {
    NOW.with(|c| {
        let mut c = c.borrow_mut();
        if c.until.is_none_or(|until| now >= until) {
            let wall = SystemTime::now();
            let into_second = wall.duration_since(UNIX_EPOCH).map_or(Duration::ZERO, |d| {
                Duration::from_nanos(d.subsec_nanos().into())
            });
            let text = httpdate::fmt_http_date(wall);
            if text.len() == LEN {
                c.text.copy_from_slice(text.as_bytes());
                c.until = Some(now + (Duration::from_secs(1) - into_second));
            }
        }
        f(&c.text)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_an_http_date() {
        let t = std::time::Instant::now();
        let s = super::with_now(t, |d| String::from_utf8(d.to_vec()).unwrap());
        assert!(httpdate::parse_http_date(&s).is_ok(), "{s}");
        assert!(s.ends_with(" GMT"));
        // At the same instant the same text; once the wall clock's second has turned, the
        // next (the cache does not outlive its second).
        assert_eq!(super::with_now(t, |d| d.to_vec()), s.as_bytes());
        let turned = (0..30).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            super::with_now(std::time::Instant::now(), |d| d != s.as_bytes())
        });
        assert!(turned, "the date stayed {s} for 3 s");
    }
}
