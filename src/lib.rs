//! Switchyard: a low-latency gRPC sidecar that picks the cheapest adequate
//! model for each model call an agent makes, and ties the spend to business
//! outcomes.
//!
//! # Layout
//!
//! The modules follow a Route call from the wire to the answer:
//!
//! - [`grpc`]: the tonic service, protobuf to domain conversion, status codes,
//!   and the request size limit. The only module that touches prost.
//! - [`route`]: validates a request's fields and runs estimate then decide;
//!   shared by `serve` and `explain`.
//! - [`estimate`]: token counts per message and encoding, the complexity score,
//!   and the predicted output length.
//! - [`decide`]: the pure decision: rules + estimate -> model, cost, reason.
//! - [`rules`]: the TOML rule table: strict parsing, validation with
//!   `file:line:col`, and hot reload.
//! - [`money`]: integer nano-dollars and their formatting.
//! - [`error`]: the one error type for requests.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` and `/` on their own runtime.
//! - [`app`]: wiring for `serve`, signals, ordered shutdown.
//! - [`cli`]: `check` and `explain`.

pub mod access;
pub mod admin;
pub mod app;
pub mod audit;
pub mod budget;
pub mod cli;
pub mod decide;
pub mod error;
pub mod estimate;
#[doc(hidden)]
pub mod fuzz;
pub mod grpc;
pub mod metrics;
pub mod money;
pub mod outcome;
pub mod prices;
pub mod recent;
pub mod route;
pub mod rules;
pub mod sidecar;
pub mod telemetry;
