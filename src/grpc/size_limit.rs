//! Oversized requests answer `RESOURCE_EXHAUSTED` with a message that says what
//! to do.
//!
//! tonic's decoder enforces `max_decoding_message_size` by reading the gRPC
//! length prefix before buffering the body (so an oversized request costs no
//! memory), but it answers `OUT_OF_RANGE` with a terse message. This layer
//! rewrites exactly that answer; every other response passes untouched.

use http::{HeaderValue, Response};

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
/// The text tonic's decoder uses for an oversized message.
const TONIC_TOO_LARGE: &str = "decoded message length too large";

/// Rewrites tonic's oversized-message status on one response.
pub fn rewrite<B>(mut resp: Response<B>, limit: usize) -> Response<B> {
    let headers = resp.headers_mut();
    let is_out_of_range = headers.get(GRPC_STATUS).is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers
        .get(GRPC_MESSAGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains(TONIC_TOO_LARGE) || m.contains("decoded%20message%20length%20too%20large"));
    if is_out_of_range && too_large {
        headers.insert(GRPC_STATUS, HeaderValue::from_static("8"));
        // grpc-message is percent-encoded; this text needs no escaping.
        let msg = format!(
            "request is over the {limit}-byte limit: send less context per call, or raise the server's --max-request-bytes"
        );
        if let Ok(v) = HeaderValue::from_str(&msg) {
            headers.insert(GRPC_MESSAGE, v);
        }
    }
    resp
}
