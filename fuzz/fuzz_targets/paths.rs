#![no_main]
//! See `collective_fuzzing::paths`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| collective_fuzzing::paths(data));
