//! Batches: many small files in one request and one response.
//!
//! A file of a few kilobytes costs a request of its own through the redirect, which is what
//! made a first fill of many small files slow. A batch asks one source for many at once:
//!
//! - request: `POST /api/batch/<repo>`, JSON `{"items": [{"path", "sha256", "size"}, …]}`
//!   (at most [`MAX_ITEMS`], each at most [`MAX_FILE_BYTES`]);
//! - answer ([`CONTENT_TYPE`]): for each item, in the order asked, `F` + the length (8 bytes,
//!   big-endian) + the bytes, or `N` (not here); then `E`. An answer that ends before `E`
//!   was cut short: the items it did not reach go elsewhere.
//!
//! The origin answers from its tree, a volunteer from its verified files and from what its
//! own pull has staged (named by SHA-256, so a volunteer still filling already helps its
//! peers). Nothing in an answer is trusted: the puller checks each file against the signed
//! manifest as it arrives ([`read_answer`]) and installs only what matches.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use manifest::Sha256;

/// The answer's media type.
pub const CONTENT_TYPE: &str = "application/x-mirrorswarm-batch";
/// Most items one request may ask for.
pub const MAX_ITEMS: usize = 4096;
/// Largest file a batch carries (larger files go by BitTorrent or a request of their own).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// One file asked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    pub path: String,
    /// Hex.
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub items: Vec<Item>,
}

/// One item of a request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub path: String,
    pub sha256: Sha256,
    pub size: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("expected JSON {{\"items\": [{{\"path\", \"sha256\", \"size\"}}, …]}}: {0}")]
    Json(String),
    #[error("{0} items asked; at most {MAX_ITEMS} per batch")]
    TooMany(usize),
    #[error("item {index}: {why}")]
    Item { index: usize, why: String },
}

/// Parse and check a request body: paths safe and relative, digests well formed, sizes
/// within what a batch carries.
pub fn parse_request(body: &[u8]) -> Result<Vec<Wanted>, RequestError> {
    let req: Request =
        serde_json::from_slice(body).map_err(|e| RequestError::Json(e.to_string()))?;
    if req.items.len() > MAX_ITEMS {
        return Err(RequestError::TooMany(req.items.len()));
    }
    req.items
        .into_iter()
        .enumerate()
        .map(|(index, it)| {
            let bad = |why: String| RequestError::Item { index, why };
            manifest::validate_rel_path(&it.path).map_err(|e| bad(e.to_string()))?;
            let sha256 = Sha256::from_hex(&it.sha256)
                .ok_or_else(|| bad("sha256: not 64 hex digits".to_string()))?;
            if it.size > MAX_FILE_BYTES {
                return Err(bad(format!(
                    "{} B; a batch carries files of at most {MAX_FILE_BYTES} B",
                    it.size
                )));
            }
            Ok(Wanted {
                path: it.path,
                sha256,
                size: it.size,
            })
        })
        .collect()
}

/// The SHA-256 of `bytes`.
pub fn sha256_of(bytes: &[u8]) -> Sha256 {
    use sha2::Digest;
    Sha256(sha2::Sha256::digest(bytes).into())
}

/// Read `file` whole if it holds exactly `size` bytes.
fn read_exact_size(mut file: std::fs::File, size: u64) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(size as usize);
    (&mut file).take(size + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 == size).then_some(buf)
}

/// Whether a file an answer sends is known to hold the asked bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Verified already (the origin's published tree, a volunteer's verified files).
    Known,
    /// Not known (a file a pull placed or staged, not verified since): hashed before it is
    /// sent, so an honest source never sends a wrong byte and is never reported for one.
    Hash,
}

/// How much of an answer is gathered before it is handed to the connection.
const CHUNK: usize = 256 << 10;

/// Answer `items`: `open` gives the file to send for an item, or `None` (not here). Files
/// are read off the async threads; the answer is handed over in chunks through a small
/// channel, so a slow reader holds at most a few chunks in memory, and one that goes away
/// stops the reading. `sent` is told the bytes of each file sent. The stream is the body.
pub fn answer<O, S>(
    items: Vec<Wanted>,
    mut open: O,
    sent: S,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    O: FnMut(&Wanted) -> Option<(std::fs::File, Check)> + Send + 'static,
    S: Fn(u64) + Send + Sync + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let sent = Arc::new(sent);
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(CHUNK + 64);
        for item in &items {
            let bytes = open(item).and_then(|(f, check)| {
                let bytes = read_exact_size(f, item.size)?;
                (check == Check::Known || sha256_of(&bytes) == item.sha256).then_some(bytes)
            });
            match bytes {
                Some(bytes) => {
                    out.push(b'F');
                    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
                    out.extend_from_slice(&bytes);
                    sent(bytes.len() as u64);
                }
                None => out.push(b'N'),
            }
            if out.len() >= CHUNK {
                let chunk =
                    Bytes::from(std::mem::replace(&mut out, Vec::with_capacity(CHUNK + 64)));
                if tx.blocking_send(chunk).is_err() {
                    return; // the reader went away
                }
            }
        }
        out.push(b'E');
        let _ = tx.blocking_send(Bytes::from(out));
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok(chunk), rx))
    })
}

/// One item's fate in an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// Its bytes, which matched the item's size and SHA-256.
    File(usize, Vec<u8>),
    /// The source does not have it.
    Missing(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    /// The source sent bytes that are not the signed ones: drop it for this pull and report it.
    #[error("item {index} ({path}): {why}")]
    Lied {
        index: usize,
        path: String,
        why: String,
    },
    /// The answer is not in the batch format at all.
    #[error("malformed answer at item {index}: {why}")]
    Malformed { index: usize, why: String },
    /// The answer ended (or the connection failed) before its end mark.
    #[error("answer cut short after {reached} of {asked} items: {why}")]
    Truncated {
        reached: usize,
        asked: usize,
        why: String,
    },
}

/// Parses an answer as its bytes arrive, checking each file against what was asked.
pub struct AnswerReader<'a> {
    items: &'a [Wanted],
    buf: Vec<u8>,
    next: usize,
    ended: bool,
}

impl<'a> AnswerReader<'a> {
    pub fn new(items: &'a [Wanted]) -> Self {
        AnswerReader {
            items,
            buf: Vec::new(),
            next: 0,
            ended: false,
        }
    }

    /// Items whose fate is known so far.
    pub fn reached(&self) -> usize {
        self.next
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Take in `chunk`; `got` is told of every item it completes, in order.
    pub fn feed(&mut self, chunk: &[u8], got: &mut impl FnMut(Got)) -> Result<(), AnswerError> {
        self.buf.extend_from_slice(chunk);
        let mut at = 0;
        let res = loop {
            let Some(&tag) = self.buf.get(at) else {
                break Ok(());
            };
            if self.ended {
                break Err(self.malformed("bytes after the end mark"));
            }
            match tag {
                b'E' if self.next == self.items.len() => {
                    self.ended = true;
                    at += 1;
                }
                b'E' => break Err(self.malformed("end mark before the last item")),
                _ if self.next == self.items.len() => {
                    break Err(self.malformed("more items than asked"))
                }
                b'N' => {
                    got(Got::Missing(self.next));
                    self.next += 1;
                    at += 1;
                }
                b'F' => {
                    let Some(len) = self.buf.get(at + 1..at + 9) else {
                        break Ok(());
                    };
                    let len = u64::from_be_bytes(len.try_into().unwrap_or([0; 8]));
                    let item = &self.items[self.next];
                    if len != item.size {
                        break Err(self.lied(format!(
                            "sent {len} B, the signed manifest says {}",
                            item.size
                        )));
                    }
                    let end = at + 9 + len as usize;
                    let Some(bytes) = self.buf.get(at + 9..end) else {
                        break Ok(());
                    };
                    if sha256_of(bytes) != item.sha256 {
                        break Err(
                            self.lied("sent bytes whose SHA-256 is not the signed one".to_string())
                        );
                    }
                    got(Got::File(self.next, bytes.to_vec()));
                    self.next += 1;
                    at = end;
                }
                other => break Err(self.malformed(&format!("unknown frame tag {other:#04x}"))),
            }
        };
        self.buf.drain(..at);
        res
    }

    /// The answer is over: an error unless its end mark came.
    pub fn finish(&self, why: &str) -> Result<(), AnswerError> {
        if self.ended {
            return Ok(());
        }
        Err(AnswerError::Truncated {
            reached: self.next,
            asked: self.items.len(),
            why: why.to_string(),
        })
    }

    fn lied(&self, why: String) -> AnswerError {
        AnswerError::Lied {
            index: self.next,
            path: self.items[self.next].path.clone(),
            why,
        }
    }

    fn malformed(&self, why: &str) -> AnswerError {
        AnswerError::Malformed {
            index: self.next,
            why: why.to_string(),
        }
    }
}

/// Read a whole answer from `resp`, telling `got` each item's fate as it arrives (so what
/// arrived before a failure is kept).
pub async fn read_answer(
    mut resp: reqwest::Response,
    items: &[Wanted],
    got: &mut impl FnMut(Got),
) -> Result<(), AnswerError> {
    let mut reader = AnswerReader::new(items);
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => reader.feed(&chunk, got)?,
            Ok(None) => return reader.finish("the connection ended"),
            Err(e) => return reader.finish(&e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(path: &str, bytes: &[u8]) -> Wanted {
        Wanted {
            path: path.to_string(),
            sha256: sha256_of(bytes),
            size: bytes.len() as u64,
        }
    }

    fn frame(bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![b'F'];
        v.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        v.extend_from_slice(bytes);
        v
    }

    fn read_all(
        items: &[Wanted],
        answer: &[u8],
        step: usize,
    ) -> (Vec<Got>, Result<(), AnswerError>) {
        let mut r = AnswerReader::new(items);
        let mut out = Vec::new();
        for chunk in answer.chunks(step.max(1)) {
            if let Err(e) = r.feed(chunk, &mut |g| out.push(g)) {
                return (out, Err(e));
            }
        }
        let res = r.finish("the connection ended");
        (out, res)
    }

    #[test]
    fn an_answer_is_read_whatever_its_chunks() {
        let items = [
            wanted("a", b"alpha"),
            wanted("b", b"beta"),
            wanted("c", b""),
        ];
        let mut answer = frame(b"alpha");
        answer.push(b'N');
        answer.extend(frame(b""));
        answer.push(b'E');
        for step in [1, 2, 7, 1000] {
            let (got, res) = read_all(&items, &answer, step);
            assert_eq!(res, Ok(()));
            assert_eq!(
                got,
                vec![
                    Got::File(0, b"alpha".to_vec()),
                    Got::Missing(1),
                    Got::File(2, Vec::new())
                ]
            );
        }
    }

    #[test]
    fn a_wrong_file_is_a_lie_and_what_came_before_it_is_kept() {
        let items = [wanted("a", b"alpha"), wanted("b", b"beta")];
        let mut answer = frame(b"alpha");
        answer.extend(frame(b"BETA"));
        answer.push(b'E');
        let (got, res) = read_all(&items, &answer, 3);
        assert_eq!(got, vec![Got::File(0, b"alpha".to_vec())]);
        assert!(
            matches!(res, Err(AnswerError::Lied { index: 1, .. })),
            "{res:?}"
        );
        // Another length than the manifest's is refused before its bytes are read.
        let (_, res) = read_all(&items[1..], &frame(b"betas"), 100);
        assert!(
            matches!(res, Err(AnswerError::Lied { index: 0, .. })),
            "{res:?}"
        );
    }

    #[test]
    fn a_cut_answer_says_how_far_it_got() {
        let items = [wanted("a", b"alpha"), wanted("b", b"beta")];
        let mut answer = frame(b"alpha");
        answer.extend(&frame(b"beta")[..6]);
        let (got, res) = read_all(&items, &answer, 4);
        assert_eq!(got, vec![Got::File(0, b"alpha".to_vec())]);
        assert!(
            matches!(
                res,
                Err(AnswerError::Truncated {
                    reached: 1,
                    asked: 2,
                    ..
                })
            ),
            "{res:?}"
        );
    }

    #[test]
    fn malformed_answers_are_refused() {
        let items = [wanted("a", b"alpha")];
        for bad in [&b"E"[..], b"X", b"NN", b"NEE"] {
            let (_, res) = read_all(&items, bad, 100);
            assert!(
                matches!(res, Err(AnswerError::Malformed { .. })),
                "{bad:?}: {res:?}"
            );
        }
    }

    #[test]
    fn requests_are_checked() {
        let ok = br#"{"items":[{"path":"a/b.deb","sha256":"0000000000000000000000000000000000000000000000000000000000000000","size":3}]}"#;
        assert_eq!(parse_request(ok).map(|v| v.len()), Ok(1));
        for bad in [
            &br#"{"items":[{"path":"../etc/passwd","sha256":"0000000000000000000000000000000000000000000000000000000000000000","size":3}]}"#[..],
            br#"{"items":[{"path":"a","sha256":"zz","size":3}]}"#,
            br#"{"items":[{"path":"a","sha256":"0000000000000000000000000000000000000000000000000000000000000000","size":99999999999}]}"#,
            b"not json",
        ] {
            assert!(parse_request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn an_answer_is_written_as_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"alpha").unwrap();
        std::fs::write(dir.path().join("short"), b"bet").unwrap();
        let items = vec![
            wanted("a", b"alpha"),
            wanted("short", b"beta"),
            wanted("gone", b"x"),
        ];
        let root = dir.path().to_path_buf();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = sent.clone();
        let mut body = std::pin::pin!(answer(
            items.clone(),
            move |w| {
                let f = std::fs::File::open(root.join(&w.path)).ok()?;
                Some((
                    f,
                    if w.path == "a" {
                        Check::Known
                    } else {
                        Check::Hash
                    },
                ))
            },
            move |n| {
                counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            },
        ));
        let mut bytes = Vec::new();
        while let Some(c) = futures_util::StreamExt::next(&mut body).await {
            bytes.extend_from_slice(&c.unwrap());
        }
        let (got, res) = read_all(&items, &bytes, 5);
        assert_eq!(res, Ok(()));
        // A file of another size than asked is not sent.
        assert_eq!(
            got,
            vec![
                Got::File(0, b"alpha".to_vec()),
                Got::Missing(1),
                Got::Missing(2)
            ]
        );
        assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), 5);
    }
}
