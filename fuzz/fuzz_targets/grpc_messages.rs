#![no_main]
//! See `collective_fuzzing::grpc_messages`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| collective_fuzzing::grpc_messages(data));
