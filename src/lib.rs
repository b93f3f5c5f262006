//! Switchyard: a low-latency gRPC sidecar that picks the cheapest adequate
//! model for each model call an agent makes, and ties the spend to business
//! outcomes.
//!
//! # Layout
//!
//! The modules in the order a Route call moves through them, from the wire
//! to the answer, then what the call comes to, then the process around it.
//! A module calls only modules below it in its own group or in later
//! groups' foundations; nothing calls back up into `grpc`.
//!
//! **The edge**
//! - [`grpc`]: the tonic service. Authenticates the caller (`grpc::auth`),
//!   converts protobuf into domain types and back (`grpc::convert`), maps
//!   each [`error::Error`] to its status, and rewrites the statuses tonic
//!   answers itself (`grpc::edge_status`). The only module that touches
//!   prost types; it never touches a store.
//! - [`access`]: the caller's identity and what it may do; refusals audited.
//!
//! **The use cases**
//! - [`sidecar`]: one method per RPC: Route (through [`route::Router`]),
//!   usage, outcomes, feedback, budgets, escalations, reports.
//! - [`route`]: the Route use case: admit, steer, estimate, decide, reserve,
//!   record. `serve`, `explain` and `replay` all run it.
//!
//! **The decision**
//! - [`estimate`]: token counts per message and encoding (with the context
//!   cache), the complexity score, the predicted output length.
//! - [`decide`]: the pure decision: rules + estimate + learned state → model.
//! - [`rules`]: the TOML rule table: strict parsing, validation with
//!   `file:line:col`, hot reload.
//!
//! **Money**
//! - [`budget`]: reserve and settle, soft thresholds, escalations; the
//!   store traits, one concern each, and their backends (`budget::sqlite`,
//!   `budget::redis`).
//! - [`money`]: integer nano-dollars, checked sums, exact formatting.
//!
//! **What calls come to**
//! - [`outcome`]: the ledger, the report and dashboard built from it, the
//!   learned routing model outcomes train, replay, which measures it, and
//!   whatif, which estimates a candidate rule table on the logged decisions.
//!
//! **Around the process**
//! - [`app`]: wiring for `serve`, signals, ordered shutdown.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` and `/`, on their own runtime;
//!   [`listener`]: the accept loop both ports share, with their connection,
//!   stream, header, idle and in-flight limits.
//! - [`telemetry`]: spans through the OpenTelemetry SDK and their OTLP export;
//!   [`metrics`]: the series, through prometheus-client.
//! - [`audit`]: the append-only audit log, rotated, with refusals aggregated.
//! - [`cli`]: the commands other than `serve` (`check`, `explain`, `report`,
//!   `escalations`) and the command line's definitions.
//! - [`prices`]: importing list prices from LiteLLM's price map.
//! - [`error`]: the error types, each deciding its status, log level and
//!   audit verdict; [`clock`]: wall and monotonic time, settable in tests;
//!   [`recent`]: the bounded, expiring maps the hot path uses; [`hashing`]:
//!   the hashers behind them and the rules' lookups.
//! - `fuzz`, `testing`: fuzz targets and test support (hidden).

pub mod access;
pub mod admin;
pub mod app;
pub mod audit;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod decide;
pub mod error;
pub mod estimate;
#[doc(hidden)]
pub mod fuzz;
pub mod grpc;
pub mod hashing;
pub mod listener;
pub mod metrics;
pub mod money;
pub mod outcome;
pub mod recent;
pub mod route;
pub mod rules;
pub mod sidecar;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
pub mod understand;
