//! The accept loop of both servers, with the limits a hostile peer would otherwise exploit:
//! a deadline for request headers (slowloris), a bound on header bytes, and caps on open
//! connections in all and per client address, so that one address cannot take every slot.
//!
//! Connections over a cap are closed at once, before a byte is read: cheaper than an error
//! response, and what a flood deserves.
//!
//! A server with a [`FastPath`] has each connection's plain requests answered by it
//! ([`crate::fast`]); the first request it does not take hands the connection to hyper and
//! the router.
//!
//! [`serve_tls`] is the same loop with a TLS handshake first (within the header deadline),
//! each connection then served in its own task; its requests carry [`Secure`].

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

use crate::accept::Acceptor;
use crate::fast::{self, FastPath, First, Rewind, Served};

#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must send a request's complete headers within this time.
    pub header_timeout: Duration,
    /// Largest request head accepted (at least 8 KiB).
    pub max_header_bytes: usize,
    /// Open connections at once, in all.
    pub max_connections: usize,
    /// Open connections at once from one IP address.
    pub max_per_ip: usize,
    /// On shutdown, how long to let requests in flight finish.
    pub drain: Duration,
    /// A client that takes no bytes of an answer for this long is dropped (fast path; the
    /// router's handlers guard their bodies with [`crate::with_stall_guard`]).
    pub client_stall: Duration,
    /// Most bytes of an answer a connection leaves unsent in the kernel (Linux's
    /// `TCP_NOTSENT_LOWAT`, set on the listener, which its connections inherit); `None`: as
    /// much as the send buffer holds, up to megabytes. With a bound, a write completes when
    /// the bytes are nearly on the wire rather than when they are queued, so an answer ends
    /// (and whatever counts it as under way stops) about when its customer has it: a
    /// volunteer reports its customers and their rate from that, and on a slow uplink a
    /// whole 256 KiB package sat queued in the kernel while the count said it was done.
    pub unsent_bytes: Option<u32>,
    /// Serve on the caller's runtime rather than on a thread per core (see
    /// [`set_serving_workers`]): for a server whose handlers use clients made on it.
    pub on_caller_runtime: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            max_per_ip: 256,
            drain: Duration::from_secs(10),
            client_stall: Duration::from_secs(60),
            unsent_bytes: None,
            on_caller_runtime: false,
        }
    }
}

/// Open connections per address; an entry disappears with its last connection.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One admitted connection; frees its slots when dropped.
struct Admitted {
    table: Arc<PerIp>,
    ip: IpAddr,
    _total: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

impl PerIp {
    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        total: &Arc<tokio::sync::Semaphore>,
    ) -> Option<Admitted> {
        let permit = total.clone().try_acquire_owned().ok()?;
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = t.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Admitted {
            table: self.clone(),
            ip,
            _total: permit,
        })
    }
}

/// Marks a request that came over TLS (an extension the router's handlers can read; the
/// fast path's requests say it in [`fast::Request::secure`]).
#[derive(Debug, Clone, Copy)]
pub struct Secure;

/// Serve `app` on `listener` until `shutdown` resolves, then let requests in flight finish
/// for at most `limits.drain`. Handlers can extract `ConnectInfo<SocketAddr>`. With `fast`,
/// the requests it answers never reach `app`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    fast: Option<Arc<dyn FastPath>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, fast, None, limits, shutdown).await
}

/// [`serve`] over TLS with `tls` (see [`crate::tls::Certs::server_config`]: a certificate
/// reloaded there is presented to the next handshake; open connections keep theirs).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    fast: Option<Arc<dyn FastPath>>,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_with(listener, app, fast, Some(acceptor), limits, shutdown).await
}

/// Why an HTTPS listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsListenError {
    #[error("cannot listen on {addr} for HTTPS: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Certificate(#[from] crate::tls::TlsError),
}

/// Read and check the certificate (`names`: hosts it must cover), then take `addr` for
/// HTTPS: either failing stops a server at start, with the reason.
pub fn bind_tls(
    addr: SocketAddr,
    files: crate::tls::TlsFiles,
    names: Vec<String>,
) -> Result<(tokio::net::TcpListener, Arc<crate::tls::Certs>), TlsListenError> {
    let certs = crate::tls::Certs::load(files, names)?;
    let listener = bind(addr).map_err(|source| TlsListenError::Bind { addr, source })?;
    Ok((listener, certs))
}

/// The HTTPS listener a `[tls]` section asks for: on `listen`, with the certificate and key
/// `files` (see [`bind_tls`]); none without both. Logged with the certificate it serves.
pub fn bind_tls_if(
    listen: Option<SocketAddr>,
    files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    names: Vec<String>,
) -> Result<Option<(tokio::net::TcpListener, Arc<crate::tls::Certs>)>, TlsListenError> {
    let (Some(addr), Some((cert, key))) = (listen, files) else {
        return Ok(None);
    };
    let (listener, certs) = bind_tls(addr, crate::tls::TlsFiles { cert, key }, names)?;
    let at = listener.local_addr().unwrap_or(addr);
    tracing::info!(listen = %at, certificate = %certs.describe(), "serving HTTPS");
    Ok(Some((listener, certs)))
}

/// How often the certificate files are looked at for a change (SIGHUP reads them at once).
pub const CERT_CHECK: Duration = Duration::from_secs(5);

/// Serve `app` on `plain` and, with `tls`, over HTTPS on its listener too, until `shutdown`;
/// the certificate is read again on SIGHUP and when its files change ([`crate::tls::watch`]).
pub async fn serve_both(
    plain: tokio::net::TcpListener,
    tls: Option<(tokio::net::TcpListener, Arc<crate::tls::Certs>)>,
    app: Router,
    fast: Option<Arc<dyn FastPath>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some((secure, certs)) = tls else {
        // `systemctl reload` sends SIGHUP whether or not there is a certificate to read:
        // without a handler it would stop the server.
        let hangup = tokio::spawn(nothing_to_reload());
        let r = serve(plain, app, fast, limits, shutdown).await;
        hangup.abort();
        return r;
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let watch = tokio::spawn(crate::tls::watch(certs.clone(), CERT_CHECK));
    let config = certs.server_config();
    let plain = serve(plain, app.clone(), fast.clone(), limits.clone(), stopped());
    let secure = serve_tls(secure, app, fast, config, limits, stopped());
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        Ok::<(), std::io::Error>(())
    };
    let r = tokio::try_join!(plain, secure, signal);
    watch.abort();
    r.map(|_| ())
}

/// Take SIGHUP and say there is nothing to read again (no HTTPS).
async fn nothing_to_reload() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: nothing to reload (no HTTPS certificate configured)");
    }
}

async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    fast: Option<Arc<dyn FastPath>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tune_listener(&listener, &limits);
    let caps = Caps {
        total: Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1))),
        per_ip: Arc::new(PerIp::default()),
    };
    let workers = if limits.on_caller_runtime {
        1
    } else {
        serving_workers()
    };
    if workers <= 1 {
        let listener = listener.into_std()?;
        return accept_loop(listener, app, fast, tls, limits, caps, shutdown).await;
    }
    // As nginx runs: one thread per core, each with a runtime of its own. A work-stealing
    // runtime shared by all cores spent a fifth of its time parking and waking threads on
    // small requests (BENCHMARKS.md); here a connection stays on the thread that accepted
    // it. The caps are shared, so they hold in all. Each thread listens on a socket of its
    // own where the listener allows it (made by [`bind`]), so the kernel spreads the
    // connections over the threads; otherwise all accept from the one socket.
    let addr = listener.local_addr()?;
    let std_listener = listener.into_std()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let shared = std_listener.try_clone()?;
        let (app, fast, limits, caps) = (app.clone(), fast.clone(), limits.clone(), caps.clone());
        let tls = tls.clone();
        let mut stop = stop_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("serve-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = match i {
                        0 => shared,
                        _ => match reuseport_listener(addr) {
                            Ok(own) => {
                                tune_listener(&own, &limits);
                                own.into_std()?
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "serving thread {i} shares the one listening socket");
                                shared
                            }
                        },
                    };
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    accept_loop(listener, app, fast, tls, limits, caps, stopped).await
                })
            })?;
        threads.push(thread);
    }
    drop(std_listener);
    shutdown.await;
    let _ = stop_tx.send(true);
    for t in threads {
        let joined = tokio::task::spawn_blocking(move || t.join())
            .await
            .map_err(std::io::Error::other)?;
        match joined {
            Ok(r) => r?,
            Err(_) => return Err(std::io::Error::other("a serving thread panicked")),
        }
    }
    Ok(())
}

/// A listening socket on `addr` for [`serve`], with `SO_REUSEPORT`: each serving thread then
/// listens on the same address with a socket of its own, and the kernel spreads new
/// connections over them by their addresses' hash (nginx's `reuseport`). From one shared
/// socket, a burst of connections went to whichever thread woke first: one took every
/// connection of one client in the speed bench.
///
/// The address is bound once without the option first and let go, so that a port another
/// process listens on, or a second server started on it by mistake, is refused ("address in
/// use") rather than silently shared; port 0 is resolved by that first bind.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let probe = std::net::TcpListener::bind(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    reuseport_listener(addr)
}

/// A socket listening on `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`, as tokio's `bind`).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            // `[::]` takes IPv4 as well, whatever the system's default
            // (`net.ipv6.bindv6only`): one listener for both, as nginx's `ipv6only=off`.
            set_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        }
    }
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// What every connection a listener accepts inherits: [`defer_accept`], and the bound on
/// unsent bytes ([`Limits::unsent_bytes`]).
fn tune_listener(listener: &impl std::os::fd::AsRawFd, limits: &Limits) {
    defer_accept(listener, limits.header_timeout);
    if let Some(bytes) = limits.unsent_bytes {
        if let Err(e) = set_unsent_bytes(listener, bytes) {
            // Answers then end when queued, as without the bound: counts run low, nothing
            // is wrong.
            tracing::warn!(error = %e, "TCP_NOTSENT_LOWAT not set; answers count as done once queued");
        }
    }
}

fn set_unsent_bytes(socket: &impl std::os::fd::AsRawFd, bytes: u32) -> std::io::Result<()> {
    let v = libc::c_int::try_from(bytes.max(1)).unwrap_or(libc::c_int::MAX);
    set_tcp_option(socket, libc::TCP_NOTSENT_LOWAT, v)
}

/// Set a TCP-level option that takes a `c_int`.
fn set_tcp_option(
    socket: &impl std::os::fd::AsRawFd,
    option: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    set_option(socket, libc::IPPROTO_TCP, option, value)
}

/// Set a socket option at `level` that takes a `c_int`.
fn set_option(
    socket: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the descriptor is open for the call; the value is a c_int.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Have the kernel hand over a connection only once its first bytes have come (Linux's
/// `TCP_DEFER_ACCEPT`, nginx's `deferred`): HTTP clients speak first, so a connection is then
/// accepted with its request already readable, without a read that can only fail and a wait
/// for the socket, and a client that connects and says nothing costs no task and no slot
/// until the kernel gives up waiting (about `wait`), when it is accepted and held to the
/// header deadline as any other.
fn defer_accept(listener: &impl std::os::fd::AsRawFd, wait: Duration) {
    let secs = libc::c_int::try_from(wait.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    if let Err(e) = set_tcp_option(listener, libc::TCP_DEFER_ACCEPT, secs) {
        // Only slower without it, never wrong.
        tracing::debug!(error = %e, "TCP_DEFER_ACCEPT not set");
    }
}

/// The connection caps, shared by every serving thread.
#[derive(Clone)]
struct Caps {
    total: Arc<tokio::sync::Semaphore>,
    per_ip: Arc<PerIp>,
}

static SERVING_WORKERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many threads [`serve`] accepts and serves on: 1 serves on the caller's runtime; 0 (the
/// default) one per core. Set once by the binary from `--worker-threads`.
pub fn set_serving_workers(n: usize) {
    SERVING_WORKERS.store(n, std::sync::atomic::Ordering::Relaxed);
}

fn serving_workers() -> usize {
    match SERVING_WORKERS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    app: Router,
    fast: Option<Arc<dyn FastPath>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    caps: Caps,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let Caps { total, per_ip } = caps;
    let conn_limits = fast::ConnLimits {
        header_timeout: limits.header_timeout,
        max_header_bytes: limits.max_header_bytes.max(8192),
        stall: limits.client_stall,
    };
    // Fast-path connections learn of a stop from `stop`; every connection task holds an
    // `alive` sender, so the receiver ends when the last one has.
    let stop = Arc::new(fast::Stop::default());
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let tasks = Tasks {
        app,
        conn_limits,
        stop: stop.clone(),
        alive: alive_tx,
        graceful,
        header_timeout: limits.header_timeout,
    };
    let mut refused_logged = std::time::Instant::now() - Duration::from_secs(60);
    let listener = Acceptor::new(listener)?;
    // Idle keep-alive connections of the fast path, and those that leave it for a task.
    // (A TLS connection has its handshake to do first, and no socket to answer on: each
    // has a task.)
    let mut parked = match (&fast, &tls) {
        (Some(_), None) => Some(fast::Parked::<Admitted>::new()?),
        _ => None,
    };
    let mut unparked = Vec::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                // The client gave up before its connection was taken: nothing to do.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = serve_parked(&mut parked, fast.as_deref(), &mut unparked) => {
                if let Err(e) = r {
                    // Not expected of an epoll set; its connections close, new ones get
                    // tasks.
                    tracing::warn!(error = %e, "waiting for keep-alive connections failed; they are closed");
                    parked = None;
                }
                for u in unparked.drain(..) {
                    let fast_start = fast.clone().map(|f| (f, u.start));
                    tasks.spawn(u.stream, u.peer, u.held, fast_start);
                }
                continue;
            }
            _ = sweep.tick(), if parked.as_ref().is_some_and(|p| p.len() > 0) => {
                if let Some(p) = &mut parked {
                    p.sweep(std::time::Instant::now(), limits.header_timeout);
                }
                continue;
            }
            _ = &mut shutdown => break,
        };
        let Some(admitted) = per_ip.admit(peer.ip(), limits.max_per_ip, &total) else {
            if refused_logged.elapsed() > Duration::from_secs(10) {
                tracing::warn!(%peer, "connection refused: too many open connections (in all or from this address)");
                refused_logged = std::time::Instant::now();
            }
            continue;
        };
        // Without Nagle's delay: a head and a body, or a second answer, must not wait for
        // the client's ACK. The fast path sets it itself, and only once a connection writes
        // a second time: a first answer in one write goes out at once either way, and most
        // connections (an announce, a redirect) end after it, one system call sooner.
        if let Some(acceptor) = &tls {
            tasks.spawn_tls(stream, peer, admitted, acceptor.clone(), fast.clone());
            continue;
        }
        // With a fast path: the fast path and where its task takes the connection over.
        let fast_start = match &fast {
            Some(f) => match fast::answer_first(&stream, peer, &**f) {
                First::Finished => continue,
                First::Idle(idle) => {
                    let Some(p) = &mut parked else {
                        tasks.spawn(stream, peer, admitted, Some((f.clone(), idle.into_start())));
                        continue;
                    };
                    if let Err(u) = p.park(stream, peer, idle, admitted) {
                        tasks.spawn(u.stream, u.peer, u.held, Some((f.clone(), u.start)));
                    }
                    continue;
                }
                First::Continue(start) => Some((f.clone(), start)),
            },
            None => {
                let _ = stream.set_nodelay(true);
                None
            }
        };
        tasks.spawn(stream, peer, admitted, fast_start);
    }
    drop(listener);
    // Idle keep-alive connections end with the server, as those waiting in tasks do.
    drop(parked);
    stop.raise();
    let Tasks {
        alive, graceful, ..
    } = tasks;
    drop(alive);
    tokio::select! {
        _ = async {
            graceful.shutdown().await;
            while alive_rx.recv().await.is_some() {}
        } => {}
        _ = tokio::time::sleep(limits.drain) => {
            tracing::info!("stopping with requests still in flight");
        }
    }
    Ok(())
}

/// Wait for parked connections with a request, and answer them; never ready without a fast
/// path (or once its set failed).
async fn serve_parked(
    parked: &mut Option<fast::Parked<Admitted>>,
    fast: Option<&dyn FastPath>,
    out: &mut Vec<fast::Unparked<Admitted>>,
) -> std::io::Result<()> {
    match (parked, fast) {
        (Some(p), Some(f)) => p.serve_ready(f, out).await,
        _ => std::future::pending().await,
    }
}

/// What a connection's task needs from the accept loop.
struct Tasks {
    app: Router,
    conn_limits: fast::ConnLimits,
    stop: Arc<fast::Stop>,
    /// Held by every task: the accept loop knows all have ended when the receiver does.
    alive: tokio::sync::mpsc::Sender<()>,
    graceful: hyper_util::server::graceful::GracefulShutdown,
    header_timeout: Duration,
}

impl Tasks {
    /// What a connection's task takes along: clones of what every task shares.
    fn conn(&self) -> Conn {
        Conn {
            app: self.app.clone(),
            limits: self.conn_limits.clone(),
            stop: self.stop.clone(),
            _alive: self.alive.clone(),
            watcher: self.graceful.watcher(),
            header_timeout: self.header_timeout,
        }
    }

    /// Serve a connection in a task of its own: from `fast_start` on the fast path, else
    /// (or once the fast path hands it over) with hyper.
    fn spawn(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
        fast_start: Option<(Arc<dyn FastPath>, fast::Start)>,
    ) {
        // Registered with the runtime only now, with something to wait for.
        let Some(stream) = registered(stream, peer) else {
            return;
        };
        let conn = self.conn();
        tokio::spawn(async move {
            let _admitted = admitted;
            let (stream, read) = match fast_start {
                Some((f, start)) => {
                    match fast::serve_connection(stream, peer, &*f, &conn.limits, &conn.stop, start)
                        .await
                    {
                        Served::Closed => return,
                        Served::Handover(stream, read) => {
                            let _ = stream.set_nodelay(true);
                            (stream, read)
                        }
                    }
                }
                None => (stream, Vec::new()),
            };
            conn.hyper(Rewind::new(read, stream), peer, false).await;
        });
    }

    /// Serve a TLS connection in a task of its own: the handshake (within the header
    /// deadline), then the fast path if there is one, then hyper.
    fn spawn_tls(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
        acceptor: tokio_rustls::TlsAcceptor,
        fast: Option<Arc<dyn FastPath>>,
    ) {
        let Some(stream) = registered(stream, peer) else {
            return;
        };
        // The handshake's flights and each answer must not wait for the client's ACK.
        let _ = stream.set_nodelay(true);
        let conn = self.conn();
        tokio::spawn(async move {
            let _admitted = admitted;
            let handshake = acceptor.accept(stream);
            let stream = match tokio::time::timeout(conn.header_timeout, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not complete in time; closing");
                    return;
                }
            };
            let (stream, read) = match fast {
                Some(f) => {
                    match fast::serve_stream(stream, peer, &*f, &conn.limits, &conn.stop).await {
                        Served::Closed => return,
                        Served::Handover(stream, read) => (stream, read),
                    }
                }
                None => (stream, Vec::new()),
            };
            conn.hyper(Rewind::new(read, stream), peer, true).await;
        });
    }
}

/// A connection's socket registered with the runtime (`None`, logged, if it cannot be).
fn registered(stream: std::net::TcpStream, peer: SocketAddr) -> Option<tokio::net::TcpStream> {
    tokio::net::TcpStream::from_std(stream)
        .inspect_err(|e| {
            tracing::warn!(%peer, error = %e, "connection not registered with the runtime; closed");
        })
        .ok()
}

/// What one connection's task holds of the accept loop's.
struct Conn {
    app: Router,
    limits: fast::ConnLimits,
    stop: Arc<fast::Stop>,
    /// The accept loop knows all tasks have ended when every one of these has.
    _alive: tokio::sync::mpsc::Sender<()>,
    watcher: hyper_util::server::graceful::Watcher,
    header_timeout: Duration,
}

impl Conn {
    /// The rest of the connection, served by hyper and the router.
    async fn hyper<I>(self, io: I, peer: SocketAddr, secure: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let timing = (self.header_timeout, self.limits.max_header_bytes);
        serve_hyper(io, peer, secure, self.app, self.watcher, timing).await;
    }
}

/// The rest of a connection, served by hyper and the router; `secure`: it is TLS.
async fn serve_hyper<I>(
    io: I,
    peer: SocketAddr,
    secure: bool,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
    (header_timeout, max_buf): (Duration, usize),
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if secure {
            req.extensions_mut().insert(Secure);
        }
        app.clone().oneshot(req)
    });
    // `half_close`: a client may send its request and shut down its write side
    // (`shutdown(SHUT_WR)`) while it waits for the answer. Without it hyper takes the EOF it
    // reads during a request being handled as the client gone and drops the connection
    // unanswered (a race with the handler, lost most of the time). The answer is written,
    // then the connection closes, as it does on an EOF between requests.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_buf)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The address a connection came from, for handlers served by [`serve`].
pub type Peer = ConnectInfo<SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_caps() {
        let total = Arc::new(tokio::sync::Semaphore::new(3));
        let t = Arc::new(PerIp::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = t.admit(a, 2, &total).unwrap();
        let _a2 = t.admit(a, 2, &total).unwrap();
        assert!(t.admit(a, 2, &total).is_none(), "per-address cap");
        let _b1 = t.admit(b, 2, &total).unwrap();
        assert!(t.admit(b, 2, &total).is_none(), "total cap");
        drop(a1);
        assert!(t.admit(a, 2, &total).is_some(), "a slot comes back");
    }

    /// A TCP-level option of a socket, as the kernel reports it.
    fn tcp_option(socket: &impl std::os::fd::AsRawFd, option: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is open; `v` and `len` are valid for the call.
        let r = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                option,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        v
    }

    #[tokio::test]
    async fn accepts_are_deferred_until_a_request_comes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        defer_accept(&l, Duration::from_secs(10));
        let v = tcp_option(&l, libc::TCP_DEFER_ACCEPT);
        // The kernel keeps it as a count of SYN-ACK retransmissions and reports it back in
        // seconds, rounded up to their schedule.
        assert!(v >= 10, "TCP_DEFER_ACCEPT is {v}");
    }

    #[tokio::test]
    async fn connections_leave_at_most_the_bound_unsent() {
        use tokio::io::AsyncWriteExt;
        for bound in [Some(16 * 1024), None] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let limits = Limits {
                unsent_bytes: bound,
                ..Limits::default()
            };
            tune_listener(&l, &limits);
            let mut client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            // Deferred accept: the connection comes once the client has spoken.
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let (accepted, _) = l.accept().await.unwrap();
            let got = tcp_option(&accepted, libc::TCP_NOTSENT_LOWAT);
            match bound {
                // Every accepted connection inherits the listener's bound.
                Some(b) => assert_eq!(got, b as libc::c_int),
                // Without one, none of its own (0: the system's, by default no bound short
                // of the send buffer).
                None => assert_eq!(got, 0),
            }
        }
    }

    #[tokio::test]
    async fn bind_refuses_an_address_already_listened_on() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        // A second server on the same port (ours, with SO_REUSEPORT too) is refused, not
        // given half the connections.
        let again = bind(addr).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse, "{again}");
        // So is a port another program listens on.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = bind(other.local_addr().unwrap()).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse, "{taken}");
    }

    /// Listening sockets on `port` (state 0A in `/proc/net/tcp`).
    fn listening_on(port: u16) -> usize {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3
                    && f[3] == "0A"
                    && f[1].rsplit(':').next() == Some(&format!("{port:04X}")[..])
            })
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_serving_thread_listens_on_a_socket_of_its_own_and_all_answer() {
        set_serving_workers(3);
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, None, Limits::default(), async {
            let _ = stop_rx.await;
        }));
        let mut sockets = 0;
        for _ in 0..100 {
            sockets = listening_on(addr.port());
            if sockets == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(sockets, 3, "one listening socket per serving thread");
        // Connections from many source ports land on whichever socket the kernel picks;
        // each is answered.
        for _ in 0..12 {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
                .await
                .expect("answered in time")
                .unwrap();
            assert!(
                answer.ends_with(b"hello"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
        }
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
        set_serving_workers(0);
        assert_eq!(
            listening_on(addr.port()),
            0,
            "every listening socket closed"
        );
    }
}
