//! Rules files: strict parsing and validation must answer every input with a
//! table or `file:line:col` diagnostics, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::rules(data));
