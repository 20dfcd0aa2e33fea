//! Fuzz target: the property `kv_server::fuzzing::metrics_requests` checks (see src/fuzzing/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_server::fuzzing::metrics_requests(data));
