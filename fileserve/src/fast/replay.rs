//! A connection's bytes replayed through the fast path with no socket, for the fuzzer
//! (`fuzz/fuzz_targets/fast_connection.rs`) and the connection tests.
//!
//! [`replay`] runs what the accept loop runs on a connection (`answer_first`; `answer_next`
//! while it is parked; `serve_connection` in its task) over a scripted wire whose reads
//! return the client's bytes in the pieces the script says, then the end of its sending (a
//! half-close) or nothing more (a client gone quiet, which the header deadline ends; time is
//! simulated). [`check`] holds the transcript to what HTTP/1.1 asks: every complete request
//! the fast path takes gets exactly one answer, in order; a request it does not take is
//! handed over with every byte from its first on; nothing else is written.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use super::conn::{answer_first, answer_next, serve_connection, simple, ConnLimits, First, Served};
use super::stop::Stop;
use super::wire::{AsyncWire, Wire};
use super::{Answer, FastPath, Method, Reply, Request};

/// What the client does.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Its bytes, in the pieces successive reads return. An empty piece is a read that
    /// finds nothing yet.
    pub chunks: Vec<Vec<u8>>,
    /// After the last piece it half-closes (`shutdown(SHUT_WR)`); otherwise it goes quiet.
    pub half_close: bool,
    /// The most bytes one write of the server's takes (0: all): a slow reader.
    pub send_max: usize,
    /// The largest request head the server accepts (at least [`MIN_MAX_HEADER_BYTES`]).
    pub max_header_bytes: usize,
}

/// A bound on heads below one read's size would let a read take a head larger than it.
pub const MIN_MAX_HEADER_BYTES: usize = 4096;

/// What the server did.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// Everything it wrote, in order.
    pub out: Vec<u8>,
    /// Handed to the full stack: what it had read and not answered, then what was never
    /// read.
    pub handed_over: Option<Vec<u8>>,
    /// The requests the fast path was asked, in order: method and target.
    pub asked: Vec<(Method, String)>,
}

/// The wire's side of the script, shared by the wire and [`replay`].
struct State {
    chunks: VecDeque<Vec<u8>>,
    half_close: bool,
    send_max: usize,
    out: Vec<u8>,
}

#[derive(Clone)]
struct Scripted(Rc<RefCell<State>>);

impl Scripted {
    fn read(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let mut st = self.0.borrow_mut();
        let Some(front) = st.chunks.front_mut() else {
            return if st.half_close {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        };
        if front.is_empty() {
            st.chunks.pop_front();
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = front.len().min(max.max(1));
        buf.extend_from_slice(&front[..n]);
        front.drain(..n);
        if front.is_empty() {
            st.chunks.pop_front();
        }
        Ok(n)
    }

    fn write(&self, bytes: &[u8]) -> usize {
        let mut st = self.0.borrow_mut();
        let n = match st.send_max {
            0 => bytes.len(),
            m => bytes.len().min(m),
        };
        st.out.extend_from_slice(&bytes[..n]);
        n
    }

    /// Whether a read would find something (bytes, or the end of the client's sending).
    fn readable(&self) -> bool {
        let st = self.0.borrow();
        !st.chunks.is_empty() || st.half_close
    }
}

impl Wire for Scripted {
    fn recv_now(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        self.read(buf, max)
    }
    fn send_now(&self, buf: &[u8], _flags: libc::c_int) -> io::Result<usize> {
        Ok(self.write(buf))
    }
    fn nodelay(&self) {}
}

impl AsyncWire for Scripted {
    fn try_read(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        self.read(buf, max)
    }
    fn read_dry(&self) {}
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A quiet client never becomes readable: the header deadline ends the wait.
        if self.readable() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
    fn try_send(&self, buf: &[u8], _flags: libc::c_int) -> io::Result<usize> {
        Ok(self.write(buf))
    }
    fn try_sendfile(&self, file: &std::fs::File, pos: u64, len: usize) -> io::Result<usize> {
        let mut chunk = vec![0u8; len.min(64 * 1024)];
        let n = file.read_at(&mut chunk, pos)?;
        Ok(self.write(&chunk[..n]))
    }
    async fn writable(&self) -> io::Result<()> {
        Ok(())
    }
    fn nodelay(&self) {}
}

/// The fast path [`replay`] asks: a target starting `/pass` is not its business; one
/// starting `/file` is answered with [`Echo::FILE`] sent as a file body; any other is
/// answered with its own target as the body. It records what it was asked.
pub struct Echo {
    file: std::path::PathBuf,
    asked: Mutex<Vec<(Method, String)>>,
}

impl Echo {
    /// The body of `/file` answers.
    pub const FILE: &'static [u8] = b"0123456789abcdef-a file body sent with sendfile-";

    /// An echo whose file is written in `dir`.
    pub fn new(dir: &std::path::Path) -> io::Result<Echo> {
        let file = dir.join("echo-file");
        std::fs::write(&file, Echo::FILE)?;
        Ok(Echo {
            file,
            asked: Mutex::new(Vec::new()),
        })
    }
}

impl FastPath for Echo {
    fn answer(&self, req: &Request<'_>, reply: &mut Reply<'_>) -> Answer {
        if let Ok(mut a) = self.asked.lock() {
            a.push((req.method, req.target.to_string()));
        }
        if req.target.starts_with("/pass") {
            return Answer::Pass;
        }
        if req.target.starts_with("/file") {
            if let Ok(f) = std::fs::File::open(&self.file) {
                if let Ok(meta) = f.metadata() {
                    return crate::fast_whole_file(
                        reply,
                        f,
                        &meta,
                        &self.file,
                        &crate::ServeOptions::default(),
                        Box::new(()),
                        None,
                    );
                }
            }
        }
        reply.status(200, "OK");
        reply.body(req.target.as_bytes());
        Answer::Done
    }
}

/// Run `script` through the fast path with `echo` as its [`FastPath`].
pub fn replay(script: &Script, echo: Arc<Echo>) -> Transcript {
    if let Ok(mut a) = echo.asked.lock() {
        a.clear();
    }
    let state = Rc::new(RefCell::new(State {
        chunks: script.chunks.iter().cloned().collect(),
        half_close: script.half_close,
        send_max: script.send_max,
        out: Vec::new(),
    }));
    let wire = Scripted(state.clone());
    let limits = ConnLimits {
        header_timeout: Duration::from_secs(10),
        max_header_bytes: script.max_header_bytes.max(MIN_MAX_HEADER_BYTES),
        stall: Duration::from_secs(60),
    };
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    let fast: &dyn FastPath = &*echo;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("no runtime: {e}"),
    };
    let handed_over = rt.block_on(async {
        let mut step = answer_first(&wire, peer, fast);
        loop {
            step = match step {
                First::Finished => return None,
                // Parked: answered when it becomes readable; a quiet one is swept.
                First::Idle(idle) if wire.readable() => answer_next(&wire, peer, fast, idle),
                First::Idle(_) => return None,
                First::Continue(start) => {
                    let stop = Arc::new(Stop::default());
                    return match serve_connection(wire.clone(), peer, fast, &limits, &stop, start)
                        .await
                    {
                        Served::Closed => None,
                        Served::Handover(w, mut read) => {
                            let st = w.0.borrow();
                            read.extend(st.chunks.iter().flatten());
                            Some(read)
                        }
                    };
                }
            };
        }
    });
    let out = std::mem::take(&mut state.borrow_mut().out);
    Transcript {
        out,
        handed_over,
        asked: echo.asked.lock().map(|a| a.clone()).unwrap_or_default(),
    }
}

/// Why a transcript is not what the script called for.
#[derive(Debug)]
pub struct Mismatch(pub String);

/// What the next request in the client's bytes calls for.
enum Due {
    /// An answer; `n` bytes of head.
    Answer {
        method: Method,
        target: String,
        close: bool,
        n: usize,
    },
    /// The rest to hyper; the fast path was asked first (`Some`: it passed) or not.
    Handover(Option<(Method, String)>),
    /// A head larger than the bound: 431, then the end.
    TooLarge,
    /// No whole head: the end (the client closed, or its deadline passed).
    End,
}

/// Hold `t` to what the client's bytes call for (see the module's comment).
pub fn check(script: &Script, t: &Transcript) -> Result<(), Mismatch> {
    let input: Vec<u8> = script.chunks.concat();
    let max = script.max_header_bytes.max(MIN_MAX_HEADER_BYTES);
    let mut out: &[u8] = &t.out;
    let mut at = 0;
    let mut answered = 0;
    loop {
        let rest = &input[at..];
        let window = &rest[..rest.len().min(max)];
        let mut headers = [httparse::EMPTY_HEADER; super::conn::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let due = match req.parse(window) {
            Ok(httparse::Status::Complete(n)) => match simple(&req) {
                Some((method, target, _)) if target.starts_with("/pass") => {
                    Due::Handover(Some((method, target.to_string())))
                }
                Some((method, target, close)) => Due::Answer {
                    method,
                    target: target.to_string(),
                    close,
                    n,
                },
                None => Due::Handover(None),
            },
            Ok(httparse::Status::Partial) if window.len() >= max => Due::TooLarge,
            Ok(httparse::Status::Partial) => Due::End,
            Err(_) => Due::Handover(None),
        };
        let (method, target, close, n) = match due {
            Due::Answer {
                method,
                target,
                close,
                n,
            } => (method, target, close, n),
            Due::Handover(passed) => {
                let mut asked = answered;
                if let Some(p) = passed {
                    if t.asked.get(answered) != Some(&p) {
                        return Err(Mismatch(format!(
                            "request {answered} ({p:?}) was not asked before it was handed over"
                        )));
                    }
                    asked += 1;
                }
                return finish(t, out, Some(rest), asked);
            }
            Due::TooLarge => {
                let (status, _) = response(&mut out, false)?;
                if status != 431 {
                    return Err(Mismatch(format!(
                        "a head over {max} bytes was answered {status}, not 431"
                    )));
                }
                return finish(t, out, None, answered);
            }
            Due::End => return finish(t, out, None, answered),
        };
        if t.asked.get(answered) != Some(&(method, target.clone())) {
            return Err(Mismatch(format!(
                "request {answered} ({method:?} {target}) asked as {:?}",
                t.asked.get(answered)
            )));
        }
        let (status, body) = response(&mut out, method == Method::Head)?;
        let want: &[u8] = match (method, target.starts_with("/file")) {
            (Method::Head, _) => b"",
            (Method::Get, true) => Echo::FILE,
            (Method::Get, false) => target.as_bytes(),
        };
        if status != 200 || body != want {
            return Err(Mismatch(format!(
                "request {answered} ({method:?} {target}) answered {status} with {} body bytes",
                body.len()
            )));
        }
        answered += 1;
        at += n;
        if close {
            return finish(t, out, None, answered);
        }
    }
}

/// Nothing more written, handed over exactly `rest` (or nothing), and the fast path asked
/// `asked` times in all.
fn finish(t: &Transcript, out: &[u8], rest: Option<&[u8]>, asked: usize) -> Result<(), Mismatch> {
    if !out.is_empty() {
        return Err(Mismatch(format!(
            "{} bytes written after the answers due",
            out.len()
        )));
    }
    if t.handed_over.as_deref() != rest {
        return Err(Mismatch(format!(
            "handed over {:?} bytes, due {:?}",
            t.handed_over.as_ref().map(Vec::len),
            rest.map(<[u8]>::len)
        )));
    }
    if t.asked.len() != asked {
        return Err(Mismatch(format!(
            "the fast path was asked {} times, due {asked}",
            t.asked.len()
        )));
    }
    Ok(())
}

/// The next response in `out`: its status and body (`content-length` bytes of it, unless it
/// answers a `HEAD`).
fn response<'a>(out: &mut &'a [u8], head: bool) -> Result<(u16, &'a [u8]), Mismatch> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => {
            return Err(Mismatch(format!(
                "no whole response where one is due: {other:?}"
            )))
        }
    };
    let status = resp.code.unwrap_or(0);
    let len: usize = if head {
        0
    } else {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
            .unwrap_or(0)
    };
    if out.len() < n + len {
        return Err(Mismatch(format!(
            "a response's body is cut short ({} of {len} bytes)",
            out.len() - n
        )));
    }
    let body = &out[n..n + len];
    *out = &out[n + len..];
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Requests of every kind the fast path meets, to be pipelined in any order.
    const REQUESTS: &[&[u8]] = &[
        b"GET /debian/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD /debian/b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /file HTTP/1.1\r\n\r\n",
        b"HEAD /file HTTP/1.1\r\n\r\n",
        b"GET /pass/to/the/router HTTP/1.1\r\n\r\n",
        b"POST /announce HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
        b"GET /c HTTP/1.0\r\n\r\n",
        b"GET /d HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET\x01 /bad HTTP/1.1\r\n\r\n",
        b"GET http://absolute/form HTTP/1.1\r\n\r\n",
        b"GET /unfinished HTTP/1.1\r\nHost: x\r\n",
    ];

    fn random_script(rng: &mut Rng) -> Script {
        let mut input = Vec::new();
        for _ in 0..rng.below(6) {
            input.extend_from_slice(REQUESTS[rng.below(REQUESTS.len() as u64) as usize]);
        }
        if rng.below(8) == 0 {
            // A head too large to accept.
            input.extend_from_slice(b"GET /big HTTP/1.1\r\n");
            for i in 0..400 {
                input.extend_from_slice(format!("x-filler-{i}: {}\r\n", "y".repeat(20)).as_bytes());
            }
        }
        let mut chunks = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            if rng.below(10) == 0 {
                chunks.push(Vec::new());
            }
            let n = (1 + rng.below(80) as usize).min(rest.len());
            chunks.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        Script {
            chunks,
            half_close: rng.below(2) == 0,
            send_max: [0, 1, 7, 100][rng.below(4) as usize],
            max_header_bytes: MIN_MAX_HEADER_BYTES,
        }
    }

    #[test]
    fn pipelined_split_and_half_closed_requests_get_one_answer_each_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let echo = Arc::new(Echo::new(dir.path()).unwrap());
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for i in 0..600 {
            let script = random_script(&mut rng);
            let t = replay(&script, echo.clone());
            if let Err(Mismatch(why)) = check(&script, &t) {
                panic!(
                    "script {i}: {why}\ninput {:?}\nhalf-close {} send_max {}\nout {:?}",
                    String::from_utf8_lossy(&script.chunks.concat()),
                    script.half_close,
                    script.send_max,
                    String::from_utf8_lossy(&t.out)
                );
            }
        }
    }

    #[test]
    fn a_request_then_a_half_close_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let echo = Arc::new(Echo::new(dir.path()).unwrap());
        let script = Script {
            chunks: vec![b"GET /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n".to_vec()],
            half_close: true,
            send_max: 0,
            max_header_bytes: 0,
        };
        let t = replay(&script, echo);
        check(&script, &t).unwrap();
        assert_eq!(t.asked.len(), 2);
    }

    #[test]
    fn the_check_catches_a_missing_or_extra_answer() {
        let dir = tempfile::tempdir().unwrap();
        let echo = Arc::new(Echo::new(dir.path()).unwrap());
        let script = Script {
            chunks: vec![b"GET /x HTTP/1.1\r\n\r\n".to_vec()],
            half_close: true,
            send_max: 0,
            max_header_bytes: 0,
        };
        let mut t = replay(&script, echo);
        check(&script, &t).unwrap();
        let whole = t.out.clone();
        t.out.truncate(whole.len() - 1);
        assert!(check(&script, &t).is_err());
        t.out = [whole.clone(), whole].concat();
        assert!(check(&script, &t).is_err());
    }
}
