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

mod limits;
pub use limits::*;

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
