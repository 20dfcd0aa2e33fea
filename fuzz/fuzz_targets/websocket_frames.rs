//! Fuzz target: the property `kv_server::fuzzing::websocket_frames` checks (see src/fuzzing/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_server::fuzzing::websocket_frames(data));
