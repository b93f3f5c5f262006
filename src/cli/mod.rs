//! The commands that are not `serve`: each reads the rules, a store or a
//! running server, and prints for a person or a script.
//!
//! - [`check`]: the rules, validated, with `file:line:col` for each problem;
//! - [`explain`]: the decision `serve` would make for a prompt, on the same
//!   Route use case, beside a running server's store;
//! - [`report`]: cost per accepted outcome, from a store or a server;
//! - [`escalations`]: list, approve or deny on a running server;
//! - [`whatif`]: a candidate rule table estimated on the logged decisions;
//! - [`simulate`]: the real lease code on a simulated fleet, and
//!   `simulate pacing` on bursty replayed arrivals;
//! - [`replay`]: routing quality on recorded per-prompt outcomes;
//! - [`prices`]: list prices imported from LiteLLM's price map;
//! - [`reconcile`] and [`budget_init`]: the fleet store's repairs.
//!
//! [`run`] dispatches a parsed command line (`main` calls it); `serve`
//! itself is [`crate::app::serve`].

pub mod args;
mod check;
mod dispatch;
mod escalations;
mod explain;
pub mod prices;
mod reconcile;
pub mod replay;
mod report;
mod simulate;
mod status;
mod whatif;

pub use check::check;
pub use dispatch::run;
pub use escalations::{escalations, EscalationCommand};
pub use explain::{explain, ExplainArgs};
pub use reconcile::{budget_init, reconcile, ReconcileArgs};
pub use report::{report, ReportArgs, ReportSource};
pub use simulate::{simulate, simulate_pacing, SimulateArgs};
pub use status::{status, StatusArgs};
pub use whatif::{whatif, WhatifArgs};

/// Prints `value` as pretty JSON on stdout, as [`print_text`] does.
pub fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(t) => print_text(&t),
        Err(e) => eprintln!("cannot render the output as JSON: {e}"),
    }
}

pub use crate::terminal::print_text;

pub(crate) use crate::store::redis_reader;

/// Why `connect` failed, each with a message saying what to fix.
pub(crate) enum Connect {
    BadAddress(String),
    Unreachable(String),
}

/// Connects to a running server's gRPC address (`host:port` or a URL).
pub(crate) async fn connect(server: &str) -> Result<tonic::transport::Channel, Connect> {
    let uri = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let endpoint = tonic::transport::Channel::from_shared(uri.clone())
        .map_err(|e| Connect::BadAddress(format!("--server `{server}` is not an address: {e}")))?;
    endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            Connect::Unreachable(format!(
                "cannot reach switchyard at {uri}: {e}; is `switchyard serve` running there? (--server)"
            ))
        })
}

/// Where `switchyard report` reads from.
/// Sends `authorization: Bearer <key>` on every call, when a key is given.
#[derive(Clone)]
pub struct BearerKey(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub(crate) type Client = crate::grpc::pb::router_client::RouterClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerKey>,
>;

/// A client that authenticates with `api_key`, if given.
pub(crate) fn authorized(channel: tonic::transport::Channel, api_key: Option<&str>) -> Result<Client, String> {
    let key = match api_key {
        None => None,
        Some(k) => Some(
            format!("Bearer {k}")
                .parse()
                .map_err(|_| "the API key is not valid header text; pass the key as issued".to_string())?,
        ),
    };
    Ok(crate::grpc::pb::router_client::RouterClient::with_interceptor(
        channel,
        BearerKey(key),
    ))
}
