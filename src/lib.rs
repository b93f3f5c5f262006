//! Switchyard: a low-latency gRPC sidecar that picks the cheapest adequate
//! model for each model call an agent makes, and ties the spend to business
//! outcomes.
//!
//! # Layout
//!
//! The modules from the top down: the entry points, the edges, the use
//! cases, the decision, money, and the foundations. A module imports only
//! modules below it here, and there is no import circle;
//! `tests/architecture.rs` checks both, and that no source file outside
//! tests is over 600 lines.
//!
//! **Entry points**
//! - [`cli`]: the command line (`args`, dispatched by `cli::run`) and each
//!   command other than `serve`: `check`, `explain`, `report`,
//!   `escalations`, `whatif`, `simulate`, `replay`, `prices`, `budget`.
//! - [`app`]: wiring for `serve`, signals, ordered shutdown.
//!
//! **The edges**
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` and `/`, on their own runtime.
//! - [`grpc`]: the tonic service. Authenticates the caller (`grpc::auth`),
//!   converts protobuf into domain types and back (`grpc::convert`), maps
//!   each [`error::Error`] to its status, and rewrites the statuses tonic
//!   answers itself (`grpc::edge_status`). It never touches a store.
//!
//! **The use cases**
//! - [`sidecar`]: one method per RPC: Route (through [`route::Router`]),
//!   usage, outcomes, feedback, budgets, escalations, reports.
//! - [`route`]: the Route use case, step by step: admit, steer, estimate
//!   and decide, reserve, record. `serve`, `explain` and `replay` all run it.
//! - [`access`]: the caller's identity and what it may do; refusals audited.
//! - [`outcome`]: what calls come to: the report and dashboard built from
//!   the ledger, and whatif, which estimates a candidate rule table on the
//!   logged decisions.
//!
//! **The decision**
//! - [`decide`]: the pure decision: rules + estimate + learned state → model.
//! - [`learn`]: the learned routing model outcomes train: its features, the
//!   Bayesian model and tier choice, and `Online`, which folds the store's
//!   labelled calls.
//!
//! **Money**
//! - [`budget`]: the policy: reserve and settle through the gates, soft
//!   thresholds, pacing, escalation, periods and scopes.
//! - [`store`]: persistence: the store traits, one concern each (budgets,
//!   escalations, the ledger, learning, and leased slices in `store::lease`),
//!   their backends (`store::sqlite`, `store::redis`) and the conformance
//!   suite both pass.
//!
//! **What a request is**
//! - [`estimate`]: token counts per message and encoding (with the context
//!   cache), the complexity signals, the predicted output length.
//! - [`rules`]: the TOML rule table: strict parsing, validation with
//!   `file:line:col`, hot reload.
//! - [`understand`]: the understanding model: task kind and difficulty from
//!   the text, with no model call. [`ledger`]: the records of calls,
//!   outcomes and feedback the stores keep.
//!
//! **Foundations**
//! - [`error`]: the error types, each deciding its status, log level and
//!   audit verdict; [`telemetry`]: spans through the OpenTelemetry SDK and
//!   their OTLP export; [`metrics`]: the series, through prometheus-client;
//!   [`listener`]: the accept loop both ports share, with their limits;
//!   [`terminal`]: what commands print.
//! - [`audit`]: the append-only audit log, rotated, with refusals
//!   aggregated; [`recent`]: the bounded, expiring maps the hot path uses.
//! - [`money`]: integer nano-dollars, checked sums, exact formatting;
//!   [`clock`]: wall and monotonic time, settable in tests; [`hashing`]:
//!   the hashers and SHA-256.
//! - `fuzz`, `testing`: fuzz targets and test support (hidden).
//!
//! prost is named only in `grpc` and in whatif's stored snapshot; tonic only
//! in `grpc`, `app` and `listener` (serving), `cli` (its client),
//! `telemetry` (trace context from gRPC metadata) and `error` (each error's
//! status code).

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
pub mod learn;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod money;
pub mod outcome;
pub mod recent;
pub mod route;
pub mod rules;
pub mod sidecar;
pub mod store;
pub mod telemetry;
pub mod terminal;
#[doc(hidden)]
pub mod testing;
pub mod understand;
