//! The accept loop both ports share, with the limits that keep hostile or
//! careless connections from exhausting the process.
//!
//! Each port gets its own [`Limits`] and [`PortStats`]:
//!
//! - at most `max_connections` open at once; one over is accepted and closed
//!   at once (counted), so its file descriptor comes straight back;
//! - `accept` failing (`EMFILE` at the descriptor limit, `ENFILE`, a burst of
//!   aborted handshakes) backs off from 10 ms to 1 s instead of spinning;
//! - HTTP/2: a cap on concurrent streams, on pending reset streams and on the
//!   header list; keepalive pings with a timeout, so dead peers are dropped;
//! - HTTP/1: a header-read timeout and a bounded read buffer;
//! - a connection with no request in flight is closed gracefully (GOAWAY, or
//!   `Connection: close`) once idle for `idle_timeout`, and one that never
//!   completes a request after `header_read_timeout`; a connection still open
//!   `CLOSE_GRACE` after that is dropped;
//! - each request runs under `request_timeout`, and at most
//!   `max_in_flight` requests run at once on the port and
//!   `per_connection_concurrency` on one connection: more are answered at
//!   once (RESOURCE_EXHAUSTED, or 503 on HTTP/1) and counted, never queued.
//!
//! Shutdown stops accepting, asks every connection to close gracefully, and
//! resolves once all have closed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a connection asked to close may finish its requests before it is
/// dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The first and the longest pause after `accept` fails.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Which protocol a port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The admin port: HTTP/1.1.
    Http1,
}

impl Protocol {
    pub fn port_name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http1 => "admin",
        }
    }
}

/// One port's limits. See docs/operations.md for each default and why.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub per_connection_concurrency: usize,
    pub max_concurrent_streams: u32,
    pub max_pending_reset_streams: usize,
    pub max_header_list_bytes: u32,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub request_timeout: Duration,
}

impl Limits {
    /// The gRPC port's defaults.
    pub fn grpc() -> Limits {
        Limits {
            max_connections: 1024,
            max_in_flight: 1024,
            per_connection_concurrency: 256,
            max_concurrent_streams: 256,
            max_pending_reset_streams: 32,
            max_header_list_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// The admin port's defaults: probes and scrapes, a few at a time.
    pub fn admin() -> Limits {
        Limits {
            max_connections: 64,
            max_in_flight: 32,
            per_connection_concurrency: 1,
            max_concurrent_streams: 1,
            max_pending_reset_streams: 1,
            max_header_list_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Lowers `max_connections` so that both ports together leave
    /// `reserve` descriptors of `fd_limit` for the store, the rules watcher,
    /// the audit log and the state files. `None` if it had to change.
    pub fn fit_fd_limit(&mut self, fd_limit: u64, other_port: usize, reserve: u64) -> Option<usize> {
        let room = fd_limit.saturating_sub(reserve).saturating_sub(other_port as u64);
        let room = usize::try_from(room).unwrap_or(usize::MAX).max(1);
        if self.max_connections > room {
            self.max_connections = room;
            return Some(room);
        }
        None
    }

    /// What is wrong with these limits, naming the flag.
    pub fn validate(&self, flag_prefix: &str) -> Result<(), String> {
        let positive = [
            ("max-connections", self.max_connections as u64),
            ("max-in-flight", self.max_in_flight as u64),
            ("per-connection-concurrency", self.per_connection_concurrency as u64),
            ("http2-max-concurrent-streams", u64::from(self.max_concurrent_streams)),
            ("max-header-list-bytes", u64::from(self.max_header_list_bytes)),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("--{flag_prefix}{name} must be at least 1"));
            }
        }
        if self.max_header_list_bytes < 1024 {
            return Err(format!(
                "--{flag_prefix}max-header-list-bytes {} is too small for gRPC's own headers; use at least 1024",
                self.max_header_list_bytes
            ));
        }
        for (name, d) in [
            ("header-read-timeout-s", self.header_read_timeout),
            ("idle-timeout-s", self.idle_timeout),
            ("request-timeout-s", self.request_timeout),
            ("keepalive-interval-s", self.keepalive_interval),
            ("keepalive-timeout-s", self.keepalive_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("--{flag_prefix}{name} must be more than 0"));
            }
        }
        Ok(())
    }
}

/// The soft limit on open file descriptors, read from `/proc/self/limits`
/// (`None` where that cannot be read, or the limit is unlimited).
pub fn fd_soft_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Why a connection or a request was refused, or a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A connection over `max_connections`, closed at accept.
    MaxConnections,
    /// `accept` itself failed (the descriptor limit, most often).
    AcceptFailed,
    /// A request over the port's `max_in_flight`.
    MaxInFlight,
    /// A request over its connection's `per_connection_concurrency`.
    ConnectionConcurrency,
    /// A request that ran past `request_timeout`.
    RequestTimeout,
    /// A connection closed for idling past `idle_timeout`.
    Idle,
    /// A connection that completed no request within `header_read_timeout`.
    HeaderTimeout,
    /// A connection that did not close within [`CLOSE_GRACE`] of being asked.
    Dropped,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::MaxConnections,
        Refusal::AcceptFailed,
        Refusal::MaxInFlight,
        Refusal::ConnectionConcurrency,
        Refusal::RequestTimeout,
        Refusal::Idle,
        Refusal::HeaderTimeout,
        Refusal::Dropped,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::AcceptFailed => "accept_failed",
            Refusal::MaxInFlight => "max_in_flight",
            Refusal::ConnectionConcurrency => "connection_concurrency",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::Idle => "idle",
            Refusal::HeaderTimeout => "header_read_timeout",
            Refusal::Dropped => "close_grace_exceeded",
        }
    }
}

/// What one port counts, read by `/metrics`.
#[derive(Debug, Default)]
pub struct PortStats {
    pub open: AtomicUsize,
    /// Requests running on the port now (against `max_in_flight`).
    pub in_flight: AtomicUsize,
    pub accepted: AtomicU64,
    refusals: [AtomicU64; Refusal::ALL.len()],
}

impl PortStats {
    pub fn count(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        self.refusals[why as usize].load(Ordering::Relaxed)
    }
}

/// How a port answers a request it will not run.
pub trait Refuse<B> {
    fn refuse(why: Refusal, limit: usize) -> http::Response<B>;
}

/// gRPC refusals: RESOURCE_EXHAUSTED for load, DEADLINE_EXCEEDED for time.
pub struct GrpcRefusal;

impl Refuse<tonic::body::Body> for GrpcRefusal {
    fn refuse(why: Refusal, limit: usize) -> http::Response<tonic::body::Body> {
        let status = match why {
            Refusal::RequestTimeout => tonic::Status::deadline_exceeded(format!(
                "the call ran past the server's {limit} s request timeout (--request-timeout-s); \
                 send the whole request promptly, or retry"
            )),
            Refusal::ConnectionConcurrency => tonic::Status::resource_exhausted(format!(
                "this connection already has {limit} calls in flight (--per-connection-concurrency); \
                 wait for some to finish, or open another channel"
            )),
            _ => tonic::Status::resource_exhausted(format!(
                "the server already has {limit} calls in flight (--max-in-flight); retry with backoff"
            )),
        };
        status.into_http()
    }
}

/// Admin refusals: 503 with a line that says why.
pub struct HttpRefusal;

impl Refuse<axum::body::Body> for HttpRefusal {
    fn refuse(why: Refusal, limit: usize) -> http::Response<axum::body::Body> {
        let (code, text) = match why {
            Refusal::RequestTimeout => (
                http::StatusCode::SERVICE_UNAVAILABLE,
                format!("the request ran past the admin port's {limit} s timeout\n"),
            ),
            _ => (
                http::StatusCode::SERVICE_UNAVAILABLE,
                format!("the admin port already has {limit} requests in flight; retry\n"),
            ),
        };
        let mut resp = http::Response::new(axum::body::Body::from(text));
        *resp.status_mut() = code;
        resp
    }
}

/// What a connection's requests share with the task that watches it.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Requests completed, and when the last one ended (ms after `started`).
    completed: AtomicU64,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

/// What one connection's requests share: its activity, its address, and the
/// port's counters and limits (one reference count a request).
struct Shared {
    activity: Activity,
    port: Arc<PortStats>,
    limits: Limits,
    info: tonic::transport::server::TcpConnectInfo,
}

/// The per-request wrapper: connection info, shedding, timeout, activity.
struct Guarded<S, R> {
    inner: S,
    shared: Arc<Shared>,
    _refuse: std::marker::PhantomData<fn() -> R>,
}

impl<S: Clone, R> Clone for Guarded<S, R> {
    fn clone(&self) -> Self {
        Guarded {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            _refuse: std::marker::PhantomData,
        }
    }
}

/// Ends a request's activity, and gives back its place on the port, when its
/// future completes or is dropped.
struct InFlight {
    shared: Arc<Shared>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.shared.activity;
        a.touch();
        a.completed.fetch_add(1, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.shared.port.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A request's answer: a refusal made at once, or the service's answer
    /// within the request timeout. The timer is armed only when the first
    /// poll does not answer: most calls are answered on it, and arming and
    /// cancelling a timer costs more than the rest of this wrapper.
    #[project = GuardedProj]
    pub enum GuardedFuture<F, B> {
        Refused { resp: Option<http::Response<B>> },
        Running {
            #[pin]
            inner: F,
            guard: InFlight,
            timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
            refuse: fn(Refusal, usize) -> http::Response<B>,
        },
    }
}

impl<F, B> Future for GuardedFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, std::convert::Infallible>>,
{
    type Output = Result<http::Response<B>, std::convert::Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardedProj::Refused { resp } => match resp.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            GuardedProj::Running {
                inner,
                guard,
                timer,
                refuse,
            } => {
                if let Poll::Ready(r) = inner.poll(cx) {
                    return Poll::Ready(r);
                }
                let timeout = guard.shared.limits.request_timeout;
                let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    guard.shared.port.count(Refusal::RequestTimeout);
                    return Poll::Ready(Ok(refuse(Refusal::RequestTimeout, timeout.as_secs() as usize)));
                }
                Poll::Pending
            }
        }
    }
}

impl<S, R, B> tower::Service<http::Request<Incoming>> for Guarded<S, R>
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    R: Refuse<B> + 'static,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = std::convert::Infallible;
    type Future = GuardedFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Incoming>) -> Self::Future {
        let sh = &self.shared;
        let refused = |why: Refusal, limit: usize| {
            sh.port.count(why);
            GuardedFuture::Refused {
                resp: Some(R::refuse(why, limit)),
            }
        };
        let limits = &sh.limits;
        if sh.activity.in_flight.fetch_add(1, Ordering::Relaxed) >= limits.per_connection_concurrency {
            sh.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
            return refused(Refusal::ConnectionConcurrency, limits.per_connection_concurrency);
        }
        if sh.port.in_flight.fetch_add(1, Ordering::Relaxed) >= limits.max_in_flight {
            sh.port.in_flight.fetch_sub(1, Ordering::Relaxed);
            sh.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
            return refused(Refusal::MaxInFlight, limits.max_in_flight);
        }
        let guard = InFlight { shared: sh.clone() };
        req.extensions_mut().insert(sh.info.clone());
        // hyper calls a fresh clone of this service for each request, made
        // ready for it: call it as it is.
        GuardedFuture::Running {
            inner: self.inner.call(req),
            guard,
            timer: None,
            refuse: R::refuse,
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then closes every connection
/// gracefully and returns once all are closed (the caller bounds the wait).
pub async fn serve<S, R, B>(
    listener: TcpListener,
    protocol: Protocol,
    limits: Limits,
    stats: Arc<PortStats>,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    R: Refuse<B> + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.max_pending_reset_streams)
        // Answering a stream before its body ends (a refusal, a timeout)
        // resets it locally: hyper's default bound on those stays.
        .max_local_error_reset_streams(Some(1024))
        .max_header_list_size(limits.max_header_list_bytes)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size((limits.max_header_list_bytes as usize).max(8192))
        .keep_alive(true);
    {
        let mut shutdown = pin!(shutdown);
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    a
                }
                Err(e) => {
                    // At the descriptor limit the listener stays readable:
                    // retrying at once spins a core. Wait, longer each time.
                    stats.count(Refusal::AcceptFailed);
                    tracing::warn!(port = protocol.port_name(), error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                stats.count(Refusal::MaxConnections);
                drop(stream);
                continue;
            };
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            if protocol == Protocol::Grpc {
                let _ = stream.set_nodelay(true);
            }
            let shared = Arc::new(Shared {
                activity: Activity::new(),
                port: stats.clone(),
                limits,
                info: tonic::transport::server::TcpConnectInfo {
                    local_addr: stream.local_addr().ok(),
                    remote_addr: Some(peer),
                },
            });
            let svc = Guarded::<S, R> {
                inner: service.clone(),
                shared: shared.clone(),
                _refuse: std::marker::PhantomData,
            };
            let conn = Conn {
                shared,
                stats: stats.clone(),
                limits,
                stop: stop_rx.clone(),
            };
            let (h1, h2) = (h1.clone(), h2.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let stats = conn.stats.clone();
                stats.open.fetch_add(1, Ordering::Relaxed);
                let io = TokioIo::new(stream);
                let hyper_svc = TowerToHyperService::new(svc);
                match protocol {
                    Protocol::Grpc => conn.run(h2.serve_connection(io, hyper_svc), peer).await,
                    Protocol::Http1 => conn.run(h1.serve_connection(io, hyper_svc), peer).await,
                }
                stats.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
    // Stop accepting at once (the listener closes), then ask each connection
    // to close, and wait for the last to give back its slot.
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

/// Either protocol's connection, for the watcher.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn close(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn close(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn close(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Watches one connection: idle and header deadlines, shutdown, and the
/// grace after asking it to close.
struct Conn {
    shared: Arc<Shared>,
    stats: Arc<PortStats>,
    limits: Limits,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Conn {
    /// When the connection is due to be closed for want of requests, if it
    /// has none in flight.
    fn idle_deadline(&self) -> (Instant, Refusal) {
        let a = &self.shared.activity;
        if a.completed.load(Ordering::Relaxed) == 0 && a.in_flight.load(Ordering::Relaxed) == 0 {
            (a.started + self.limits.header_read_timeout, Refusal::HeaderTimeout)
        } else {
            let last = Duration::from_millis(a.last_ms.load(Ordering::Relaxed));
            (a.started + last + self.limits.idle_timeout, Refusal::Idle)
        }
    }

    async fn run<C: Graceful>(self, conn: C, peer: SocketAddr) {
        let mut conn = pin!(conn);
        let mut stop = self.stop.clone();
        let mut closing: Option<Instant> = None;
        loop {
            let (due, why) = self.idle_deadline();
            let wake = closing.unwrap_or(due);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s), if closing.is_none() => {
                    conn.as_mut().close();
                    closing = Some(Instant::now() + CLOSE_GRACE);
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    if closing.is_some() {
                        self.stats.count(Refusal::Dropped);
                        tracing::debug!(peer = %peer, "connection did not close in its grace period; dropped");
                        return;
                    }
                    // Still due (no request came meanwhile) and nothing in flight.
                    let (due, why_now) = self.idle_deadline();
                    if why_now == why && due <= Instant::now() && self.shared.activity.in_flight.load(Ordering::Relaxed) == 0 {
                        self.stats.count(why);
                        conn.as_mut().close();
                        closing = Some(Instant::now() + CLOSE_GRACE);
                    } else if self.shared.activity.in_flight.load(Ordering::Relaxed) > 0 {
                        // Busy: look again after the idle period.
                        self.shared.activity.touch();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_limit_leaves_room_for_the_rest() {
        let mut l = Limits::grpc();
        assert_eq!(l.fit_fd_limit(1024, 64, 128), Some(832));
        assert_eq!(l.max_connections, 832);
        let mut l = Limits::grpc();
        assert_eq!(l.fit_fd_limit(1_048_576, 64, 128), None);
        assert_eq!(l.max_connections, 1024);
        let mut l = Limits::grpc();
        assert_eq!(l.fit_fd_limit(10, 64, 128), Some(1));
    }

    #[test]
    fn limits_name_the_flag_that_is_wrong() {
        let mut l = Limits::grpc();
        l.max_concurrent_streams = 0;
        assert!(l
            .validate("")
            .expect_err("refused")
            .contains("--http2-max-concurrent-streams"));
        let mut l = Limits::grpc();
        l.idle_timeout = Duration::ZERO;
        assert!(l.validate("").expect_err("refused").contains("--idle-timeout-s"));
        assert!(Limits::grpc().validate("").is_ok());
        assert!(Limits::admin().validate("admin-").is_ok());
    }

    #[test]
    fn the_soft_fd_limit_is_read() {
        // Linux has /proc; the value is whatever the test runs under.
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(fd_soft_limit().is_some_and(|n| n > 0));
        }
    }
}
