//! A port's limits, what it counts, and how each refusal is answered (gRPC and HTTP).

use super::*;

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
