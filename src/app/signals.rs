//! The process around `serve`: the descriptor limit the ports share, and
//! the signals that start shutdown.

/// Both ports' connection caps, lowered where the process's descriptor limit
/// would not leave room for the store, the audit log, the rules watcher and
/// the state files (128 descriptors) beside them.
pub(crate) fn fit_fd_limit(
    mut grpc: crate::listener::Limits,
    mut admin: crate::listener::Limits,
) -> (crate::listener::Limits, crate::listener::Limits) {
    const RESERVE: u64 = 128;
    if let Some(fds) = crate::listener::fd_soft_limit() {
        if let Some(n) = admin.fit_fd_limit(fds / 8, 0, 0) {
            tracing::warn!(
                fd_limit = fds,
                admin_max_connections = n,
                "admin connections capped to fit the descriptor limit"
            );
        }
        if let Some(n) = grpc.fit_fd_limit(fds, admin.max_connections, RESERVE) {
            tracing::warn!(
                fd_limit = fds,
                max_connections = n,
                "--max-connections lowered to leave file descriptors for the store and the admin port; raise the limit (ulimit -n) to allow more"
            );
        }
    }
    (grpc, admin)
}

/// SIGTERM and Ctrl-C, registered with the OS when built. Building it before
/// the "listening" line is printed means a supervisor that signals as soon as
/// it reads that line never meets the default action (exit without draining).
pub(crate) struct ShutdownSignal {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    pub(crate) fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate())
                .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server"))
                .ok();
            let int = signal(SignalKind::interrupt())
                .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGINT"))
                .ok();
            Self { term, int }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves on SIGTERM or Ctrl-C, naming which.
    pub(crate) async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(sig: &mut Option<tokio::signal::unix::Signal>) {
                match sig {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => "SIGTERM",
                _ = next(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
