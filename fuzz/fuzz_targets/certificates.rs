#![no_main]
//! See `collective_fuzzing::certificates`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| collective_fuzzing::certificates(data));
