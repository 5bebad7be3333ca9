#![no_main]
//! See `collective_fuzzing::tokens`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| collective_fuzzing::tokens(data));
