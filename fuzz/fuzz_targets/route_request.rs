//! Route requests off the wire: protobuf decoding, the conversion to domain
//! types, then estimate and decide against the shipped rules.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::route_request(data));
