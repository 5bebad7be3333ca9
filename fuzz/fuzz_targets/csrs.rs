#![no_main]
//! See `collective_fuzzing::csrs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| collective_fuzzing::csrs(data));
