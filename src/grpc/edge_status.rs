//! Statuses tonic answers by itself, before a handler runs, rewritten so that
//! each names the client's mistake and what to fix.
//!
//! - An oversized request: tonic's decoder enforces
//!   `max_decoding_message_size` from the gRPC length prefix, before
//!   buffering the body (so it costs no memory), but answers `OUT_OF_RANGE`
//!   tersely. It becomes `RESOURCE_EXHAUSTED` naming the limit and the flag.
//! - A body that is not a valid protobuf message of the RPC's type (bytes
//!   that do not parse, a string field that is not UTF-8): tonic answers
//!   `INTERNAL`, a server fault. It is the client's, so it becomes
//!   `INVALID_ARGUMENT` with prost's description of the field.
//!
//! Both arrive as trailers-only responses, so the status is in the headers.
//! Every other response passes untouched.

use http::{HeaderValue, Response};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
/// The text tonic's decoder uses for an oversized message.
const TONIC_TOO_LARGE: &str = "decoded message length too large";
/// The text tonic's protobuf codec puts before prost's decode error.
const TONIC_BAD_PROTOBUF: &str = "failed to decode Protobuf message";
/// What gRPC's `grpc-message` escapes besides non-ASCII bytes.
const MESSAGE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

/// Rewrites tonic's own client-error statuses on one response.
pub fn rewrite<B>(mut resp: Response<B>, limit: usize) -> Response<B> {
    let headers = resp.headers_mut();
    let status = headers.get(GRPC_STATUS).map(|v| v.as_bytes().to_vec());
    let Some(status) = status.filter(|s| s == b"11" || s == b"13") else {
        return resp;
    };
    let message = headers
        .get(GRPC_MESSAGE)
        .map(|v| percent_decode(v.as_bytes()).decode_utf8_lossy().into_owned())
        .unwrap_or_default();
    let rewritten = if status == b"11" && message.contains(TONIC_TOO_LARGE) {
        Some((
            "8",
            format!(
                "request is over the {limit}-byte limit: send less context per call, or raise the server's --max-request-bytes"
            ),
        ))
    } else if status == b"13" && message.contains(TONIC_BAD_PROTOBUF) {
        let detail = message
            .split_once(TONIC_BAD_PROTOBUF)
            .map(|(_, rest)| rest.trim_start_matches([':', ' ']))
            .unwrap_or_default();
        Some((
            "3",
            format!(
                "the request is not a valid switchyard.v1 protobuf message ({detail}); send the message the RPC \
                 takes, with UTF-8 strings (grpcurl and the generated clients do)"
            ),
        ))
    } else {
        None
    };
    if let Some((code, msg)) = rewritten {
        headers.insert(GRPC_STATUS, HeaderValue::from_static(code));
        let encoded = utf8_percent_encode(&msg, MESSAGE_ESCAPES).to_string();
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            headers.insert(GRPC_MESSAGE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &str, message: &str) -> Response<()> {
        let mut r = Response::new(());
        r.headers_mut()
            .insert(GRPC_STATUS, HeaderValue::from_str(status).expect("status"));
        let m = utf8_percent_encode(message, MESSAGE_ESCAPES).to_string();
        r.headers_mut()
            .insert(GRPC_MESSAGE, HeaderValue::from_str(&m).expect("message"));
        r
    }

    fn status_and_message(r: &Response<()>) -> (String, String) {
        let h = r.headers();
        (
            String::from_utf8_lossy(h[GRPC_STATUS].as_bytes()).into_owned(),
            percent_decode(h[GRPC_MESSAGE].as_bytes())
                .decode_utf8_lossy()
                .into_owned(),
        )
    }

    #[test]
    fn decode_errors_become_invalid_argument_with_the_field() {
        let r = rewrite(
            answer(
                "13",
                "failed to decode Protobuf message: RouteRequest.workflow: invalid string value: data is not UTF-8 encoded",
            ),
            1024,
        );
        let (code, msg) = status_and_message(&r);
        assert_eq!(code, "3");
        assert!(msg.contains("RouteRequest.workflow: invalid string value"), "{msg}");
    }

    #[test]
    fn oversized_requests_become_resource_exhausted_and_others_pass() {
        let (code, msg) = status_and_message(&rewrite(answer("11", "decoded message length too large"), 4096));
        assert_eq!(code, "8");
        assert!(msg.contains("4096-byte limit"), "{msg}");
        // A handler's own INTERNAL or OUT_OF_RANGE is left alone.
        let (code, msg) = status_and_message(&rewrite(answer("13", "route task failed"), 4096));
        assert_eq!((code.as_str(), msg.as_str()), ("13", "route task failed"));
        let (code, _) = status_and_message(&rewrite(answer("11", "attempt out of range"), 4096));
        assert_eq!(code, "11");
    }
}
